//! Netns tier, two nodes (`lab::two_nodes`): a NodePort and a VIP on node A whose endpoints
//! run on node A and on node B. Flows to B's pods are source-NATed to A's node-link address
//! (so B's pods answer through A), flows to A's pod keep the client's address. Bounded
//! loads in both connection modes count every request (0 failures, every pod answers);
//! the pods' own view of the peer address is checked; no namespace counts a checksum error.
//! Each case runs with XDP redirect on A's interfaces and with translated packets handed to
//! A's stack.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol, Report};
use common::{HTTP_PORT, UDP_PORT, bench_bin};
use lab::{
    process::Process,
    two_nodes::{
        A_NODE_LINK, A_UPLINK, B_NODE_LINK, CLIENT, NODE_A, NODE_A_LINK, Node, TwoNodeLab,
        pod_addr, pod_link,
    },
};
use lb_userspace::{
    BackendSpec, Dataplane, DataplaneConfig, Frontend, Protocol, Reason, ServiceSpec,
};

const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const PEER_NODE_PORT: u16 = 30090;
const PEER_PORT: u16 = 9100;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SEED: u32 = 0x5eed_0012;
const TIMEOUT: Duration = Duration::from_secs(5);

fn two_node_lab() -> TwoNodeLab {
    TwoNodeLab::builder()
        .pods(1, 2)
        .xdp_pass_attacher(|ifname| {
            let p = lb_userspace::PassProgram::attach(ifname)?;
            Ok(Box::new(p) as Box<dyn std::any::Any + Send>)
        })
        .build()
        .expect("two-node lab")
}

/// A node's data path: attached to `links`, allowed to redirect to `redirect`.
fn dataplane(lab: &TwoNodeLab, node: Node, links: &[&str], redirect: &[String]) -> Dataplane {
    lab.node(node)
        .enter(|| {
            let mut cfg = DataplaneConfig::default();
            cfg.capacities.services = 64;
            cfg.capacities.frontends = 256;
            cfg.capacities.backends = 256;
            cfg.capacities.slots = 1 << 16;
            let mut dp = Dataplane::load(cfg).expect("load");
            dp.set_hash_seed(SEED).expect("seed");
            for l in links {
                dp.attach(l).expect("attach");
            }
            for r in redirect {
                dp.allow_redirect(r).expect("redirect port");
            }
            dp
        })
        .expect("enter node")
}

fn lab_server(lab: &TwoNodeLab, node: Node, i: usize) -> Process {
    let mut cmd = Command::new(bench_bin("lab-server"));
    cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    let name = format!("{node:?}{i}");
    cmd.args(["--name", &name, "--http", &HTTP_PORT.to_string()])
        .args([
            "--udp",
            &UDP_PORT.to_string(),
            "--tcp",
            "9000",
            "--bind",
            "0.0.0.0",
        ]);
    let mut p = lab.pod(node, i).spawn(&cmd).expect("spawn lab-server");
    p.wait_for_line("ready", Duration::from_secs(10))
        .expect("lab-server ready");
    p
}

fn endpoint(node: Node, i: usize, port: u16) -> BackendSpec {
    let b = BackendSpec::ready(SocketAddr::new(IpAddr::V4(pod_addr(node, i)), port));
    if node == Node::A {
        b
    } else {
        b.on_another_node()
    }
}

fn program(lab: &TwoNodeLab, dp: &mut Dataplane) {
    let pods = lab.pods();
    dp.upsert_service(&ServiceSpec {
        name: "default/web:http".into(),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::new(VIP.into(), 80)),
        ],
        backends: pods
            .iter()
            .map(|&(n, i)| endpoint(n, i, HTTP_PORT))
            .collect(),
        ..Default::default()
    })
    .expect("web");
    dp.upsert_service(&ServiceSpec {
        name: "default/dns:dns".into(),
        protocol: Protocol::Udp,
        frontends: vec![Frontend::NodePort(NODE_PORT_UDP)],
        backends: pods
            .iter()
            .map(|&(n, i)| endpoint(n, i, UDP_PORT))
            .collect(),
        ..Default::default()
    })
    .expect("dns");
}

fn run_load(
    lab: &TwoNodeLab,
    target: SocketAddr,
    protocol: LoadProtocol,
    mode: ConnectionMode,
) -> Report {
    let mut cfg = load::Config::new(target, protocol);
    cfg.mode = mode;
    cfg.max_requests = 600;
    cfg.concurrency = 8;
    cfg.max_duration = Duration::from_secs(60);
    lab.client()
        .enter(|| load::run_blocking(cfg))
        .expect("enter client")
        .expect("load run")
}

