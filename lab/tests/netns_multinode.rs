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
        A_NODE_LINK, A_UPLINK, B_NODE_LINK, B_UPLINK, CLIENT, NODE_A, NODE_A_LINK, Node,
        TwoNodeLab, pod_addr, pod_link,
    },
};
use lb_userspace::{BackendSpec, Dataplane, Frontend, Protocol, Reason, ServiceSpec};

const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const PEER_NODE_PORT: u16 = 30090;
const PEER_PORT: u16 = 9100;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TIMEOUT: Duration = Duration::from_secs(5);

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

/// Pod `i` of `node` as an endpoint of a service programmed on node `on`.
fn endpoint(node: Node, i: usize, port: u16, on: Node) -> BackendSpec {
    let b = BackendSpec::ready(SocketAddr::new(IpAddr::V4(pod_addr(node, i)), port));
    if node == on { b } else { b.on_another_node() }
}

/// How flows to endpoints on the other node travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Snat,
    Dsr,
}

/// The services as node `on` programs them.
fn program(lab: &TwoNodeLab, dp: &mut Dataplane, on: Node, mode: Mode) {
    let pods = lab.pods();
    let dsr = mode == Mode::Dsr;
    dp.upsert_service(&ServiceSpec {
        name: "default/web:http".into(),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::new(VIP.into(), 80)),
        ],
        backends: pods
            .iter()
            .map(|&(n, i)| endpoint(n, i, HTTP_PORT, on))
            .collect(),
        dsr,
        ..Default::default()
    })
    .expect("web");
    dp.upsert_service(&ServiceSpec {
        name: "default/dns:dns".into(),
        protocol: Protocol::Udp,
        frontends: vec![Frontend::NodePort(NODE_PORT_UDP)],
        backends: pods
            .iter()
            .map(|&(n, i)| endpoint(n, i, UDP_PORT, on))
            .collect(),
        dsr,
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

/// Sends `size` bytes through `target` to a sink in pod `i` of `node`, which answers with
/// the count it read: segments of the full MTU cross the node (and, encapsulated, must
/// shrink by path MTU discovery).
fn bulk_through(lab: &TwoNodeLab, node: Node, i: usize, target: SocketAddr, size: usize) {
    let listener = lab
        .pod(node, i)
        .enter(|| TcpListener::bind(SocketAddr::new(pod_addr(node, i).into(), PEER_PORT)))
        .expect("enter pod")
        .expect("bind");
    let sink = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while n < size {
            match conn.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
        }
        conn.write_all(n.to_string().as_bytes())
    });
    let reply = lab
        .client()
        .enter(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            s.write_all(&vec![7u8; size])?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("enter client")
        .unwrap_or_else(|e| panic!("{size} bytes through {target}: {e}"));
    sink.join().expect("sink thread").expect("sink");
    assert_eq!(reply, size.to_string(), "every byte arrived");
}

fn nodeport_reaches_pods_on_both_nodes(mode: Mode, redirect: bool) {
    let lab = common::two_node_lab(1, 2);
    let redirect_a: Vec<String> = if redirect {
        vec![A_UPLINK.into(), A_NODE_LINK.into(), pod_link(Node::A, 0)]
    } else {
        Vec::new()
    };
    let mut a = common::node_dataplane(&lab, Node::A, &[A_UPLINK, A_NODE_LINK], &redirect_a);
    let mut b = common::node_dataplane(&lab, Node::B, &[B_NODE_LINK, B_UPLINK], &[]);
    for (n, i) in lab.pods() {
        lab.adopt(lab_server(&lab, n, i));
    }
    // Every node programs every service (B's data path acts only on DSR traffic here).
    program(&lab, &mut a, Node::A, mode);
    program(&lab, &mut b, Node::B, mode);

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
        for conn in [
            ConnectionMode::KeepAlive,
            ConnectionMode::NewConnectionPerRequest,
        ] {
            let r = run_load(&lab, target, protocol.clone(), conn);
            let what = format!("{what} {conn:?} ({mode:?}, redirect {redirect})");
            assert_eq!(r.sent, 600, "{what}: {r}");
            assert_eq!(r.outcomes.ok, 600, "{what}: every request answered: {r}");
            assert_eq!(r.retried, 0, "{what}: {r}");
            if conn == ConnectionMode::NewConnectionPerRequest {
                assert_eq!(r.responders.len(), pods, "{what}: every pod answered: {r}");
            }
        }
    }
    let count = |dp: &Dataplane, r: Reason| dp.reason(r).expect("counter");
    match mode {
        Mode::Snat => {
            assert!(count(&a, Reason::SnatNew) > 0, "flows were source-NATed");
            assert!(
                count(&a, Reason::RevSnat) > 0,
                "replies came back through A"
            );
            assert_eq!(count(&a, Reason::DropSnatPortExhausted), 0);
            assert_eq!(count(&a, Reason::DsrNew), 0);
        }
        Mode::Dsr => {
            assert!(
                count(&a, Reason::DsrNew) > 0,
                "flows went by direct server return"
            );
            assert!(
                count(&b, Reason::DsrDecapsulated) > 0,
                "B decapsulated them"
            );
            assert_eq!(count(&a, Reason::SnatNew), 0, "nothing was source-NATed");
            assert_eq!(
                count(&a, Reason::RevSnat),
                0,
                "no reply came back through A"
            );
        }
    }

    // What the pods see: with SNAT, A's node-link address for a pod on B; with DSR, the
    // client; and the client for A's own pod either way.
    let remote_sees = match mode {
        Mode::Snat => NODE_A_LINK,
        Mode::Dsr => CLIENT,
    };
    for (node, expect) in [(Node::B, remote_sees), (Node::A, CLIENT)] {
        let name = format!("default/peer-{node:?}:tcp");
        for (on, dp) in [(Node::A, &mut a), (Node::B, &mut b)] {
            dp.upsert_service(&ServiceSpec {
                name: name.clone(),
                protocol: Protocol::Tcp,
                frontends: vec![Frontend::NodePort(PEER_NODE_PORT)],
                backends: vec![endpoint(node, 0, PEER_PORT, on)],
                dsr: mode == Mode::Dsr,
                ..Default::default()
            })
            .expect("peer service");
        }
        let target = SocketAddr::new(NODE_A.into(), PEER_NODE_PORT);
        let peer = peer_seen_by(&lab, node, 0, target);
        assert_eq!(
            peer.ip(),
            IpAddr::V4(expect),
            "the address a pod on {node:?} sees"
        );
        if node == Node::B && mode == Mode::Snat {
            assert!((61000..=65535).contains(&peer.port()), "a NAT port: {peer}");
        }
        // Full-size segments: with DSR they no longer fit once encapsulated, and path MTU
        // discovery (the ICMP fragmentation needed A sends) makes them fit.
        bulk_through(&lab, node, 0, target, 256 * 1024);
        a.remove_service(&name).expect("remove");
        b.remove_service(&name).expect("remove");
    }
    if mode == Mode::Dsr {
        assert!(
            count(&a, Reason::TxFragNeeded) > 0,
            "the client was told the MTU"
        );
    }
    if mode == Mode::Snat {
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
    }
    let errors = lab.checksum_errors().expect("counters");
    assert!(errors.is_empty(), "checksum errors: {errors:?}");
}

#[test]
fn netns_snat_nodeport_and_vip_reach_pods_on_both_nodes_redirected() {
    nodeport_reaches_pods_on_both_nodes(Mode::Snat, true);
}

#[test]
fn netns_snat_nodeport_and_vip_reach_pods_on_both_nodes_through_the_stack() {
    nodeport_reaches_pods_on_both_nodes(Mode::Snat, false);
}

#[test]
fn netns_dsr_nodeport_and_vip_reach_pods_on_both_nodes_and_the_pods_see_the_client() {
    nodeport_reaches_pods_on_both_nodes(Mode::Dsr, true);
}
