//! Packet tier, IPv6: the IPv6 twins of `packet.rs` and `packet_semantics.rs`. The XDP and
//! TC programs run through `BPF_PROG_TEST_RUN` in a lab's node namespace (whose uplink has
//! 2001:db8:1::1, so it is a NodePort address); every expected packet is built from scratch
//! (every checksum fully recomputed, with the IPv6 pseudo-header), then `verify_checksums`
//! and the counters are checked.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use common::*;
use lab::packet::{Ipv6Ext, MacAddr, PacketBuilder, TcpFlags, verify_checksums};
use lb_userspace::{AddressFamily, BackendSpec, Frontend, Protocol, ServiceSpec};

const XDP_TX: u32 = 3;
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
/// The node's address on pod 0's link.
const NODE_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// ICMPv6 packet too big: the MTU in the "rest of header" bytes.
const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

fn v6(a: SocketAddr) -> Ipv6Addr {
    match a.ip() {
        IpAddr::V6(v) => v,
        IpAddr::V4(_) => panic!("IPv6 expected, got {a}"),
    }
}

/// The first 48 bytes of an IPv6 datagram (its header and 8 bytes after it): the quote of
/// the ICMPv6 errors the data path builds and translates.
fn quote6(datagram: PacketBuilder) -> Vec<u8> {
    datagram.without_ethernet().build()[..48].to_vec()
}

#[test]
fn ipv6_dnat_tcp_syn_to_nodeport_is_translated_exactly() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        let input = tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(
            verdict, XDP_PASS,
            "no redirect port configured: translated, then to the stack"
        );
        let expected = tcp6(env.backends6[0], TARGET_PORT, 40000, TcpFlags::SYN).build();
        assert_eq!(out, expected, "exact bytes after DNAT");
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("ct_new", 1), ("xdp_pass_to_stack", 1)]);
        let st = dp.service_stats("web").unwrap();
        assert_eq!(
            (st.service.packets, st.service.bytes, st.service.new_flows),
            (1, input.len() as u64, 1)
        );
        assert_eq!(st.backends[0].1.packets, 1);
    });
}

#[test]
fn ipv6_dnat_loadbalancer_vip_udp_and_tcp_are_translated_exactly() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        let b = env.backends6[0];
        // Several source ports: the checksums take many values, each must match exactly.
        for sport in 5353..5373 {
            let input = udp6(VIP6, VIP_PORT, sport).build();
            let (verdict, out) = run(dp, env, &input);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(
                out,
                udp6(b, TARGET_PORT, sport).build(),
                "udp sport {sport}"
            );
            verify_checksums(&out).unwrap();
            let input = tcp6(VIP6, VIP_PORT, sport, TcpFlags::SYN).build();
            let (_, out) = run(dp, env, &input);
            assert_eq!(
                out,
                tcp6(b, TARGET_PORT, sport, TcpFlags::SYN).build(),
                "tcp sport {sport}"
            );
            verify_checksums(&out).unwrap();
        }
    });
}

#[test]
fn ipv6_conntrack_established_flow_keeps_its_backend() {
    in_node(2, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        for sport in 41000..41040 {
            let (_, syn_out) = run(
                dp,
                env,
                &tcp6(NODE6, NODE_PORT, sport, TcpFlags::SYN).build(),
            );
            let chosen = dst_of(&syn_out);
            let ack = tcp6(NODE6, NODE_PORT, sport, TcpFlags::ACK).build();
            let ((_, out), d) = delta(dp, |dp| run(dp, env, &ack));
            assert_eq!(
                dst_of(&out),
                chosen,
                "established packets follow the SYN's backend"
            );
            assert_eq!(
                out,
                tcp6(v6(chosen), TARGET_PORT, sport, TcpFlags::ACK).build()
            );
            assert_eq!(d, vec![("ct_hit", 1), ("xdp_pass_to_stack", 1)]);
        }
        let st = dp.service_stats("web").unwrap();
        assert!(st.backends.iter().all(|(_, s)| s.new_flows > 0), "{st:?}");
        assert_eq!(st.service.new_flows, 40);
        assert_eq!(st.service.packets, 80);
    });
}

