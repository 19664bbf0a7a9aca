//! Packet tier, several nodes: source NAT of flows to endpoints on other nodes (both
//! directions, IPv4 and IPv6, TCP and UDP, port exhaustion), `loadBalancerSourceRanges`
//! and the drop of `externalTrafficPolicy: Local` frontends without local endpoints. As in
//! `packet.rs`: exact output bytes (the expected packet is built from scratch), checksums
//! verified by full recomputation, counters.
//!
//! A "remote" endpoint here is a pod of the lab marked `remote`: the route towards it
//! leaves by the node's pod link, so the source NAT address is that link's address.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use common::*;
use lab::packet::{PacketBuilder, ParsedPacket, TcpFlags, verify_checksums};
use lb_userspace::{BackendSpec, DataplaneConfig, Protocol, ServiceSpec};

/// The NAT port range of the default configuration.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

fn remote_service(name: &str, proto: Protocol, backends: &[Ipv4Addr]) -> ServiceSpec {
    let mut s = service(name, proto, backends);
    s.backends = s
        .backends
        .into_iter()
        .map(|b| b.on_another_node())
        .collect();
    s
}

fn src_of(pkt: &[u8]) -> SocketAddr {
    let p = ParsedPacket::parse(pkt).expect("parse output");
    SocketAddr::new(p.src_ip().expect("ip"), p.src_port().expect("port"))
}

fn small_config() -> DataplaneConfig {
    let mut cfg = DataplaneConfig::default();
    cfg.conntrack.gc_interval_millis = 3_600_000;
    cfg.capacities.services = 1024;
    cfg.capacities.frontends = 4096;
    cfg.capacities.backends = 4096;
    cfg.capacities.slots = 1 << 18;
    cfg
}

#[test]
fn snat_tcp_to_an_endpoint_on_another_node_both_ways_exactly() {
    in_node(1, |env, dp| {
        // The programs' verification complexity, for the log (limit 1 000 000).
        eprintln!("verified instructions: {:?}", dp.verified_instructions());
        dp.upsert_service(&remote_service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let snat_addr = lab::topology::node_pod_addr(0);
        let input = tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS, "no redirect port: to the stack");
        let src = src_of(&out);
        assert_eq!(
            src.ip(),
            IpAddr::V4(snat_addr),
            "the route's source address"
        );
        assert!(
            NAT_PORTS.contains(&src.port()),
            "port {} in the NAT range",
            src.port()
        );
        let expected = PacketBuilder::new()
            .ipv4(snat_addr, env.backends[0])
            .tcp(src.port(), TARGET_PORT)
            .seq(1000)
            .tcp_flags(TcpFlags::SYN)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        assert_eq!(out, expected, "exact bytes after DNAT + SNAT");
        verify_checksums(&out).unwrap();
        assert_eq!(
            d,
            vec![("ct_new", 1), ("snat_new", 1), ("xdp_pass_to_stack", 1)]
        );

        // The same flow's next packet keeps its source port.
        let again = tcp(NODE, NODE_PORT, 40000, TcpFlags::ACK).build();
        let (_, out2) = run(dp, env, &again);
        assert_eq!(src_of(&out2), src, "a tracked flow keeps its source");
        verify_checksums(&out2).unwrap();

        // The endpoint's SYN-ACK comes back to the node's address and the NAT port.
        let reply = PacketBuilder::new()
            .ipv4(env.backends[0], snat_addr)
            .tcp(TARGET_PORT, src.port())
            .seq(5000)
            .ack(1001)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .payload(b"HTTP/1.1 200 OK\r\n\r\n")
            .build();
        let ((verdict, back), d) = delta(dp, |dp| run(dp, env, &reply));
        assert_eq!(verdict, XDP_PASS);
        let expected = PacketBuilder::new()
            .ipv4(NODE, CLIENT)
            .tcp(NODE_PORT, 40000)
            .seq(5000)
            .ack(1001)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .payload(b"HTTP/1.1 200 OK\r\n\r\n")
            .build();
        assert_eq!(
            back, expected,
            "exact bytes: from the frontend, to the client"
        );
        verify_checksums(&back).unwrap();
        assert_eq!(d, vec![("xdp_pass_to_stack", 1), ("xdp_rev_snat", 1)]);
    });
}