/// One connection through `target` to a listener in `pod`: the peer address the pod saw.
fn peer_seen_by(lab: &TwoNodeLab, node: Node, i: usize, target: SocketAddr) -> SocketAddr {
    let listener = lab
        .pod(node, i)
        .enter(|| TcpListener::bind(SocketAddr::new(pod_addr(node, i).into(), PEER_PORT)))
        .expect("enter pod")
        .expect("bind");
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        conn.write_all(b"seen")?;
        Ok(peer)
    });
    let reply = lab
        .client()
        .enter(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"hello")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            Ok(reply)
        })
        .expect("enter client")
        .expect("exchange through the NodePort");
    assert_eq!(reply, b"seen");
    server.join().expect("server thread").expect("accept")
}

fn nodeport_reaches_pods_on_both_nodes(redirect: bool) {
    let lab = two_node_lab();
    let redirect_a: Vec<String> = if redirect {
        vec![A_UPLINK.into(), A_NODE_LINK.into(), pod_link(Node::A, 0)]
    } else {
        Vec::new()
    };
    let mut a = dataplane(&lab, Node::A, &[A_UPLINK, A_NODE_LINK], &redirect_a);
    let _b = dataplane(&lab, Node::B, &[B_NODE_LINK], &[]);
    for (n, i) in lab.pods() {
        lab.adopt(lab_server(&lab, n, i));
    }
    program(&lab, &mut a);

    let pods = lab.pods().len();
    for (what, target, protocol) in [
        (
            "http nodeport",
            SocketAddr::new(NODE_A.into(), NODE_PORT),
            LoadProtocol::http("/"),
        ),
        (
            "http vip",
            SocketAddr::new(VIP.into(), 80),
            LoadProtocol::http("/"),
        ),
        (
            "udp nodeport",
            SocketAddr::new(NODE_A.into(), NODE_PORT_UDP),
            LoadProtocol::udp(b"q".to_vec()),
        ),
    ] {
        for mode in [
            ConnectionMode::KeepAlive,
            ConnectionMode::NewConnectionPerRequest,
        ] {
            let r = run_load(&lab, target, protocol.clone(), mode);
            let what = format!("{what} {mode:?} (redirect {redirect})");
            assert_eq!(r.sent, 600, "{what}: {r}");
            assert_eq!(r.outcomes.ok, 600, "{what}: every request answered: {r}");
            assert_eq!(r.retried, 0, "{what}: {r}");
            if mode == ConnectionMode::NewConnectionPerRequest {
                assert_eq!(r.responders.len(), pods, "{what}: every pod answered: {r}");
            }
        }
    }
    assert!(
        a.reason(Reason::SnatNew).unwrap() > 0,
        "flows were source-NATed"
    );
    assert!(
        a.reason(Reason::RevSnat).unwrap() > 0,
        "replies came back through A"
    );
    assert_eq!(a.reason(Reason::DropSnatPortExhausted).unwrap(), 0);

    // What the pods see: A's node-link address for a pod on B, the client for A's own.
    for (node, expect) in [(Node::B, NODE_A_LINK), (Node::A, CLIENT)] {
        let name = format!("default/peer-{node:?}:tcp");
        a.upsert_service(&ServiceSpec {
            name: name.clone(),
            protocol: Protocol::Tcp,
            frontends: vec![Frontend::NodePort(PEER_NODE_PORT)],
            backends: vec![endpoint(node, 0, PEER_PORT)],
            ..Default::default()
        })
        .expect("peer service");
        let peer = peer_seen_by(
            &lab,
            node,
            0,
            SocketAddr::new(NODE_A.into(), PEER_NODE_PORT),
        );
        assert_eq!(
            peer.ip(),
            IpAddr::V4(expect),
            "the address a pod on {node:?} sees"
        );
        if node == Node::B {
            assert!((61000..=65535).contains(&peer.port()), "a NAT port: {peer}");
        }
        a.remove_service(&name).expect("remove");
    }
    // A UDP datagram larger than the links' MTU, to a pod on B and back: fragments are
    // source-NATed, and the reply's are translated back, as their first fragment was.
    let echo = SocketAddr::new(IpAddr::V4(pod_addr(Node::B, 1)), 5400);
    a.upsert_service(&ServiceSpec {
        name: "default/big:udp".into(),
        protocol: Protocol::Udp,
        frontends: vec![Frontend::NodePort(30054)],
        backends: vec![BackendSpec::ready(echo).on_another_node()],
        ..Default::default()
    })
    .expect("big");
    let target = SocketAddr::new(NODE_A.into(), 30054);
    common::udp_echo_through(lab.client(), lab.pod(Node::B, 1), echo, target, 4000);
    let errors = lab.checksum_errors().expect("counters");
    assert!(errors.is_empty(), "checksum errors: {errors:?}");
}

#[test]
fn netns_snat_nodeport_and_vip_reach_pods_on_both_nodes_redirected() {
    nodeport_reaches_pods_on_both_nodes(true);
}

#[test]
fn netns_snat_nodeport_and_vip_reach_pods_on_both_nodes_through_the_stack() {
    nodeport_reaches_pods_on_both_nodes(false);
}