#[test]
fn ipv6_conntrack_syn_reselects_and_miss_is_counted() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        let b = env.backends6[0];
        let syn = tcp6(NODE6, NODE_PORT, 42000, TcpFlags::SYN).build();
        run(dp, env, &syn);
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &syn));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, tcp6(b, TARGET_PORT, 42000, TcpFlags::SYN).build());
        assert_eq!(
            d,
            vec![
                ("ct_new", 1),
                ("ct_syn_reselect", 1),
                ("xdp_pass_to_stack", 1)
            ]
        );
        let ack = tcp6(NODE6, NODE_PORT, 43000, TcpFlags::ACK | TcpFlags::PSH).build();
        let ((_, out), d) = delta(dp, |dp| run(dp, env, &ack));
        assert_eq!(
            out,
            tcp6(b, TARGET_PORT, 43000, TcpFlags::ACK | TcpFlags::PSH).build()
        );
        assert_eq!(
            d,
            vec![("ct_miss", 1), ("ct_new", 1), ("xdp_pass_to_stack", 1)]
        );
    });
}

/// IPv6 packets that are not ours, truncated or malformed, fragments and packets with more
/// extension headers than the program walks leave exactly as they came, each counted.
#[test]
fn ipv6_passthrough_truncated_fragments_and_ext_headers_are_untouched_and_counted() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        let dest_opts = || Ipv6Ext::DestinationOptions(vec![1, 4, 0, 0, 0, 0]);
        let mut five = tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN);
        for _ in 0..5 {
            five = five.ipv6_ext(dest_opts());
        }
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "other port",
                tcp6(NODE6, 22, 40000, TcpFlags::SYN).build(),
                "xdp_pass_not_ours",
            ),
            (
                "nodeport on a foreign address",
                tcp6(
                    "2001:db8:1::99".parse().unwrap(),
                    NODE_PORT,
                    40000,
                    TcpFlags::SYN,
                )
                .build(),
                "xdp_pass_not_ours",
            ),
            (
                "v4-mapped destination (never on the wire)",
                tcp6(
                    "::ffff:192.0.2.1".parse().unwrap(),
                    NODE_PORT,
                    40000,
                    TcpFlags::SYN,
                )
                .build(),
                "xdp_pass_not_ours",
            ),
            (
                "icmpv6 echo to the node",
                PacketBuilder::new()
                    .ipv6(CLIENT6, NODE6)
                    .icmpv6(128, 0)
                    .icmp_echo(1, 1)
                    .build(),
                "xdp_pass_not_ours",
            ),
            (
                "neighbour solicitation",
                PacketBuilder::new()
                    .ipv6(CLIENT6, "ff02::1:ff00:1".parse().unwrap())
                    .hop_limit(255)
                    .icmpv6(135, 0)
                    .payload(&NODE6.octets())
                    .build(),
                "xdp_pass_not_ours",
            ),
            (
                "no next header",
                PacketBuilder::new().ipv6(CLIENT6, NODE6).build(),
                "xdp_pass_not_ours",
            ),
            (
                "truncated ipv6 header",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .truncate(14 + 30)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "truncated tcp header",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .payload(&[])
                    .truncate(14 + 40 + 10)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "truncated extension header",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ipv6_ext(Ipv6Ext::HopByHop(vec![1, 4, 0, 0, 0, 0]))
                    .payload(&[])
                    .truncate(14 + 40 + 4)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "payload length beyond the frame",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ip_length_override(1400)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "payload length below the tcp header",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ip_length_override(16)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "payload length 0 (jumbogram)",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ip_length_override(0)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "udp length beyond the packet",
                udp6(VIP6, VIP_PORT, 40000).udp_length_override(900).build(),
                "xdp_pass_malformed",
            ),
            (
                "udp with a zero checksum (forbidden over ipv6)",
                udp6(VIP6, VIP_PORT, 40000).udp_no_checksum().build(),
                "xdp_pass_malformed",
            ),
            (
                "first fragment",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ipv6_ext(Ipv6Ext::Fragment {
                        offset: 0,
                        more: true,
                        id: 7,
                    })
                    .build(),
                "xdp_pass_fragment",
            ),
            (
                "later fragment",
                PacketBuilder::new()
                    .ipv6(CLIENT6, VIP6)
                    .ipv6_ext(Ipv6Ext::Fragment {
                        offset: 100,
                        more: false,
                        id: 7,
                    })
                    .protocol(17)
                    .payload(&[9u8; 64])
                    .build(),
                "xdp_pass_fragment",
            ),
            (
                "fragment after a hop-by-hop header",
                udp6(VIP6, VIP_PORT, 40000)
                    .ipv6_ext(Ipv6Ext::HopByHop(vec![1, 4, 0, 0, 0, 0]))
                    .ipv6_ext(Ipv6Ext::Fragment {
                        offset: 0,
                        more: true,
                        id: 8,
                    })
                    .build(),
                "xdp_pass_fragment",
            ),
            (
                "five extension headers (four are walked)",
                five.build(),
                "xdp_pass_ipv6_ext_headers",
            ),
            (
                "routing header with segments left",
                tcp6(NODE6, NODE_PORT, 40000, TcpFlags::SYN)
                    .ipv6_ext(Ipv6Ext::Routing {
                        routing_type: 4,
                        segments_left: 1,
                        data: [[0u8; 4].as_slice(), &VIP6.octets()].concat(),
                    })
                    .build(),
                "xdp_pass_ipv6_ext_headers",
            ),
        ];
        for (what, input, reason) in cases {
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(out, input, "{what}: output must equal input");
            assert_eq!(d, vec![(reason, 1)], "{what}");
        }
        assert_eq!(dp.service_stats("web").unwrap().service.packets, 0);
        assert_eq!(dp.service_stats("dns").unwrap().service.packets, 0);
    });
}

