//! Netns tier: real TCP and UDP from the client namespace through the node (XDP DNAT, TC
//! reverse NAT) to backends in their own namespaces; every request counted.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    ops::RangeInclusive,
    time::Duration,
};

use bench::load::{ConnectionMode, Protocol as LoadProtocol, Report};
use common::*;
use lab::Lab;
use lb_userspace::{BackendSpec, Dataplane, Frontend, Protocol, Reason, ServiceSpec};

const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn services(lab: &Lab, dp: &mut Dataplane) {
    let n = lab.backends().len();
    let backends = |port| {
        (0..n)
            .map(|i| BackendSpec::ready(SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), port)))
            .collect()
    };
    dp.upsert_service(&ServiceSpec {
        name: "default/web:http".into(),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT_TCP),
            Frontend::Address(SocketAddr::new(VIP.into(), 80)),
        ],
        backends: backends(HTTP_PORT),
        affinity: None,
        ..Default::default()
    })
    .expect("web");
    dp.upsert_service(&ServiceSpec {
        name: "default/dns:dns".into(),
        protocol: Protocol::Udp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT_UDP),
            Frontend::Address(SocketAddr::new(VIP.into(), 53)),
        ],
        backends: backends(UDP_PORT),
        affinity: None,
        ..Default::default()
    })
    .expect("dns");
}

/// Every one of `requests` succeeded, answered by `pods` (a range) of the lab's `of` pods,
/// each responder one of them (`pod<i>`, or `pod<i>:<request>` over TCP and UDP).
fn assert_all_ok(what: &str, r: &Report, requests: u64, pods: RangeInclusive<usize>, of: usize) {
    assert_eq!(r.sent, requests, "{what}: {r}");
    assert_eq!(
        r.outcomes.ok, requests,
        "{what}: every request succeeds: {r}"
    );
    assert_eq!(r.retried, 0, "{what}: {r}");
    // HTTP answers with the name; TCP and UDP with `name:request`.
    let known = |k: &str| {
        (0..of).any(|i| {
            let name = format!("pod{i}");
            k == name || k.starts_with(&format!("{name}:"))
        })
    };
    assert!(
        r.responders.keys().all(|k| known(k)),
        "{what}: only the lab's pods answer: {r}"
    );
    assert!(
        pods.contains(&r.responders.len()),
        "{what}: {pods:?} of {of} backends answered: {r}"
    );
}

#[test]
fn netns_tcp_and_udp_through_nodeport_and_vip() {
    let lab = lab(2);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    services(&lab, &mut dp);
    let node = lab.node_addr();

    for (what, target) in [
        ("tcp nodeport", SocketAddr::new(node.into(), NODE_PORT_TCP)),
        ("tcp vip", SocketAddr::new(VIP.into(), 80)),
    ] {
        let r = load_from_client(
            &lab,
            target,
            LoadProtocol::http("/"),
            ConnectionMode::NewConnectionPerRequest,
            100,
            4,
        );
        assert_all_ok(what, &r, 100, 2..=2, 2);
    }
    for (what, target) in [
        ("udp nodeport", SocketAddr::new(node.into(), NODE_PORT_UDP)),
        ("udp vip", SocketAddr::new(VIP.into(), 53)),
    ] {
        let r = load_from_client(
            &lab,
            target,
            LoadProtocol::udp(b"q".to_vec()),
            ConnectionMode::NewConnectionPerRequest,
            100,
            4,
        );
        assert_all_ok(what, &r, 100, 2..=2, 2);
    }

    // Replies come from the address the client dialled: an unconnected UDP socket sees
    // the source of every reply.
    for target in [
        SocketAddr::new(node.into(), NODE_PORT_UDP),
        SocketAddr::new(VIP.into(), 53),
    ] {
        let from = lab
            .client()
            .enter(|| {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
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
            .expect("enter client");
        assert_eq!(from, target, "the reply's source is the dialled frontend");
    }

    let web = dp.service_stats("default/web:http").expect("stats");
    assert_eq!(
        web.service.new_flows, 200,
        "one tracked flow per TCP connection"
    );
    assert_eq!(
        web.backends.iter().map(|(_, s)| s.new_flows).sum::<u64>(),
        200
    );
    assert!(
        dp.reason(Reason::Redirect).unwrap() > 0,
        "frames were redirected to the pod links"
    );
    assert!(
        dp.reason(Reason::TcRevNat).unwrap() > 0,
        "replies were reverse-translated"
    );
    lab.assert_no_checksum_errors();
}

#[test]
fn netns_bounded_load_both_modes_zero_failures() {
    let lab = lab(3);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    services(&lab, &mut dp);
    let node = SocketAddr::new(lab.node_addr().into(), NODE_PORT_TCP);
    let vip = SocketAddr::new(VIP.into(), 80);

    let r = load_from_client(
        &lab,
        node,
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        2000,
        8,
    );
    assert_all_ok(
        "new connection per request via NodePort",
        &r,
        2000,
        3..=3,
        3,
    );
    println!("new connection per request: {r}");
    let r = load_from_client(
        &lab,
        vip,
        LoadProtocol::http("/"),
        ConnectionMode::KeepAlive,
        2000,
        8,
    );
    // 8 kept-alive connections over 3 backends: all on one has odds of 3 / 3^8.
    assert_all_ok("keep-alive via VIP", &r, 2000, 2..=3, 3);
    println!("keep-alive: {r}");
    let r = load_from_client(
        &lab,
        SocketAddr::new(VIP.into(), 53),
        LoadProtocol::udp(b"q".to_vec()),
        ConnectionMode::KeepAlive,
        1000,
        4,
    );
    // 4 sockets (source ports) over 3 backends: one backend at least.
    assert_all_ok("udp via VIP", &r, 1000, 1..=3, 3);
    assert_eq!(r.failures(), 0);

    assert_eq!(dp.reason(Reason::DropNoBackend).unwrap(), 0);
    lab.assert_no_checksum_errors();
}

#[test]
fn netns_udp_datagram_larger_than_the_mtu_through_a_nodeport_both_ways() {
    let lab = lab(1);
    let mut dp = dataplane(&lab);
    let echo = SocketAddr::new(IpAddr::V4(lab.backend_addr(0)), 5400);
    dp.upsert_service(&ServiceSpec {
        name: "default/big:udp".into(),
        protocol: Protocol::Udp,
        frontends: vec![Frontend::NodePort(30054)],
        backends: vec![BackendSpec::ready(echo)],
        ..Default::default()
    })
    .expect("service");
    let target = SocketAddr::new(lab.node_addr().into(), 30054);
    udp_echo_through(lab.client(), lab.backend(0), echo, target, 4000);
    assert!(
        dp.reason(Reason::FragmentTranslated).unwrap() >= 2,
        "later fragments at XDP"
    );
    assert!(
        dp.reason(Reason::TcFragmentTranslated).unwrap() >= 2,
        "later fragments at TC"
    );
    lab.assert_no_checksum_errors();
}