#[test]
fn snat_udp_keeps_a_zero_checksum_zero_and_replies_to_the_vip() {
    in_node(1, |env, dp| {
        dp.upsert_service(&remote_service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let snat_addr = lab::topology::node_pod_addr(0);
        let input = udp(VIP, VIP_PORT, 5353).udp_no_checksum().build();
        let (_, out) = run(dp, env, &input);
        let src = src_of(&out);
        assert_eq!(src.ip(), IpAddr::V4(snat_addr));
        let expected = PacketBuilder::new()
            .ipv4(snat_addr, env.backends[0])
            .udp(src.port(), TARGET_PORT)
            .payload(b"ping over udp")
            .udp_no_checksum()
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();

        let reply = PacketBuilder::new()
            .ipv4(env.backends[0], snat_addr)
            .udp(TARGET_PORT, src.port())
            .payload(b"pong")
            .build();
        let (_, back) = run(dp, env, &reply);
        let expected = PacketBuilder::new()
            .ipv4(VIP, CLIENT)
            .udp(VIP_PORT, 5353)
            .payload(b"pong")
            .build();
        assert_eq!(back, expected, "from the VIP the client dialled");
        verify_checksums(&back).unwrap();
    });
}

#[test]
fn snat_ipv6_both_ways_exactly() {
    in_node(1, |env, dp| {
        let b = env.backends6[0];
        let spec = ServiceSpec {
            backends: vec![
                BackendSpec::ready(SocketAddr::new(IpAddr::V6(b), TARGET_PORT)).on_another_node(),
            ],
            ..service6("web6", Protocol::Tcp, &[])
        };
        let err = dp
            .upsert_service(&ServiceSpec {
                dsr: true,
                ..spec.clone()
            })
            .expect_err("DSR is IPv4 only");
        assert!(err.to_string().contains("IPv4 only"), "{err}");
        dp.upsert_service(&spec).unwrap();
        let snat_addr = lab::topology::node_pod_addr6(0);
        let input = tcp6(VIP6, VIP_PORT, 40000, TcpFlags::SYN).build();
        let (_, out) = run(dp, env, &input);
        let src = src_of(&out);
        assert_eq!(src.ip(), IpAddr::V6(snat_addr));
        assert!(NAT_PORTS.contains(&src.port()));
        let expected = PacketBuilder::new()
            .ipv6(snat_addr, b)
            .tcp(src.port(), TARGET_PORT)
            .seq(1000)
            .tcp_flags(TcpFlags::SYN)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        let reply = PacketBuilder::new()
            .ipv6(b, snat_addr)
            .tcp(TARGET_PORT, src.port())
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .ack(1001)
            .build();
        let (_, back) = run(dp, env, &reply);
        let expected = PacketBuilder::new()
            .ipv6(VIP6, CLIENT6)
            .tcp(VIP_PORT, 40000)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .ack(1001)
            .build();
        assert_eq!(back, expected);
        verify_checksums(&back).unwrap();
    });
}

#[test]
fn snat_port_exhaustion_drops_and_counts_and_never_reuses_a_live_port() {
    let mut cfg = small_config();
    cfg.nat.port_min = 61000;
    cfg.nat.port_max = 61001;
    in_node_with(1, cfg, |env, dp| {
        dp.upsert_service(&remote_service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let ports: Vec<u16> = (0..2)
            .map(|i| {
                let (v, out) = run(
                    dp,
                    env,
                    &tcp(NODE, NODE_PORT, 40000 + i, TcpFlags::SYN).build(),
                );
                assert_eq!(v, XDP_PASS);
                src_of(&out).port()
            })
            .collect();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(sorted, vec![61000, 61001], "two flows, two ports");
        let input = tcp(NODE, NODE_PORT, 40002, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_DROP, "no free port: dropped");
        assert_eq!(out, input, "untouched");
        assert_eq!(d, vec![("xdp_drop_snat_port_exhausted", 1)]);
        // The live flows keep their ports.
        for (i, port) in ports.iter().enumerate() {
            let (_, out) = run(
                dp,
                env,
                &tcp(NODE, NODE_PORT, 40000 + i as u16, TcpFlags::ACK).build(),
            );
            assert_eq!(src_of(&out).port(), *port);
        }
    });
}

#[test]
fn snat_range_packet_without_a_flow_is_passed_untouched() {
    in_node(1, |env, dp| {
        dp.upsert_service(&remote_service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        // A node address and a port of the range, no flow: stale.
        let stray = PacketBuilder::new()
            .ipv4(env.backends[0], NODE)
            .tcp(TARGET_PORT, 62000)
            .tcp_flags(TcpFlags::ACK)
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &stray));
        assert_eq!((verdict, out), (XDP_PASS, stray.clone()));
        assert_eq!(d, vec![("xdp_pass_snat_stale", 1)]);
        // Not a node address, or outside the range: not ours at all.
        for (dst, port) in [(lab::topology::node_pod_addr(0), 62000), (NODE, 40000)] {
            let other = PacketBuilder::new()
                .ipv4(env.backends[0], dst)
                .tcp(TARGET_PORT, port)
                .tcp_flags(TcpFlags::ACK)
                .build();
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &other));
            assert_eq!((verdict, out), (XDP_PASS, other.clone()));
            assert_eq!(d, vec![("xdp_pass_not_ours", 1)], "{dst}:{port}");
        }
    });
}