/// Hop-by-hop, destination options and a routing header without segments left are walked
/// (up to four headers): the packet is translated, its headers kept as they were.
#[test]
fn ipv6_extension_headers_are_walked_and_translated() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        let b = env.backends6[0];
        let hop = Ipv6Ext::HopByHop(vec![5, 2, 0, 0, 1, 0]); // router alert + PadN
        let dst_opts = Ipv6Ext::DestinationOptions(vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let routing_done = Ipv6Ext::Routing {
            routing_type: 4,
            segments_left: 0,
            data: [[0u8; 4].as_slice(), &CLIENT6.octets()].concat(),
        };
        let with =
            |p: PacketBuilder, exts: &[Ipv6Ext]| exts.iter().cloned().fold(p, |p, e| p.ipv6_ext(e));
        let chains: Vec<(&str, Vec<Ipv6Ext>)> = vec![
            (
                "hop-by-hop + destination options",
                vec![hop.clone(), dst_opts.clone()],
            ),
            (
                "four headers: hop-by-hop, destination options, routing, destination options",
                vec![
                    hop.clone(),
                    dst_opts.clone(),
                    routing_done,
                    dst_opts.clone(),
                ],
            ),
        ];
        for (i, (what, exts)) in chains.into_iter().enumerate() {
            let sport = 40100 + i as u16;
            let input = with(tcp6(NODE6, NODE_PORT, sport, TcpFlags::SYN), &exts).build();
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
            assert_eq!(verdict, XDP_PASS, "{what}");
            let expected = with(tcp6(b, TARGET_PORT, sport, TcpFlags::SYN), &exts).build();
            assert_eq!(out, expected, "{what}: exact bytes");
            verify_checksums(&out).unwrap();
            assert_eq!(d, vec![("ct_new", 1), ("xdp_pass_to_stack", 1)], "{what}");

            let input = with(udp6(VIP6, VIP_PORT, sport), &exts).build();
            let (_, out) = run(dp, env, &input);
            assert_eq!(
                out,
                with(udp6(b, TARGET_PORT, sport), &exts).build(),
                "{what}"
            );
            verify_checksums(&out).unwrap();
        }
        assert_eq!(dp.service_stats("web").unwrap().service.new_flows, 2);
    });
}

