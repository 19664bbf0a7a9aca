//! Netns tier, service semantics under load: scale 1 -> 4 -> 2 with readiness gating and
//! flips, scale-down through the drain handshake (terminating, not selected any more, then
//! SIGTERM, then removal), the spread of new connections over 4 backends, and a UDP flow that
//! moves when its backend is removed. Every request of the load generator is counted.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use bench::load::{ConnectionMode, Protocol as LoadProtocol};
use common::*;
use lab::Lab;
use lb_userspace::{BackendSpec, Dataplane, EndpointState, Frontend, Protocol, ServiceSpec};

const NODE_PORT: u16 = 30080;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn web(lab: &Lab, backends: &[(usize, EndpointState)]) -> ServiceSpec {
    ServiceSpec {
        name: "default/web:http".into(),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::new(VIP.into(), 80)),
        ],
        backends: backends
            .iter()
            .map(|&(i, state)| BackendSpec {
                addr: SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), HTTP_PORT),
                state,
                remote: false,
            })
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// The drain handshake: wait until the data path no longer selects `addr` for new flows.
fn wait_not_selectable(dp: &Dataplane, addr: Ipv4Addr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = dp
            .endpoint_status(addr.into(), true)
            .expect("endpoint status");
        if st.iter().all(|s| !s.selectable) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} still selectable: {st:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn netns_scale_readiness_flips_and_drain_under_load_lose_no_request() {
    let lab = lab(4);
    let mut servers = servers(&lab);
    let mut dp = dataplane(&lab);
    use EndpointState::{NotServing, Ready, ServingTerminating};
    // One ready pod; three pods exist but are not ready yet.
    let mut states = vec![
        (0, Ready),
        (1, NotServing),
        (2, NotServing),
        (3, NotServing),
    ];
    dp.upsert_service(&web(&lab, &states)).unwrap();

    let started = Instant::now();
    let new_conn = background_load(
        &lab,
        SocketAddr::new(lab.node_addr().into(), NODE_PORT),
        ConnectionMode::NewConnectionPerRequest,
        8,
        14,
    );
    std::thread::sleep(Duration::from_secs(1));

    // Scale 1 -> 4: each pod gets traffic only once ready.
    for i in 1..4 {
        let c = server_counters(&mut servers[i]);
        assert_eq!(
            c.http_connections, 0,
            "pod{i} accepted connections before its first readiness"
        );
        states[i].1 = Ready;
        dp.upsert_service(&web(&lab, &states)).unwrap();
        // Ready: it gets new connections (awaited, not assumed from a rate and a sleep).
        wait_until(&format!("pod{i} to get a connection once ready"), || {
            server_counters(&mut servers[i]).http_connections > 0
        });
    }
    assert!(
        server_counters(&mut servers[0]).http_connections > 0,
        "pod0 got no connection while ready"
    );
    // Keep-alive connections opened now spread over the 4 pods (16 of them: the chance
    // that the two pods drained below hold none is 2^-16).
    let keep_alive_started = started.elapsed();
    let keep_alive = background_load(
        &lab,
        // Same frontend as the other load (see the reply-tuple clash in the README).
        SocketAddr::new(lab.node_addr().into(), NODE_PORT),
        ConnectionMode::KeepAlive,
        16,
        10,
    );
    std::thread::sleep(Duration::from_millis(500));

    // Readiness flip: not ready while others are -> no new connection.
    states[2].1 = NotServing;
    dp.upsert_service(&web(&lab, &states)).unwrap();
    wait_not_selectable(&dp, lab.backend_addr(2));
    // A connection chosen just before the update may still be accepted: the count is read
    // once it has stopped moving.
    let before = settled(|| server_counters(&mut servers[2]).http_connections);
    std::thread::sleep(Duration::from_secs(1));
    let after = server_counters(&mut servers[2]).http_connections;
    assert_eq!(before, after, "pod2 accepted connections while not ready");
    states[2].1 = Ready;
    dp.upsert_service(&web(&lab, &states)).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Scale 4 -> 2 through the drain handshake: terminating first, then (once no longer
    // selected) SIGTERM, then removal.
    for i in [3, 2] {
        states.iter_mut().find(|s| s.0 == i).unwrap().1 = ServingTerminating;
        dp.upsert_service(&web(&lab, &states)).unwrap();
        wait_not_selectable(&dp, lab.backend_addr(i));
        servers[i].signal(lab::Signal::SIGTERM).unwrap();
        let status = servers[i].wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "pod{i} drained and exited: {status:?}"
        );
        states.retain(|s| s.0 != i);
        dp.upsert_service(&web(&lab, &states)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let steps_done = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));

    let new_conn = new_conn.join().unwrap().unwrap();
    let keep_alive = keep_alive.join().unwrap().unwrap();
    println!("new connection per request: {new_conn}");
    println!("keep-alive: {keep_alive}");
    assert!(
        new_conn.duration > steps_done,
        "the new-connection load covered every step"
    );
    assert!(
        keep_alive_started + keep_alive.duration > steps_done,
        "the keep-alive load covered the drain"
    );
    for (what, r) in [("new connection", &new_conn), ("keep-alive", &keep_alive)] {
        assert_eq!(r.failures(), 0, "{what}: no request failed: {r}");
        assert!(r.sent > 1000, "{what}: {r}");
    }
    for gone in ["pod2", "pod3"] {
        assert!(
            new_conn.responders.contains_key(gone),
            "{gone} served new connections before it drained"
        );
    }
    assert!(
        keep_alive.responders.contains_key("pod2") || keep_alive.responders.contains_key("pod3"),
        "a drained pod held keep-alive connections: {keep_alive}"
    );
    dp.purge_stale().unwrap();
    lab.assert_no_checksum_errors();
}

/// Polls `done` every 50 ms until it holds, for at most 10 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `read` once two reads 100 ms apart agree (within 10 s).
fn settled(mut read: impl FnMut() -> u64) -> u64 {
    let mut last = read();
    wait_until("a counter to stop moving", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        std::mem::replace(&mut last, now) == now
    });
    last
}