#[test]
fn local_endpoints_keep_the_client_address() {
    in_node(2, |env, dp| {
        let mut spec = service("web", Protocol::Tcp, &env.backends);
        // One endpoint here, one elsewhere: a flow to the local one is only DNATed.
        spec.backends[1] = spec.backends[1].on_another_node();
        dp.upsert_service(&spec).unwrap();
        let mut local = 0;
        for sport in 40000..40040 {
            let (_, out) = run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
            verify_checksums(&out).unwrap();
            let (src, dst) = (src_of(&out), dst_of(&out));
            if dst.ip() == IpAddr::V4(env.backends[0]) {
                local += 1;
                assert_eq!(src, SocketAddr::new(IpAddr::V4(CLIENT), sport));
            } else {
                assert_eq!(src.ip(), IpAddr::V4(lab::topology::node_pod_addr(1)));
            }
        }
        assert!(
            (1..40).contains(&local),
            "both endpoints chosen: {local} local"
        );
    });
}

fn ranges_service(env: &Env, allow: &[&str]) -> ServiceSpec {
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT));
    ServiceSpec {
        source_ranges: Some(lb_userspace::SourceRanges {
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            frontends: vec![vip],
        }),
        ..service("web", Protocol::Tcp, &env.backends)
    }
}

#[test]
fn source_ranges_allow_deny_count_and_leave_the_nodeport_alone() {
    in_node(1, |env, dp| {
        dp.upsert_service(&ranges_service(env, &["198.51.100.0/24"]))
            .unwrap();
        let input = tcp(VIP, VIP_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!((verdict, out), (XDP_DROP, input.clone()), "client outside");
        assert_eq!(d, vec![("xdp_drop_source_range", 1)]);
        assert_eq!(dp.service_stats("web").unwrap().source_denied, 1);
        // The NodePort is not filtered.
        let (v, out) = run(dp, env, &tcp(NODE, NODE_PORT, 40001, TcpFlags::SYN).build());
        assert_eq!(v, XDP_PASS);
        assert_eq!(dst_of(&out).ip(), IpAddr::V4(env.backends[0]));

        // Add the client's /30 (the old range is retired after): allowed now.
        dp.upsert_service(&ranges_service(env, &["192.0.2.0/30"]))
            .unwrap();
        let (v, out) = run(dp, env, &input);
        assert_eq!(v, XDP_PASS);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 40000, TcpFlags::SYN).build()
        );
        // A /32 of another address of the range does not let the client in.
        dp.upsert_service(&ranges_service(env, &["192.0.2.3/32"]))
            .unwrap();
        let (v, _) = run(dp, env, &tcp(VIP, VIP_PORT, 40002, TcpFlags::SYN).build());
        assert_eq!(v, XDP_DROP);
        assert_eq!(dp.service_stats("web").unwrap().source_denied, 2);
        // No ranges: everyone; and removing the service leaves no entry behind.
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let (v, _) = run(dp, env, &tcp(VIP, VIP_PORT, 40003, TcpFlags::SYN).build());
        assert_eq!(v, XDP_PASS);
        dp.upsert_service(&ranges_service(env, &["192.0.2.0/30", "2001:db8::/32"]))
            .expect_err("a range of the other family is refused");
        dp.upsert_service(&ranges_service(env, &["192.0.2.0/30"]))
            .unwrap();
        dp.remove_service("web").unwrap();
        assert_eq!(dp.source_range_entries(), 0);
    });
}

#[test]
fn source_ranges_capacity_error_names_the_setting_and_changes_nothing() {
    let mut cfg = small_config();
    cfg.capacities.source_ranges = 2;
    in_node_with(1, cfg, |env, dp| {
        let err = dp
            .upsert_service(&ranges_service(
                env,
                &["192.0.2.0/30", "198.51.100.0/24", "203.0.113.0/24"],
            ))
            .expect_err("3 ranges do not fit in 2");
        assert!(
            err.to_string().contains("capacities.source_ranges"),
            "{err}"
        );
        assert!(dp.service_names().is_empty(), "nothing was written");
        assert_eq!(dp.source_range_entries(), 0);
    });
}