#[test]
fn ipv6_forwarding_redirects_with_fib_macs_and_hop_limit_decrement() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.allow_redirect(&env.pod_links[0]).unwrap();
        let b = env.backends6[0];
        let input = tcp6(NODE6, NODE_PORT, 44000, TcpFlags::SYN)
            .hop_limit(64)
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_REDIRECT);
        let (node_mac, pod_mac) = env.pod_macs[0];
        let expected = tcp6(b, TARGET_PORT, 44000, TcpFlags::SYN)
            .hop_limit(63)
            .eth(node_mac, pod_mac)
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("ct_new", 1), ("xdp_redirect", 1)]);
        // Hop limit 1 is not forwarded here: the stack answers with time exceeded.
        let last_hop = tcp6(NODE6, NODE_PORT, 44001, TcpFlags::SYN)
            .hop_limit(1)
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &last_hop));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out,
            tcp6(b, TARGET_PORT, 44001, TcpFlags::SYN)
                .hop_limit(1)
                .build()
        );
        assert_eq!(d, vec![("ct_new", 1), ("xdp_pass_to_stack", 1)]);
    });
}

#[test]
fn ipv6_revnat_tc_rewrites_replies_to_the_dialled_frontend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        let backend = env.backends6[0];
        // Through the NodePort...
        run(
            dp,
            env,
            &tcp6(NODE6, NODE_PORT, 47000, TcpFlags::SYN).build(),
        );
        let reply = |src: Ipv6Addr, sport: u16| {
            PacketBuilder::new()
                .ipv6(src, CLIENT6)
                .tcp(sport, 47000)
                .seq(5)
                .ack(1001)
                .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
        };
        let (out, d) = delta(dp, |dp| {
            dp.test_tc(&reply(backend, TARGET_PORT).build()).unwrap()
        });
        assert_eq!(out.verdict, TC_ACT_OK);
        assert_eq!(out.data, reply(NODE6, NODE_PORT).build());
        verify_checksums(&out.data).unwrap();
        assert_eq!(d, vec![("tc_revnat", 1)]);
        // ...and through the VIP, UDP, with many checksums.
        for sport in 5300..5320 {
            run(dp, env, &udp6(VIP6, VIP_PORT, sport).build());
            let dgram = |src: Ipv6Addr, port: u16| {
                PacketBuilder::new()
                    .ipv6(src, CLIENT6)
                    .udp(port, sport)
                    .payload(b"pong")
            };
            let out = dp.test_tc(&dgram(backend, TARGET_PORT).build()).unwrap();
            assert_eq!(out.data, dgram(VIP6, VIP_PORT).build(), "udp sport {sport}");
            verify_checksums(&out.data).unwrap();
        }
        // A reply after a hop-by-hop header (the L4 offset follows the header).
        let hop = Ipv6Ext::HopByHop(vec![1, 4, 0, 0, 0, 0]);
        let out = dp
            .test_tc(&reply(backend, TARGET_PORT).ipv6_ext(hop.clone()).build())
            .unwrap();
        assert_eq!(out.data, reply(NODE6, NODE_PORT).ipv6_ext(hop).build());
        // A packet that is no reply of ours leaves untouched.
        let other = PacketBuilder::new()
            .ipv6(backend, CLIENT6)
            .tcp(TARGET_PORT, 1)
            .build();
        let (out, d) = delta(dp, |dp| dp.test_tc(&other).unwrap());
        assert_eq!(out.data, other);
        assert_eq!(d, vec![("tc_pass_not_ours", 1)]);
    });
}

