//! Packet tier, node protections: a refusal (TCP RST, ICMP / ICMPv6 port unreachable) is
//! never sent to an address that must not get one. A packet to a service without endpoints
//! whose source is broadcast, multicast, unspecified, loopback, IPv4-mapped or one of the
//! node's own addresses is dropped untouched and counted as
//! `xdp_drop_refusal_bad_destination`; the same packet from an ordinary client is refused.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use lab::packet::{PacketBuilder, TcpFlags, verify_checksums};
use lb_userspace::Protocol;

const XDP_TX: u32 = 3;

/// A packet to the service's NodePort on the node's address of `src`'s family.
fn to_node_port(src: IpAddr, proto: Protocol) -> PacketBuilder {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(NODE),
        IpAddr::V6(_) => IpAddr::V6(NODE6),
    };
    let b = PacketBuilder::new().ip(src, dst);
    match proto {
        Protocol::Tcp => b
            .tcp(45000, NODE_PORT)
            .seq(1000)
            .tcp_flags(TcpFlags::SYN)
            .payload(b"GET / HTTP/1.1\r\n\r\n"),
        Protocol::Udp => b.udp(45000, NODE_PORT).payload(b"ping over udp"),
    }
}

/// (what it pins down, source address).
fn bad_sources() -> Vec<(&'static str, IpAddr)> {
    vec![
        ("IPv4 limited broadcast", Ipv4Addr::BROADCAST.into()),
        ("IPv4 multicast, lowest", Ipv4Addr::new(224, 0, 0, 1).into()),
        (
            "IPv4 multicast, highest",
            Ipv4Addr::new(239, 255, 255, 255).into(),
        ),
        ("IPv4 unspecified", Ipv4Addr::UNSPECIFIED.into()),
        ("IPv4 loopback", Ipv4Addr::new(127, 0, 0, 1).into()),
        ("the node's own IPv4 address", NODE.into()),
        (
            "IPv6 multicast (all nodes)",
            "ff02::1".parse::<Ipv6Addr>().unwrap().into(),
        ),
        ("IPv6 unspecified", Ipv6Addr::UNSPECIFIED.into()),
        ("IPv6 loopback", Ipv6Addr::LOCALHOST.into()),
        (
            "IPv4-mapped IPv6",
            "::ffff:192.0.2.2".parse::<Ipv6Addr>().unwrap().into(),
        ),
        ("the node's own IPv6 address", NODE6.into()),
    ]
}

#[test]
fn refusals_are_never_sent_to_broadcast_multicast_zero_loopback_or_node_addresses() {
    in_node(0, |env, dp| {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            dp.upsert_service(&service("empty", proto, &[])).unwrap();
            dp.upsert_service(&service6("empty6", proto, &[])).unwrap();
            for (what, src) in bad_sources() {
                let input = to_node_port(src, proto).build();
                let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
                assert_eq!(verdict, XDP_DROP, "{what} {proto}: dropped");
                assert_eq!(out, input, "{what} {proto}: nothing rewritten");
                assert_eq!(
                    d,
                    vec![("xdp_drop_refusal_bad_destination", 1)],
                    "{what} {proto}"
                );
            }
            // The control: an ordinary client is refused, so the cases above can fail.
            for client in [IpAddr::V4(CLIENT), IpAddr::V6(CLIENT6)] {
                let input = to_node_port(client, proto).build();
                let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
                assert_eq!(verdict, XDP_TX, "{client} {proto}: refused");
                verify_checksums(&out).unwrap();
                let refused = match proto {
                    Protocol::Tcp => "xdp_tx_refuse_tcp_rst",
                    Protocol::Udp => "xdp_tx_refuse_icmp_unreachable",
                };
                assert_eq!(d, vec![(refused, 1)], "{client} {proto}");
            }
            dp.remove_service("empty").unwrap();
            dp.remove_service("empty6").unwrap();
        }
    });
}