#[test]
fn external_local_without_endpoints_drops_instead_of_refusing() {
    in_node(1, |env, dp| {
        let spec = ServiceSpec {
            when_empty: lb_userspace::WhenEmpty::Drop,
            ..service("web", Protocol::Tcp, &[])
        };
        dp.upsert_service(&spec).unwrap();
        let input = tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!((verdict, out), (XDP_DROP, input));
        assert_eq!(d, vec![("xdp_drop_no_local_endpoint", 1)]);
        // With a (local) endpoint it serves as usual.
        dp.upsert_service(&ServiceSpec {
            when_empty: lb_userspace::WhenEmpty::Drop,
            ..service("web", Protocol::Tcp, &env.backends)
        })
        .unwrap();
        let (v, _) = run(dp, env, &tcp(NODE, NODE_PORT, 40001, TcpFlags::SYN).build());
        assert_eq!(v, XDP_PASS);
    });
}

/// Direct server return: a flow to an endpoint on another node leaves inside IPIP, the
/// client's packet untouched; the outer header is fresh (DF, TTL 64, the endpoint's port as
/// its id), from the node's address towards the endpoint.
#[test]
fn dsr_encapsulates_the_untouched_packet_towards_the_endpoint() {
    in_node(1, |env, dp| {
        let mut spec = remote_service("web", Protocol::Tcp, &env.backends);
        spec.dsr = true;
        dp.upsert_service(&spec).unwrap();
        let input = tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS);
        let expected = PacketBuilder::new()
            .ipv4(lab::topology::node_pod_addr(0), env.backends[0])
            .ip_id(TARGET_PORT)
            .dont_fragment()
            .ttl(64)
            .protocol(4)
            .payload(&input[14..])
            .build();
        assert_eq!(
            out, expected,
            "exact bytes: IPIP around the client's packet"
        );
        assert_eq!(
            d,
            vec![
                ("ct_new", 1),
                ("dsr_new", 1),
                ("xdp_dsr_encapsulated", 1),
                ("xdp_pass_to_stack", 1)
            ]
        );
        // The flow's next packet goes the same way, without a new flow.
        let next = tcp(NODE, NODE_PORT, 40000, TcpFlags::ACK).build();
        let ((_, out), d) = delta(dp, |dp| run(dp, env, &next));
        let want = PacketBuilder::new()
            .ipv4(lab::topology::node_pod_addr(0), env.backends[0])
            .ip_id(TARGET_PORT)
            .dont_fragment()
            .ttl(64)
            .protocol(4)
            .payload(&next[14..])
            .build();
        assert_eq!(
            out, want,
            "exact bytes: the same outer header around the next packet"
        );
        assert!(d.contains(&("ct_hit", 1)), "{d:?}");
    });
}

/// The endpoint's node: an IPIP packet for a DSR frontend is decapsulated and translated
/// to the endpoint the outer header names; the reply leaves (TC) from the frontend.
#[test]
fn dsr_decapsulates_translates_and_the_reply_leaves_from_the_frontend() {
    in_node(1, |env, dp| {
        let mut spec = service("web", Protocol::Tcp, &env.backends);
        spec.dsr = true;
        dp.upsert_service(&spec).unwrap();
        // From node A (another node's address) for the NodePort on A's address.
        let node_a = Ipv4Addr::new(192, 0, 2, 17);
        let a_addr = Ipv4Addr::new(192, 0, 2, 100);
        let inner = tcp(a_addr, NODE_PORT, 40000, TcpFlags::SYN).build();
        let input = PacketBuilder::new()
            .ipv4(node_a, env.backends[0])
            .ip_id(TARGET_PORT)
            .dont_fragment()
            .ttl(64)
            .protocol(4)
            .payload(&inner[14..])
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS);
        let expected = tcp(env.backends[0], TARGET_PORT, 40000, TcpFlags::SYN).build();
        assert_eq!(out, expected, "exact bytes: decapsulated and translated");
        verify_checksums(&out).unwrap();
        assert!(d.contains(&("xdp_dsr_decapsulated", 1)), "{d:?}");
        let reply = PacketBuilder::new()
            .ipv4(env.backends[0], CLIENT)
            .tcp(TARGET_PORT, 40000)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .ack(1001)
            .build();
        let out = dp.test_tc(&reply).unwrap();
        let expected = PacketBuilder::new()
            .ipv4(a_addr, CLIENT)
            .tcp(NODE_PORT, 40000)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .ack(1001)
            .build();
        assert_eq!(
            out.data, expected,
            "the reply comes from the frontend the client dialled"
        );
        verify_checksums(&out.data).unwrap();
        // Not a DSR frontend (e.g. a CNI's own IPIP traffic): untouched.
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!((verdict, out), (XDP_PASS, input.clone()));
        assert_eq!(d, vec![("xdp_pass_not_ours", 1)]);
    });
}