#[test]
fn ipv6_refusal_tcp_without_endpoint_gets_exact_rst() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service6("empty", Protocol::Tcp, &[]))
            .unwrap();
        // A SYN: RST|ACK acknowledging the SYN and its 18 payload bytes; sequence 0.
        let input = tcp6(NODE6, NODE_PORT, 45000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_TX);
        let expected = PacketBuilder::new()
            .eth(NODE_MAC, CLIENT_MAC)
            .ipv6(NODE6, CLIENT6)
            .tcp(NODE_PORT, 45000)
            .seq(0)
            .ack(1000 + 18 + 1)
            .tcp_flags(TcpFlags::RST | TcpFlags::ACK)
            .window(0)
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("xdp_tx_refuse_tcp_rst", 1)]);
        // A segment with ACK: a RST whose sequence number is that ACK.
        let input = tcp6(VIP6, VIP_PORT, 45001, TcpFlags::ACK | TcpFlags::PSH)
            .ack(77_777)
            .build();
        let (verdict, out) = run(dp, env, &input);
        assert_eq!(verdict, XDP_TX);
        let expected = PacketBuilder::new()
            .eth(NODE_MAC, CLIENT_MAC)
            .ipv6(VIP6, CLIENT6)
            .tcp(VIP_PORT, 45001)
            .seq(77_777)
            .tcp_flags(TcpFlags::RST)
            .window(0)
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        // A RST is never answered, nor is a packet with extension headers.
        let rst = tcp6(VIP6, VIP_PORT, 45002, TcpFlags::RST).build();
        let ((verdict, _), d) = delta(dp, |dp| run(dp, env, &rst));
        assert_eq!(
            (verdict, d),
            (XDP_DROP, vec![("ct_miss", 1), ("xdp_drop_no_backend", 1)])
        );
        let with_ext = tcp6(VIP6, VIP_PORT, 45003, TcpFlags::SYN)
            .ipv6_ext(Ipv6Ext::DestinationOptions(vec![1, 4, 0, 0, 0, 0]))
            .build();
        let ((verdict, _), d) = delta(dp, |dp| run(dp, env, &with_ext));
        assert_eq!((verdict, d), (XDP_DROP, vec![("xdp_drop_no_backend", 1)]));
    });
}

#[test]
fn ipv6_refusal_udp_without_endpoint_gets_exact_icmpv6_port_unreachable() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service6("empty", Protocol::Udp, &[]))
            .unwrap();
        for (dst, dport) in [(VIP6, VIP_PORT), (NODE6, NODE_PORT)] {
            let datagram = udp6(dst, dport, 5353).payload(&[0x5a; 300]);
            let input = datagram.clone().build();
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
            assert_eq!(verdict, XDP_TX, "{dst}");
            let expected = PacketBuilder::new()
                .eth(NODE_MAC, CLIENT_MAC)
                .ipv6(dst, CLIENT6)
                .icmpv6(1, 4)
                .payload(&quote6(datagram))
                .build();
            assert_eq!(out, expected, "{dst}");
            verify_checksums(&out).unwrap();
            assert_eq!(d, vec![("xdp_tx_refuse_icmp_unreachable", 1)], "{dst}");
        }
    });
}

