//! Netns tier, IPv6: real TCP (HTTP) and UDP from the client namespace (2001:db8:1::2)
//! through an IPv6 NodePort (2001:db8:1::1) and an IPv6 VIP (2001:db8:203::10, routed by
//! the client to the node) to backends in their own namespaces (2001:db8:100:<i>::2): XDP
//! DNAT, redirect to the pod links, TC reverse NAT; every request counted, no checksum error
//! anywhere.

mod common;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use bench::load::{ConnectionMode, Protocol as LoadProtocol, Report};
use common::*;
use lab::Lab;
use lb_userspace::{BackendSpec, Dataplane, Frontend, Protocol, Reason, ServiceSpec};

const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10);

fn spec(
    name: &str,
    protocol: Protocol,
    frontends: Vec<Frontend>,
    backends: Vec<SocketAddr>,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol,
        frontends,
        backends: backends.into_iter().map(BackendSpec::ready).collect(),
        affinity: None,
        ..Default::default()
    }
}

fn services6(lab: &Lab, dp: &mut Dataplane) {
    let n = lab.backends().len();
    let backends = |port| {
        (0..n)
            .map(|i| SocketAddr::new(IpAddr::V6(lab.backend_addr6(i)), port))
            .collect()
    };
    dp.upsert_service(&spec(
        "default/web6:http",
        Protocol::Tcp,
        vec![
            Frontend::NodePort(NODE_PORT_TCP),
            Frontend::Address(SocketAddr::new(VIP6.into(), 80)),
        ],
        backends(HTTP_PORT),
    ))
    .expect("web6");
    dp.upsert_service(&spec(
        "default/dns6:dns",
        Protocol::Udp,
        vec![
            Frontend::NodePort(NODE_PORT_UDP),
            Frontend::Address(SocketAddr::new(VIP6.into(), 53)),
        ],
        backends(UDP_PORT),
    ))
    .expect("dns6");
}

fn assert_all_ok(what: &str, r: &Report, requests: u64, min_pods: usize) {
    assert_eq!(r.sent, requests, "{what}: {r}");
    assert_eq!(
        r.outcomes.ok, requests,
        "{what}: every request succeeds: {r}"
    );
    assert_eq!(r.retried, 0, "{what}: {r}");
    assert!(
        r.responders.len() >= min_pods,
        "{what}: at least {min_pods} backends answered: {r}"
    );
    assert!(
        r.responders.keys().all(|k| k.starts_with("pod")),
        "{what}: only pods answered: {r}"
    );
}

/// The source of the reply to one UDP datagram sent from the client to `target` on an
/// unconnected socket (which sees whatever source the reply has).
fn udp_reply_source(lab: &Lab, target: SocketAddr) -> SocketAddr {
    lab.client()
        .enter(|| {
            let s = UdpSocket::bind("[::]:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            s.send_to(b"who", target).expect("send");
            let mut buf = [0u8; 256];
            let (n, from) = s.recv_from(&mut buf).expect("reply");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("pod"),
                "reply from a pod"
            );
            from
        })
        .expect("enter client")
}

#[test]
fn netns_ipv6_tcp_and_udp_through_nodeport_and_vip_both_modes() {
    let lab = lab(2);
    let _servers = servers_on(&lab, "::");
    let mut dp = dataplane(&lab);
    services6(&lab, &mut dp);
    let node = IpAddr::V6(lab.node_addr6());
    let vip = IpAddr::V6(VIP6);

    let mut new_connections = 0;
    for (what, target) in [
        ("tcp nodeport", SocketAddr::new(node, NODE_PORT_TCP)),
        ("tcp vip", SocketAddr::new(vip, 80)),
    ] {
        let r = load_from_client(
            &lab,
            target,
            LoadProtocol::http("/"),
            ConnectionMode::NewConnectionPerRequest,
            200,
            4,
        );
        assert_all_ok(&format!("{what}, new connections"), &r, 200, 2);
        new_connections += 200;
        // Keep-alive: 4 connections carry the 400 requests.
        let r = load_from_client(
            &lab,
            target,
            LoadProtocol::http("/"),
            ConnectionMode::KeepAlive,
            400,
            4,
        );
        assert_all_ok(&format!("{what}, keep-alive"), &r, 400, 1);
    }
    for (what, target) in [
        ("udp nodeport", SocketAddr::new(node, NODE_PORT_UDP)),
        ("udp vip", SocketAddr::new(vip, 53)),
    ] {
        for mode in [
            ConnectionMode::NewConnectionPerRequest,
            ConnectionMode::KeepAlive,
        ] {
            let r = load_from_client(&lab, target, LoadProtocol::udp(b"q".to_vec()), mode, 200, 4);
            assert_all_ok(&format!("{what}, {mode:?}"), &r, 200, 1);
        }
    }

    // Replies come from the address the client dialled.
    for target in [
        SocketAddr::new(node, NODE_PORT_UDP),
        SocketAddr::new(vip, 53),
    ] {
        assert_eq!(
            udp_reply_source(&lab, target),
            target,
            "the reply's source is the dialled frontend"
        );
    }

    let web = dp.service_stats("default/web6:http").expect("stats");
    assert!(
        web.service.new_flows >= new_connections,
        "one tracked flow per TCP connection (and 4 per keep-alive run): {web:?}"
    );
    assert_eq!(
        web.backends.iter().map(|(_, s)| s.new_flows).sum::<u64>(),
        web.service.new_flows
    );
    assert!(
        web.backends.iter().all(|(_, s)| s.packets > 0),
        "both backends got traffic: {web:?}"
    );
    assert!(
        dp.reason(Reason::Redirect).unwrap() > 0,
        "frames were redirected to the pod links"
    );
    assert!(
        dp.reason(Reason::TcRevNat).unwrap() > 0,
        "replies were reverse-translated"
    );
    assert_eq!(dp.reason(Reason::DropNoBackend).unwrap(), 0);
    lab.assert_no_checksum_errors();
}

/// An IPv4 and an IPv6 service on the same NodePort, through the same node: each family
/// reaches only its own service's backends.
#[test]
fn netns_ipv6_and_ipv4_services_share_a_nodeport() {
    let lab = lab(2);
    let _servers = servers_on(&lab, "::");
    let mut dp = dataplane(&lab);
    // pod0 serves IPv4 only, pod1 IPv6 only.
    dp.upsert_service(&spec(
        "default/web:http",
        Protocol::Tcp,
        vec![Frontend::NodePort(NODE_PORT_TCP)],
        vec![SocketAddr::new(lab.backend_addr(0).into(), HTTP_PORT)],
    ))
    .expect("web v4");
    dp.upsert_service(&spec(
        "default/web6:http",
        Protocol::Tcp,
        vec![Frontend::NodePort(NODE_PORT_TCP)],
        vec![SocketAddr::new(lab.backend_addr6(1).into(), HTTP_PORT)],
    ))
    .expect("web v6");

    for (what, node, pod) in [
        ("ipv4", IpAddr::V4(lab.node_addr()), "pod0"),
        ("ipv6", IpAddr::V6(lab.node_addr6()), "pod1"),
    ] {
        let r = load_from_client(
            &lab,
            SocketAddr::new(node, NODE_PORT_TCP),
            LoadProtocol::http("/"),
            ConnectionMode::NewConnectionPerRequest,
            100,
            4,
        );
        assert_all_ok(what, &r, 100, 1);
        assert_eq!(
            r.responders.keys().collect::<Vec<_>>(),
            vec![pod],
            "{what}: only its family's backend answered: {r}"
        );
    }
    lab.assert_no_checksum_errors();
}