#[test]
fn netns_four_ready_backends_share_new_connections() {
    let lab = lab(4);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    let all: Vec<_> = (0..4).map(|i| (i, EndpointState::Ready)).collect();
    dp.upsert_service(&web(&lab, &all)).unwrap();
    let r = load_from_client(
        &lab,
        SocketAddr::new(VIP.into(), 80),
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        400,
        4,
    );
    assert_eq!(r.outcomes.ok, 400, "{r}");
    assert_eq!(r.responders.len(), 4, "{r}");
    for (pod, n) in &r.responders {
        let share = *n as f64 / 400.0;
        assert!(
            (0.15..=0.35).contains(&share),
            "{pod} got {:.1}% of new connections: {r}",
            share * 100.0
        );
    }
    lab.assert_no_checksum_errors();
}

#[test]
fn netns_udp_flow_moves_within_a_second_when_its_backend_is_removed() {
    let lab = lab(3);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    let vip = SocketAddr::new(VIP.into(), 53);
    let spec = |pods: &[usize]| ServiceSpec {
        name: "default/dns:dns".into(),
        protocol: Protocol::Udp,
        frontends: vec![Frontend::Address(vip)],
        backends: pods
            .iter()
            .map(|&i| {
                BackendSpec::ready(SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), UDP_PORT))
            })
            .collect(),
        affinity: None,
        ..Default::default()
    };
    dp.upsert_service(&spec(&[0, 1, 2])).unwrap();
    let sock = lab
        .client()
        .enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(vip).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .unwrap();
    let ask = |sock: &UdpSocket| -> Option<String> {
        sock.send(b"q").ok()?;
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let first = ask(&sock).expect("an answer");
    for _ in 0..10 {
        assert_eq!(
            ask(&sock).as_deref(),
            Some(first.as_str()),
            "one flow, one backend"
        );
    }
    let gone: usize = first.trim_start_matches("pod").parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    dp.upsert_service(&spec(&rest)).unwrap();
    let removed_at = Instant::now();
    let mut answers = BTreeMap::new();
    let mut moved_after = None;
    while removed_at.elapsed() < Duration::from_secs(2) {
        if let Some(who) = ask(&sock) {
            if who != first && moved_after.is_none() {
                moved_after = Some(removed_at.elapsed());
            }
            *answers.entry(who).or_insert(0u32) += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved_after = moved_after.expect("the flow moved to another backend");
    assert!(
        moved_after < Duration::from_secs(1),
        "moved after {moved_after:?}"
    );
    assert!(
        !answers.contains_key(&first),
        "the removed backend answered again: {answers:?}"
    );
}

/// Path MTU discovery through a NodePort: the node's route to the pod allows only 1280 bytes,
/// so the node answers the client's full-size segments with ICMP "fragmentation needed"
/// quoting client -> backend. Only if TC translates the quote to client -> NodePort does the
/// client's TCP find the socket, lower its path MTU and get 64 KiB through; otherwise the
/// big segments are retransmitted into a black hole and the transfer times out.
#[test]
fn netns_icmp_path_mtu_discovery_works_through_a_nodeport() {
    let lab = lab(1);
    let _servers = servers(&lab);
    let mut dp = dataplane(&lab);
    let route = format!("{}/32", lab.backend_addr(0));
    lab.node()
        .run(
            "ip",
            [
                "route",
                "replace",
                &route,
                "dev",
                &lab.node_pod_link(0),
                "mtu",
                // Locked: the forwarding path (the kernel's and bpf_fib_lookup's) only
                // honours a route MTU that is locked (or with ip_forward_use_pmtu).
                "lock",
                "1280",
            ],
        )
        .expect("route mtu");
    dp.upsert_service(&ServiceSpec {
        name: "default/echo:tcp".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::NodePort(30900)],
        backends: vec![BackendSpec::ready(SocketAddr::new(
            IpAddr::V4(lab.backend_addr(0)),
            TCP_PORT,
        ))],
        affinity: None,
        ..Default::default()
    })
    .unwrap();
    let target = SocketAddr::new(lab.node_addr().into(), 30900);
    let received = lab
        .client()
        .enter(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
                .expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let payload = vec![b'x'; 64 * 1024];
            let writer = {
                let mut w = s.try_clone().unwrap();
                std::thread::spawn(move || w.write_all(&payload))
            };
            // The server echoes every byte (with a short prefix per chunk).
            let mut got = 0usize;
            let mut buf = [0u8; 16384];
            while got < 64 * 1024 {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += buf[..n].iter().filter(|&&b| b == b'x').count(),
                    Err(e) => panic!("transfer stalled after {got} bytes: {e}"),
                }
            }
            writer.join().unwrap().expect("write");
            got
        })
        .unwrap();
    assert_eq!(received, 64 * 1024);
    let reasons: Vec<_> = dp
        .reasons()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(
        dp.reason(lb_userspace::Reason::TcIcmpErrorTranslated)
            .unwrap()
            > 0,
        "the ICMP error was translated: {reasons:?}"
    );
    lab.assert_no_checksum_errors();
}