#[test]
fn ipv6_refusal_is_rate_limited_per_cpu() {
    let cfg = lb_userspace::DataplaneConfig {
        refusals_per_sec_per_cpu: 3,
        ..Default::default()
    };
    in_node_with(0, cfg, |env, dp| {
        // One CPU, so one budget (shared by both families).
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
        dp.upsert_service(&service6("empty", Protocol::Tcp, &[]))
            .unwrap();
        dp.upsert_service(&service("empty4", Protocol::Tcp, &[]))
            .unwrap();
        let (verdicts, d) = delta(dp, |dp| {
            let mut v: Vec<u32> = (0..2)
                .map(|i| {
                    run(
                        dp,
                        env,
                        &tcp(NODE, NODE_PORT, 45100 + i, TcpFlags::SYN).build(),
                    )
                    .0
                })
                .collect();
            v.extend((0..3).map(|i| {
                run(
                    dp,
                    env,
                    &tcp6(NODE6, NODE_PORT, 45200 + i, TcpFlags::SYN).build(),
                )
                .0
            }));
            v
        });
        assert_eq!(verdicts, vec![XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
        assert_eq!(
            d,
            vec![
                ("xdp_drop_refusal_rate_limited", 2),
                ("xdp_tx_refuse_tcp_rst", 3)
            ]
        );
    });
}

/// A router between node and client could not forward a reply (packet too big, time
/// exceeded): the ICMPv6 error addressed to the frontend goes on to the backend, quoting it.
#[test]
fn ipv6_icmp_packet_too_big_for_a_reply_is_translated_to_the_backend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        let b = env.backends6[0];
        run(
            dp,
            env,
            &tcp6(NODE6, NODE_PORT, 48000, TcpFlags::SYN).build(),
        );
        let reply = |src: Ipv6Addr, sport: u16| {
            PacketBuilder::new()
                .ipv6(src, CLIENT6)
                .tcp(sport, 48000)
                .seq(9)
                .ack(1)
                .tcp_flags(TcpFlags::ACK)
                .payload(&[7u8; 1400])
        };
        let input = PacketBuilder::new()
            .ipv6(ROUTER6, NODE6)
            .icmpv6(2, 0)
            .icmp_rest(MTU_1280)
            .payload(&quote6(reply(NODE6, NODE_PORT)))
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS);
        let expected = PacketBuilder::new()
            .ipv6(ROUTER6, b)
            .icmpv6(2, 0)
            .icmp_rest(MTU_1280)
            .payload(&quote6(reply(b, TARGET_PORT)))
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(
            d,
            vec![("xdp_icmp_error_translated", 1), ("xdp_pass_to_stack", 1)]
        );

        // UDP through the VIP, time exceeded, with the quoted UDP checksum fixed too.
        run(dp, env, &udp6(VIP6, VIP_PORT, 5400).build());
        let dgram = |src: Ipv6Addr, sport: u16| {
            PacketBuilder::new()
                .ipv6(src, CLIENT6)
                .udp(sport, 5400)
                .payload(b"a reply that was too big")
        };
        let input = PacketBuilder::new()
            .ipv6(ROUTER6, VIP6)
            .icmpv6(3, 0)
            .payload(&quote6(dgram(VIP6, VIP_PORT)))
            .build();
        let (_, out) = run(dp, env, &input);
        let expected = PacketBuilder::new()
            .ipv6(ROUTER6, b)
            .icmpv6(3, 0)
            .payload(&quote6(dgram(b, TARGET_PORT)))
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();

        // Redirected like any translated packet, hop limit decremented.
        dp.allow_redirect(&env.pod_links[0]).unwrap();
        let input = PacketBuilder::new()
            .ipv6(ROUTER6, NODE6)
            .icmpv6(1, 0)
            .payload(&quote6(reply(NODE6, NODE_PORT)))
            .build();
        let (verdict, out) = run(dp, env, &input);
        assert_eq!(verdict, XDP_REDIRECT);
        let (node_mac, pod_mac) = env.pod_macs[0];
        let expected = PacketBuilder::new()
            .eth(node_mac, pod_mac)
            .ipv6(ROUTER6, b)
            .hop_limit(63)
            .icmpv6(1, 0)
            .payload(&quote6(reply(b, TARGET_PORT)))
            .build();
        assert_eq!(out, expected);

        // Errors about flows we do not track, and other ICMPv6, pass untouched.
        for stray in [
            PacketBuilder::new()
                .ipv6(ROUTER6, NODE6)
                .icmpv6(2, 0)
                .icmp_rest(MTU_1280)
                .payload(&quote6(reply(NODE6, 22)))
                .build(),
            PacketBuilder::new()
                .ipv6(ROUTER6, NODE6)
                .icmpv6(4, 0)
                .payload(&quote6(reply(NODE6, NODE_PORT)))
                .build(),
        ] {
            let ((_, out), d) = delta(dp, |dp| run(dp, env, &stray));
            assert_eq!((out, d), (stray, vec![("xdp_pass_not_ours", 1)]));
        }
    });
}

