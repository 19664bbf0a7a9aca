//! Netns tier, two nodes: what the data path does for traffic policies and source ranges,
//! with the specs the controller derives for them (`controller/src/desired.rs`):
//! `externalTrafficPolicy: Local` is a spec of the node's own endpoints that drops while it
//! has none; `loadBalancerSourceRanges` filter the LoadBalancer IP. Every request of the
//! bounded loads is counted; a refused client is seen timing out (dropped, as kube-proxy
//! does), never answered by another node's pod.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol};
use lab::two_nodes::{
    A_NODE_LINK, A_UPLINK, B_NODE_LINK, B_UPLINK, CLIENT, NODE_A, NODE_B_UPLINK, Node, TwoNodeLab,
    pod_addr,
};
use lb_userspace::{BackendSpec, Frontend, Protocol, Reason, ServiceSpec, SourceRanges, WhenEmpty};

const NODE_PORT: u16 = 30080;
const PORT: u16 = 9100;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP server in pod 0 of `node` that answers every connection with the peer address it
/// saw, until the test ends (bounded by the listener's lifetime and a count).
fn peer_echo(lab: &TwoNodeLab, node: Node, connections: usize) -> std::thread::JoinHandle<()> {
    let listener = lab
        .pod(node, 0)
        .enter(|| TcpListener::bind(SocketAddr::new(pod_addr(node, 0).into(), PORT)))
        .expect("enter pod")
        .expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(connections) {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(TIMEOUT));
            // The request runs to the client's half-close; then the answer, then EOF.
            let mut request = Vec::new();
            let _ = conn.read_to_end(&mut request);
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    })
}

/// Connects from the client and reads what the pod answered: `Ok(peer it saw)`, or the
/// error (a dropped SYN times out after `timeout`).
fn ask(lab: &TwoNodeLab, target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    lab.client()
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&target, timeout)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"x")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("enter client")
}

fn endpoint(node: Node) -> BackendSpec {
    BackendSpec::ready(SocketAddr::new(IpAddr::V4(pod_addr(node, 0)), PORT))
}

#[test]
fn netns_external_traffic_policy_local_keeps_the_client_and_a_node_without_endpoints_drops() {
    let lab = common::two_node_lab(1, 1);
    let mut a = common::node_dataplane(&lab, Node::A, &[A_UPLINK, A_NODE_LINK], &[]);
    let mut b = common::node_dataplane(&lab, Node::B, &[B_NODE_LINK, B_UPLINK], &[]);
    let _echo = peer_echo(&lab, Node::A, 1000);
    // The external spec of a service whose only endpoint runs on A, as each node derives it:
    // A has it locally, B has no local endpoint.
    let spec = |local: Vec<BackendSpec>| ServiceSpec {
        name: "default/web:http/TCP/external".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::NodePort(NODE_PORT)],
        backends: local,
        when_empty: WhenEmpty::Drop,
        ..Default::default()
    };
    a.upsert_service(&spec(vec![endpoint(Node::A)])).expect("A");
    b.upsert_service(&spec(vec![])).expect("B");

    // Through A: the pod sees the client, under a bounded load with every request counted.
    let peer = ask(&lab, SocketAddr::new(NODE_A.into(), NODE_PORT), TIMEOUT).expect("via A");
    assert_eq!(
        peer,
        CLIENT.to_string(),
        "the client's address is preserved"
    );
    let mut cfg = load::Config::new(
        SocketAddr::new(NODE_A.into(), NODE_PORT),
        LoadProtocol::tcp(b"x".to_vec(), None),
    );
    cfg.mode = ConnectionMode::NewConnectionPerRequest;
    cfg.max_requests = 300;
    cfg.concurrency = 4;
    cfg.max_duration = Duration::from_secs(30);
    let r = lab
        .client()
        .enter(|| load::run_blocking(cfg))
        .expect("enter client")
        .expect("load");
    assert_eq!((r.sent, r.outcomes.ok), (300, 300), "{r}");
    assert_eq!(r.responders.get(&CLIENT.to_string()), Some(&300), "{r}");

    // Through B, which has no local endpoint: dropped (not refused, not sent to A's pod).
    let before = b.reason(Reason::DropNoLocalEndpoint).expect("counter");
    let err = ask(
        &lab,
        SocketAddr::new(NODE_B_UPLINK.into(), NODE_PORT),
        Duration::from_millis(500),
    )
    .expect_err("B has no local endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "dropped: {err}");
    assert!(b.reason(Reason::DropNoLocalEndpoint).expect("counter") > before);
    assert_eq!(b.reason(Reason::TxRefuseTcpRst).expect("counter"), 0);
    let errors = lab.checksum_errors().expect("counters");
    assert!(errors.is_empty(), "checksum errors: {errors:?}");
}

#[test]
fn netns_source_ranges_allow_and_deny_the_load_balancer_ip_and_count() {
    let lab = common::two_node_lab(1, 1);
    let mut a = common::node_dataplane(&lab, Node::A, &[A_UPLINK, A_NODE_LINK], &[]);
    let _echo = peer_echo(&lab, Node::A, 1000);
    let vip = SocketAddr::new(VIP.into(), 80);
    let spec = |allow: &str| ServiceSpec {
        name: "default/lb:http/TCP".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::NodePort(NODE_PORT), Frontend::Address(vip)],
        backends: vec![endpoint(Node::A)],
        source_ranges: Some(SourceRanges {
            allow: vec![allow.parse().expect("cidr")],
            frontends: vec![vip],
        }),
        ..Default::default()
    };
    a.upsert_service(&spec("192.0.2.0/28"))
        .expect("allow the client");
    for _ in 0..20 {
        assert_eq!(
            ask(&lab, vip, TIMEOUT).expect("allowed"),
            CLIENT.to_string()
        );
    }
    a.upsert_service(&spec("198.51.100.0/24"))
        .expect("deny the client");
    let err = ask(&lab, vip, Duration::from_millis(500)).expect_err("denied");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "dropped: {err}");
    let denied = a
        .service_stats("default/lb:http/TCP")
        .expect("stats")
        .source_denied;
    assert!(denied >= 1, "counted per service: {denied}");
    // The NodePort is not a LoadBalancer IP: not filtered.
    let np = SocketAddr::new(NODE_A.into(), NODE_PORT);
    assert_eq!(
        ask(&lab, np, TIMEOUT).expect("NodePort"),
        CLIENT.to_string()
    );
}
