//! Netns tier, the TC ingress mode where XDP falls short: the client link keeps the
//! kernel's default offloads (the client's TCP and UDP arrive CHECKSUM_PARTIAL) and the
//! client's veth runs no XDP program (XDP_TX frames would vanish there). Tried as a new user
//! would with XDP on such a link, refusals were counted as sent yet the client's TCP connect
//! timed out and UDP got no port unreachable. In TC mode: connections work, a service
//! without endpoints refuses at once, and no namespace counts a checksum error.

mod common;

use std::net::{IpAddr, SocketAddr};

use bench::load::{ConnectionMode, Protocol as LoadProtocol};
use common::*;
use lab::{Lab, veth};
use lb_userspace::{
    BackendSpec, Dataplane, DataplaneConfig, Frontend, IngressMode, Protocol, Reason, ServiceSpec,
    attach::AttachMode,
};

const WEB: u16 = 30080;
const DNS: u16 = 30053;
const EMPTY_TCP: u16 = 30090;
const EMPTY_UDP: u16 = 30091;

fn service(
    name: &str,
    protocol: Protocol,
    node_port: u16,
    backends: Vec<BackendSpec>,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol,
        frontends: vec![Frontend::NodePort(node_port)],
        backends,
        affinity: None,
        ..Default::default()
    }
}

#[test]
fn netns_tc_mode_with_tx_offload_serves_and_refuses() {
    let lab = Lab::builder()
        .backends(2)
        .client_link_defaults(true)
        .build()
        .expect("lab");
    assert!(
        veth::tx_checksum(lab.client(), lab.client_link()).expect("ethtool"),
        "the client link keeps TX checksum offload on"
    );
    let _servers = servers(&lab);
    let uplink = lab.node_uplink();
    let backends = |port| {
        (0..2)
            .map(|i| BackendSpec::ready(SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), port)))
            .collect()
    };
    let mut dp: Dataplane = lab
        .node()
        .enter(|| {
            let cfg = DataplaneConfig {
                ingress_mode: IngressMode::Tc,
                ..Default::default()
            };
            let mut dp = Dataplane::load(cfg).expect("load");
            assert_eq!(dp.attach(uplink).expect("attach"), AttachMode::Tc);
            dp
        })
        .expect("enter node");
    dp.upsert_service(&service(
        "default/web:http",
        Protocol::Tcp,
        WEB,
        backends(HTTP_PORT),
    ))
    .expect("web");
    dp.upsert_service(&service(
        "default/dns:dns",
        Protocol::Udp,
        DNS,
        backends(UDP_PORT),
    ))
    .expect("dns");
    dp.upsert_service(&service(
        "default/none:tcp",
        Protocol::Tcp,
        EMPTY_TCP,
        vec![],
    ))
    .expect("empty tcp");
    dp.upsert_service(&service(
        "default/none:udp",
        Protocol::Udp,
        EMPTY_UDP,
        vec![],
    ))
    .expect("empty udp");
    let node = |port| SocketAddr::new(lab.node_addr().into(), port);

    for (what, target, protocol, mode) in [
        (
            "HTTP, new connections",
            node(WEB),
            LoadProtocol::http("/"),
            ConnectionMode::NewConnectionPerRequest,
        ),
        (
            "HTTP, keep-alive",
            node(WEB),
            LoadProtocol::http("/"),
            ConnectionMode::KeepAlive,
        ),
        (
            "UDP",
            node(DNS),
            LoadProtocol::udp(b"ping".to_vec()),
            ConnectionMode::NewConnectionPerRequest,
        ),
    ] {
        // 32 connections: keep-alive ones all on one of the 2 pods has odds of 2^-31.
        let r = load_from_client(&lab, target, protocol, mode, 300, 32);
        assert_eq!(r.sent, 300, "{what}: {r}");
        assert_eq!(r.outcomes.ok, 300, "{what}: every request succeeds: {r}");
        assert_eq!(r.retried, 0, "{what}: {r}");
        assert_eq!(r.responders.len(), 2, "{what}: both pods answered: {r}");
    }

    // Refusals: TCP gets a RST (ECONNREFUSED), UDP an ICMP port unreachable (ECONNREFUSED on
    // the connected socket), each within the load generator's per-request timeout.
    let count = |r: Reason| dp.reason(r).expect("counter");
    let (rst0, icmp0) = (
        count(Reason::TxRefuseTcpRst),
        count(Reason::TxRefuseIcmpUnreachable),
    );
    let refused = |target, protocol| {
        load_from_client(
            &lab,
            target,
            protocol,
            ConnectionMode::NewConnectionPerRequest,
            5,
            1,
        )
    };
    let tcp = refused(node(EMPTY_TCP), LoadProtocol::http("/"));
    assert_eq!(
        tcp.outcomes.refused, 5,
        "TCP to a service without endpoints: {tcp}"
    );
    let udp = refused(node(EMPTY_UDP), LoadProtocol::udp(b"ping".to_vec()));
    assert_eq!(
        udp.outcomes.refused, 5,
        "UDP to a service without endpoints: {udp}"
    );
    assert_eq!(count(Reason::TxRefuseTcpRst) - rst0, 5);
    assert_eq!(count(Reason::TxRefuseIcmpUnreachable) - icmp0, 5);

    lab.assert_no_checksum_errors();
}