/// Errors leaving towards the client quote client -> backend: they leave quoting the
/// frontend the client dialled, and from it when the backend sent them.
#[test]
fn ipv6_icmp_errors_leaving_towards_the_client_quote_the_frontend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service6("web", Protocol::Tcp, &env.backends6))
            .unwrap();
        dp.upsert_service(&service6("dns", Protocol::Udp, &env.backends6))
            .unwrap();
        let b = env.backends6[0];
        run(
            dp,
            env,
            &tcp6(NODE6, NODE_PORT, 48100, TcpFlags::SYN).build(),
        );
        // The node cannot forward the client's big segment to the pod (packet too big): the
        // error comes from the node's pod-link address and quotes client -> backend.
        let seg = |dst: Ipv6Addr, dport: u16| {
            PacketBuilder::new()
                .ipv6(CLIENT6, dst)
                .tcp(48100, dport)
                .seq(1001)
                .tcp_flags(TcpFlags::ACK)
                .payload(&[1u8; 1400])
        };
        let input = PacketBuilder::new()
            .ipv6(NODE_POD6, CLIENT6)
            .icmpv6(2, 0)
            .icmp_rest(MTU_1280)
            .payload(&quote6(seg(b, TARGET_PORT)))
            .build();
        let (out, d) = delta(dp, |dp| dp.test_tc(&input).unwrap());
        let expected = PacketBuilder::new()
            .ipv6(NODE_POD6, CLIENT6)
            .icmpv6(2, 0)
            .icmp_rest(MTU_1280)
            .payload(&quote6(seg(NODE6, NODE_PORT)))
            .build();
        assert_eq!(out.data, expected);
        verify_checksums(&out.data).unwrap();
        assert_eq!(d, vec![("tc_icmp_error_translated", 1)]);

        // The backend itself says port unreachable: the outer source (in the ICMPv6
        // pseudo-header) becomes the frontend.
        run(dp, env, &udp6(VIP6, VIP_PORT, 5401).build());
        let dgram = |dst: Ipv6Addr, dport: u16| {
            PacketBuilder::new()
                .ipv6(CLIENT6, dst)
                .udp(5401, dport)
                .payload(b"ping over udp")
        };
        let input = PacketBuilder::new()
            .ipv6(b, CLIENT6)
            .icmpv6(1, 4)
            .payload(&quote6(dgram(b, TARGET_PORT)))
            .build();
        let out = dp.test_tc(&input).unwrap();
        let expected = PacketBuilder::new()
            .ipv6(VIP6, CLIENT6)
            .icmpv6(1, 4)
            .payload(&quote6(dgram(VIP6, VIP_PORT)))
            .build();
        assert_eq!(out.data, expected);
        verify_checksums(&out.data).unwrap();

        // An error about a flow we do not track leaves untouched.
        let stray = PacketBuilder::new()
            .ipv6(NODE_POD6, CLIENT6)
            .icmpv6(2, 0)
            .icmp_rest(MTU_1280)
            .payload(&quote6(seg(b, 9999)))
            .build();
        let (out, d) = delta(dp, |dp| dp.test_tc(&stray).unwrap());
        assert_eq!((out.data, d), (stray, vec![("tc_pass_not_ours", 1)]));
    });
}

/// NodePort keys are per family: an IPv4 and an IPv6 service share a NodePort, each gets
/// only its own family's packets, and neither catches the other's once alone.
#[test]
fn ipv6_nodeport_is_per_family() {
    in_node(2, |env, dp| {
        let mut v4 = service("web4", Protocol::Tcp, &env.backends[..1]);
        v4.frontends = vec![Frontend::NodePort(NODE_PORT)];
        let mut v6 = service6("web6", Protocol::Tcp, &env.backends6[1..]);
        v6.frontends = vec![Frontend::NodePort(NODE_PORT)];
        assert_eq!(v6.family(), Some(AddressFamily::Ipv6));
        dp.upsert_service(&v4).unwrap();
        dp.upsert_service(&v6).unwrap();
        let p4 = tcp(NODE, NODE_PORT, 49000, TcpFlags::SYN).build();
        let p6 = tcp6(NODE6, NODE_PORT, 49000, TcpFlags::SYN).build();
        let (_, out) = run(dp, env, &p4);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 49000, TcpFlags::SYN).build()
        );
        let (_, out) = run(dp, env, &p6);
        assert_eq!(
            out,
            tcp6(env.backends6[1], TARGET_PORT, 49000, TcpFlags::SYN).build()
        );

        // Only the IPv4 service: IPv6 packets to the port are not ours.
        dp.remove_service("web6").unwrap();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &p6));
        assert_eq!((verdict, out), (XDP_PASS, p6.clone()));
        assert_eq!(d, vec![("xdp_pass_not_ours", 1)]);
        let (_, out) = run(dp, env, &p4);
        assert_eq!(dst_of(&out).ip(), IpAddr::V4(env.backends[0]));

        // Only the IPv6 service: IPv4 packets to the port are not ours.
        dp.remove_service("web4").unwrap();
        dp.upsert_service(&v6).unwrap();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &p4));
        assert_eq!((verdict, out), (XDP_PASS, p4.clone()));
        assert_eq!(d, vec![("xdp_pass_not_ours", 1)]);
        let (_, out) = run(dp, env, &p6);
        assert_eq!(dst_of(&out).ip(), IpAddr::V6(env.backends6[1]));
        assert_eq!(dp.occupancy().unwrap().frontends, 1);
    });
}

