//! Netns tier, the conntrack lifecycle with real sockets:
//!
//! 1. a client talks to a pod through a NodePort, closes, then connects straight to the pod
//!    from the same address and port: that connection works (its SYN-ACK is not rewritten
//!    to the NodePort, which made the client answer with a RST);
//! 2. keep-alive connections run through a NodePort while the client namespace sends UDP
//!    churn (10x the non-TCP table) and a spoofed SYN flood (10x the SYN table) at the node:
//!    no keep-alive request fails or has to be retried, and every confirmed flow keeps its
//!    conntrack entries.
//!
//! Every load is bounded in count and time; waits are on events with deadlines.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use bench::load::ConnectionMode;
use common::*;
use lab::{
    Lab,
    packet::{PacketBuilder, TcpFlags},
};
use lb_userspace::{BackendSpec, DataplaneConfig, EndpointState, Frontend, Protocol, ServiceSpec};
use socket2::{Domain, Socket, Type};

const NODE_PORT: u16 = 30090;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

fn spec(
    lab: &Lab,
    name: &str,
    protocol: Protocol,
    port: u16,
    frontends: Vec<Frontend>,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol,
        frontends,
        backends: (0..lab.backends().len())
            .map(|i| BackendSpec {
                addr: SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), port),
                state: EndpointState::Ready,
                remote: false,
            })
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// A TCP socket bound to `local` (SO_REUSEADDR, so a port whose previous connection is in
/// TIME_WAIT here can be bound again), connected to `to`.
fn connect_from(local: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// One HTTP request on `s`; the body of the answer (read by Content-Length).
fn get(s: &mut TcpStream) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "closed before the answer was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return Ok(body[..len].to_string());
            }
        }
    }
}

#[test]
fn netns_a_direct_connection_reusing_a_nodeport_client_port_works() {
    let lab = lab(1);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    dp.upsert_service(&spec(
        &lab,
        "default/web:http",
        Protocol::Tcp,
        HTTP_PORT,
        vec![Frontend::NodePort(NODE_PORT)],
    ))
    .unwrap();
    let client: IpAddr = lab::topology::CLIENT_ADDR.into();
    let pod = SocketAddr::new(lab.backend_addr(0).into(), HTTP_PORT);
    let nodeport = SocketAddr::new(lab.node_addr().into(), NODE_PORT);
    for port in [41000u16, 41001, 41002] {
        let local = SocketAddr::new(client, port);
        let body = lab
            .client()
            .enter(|| -> std::io::Result<String> {
                // Through the NodePort; the client closes first (TIME_WAIT stays here).
                let mut s = connect_from(local, nodeport)?;
                let first = get(&mut s)?;
                s.shutdown(std::net::Shutdown::Both)?;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                drop(s);
                // Straight to the pod from the same address and port.
                let mut d = connect_from(local, pod)?;
                let second = get(&mut d)?;
                Ok(format!("{first}|{second}"))
            })
            .expect("enter client")
            .unwrap_or_else(|e| panic!("client port {port}: {e}"));
        assert!(
            body.contains("pod0") && body.split('|').count() == 2,
            "{body}"
        );
    }
    let stale = dp
        .reasons()
        .unwrap()
        .into_iter()
        .find(|(r, _)| r.label() == "tc_pass_stale")
        .map_or(0, |(_, n)| n);
    assert!(stale >= 3, "each direct SYN-ACK was left alone: {stale}");
    lab.assert_no_checksum_errors();
}

/// Spoofed SYNs from the client namespace through a raw socket (IP header included).
fn syn_flood(lab: &Lab, count: u32) {
    let node = lab.node_addr();
    lab.client()
        .enter(|| {
            // IPPROTO_RAW: the IP header is ours (spoofed sources).
            let raw = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::from(255)))
                .expect("raw socket");
            let to = SocketAddr::new(node.into(), 0).into();
            for i in 0..count {
                // Sources 192.0.2.100-199 (the client link's documentation range).
                let src = Ipv4Addr::new(192, 0, 2, 100 + (i % 100) as u8);
                let frame = PacketBuilder::new()
                    .ipv4(src, node)
                    .tcp(1024 + (i / 100) as u16, NODE_PORT)
                    .seq(i)
                    .tcp_flags(TcpFlags::SYN)
                    .build();
                let _ = raw.send_to(&frame[14..], &to);
            }
        })
        .expect("enter client");
}

/// UDP datagrams from `count` different source ports to the VIP.
fn udp_churn(lab: &Lab, count: u32) {
    lab.client()
        .enter(|| {
            for _ in 0..count {
                let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
                let _ = s.send_to(b"churn", SocketAddr::new(VIP.into(), UDP_PORT));
            }
        })
        .expect("enter client");
}

#[test]
fn netns_udp_churn_and_a_syn_flood_break_no_keep_alive_connection() {
    let lab = lab(2);
    let _servers = servers(&lab);
    let mut cfg = DataplaneConfig::default();
    cfg.capacities.conntrack_syn = 1024;
    cfg.capacities.conntrack_other = 1024;
    let mut dp = dataplane_with(&lab, cfg);
    dp.upsert_service(&spec(
        &lab,
        "default/web:http",
        Protocol::Tcp,
        HTTP_PORT,
        vec![Frontend::NodePort(NODE_PORT)],
    ))
    .unwrap();
    dp.upsert_service(&spec(
        &lab,
        "default/dns:dns",
        Protocol::Udp,
        UDP_PORT,
        vec![Frontend::Address(SocketAddr::new(VIP.into(), UDP_PORT))],
    ))
    .unwrap();
    let keep_alive = background_load(
        &lab,
        SocketAddr::new(lab.node_addr().into(), NODE_PORT),
        ConnectionMode::KeepAlive,
        20,
        8,
    );
    // The keep-alive connections are open and confirmed before the floods start.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        dp.conntrack_gc_pass().unwrap();
        let established: u64 = dp
            .conntrack_stats()
            .flows
            .iter()
            .filter(|(t, s, _)| t == "tcp" && s == "established")
            .map(|(_, _, n)| n)
            .sum();
        if established >= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keep-alive flows: {established}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        syn_flood(&lab, 5120);
        udp_churn(&lab, 5120);
    }
    let report = keep_alive.join().expect("load thread").expect("load");
    println!("keep-alive under a SYN flood and UDP churn (10x their tables): {report}");
    assert_eq!(report.failures(), 0, "{report}");
    assert_eq!(
        report.retried, 0,
        "no keep-alive connection broke: {report}"
    );
    assert!(report.sent > 1000, "{report}");
    dp.conntrack_gc_pass().unwrap();
    let stats = dp.conntrack_stats();
    let entries: std::collections::BTreeMap<_, _> = stats.entries.iter().cloned().collect();
    println!("conntrack after the floods: {stats:?}");
    assert!(
        entries["tcp_syn"] <= 1024 && entries["other"] <= 1024,
        "{entries:?}"
    );
    lab.assert_no_checksum_errors();
}
