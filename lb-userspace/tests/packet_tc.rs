//! Packet tier, the TC ingress classifier (`sluice_tc_lb`, `--mode tc`): the XDP program's
//! pipeline behind the TC hook. Exact output bytes and checksums by full recomputation; for
//! refusals, the output equals the XDP program's (whose bytes `packet_semantics` pins down).
//! The test skb carries complete checksums; partial ones are the netns tier's
//! (`lab/tests/netns_tc_mode.rs`).

mod common;

use std::net::{SocketAddr, SocketAddrV6};

use common::*;
use lab::packet::{TcpFlags, verify_checksums};
use lb_userspace::{BackendSpec, Dataplane, Frontend, Protocol, ServiceSpec};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn run_tc(dp: &Dataplane, env: &Env, pkt: &[u8]) -> (u32, Vec<u8>) {
    let out = dp.test_tc_lb(pkt, env.uplink_ifindex).expect("test run");
    (out.verdict, out.data)
}

#[test]
fn tc_dnat_redirects_with_exact_bytes_tcp_udp_ipv6() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        dp.upsert_service(&service6("web6", Protocol::Tcp, &env.backends6))
            .unwrap();
        let (node_mac, pod_mac) = env.pod_macs[0];
        // At TC any device takes a redirect: no redirect port is configured here.
        let cases = [
            (
                "TCP SYN to the NodePort",
                tcp(NODE, NODE_PORT, 46000, TcpFlags::SYN).build(),
                tcp(env.backends[0], TARGET_PORT, 46000, TcpFlags::SYN)
                    .ttl(63)
                    .eth(node_mac, pod_mac)
                    .build(),
            ),
            (
                "UDP to the VIP",
                udp(VIP, VIP_PORT, 5353).build(),
                udp(env.backends[0], TARGET_PORT, 5353)
                    .ttl(63)
                    .eth(node_mac, pod_mac)
                    .build(),
            ),
            (
                "UDP without a checksum (stays without)",
                udp(VIP, VIP_PORT, 5354).udp_no_checksum().build(),
                udp(env.backends[0], TARGET_PORT, 5354)
                    .udp_no_checksum()
                    .ttl(63)
                    .eth(node_mac, pod_mac)
                    .build(),
            ),
            (
                "TCP SYN over IPv6 to the VIP",
                tcp6(VIP6, VIP_PORT, 46001, TcpFlags::SYN).build(),
                tcp6(env.backends6[0], TARGET_PORT, 46001, TcpFlags::SYN)
                    .hop_limit(63)
                    .eth(node_mac, pod_mac)
                    .build(),
            ),
        ];
        for (what, input, expected) in cases {
            let ((verdict, out), d) = delta(dp, |dp| run_tc(dp, env, &input));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: {d:?}");
            assert_eq!(out, expected, "{what}: exact bytes");
            verify_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(d.contains(&("xdp_redirect", 1)), "{what}: {d:?}");
        }
        // The established flow keeps its backend (conntrack shared with XDP's hook).
        let ack = tcp(NODE, NODE_PORT, 46000, TcpFlags::ACK).build();
        let ((verdict, out), d) = delta(dp, |dp| run_tc(dp, env, &ack));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            dst_of(&out),
            SocketAddr::new(env.backends[0].into(), TARGET_PORT)
        );
        assert!(d.contains(&("ct_hit", 1)), "{d:?}");
        // TTL 1 goes to the stack (time exceeded), translated.
        let last_hop = tcp(NODE, NODE_PORT, 46002, TcpFlags::SYN).ttl(1).build();
        let (verdict, out) = run_tc(dp, env, &last_hop);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 46002, TcpFlags::SYN)
                .ttl(1)
                .build()
        );
    });
}

#[test]
fn tc_refusals_are_the_xdp_programs_bytes_sent_back_out() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service("empty", Protocol::Tcp, &[]))
            .unwrap();
        dp.upsert_service(&service("empty-udp", Protocol::Udp, &[]))
            .unwrap();
        dp.upsert_service(&ServiceSpec {
            name: "empty6".into(),
            protocol: Protocol::Udp,
            frontends: vec![Frontend::Address(SocketAddr::V6(SocketAddrV6::new(
                VIP6, VIP_PORT, 0, 0,
            )))],
            backends: Vec::<BackendSpec>::new(),
            ..Default::default()
        })
        .unwrap();
        let cases = [
            (
                "TCP SYN: RST",
                tcp(NODE, NODE_PORT, 47000, TcpFlags::SYN).build(),
                "xdp_tx_refuse_tcp_rst",
            ),
            (
                "UDP: ICMP port unreachable",
                udp(VIP, VIP_PORT, 5353).build(),
                "xdp_tx_refuse_icmp_unreachable",
            ),
            (
                "UDP over IPv6: ICMPv6 port unreachable",
                udp6(VIP6, VIP_PORT, 5353).build(),
                "xdp_tx_refuse_icmp_unreachable",
            ),
        ];
        for (what, input, counter) in cases {
            let (xdp_verdict, xdp_out) = run(dp, env, &input);
            assert_eq!(xdp_verdict, XDP_TX, "{what}");
            let ((verdict, out), d) = delta(dp, |dp| run_tc(dp, env, &input));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: {d:?}");
            assert_eq!(out, xdp_out, "{what}: the same reply as at XDP");
            verify_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(d, vec![(counter, 1)], "{what}");
        }
        // A RST is never answered: dropped.
        let rst = tcp(NODE, NODE_PORT, 47001, TcpFlags::RST).build();
        let (verdict, _) = run_tc(dp, env, &rst);
        assert_eq!(verdict, TC_ACT_SHOT);
    });
}

#[test]
fn tc_passes_what_is_not_ours_untouched() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let other = tcp(NODE, 22, 48000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run_tc(dp, env, &other));
        assert_eq!((verdict, out), (TC_ACT_OK, other));
        assert_eq!(d, vec![("xdp_pass_not_ours", 1)]);
    });
}