fn dp_err(dp: &mut lb_userspace::Dataplane, s: &ServiceSpec) -> String {
    dp.upsert_service(s).unwrap_err().to_string()
}

/// One family per service: mixed specs are rejected with the reason, the family cannot
/// change, and an update that names no address keeps the service's family.
#[test]
fn ipv6_mixed_family_spec_is_rejected() {
    in_node(1, |env, dp| {
        let b4 = SocketAddr::V4(SocketAddrV4::new(env.backends[0], TARGET_PORT));
        let b6 = SocketAddr::V6(SocketAddrV6::new(env.backends6[0], TARGET_PORT, 0, 0));
        let vip4 = Frontend::Address(SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT)));
        let vip6 = Frontend::Address(SocketAddr::V6(SocketAddrV6::new(VIP6, VIP_PORT, 0, 0)));
        let spec = |frontends: Vec<Frontend>, backends: Vec<SocketAddr>| ServiceSpec {
            name: "mixed".into(),
            protocol: Protocol::Tcp,
            frontends,
            backends: backends.into_iter().map(BackendSpec::ready).collect(),
            affinity: None,
            ..Default::default()
        };
        for (what, s, needle) in [
            (
                "v4 and v6 frontends",
                spec(vec![vip4, vip6], vec![b4]),
                "frontend [2001:db8:203::10]:80 is IPv6, but the service is IPv4",
            ),
            (
                "v6 frontend, v4 backend",
                spec(vec![vip6], vec![b4]),
                "is IPv4, but the service is IPv6 (by its frontend [2001:db8:203::10]:80)",
            ),
            (
                "NodePort, v6 then v4 backends",
                spec(vec![Frontend::NodePort(NODE_PORT)], vec![b6, b4]),
                "is IPv4, but the service is IPv6 (by its backend",
            ),
            (
                "v4-mapped frontend",
                spec(
                    vec![Frontend::Address(
                        "[::ffff:203.0.113.10]:80".parse().unwrap(),
                    )],
                    vec![],
                ),
                "IPv4-mapped",
            ),
        ] {
            let e = dp_err(dp, &s);
            assert!(e.contains(needle), "{what}: {e}");
        }
        assert_eq!(dp.occupancy().unwrap().frontends, 0, "nothing was written");

        // The family cannot change.
        dp.upsert_service(&spec(vec![Frontend::NodePort(NODE_PORT)], vec![b6]))
            .unwrap();
        let e = dp_err(dp, &spec(vec![Frontend::NodePort(NODE_PORT)], vec![b4]));
        assert!(
            e.contains("address family cannot change (IPv6 -> IPv4)"),
            "{e}"
        );
        // Naming no address (scaled to zero) keeps IPv6: the NodePort refuses IPv6 packets
        // and still ignores IPv4 ones.
        dp.upsert_service(&spec(vec![Frontend::NodePort(NODE_PORT)], vec![]))
            .unwrap();
        let (verdict, _) = run(
            dp,
            env,
            &tcp6(NODE6, NODE_PORT, 49100, TcpFlags::SYN).build(),
        );
        assert_eq!(verdict, XDP_TX, "refused with a RST");
        let p4 = tcp(NODE, NODE_PORT, 49100, TcpFlags::SYN).build();
        assert_eq!(run(dp, env, &p4), (XDP_PASS, p4.clone()));
        // Back to a backend, then removal leaves nothing behind.
        dp.upsert_service(&spec(vec![Frontend::NodePort(NODE_PORT)], vec![b6]))
            .unwrap();
        let (_, out) = run(
            dp,
            env,
            &tcp6(NODE6, NODE_PORT, 49101, TcpFlags::SYN).build(),
        );
        assert_eq!(dst_of(&out), b6);
        dp.remove_service("mixed").unwrap();
        dp.purge_stale().unwrap();
        // The flow's entries go with the GC (two passes: the REPLY entry may come first).
        dp.conntrack_gc_pass().unwrap();
        dp.conntrack_gc_pass().unwrap();
        let occ = dp.occupancy().unwrap();
        assert_eq!(
            (occ.frontends, occ.backends, occ.slots, occ.conntrack),
            (0, 0, 0, 0)
        );
    });
}
