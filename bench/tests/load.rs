//! The load generator against servers on 127.0.0.1: lab-server in-process for the normal
//! cases, and small purpose-built servers for each failure it must classify. Every server is
//! bound to port 0 and its socket kept for the test's life (never a port freed and bound
//! again); nothing waits on a sleep, and no test asserts a speed: timing checks are lower
//! bounds that follow from the schedule or from a server's injected delay.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::load::{self, Config, ConnectionMode, Live, Protocol, Report, Snapshot};
use bench::server::{Server, ServerConfig, ServerCounters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const MODES: [ConnectionMode; 2] = [
    ConnectionMode::NewConnectionPerRequest,
    ConnectionMode::KeepAlive,
];

/// A lab-server running in this process on ephemeral ports of 127.0.0.1.
struct Lab {
    http: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<ServerCounters>,
}

impl Lab {
    async fn start(name: &str) -> Self {
        let mut cfg = ServerConfig::new(name);
        cfg.bind = vec![LOCALHOST.into()];
        cfg.http_ports = vec![0];
        cfg.tcp_ports = vec![0];
        cfg.udp_ports = vec![0];
        let server = Server::bind(&cfg).await.expect("bind lab-server");
        let http = server.http_addrs().unwrap()[0];
        let tcp = server.tcp_addrs().unwrap()[0];
        let udp = server.udp_addrs().unwrap()[0];
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            http,
            tcp,
            udp,
            stop,
            task,
        }
    }

    async fn stop(self) -> ServerCounters {
        drop(self.stop);
        self.task.await.expect("lab-server task")
    }
}

fn config(target: SocketAddr, protocol: Protocol, mode: ConnectionMode, requests: u64) -> Config {
    let mut cfg = Config::new(target, protocol);
    cfg.mode = mode;
    cfg.concurrency = 4;
    cfg.max_requests = requests;
    cfg.max_duration = Duration::from_secs(10);
    cfg
}

/// Runs the load and checks what every run must hold: each request sent has exactly one
/// outcome, the live counters end equal to the report, and the timeline adds up to it.
async fn run(cfg: Config) -> Report {
    let live = Arc::new(Live::default());
    let report = load::run_with(cfg, Arc::clone(&live))
        .await
        .expect("valid config");
    assert_eq!(
        report.sent,
        report.outcomes.ok + report.failures(),
        "every request has exactly one outcome: {report}"
    );
    assert_eq!(
        live.snapshot(),
        Snapshot {
            sent: report.sent,
            ok: report.outcomes.ok,
            failures: report.failures()
        }
    );
    check_timeline(&report);
    report
}

fn check_timeline(report: &Report) {
    let t = &report.timeline;
    assert!(
        t.iter().enumerate().all(|(i, s)| s.second == i as u64),
        "one entry per second, in order: {t:?}"
    );
    let sum = |f: &dyn Fn(&load::Second) -> u64| t.iter().map(f).sum::<u64>();
    let o = &report.outcomes;
    assert_eq!(sum(&|s| s.sent), report.sent, "{t:?}");
    assert_eq!(sum(&|s| s.outcomes.ok), o.ok, "{t:?}");
    assert_eq!(sum(&|s| s.outcomes.refused), o.refused, "{t:?}");
    assert_eq!(sum(&|s| s.outcomes.reset), o.reset, "{t:?}");
    assert_eq!(sum(&|s| s.outcomes.timeout), o.timeout, "{t:?}");
    assert_eq!(sum(&|s| s.outcomes.bad_response), o.bad_response, "{t:?}");
    assert_eq!(sum(&|s| s.failures()), report.failures(), "{t:?}");
    let mut responders = BTreeMap::<String, u64>::new();
    for s in t {
        assert_eq!(s.responders.values().sum::<u64>(), s.outcomes.ok, "{s:?}");
        for (k, n) in &s.responders {
            *responders.entry(k.clone()).or_default() += n;
        }
    }
    assert_eq!(responders, report.responders);
    if report.sent > 0 {
        assert!(
            t.last().is_some_and(|s| s.sent > 0),
            "no trailing empty second"
        );
    }
}

fn responders(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(k, n)| (k.to_owned(), n)).collect()
}

/// A TCP port on which nothing listens, held for as long as the socket lives: bound but not
/// listening, so the kernel answers a SYN to it with a RST.
fn refusing_tcp_port() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((LOCALHOST, 0).into()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A UDP port held by a socket that is connected elsewhere, so no socket takes datagrams
/// from the load and the kernel answers them with ICMP port unreachable.
fn refusing_udp_port() -> (SocketAddr, std::net::UdpSocket) {
    let socket = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
    socket.connect((Ipv4Addr::new(127, 0, 0, 2), 9)).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A TCP server that hands every accepted connection to `handle`; counts connections.
async fn tcp_server<F, Fut>(handle: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(handle(stream));
        }
    });
    (addr, connections)
}

/// Reads one HTTP request head; false on EOF or error.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        let mut chunk = [0; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTP server answering every request with `response`, then closing the connection
/// after `per_connection` requests (without saying so unless `response` does).
async fn http_server(
    response: &'static [u8],
    per_connection: usize,
) -> (SocketAddr, Arc<AtomicU64>) {
    tcp_server(move |mut stream| async move {
        let mut buf = Vec::new();
        for _ in 0..per_connection {
            if !read_request(&mut stream, &mut buf).await
                || stream.write_all(response).await.is_err()
            {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ok_counts_are_exact_in_both_modes() {
    for mode in MODES {
        let lab = Lab::start("alpha").await;
        let report = run(config(lab.http, Protocol::http("/"), mode, 200)).await;
        assert_eq!(
            (report.sent, report.outcomes.ok, report.retried),
            (200, 200, 0),
            "{mode:?}: {report}"
        );
        assert_eq!(report.responders, responders(&[("alpha", 200)]));
        assert!(report.latency_us.max >= report.latency_us.p50 && report.latency_us.p50 > 0);
        let served = lab.stop().await;
        assert_eq!(served.http_requests, 200);
        match mode {
            ConnectionMode::NewConnectionPerRequest => assert_eq!(served.http_connections, 200),
            ConnectionMode::KeepAlive => assert!((1..=4).contains(&served.http_connections)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ok_counts_are_exact_in_both_modes() {
    for mode in MODES {
        let lab = Lab::start("alpha").await;
        let protocol = Protocol::tcp("ping", Some("alpha:ping".len()));
        let report = run(config(lab.tcp, protocol, mode, 100)).await;
        assert_eq!(
            (report.sent, report.outcomes.ok),
            (100, 100),
            "{mode:?}: {report}"
        );
        assert_eq!(report.responders, responders(&[("alpha:ping", 100)]));
        let served = lab.stop().await;
        assert_eq!(served.tcp_requests, 100);
        match mode {
            ConnectionMode::NewConnectionPerRequest => assert_eq!(served.tcp_connections, 100),
            ConnectionMode::KeepAlive => assert!((1..=4).contains(&served.tcp_connections)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reply_until_eof() {
    let lab = Lab::start("alpha").await;
    let protocol = Protocol::tcp("ping", None);
    let report = run(config(lab.tcp, protocol, ConnectionMode::KeepAlive, 20)).await;
    assert_eq!(report.outcomes.ok, 20, "{report}");
    assert_eq!(report.responders, responders(&[("alpha:ping", 20)]));
    let served = lab.stop().await;
    assert_eq!(
        served.tcp_connections, 20,
        "a reply up to EOF needs a connection per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_ok_counts_are_exact_in_both_modes() {
    for mode in MODES {
        let lab = Lab::start("alpha").await;
        let report = run(config(lab.udp, Protocol::udp("ping"), mode, 100)).await;
        assert_eq!(
            (report.sent, report.outcomes.ok),
            (100, 100),
            "{mode:?}: {report}"
        );
        assert_eq!(report.responders, responders(&[("alpha:ping", 100)]));
        assert_eq!(lab.stop().await.udp_requests, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_are_bound() {
    let lab = Lab::start("alpha").await;
    for (target, protocol) in [
        (lab.http, Protocol::http("/")),
        (lab.tcp, Protocol::tcp("ping", Some(10))),
        (lab.udp, Protocol::udp("ping")),
    ] {
        for mode in MODES {
            let mut cfg = config(target, protocol.clone(), mode, 20);
            cfg.source_ips = vec![LOCALHOST.into()];
            let report = run(cfg).await;
            assert_eq!(report.outcomes.ok, 20, "{report}");
        }
    }
    lab.stop().await;
}

#[tokio::test]
async fn refused_when_nothing_listens() {
    let (closed, _held) = refusing_tcp_port();
    for mode in MODES {
        for protocol in [Protocol::http("/"), Protocol::tcp("ping", Some(4))] {
            let report = run(config(closed, protocol, mode, 5)).await;
            assert_eq!((report.sent, report.outcomes.refused), (5, 5), "{report}");
            assert_eq!(report.retried, 0);
        }
    }
}

#[tokio::test]
async fn udp_refused_on_icmp_port_unreachable() {
    let (closed, _held) = refusing_udp_port();
    for mode in MODES {
        let mut cfg = config(closed, Protocol::udp("ping"), mode, 5);
        cfg.concurrency = 1;
        let report = run(cfg).await;
        assert_eq!((report.sent, report.outcomes.refused), (5, 5), "{report}");
    }
}

#[tokio::test]
async fn timeout_when_udp_server_never_answers() {
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let mut cfg = config(
        silent.local_addr().unwrap(),
        Protocol::udp("ping"),
        ConnectionMode::KeepAlive,
        3,
    );
    cfg.concurrency = 3;
    cfg.timeout = Duration::from_millis(150);
    let report = run(cfg).await;
    assert_eq!((report.sent, report.outcomes.timeout), (3, 3), "{report}");
    assert!(report.duration >= Duration::from_millis(150), "{report}");
    assert_eq!(report.latency_us.max, 0, "latency is of ok requests only");
    drop(silent);
}

#[tokio::test]
async fn bad_response_on_error_status_garbage_or_unexpected_body() {
    let (error, _) = http_server(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n",
        usize::MAX,
    )
    .await;
    let (garbage, _) = http_server(b"garbage\r\n\r\n", usize::MAX).await;
    for target in [error, garbage] {
        for mode in MODES {
            let report = run(config(target, Protocol::http("/"), mode, 10)).await;
            assert_eq!(
                (report.sent, report.outcomes.bad_response),
                (10, 10),
                "{report}"
            );
            assert!(report.responders.is_empty());
        }
    }

    let lab = Lab::start("v=1").await;
    let mut cfg = config(lab.http, Protocol::http("/"), ConnectionMode::KeepAlive, 10);
    cfg.expect = Some("v=2".into());
    let report = run(cfg.clone()).await;
    assert_eq!(report.outcomes.bad_response, 10, "{report}");
    cfg.expect = Some("v=1".into());
    assert_eq!(run(cfg).await.outcomes.ok, 10);
    lab.stop().await;
}

#[tokio::test]
async fn reset_when_server_closes_without_response() {
    let (addr, _) = http_server(b"", 0).await;
    for mode in MODES {
        let report = run(config(addr, Protocol::http("/"), mode, 10)).await;
        assert_eq!((report.sent, report.outcomes.reset), (10, 10), "{report}");
        assert_eq!(report.retried, 0, "a fresh connection is never retried");
    }
}

#[tokio::test]
async fn reset_when_reply_is_cut_short() {
    let (addr, _) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 1).await;
    let report = run(config(
        addr,
        Protocol::http("/"),
        ConnectionMode::KeepAlive,
        5,
    ))
    .await;
    assert_eq!(report.outcomes.reset, 5, "{report}");
}

#[tokio::test]
async fn keep_alive_request_on_a_connection_closed_while_idle_is_retried() {
    // Every connection serves one request and is then closed by the server while idle, so
    // each request after the first finds its reused connection dead.
    let (addr, connections) =
        http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", 1).await;
    let mut cfg = config(addr, Protocol::http("/"), ConnectionMode::KeepAlive, 10);
    cfg.concurrency = 1;
    let report = run(cfg.clone()).await;
    assert_eq!((report.outcomes.ok, report.retried), (10, 9), "{report}");
    assert_eq!(report.responders, responders(&[("ok", 10)]));
    assert_eq!(connections.load(Ordering::Relaxed), 10);

    cfg.mode = ConnectionMode::NewConnectionPerRequest;
    let report = run(cfg).await;
    assert_eq!((report.outcomes.ok, report.retried), (10, 0), "{report}");
}

#[tokio::test]
async fn raw_tcp_is_retried_only_when_idempotent() {
    // Answers one request per connection, then closes.
    let (addr, _) = tcp_server(|mut stream| async move {
        let mut buf = [0; 16];
        if let Ok(1..) = stream.read(&mut buf).await {
            let _ = stream.write_all(b"pong").await;
        }
    })
    .await;
    let mut cfg = config(
        addr,
        Protocol::tcp("ping", Some(4)),
        ConnectionMode::KeepAlive,
        10,
    );
    cfg.concurrency = 1;
    let report = run(cfg.clone()).await;
    // Requests alternate: ok on a new connection, reset on its reuse.
    assert_eq!(
        (report.outcomes.ok, report.outcomes.reset, report.retried),
        (5, 5, 0),
        "{report}"
    );

    cfg.protocol = Protocol::Tcp {
        payload: b"ping".to_vec(),
        reply_bytes: Some(4),
        idempotent: true,
    };
    let report = run(cfg).await;
    assert_eq!((report.outcomes.ok, report.retried), (10, 9), "{report}");
}

#[tokio::test]
async fn connection_close_from_the_server_is_honored() {
    let (addr, connections) = http_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        1,
    )
    .await;
    let mut cfg = config(addr, Protocol::http("/"), ConnectionMode::KeepAlive, 10);
    cfg.concurrency = 1;
    let report = run(cfg).await;
    assert_eq!((report.outcomes.ok, report.retried), (10, 0), "{report}");
    assert_eq!(connections.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn chunked_bodies_and_interim_responses_are_read() {
    let (addr, connections) = http_server(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\npod-\r\n1\r\nb\r\n0\r\n\r\n",
        usize::MAX,
    )
    .await;
    let mut cfg = config(addr, Protocol::http("/"), ConnectionMode::KeepAlive, 10);
    cfg.concurrency = 1;
    let report = run(cfg).await;
    assert_eq!(report.responders, responders(&[("pod-b", 10)]), "{report}");
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "the connection is reused"
    );
}

#[tokio::test]
async fn responders_are_counted_per_identity() {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0; 64];
        for i in 0.. {
            let Ok((_, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let name = ["a\n", " b", "c"][i % 3];
            let _ = socket.send_to(name.as_bytes(), peer).await;
        }
    });
    let mut cfg = config(addr, Protocol::udp("who"), ConnectionMode::KeepAlive, 30);
    cfg.concurrency = 1;
    let report = run(cfg).await;
    assert_eq!(
        report.responders,
        responders(&[("a", 10), ("b", 10), ("c", 10)]),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_bound_stops_a_huge_count() {
    let lab = Lab::start("alpha").await;
    let mut cfg = config(
        lab.http,
        Protocol::http("/"),
        ConnectionMode::KeepAlive,
        u64::MAX,
    );
    cfg.concurrency = 2;
    cfg.max_duration = Duration::from_millis(300);
    let started = Instant::now();
    let report = run(cfg).await;
    let elapsed = started.elapsed();
    assert!(report.duration >= Duration::from_millis(300) && report.duration <= elapsed);
    assert!(
        report.sent > 0 && report.outcomes.ok == report.sent,
        "{report}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_paces_requests() {
    let lab = Lab::start("alpha").await;
    let mut cfg = config(
        lab.http,
        Protocol::http("/"),
        ConnectionMode::KeepAlive,
        u64::MAX,
    );
    cfg.concurrency = 2;
    cfg.rate = Some(100.0);
    cfg.max_duration = Duration::from_millis(500);
    let report = run(cfg.clone()).await;
    // Requests are scheduled at i/rate: at most 50 fall before the deadline (fewer if the
    // machine fell behind; how many is not this test's business).
    assert!((1..=50).contains(&report.sent), "{report}");
    assert_eq!(report.outcomes.ok, report.sent);

    cfg.max_requests = 20;
    cfg.max_duration = Duration::from_secs(10);
    let report = run(cfg).await;
    assert_eq!(report.outcomes.ok, 20);
    // The last request is scheduled at 19/rate: the run cannot be shorter.
    assert!(report.duration >= Duration::from_millis(190), "{report}");
    lab.stop().await;
}

/// An HTTP server that answers each request after `delay`, one connection at a time per
/// connection (keep-alive).
async fn slow_http_server(delay: Duration) -> SocketAddr {
    tcp_server(move |mut stream| async move {
        let mut buf = Vec::new();
        while read_request(&mut stream, &mut buf).await {
            tokio::time::sleep(delay).await;
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
            if stream.write_all(reply).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_the_queueing_a_slow_server_causes() {
    // One request in flight at a time; the server takes at least DELAY for each.
    const DELAY: Duration = Duration::from_millis(40);
    const N: u64 = 20;
    let addr = slow_http_server(DELAY).await;
    let mut cfg = config(addr, Protocol::http("/"), ConnectionMode::KeepAlive, N);
    cfg.concurrency = 1;

    // Closed loop: each request waits only for itself.
    let closed = run(cfg.clone()).await;
    assert_eq!(closed.outcomes.ok, N, "{closed}");
    let us = |d: Duration| d.as_micros() as u64;
    assert!(closed.latency_us.p50 >= us(DELAY), "{closed}");

    // Open loop at 100/s, every 10 ms, which one worker cannot keep: request i is scheduled at
    // 10 ms * i but cannot end before (i + 1) * DELAY, so its latency from the schedule is at
    // least DELAY + i * (DELAY - 10 ms), however fast the machine. A tool measuring from the
    // send would report about DELAY for every request (coordinated omission).
    cfg.rate = Some(100.0);
    let open = run(cfg).await;
    assert_eq!(open.outcomes.ok, N, "{open}");
    let floor = |i: u32| DELAY + (DELAY - Duration::from_millis(10)) * i;
    // Nearest rank: p50 is the 10th of 20 latencies (i = 9), the max is i = 19.
    assert!(open.latency_us.p50 >= us(floor(9)), "{open}");
    assert!(open.latency_us.max >= us(floor(19)), "{open}");
    assert!(
        open.latency_us.p99 >= 15 * us(DELAY),
        "open-loop p99 counts the queue: {open} vs closed {closed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_are_counted_exactly_by_class() {
    // Connection k is answered by behaviour k % 5: ok, an error status, a RST in the middle of
    // the reply, a close without any reply, and no reply at all (until the client gives up).
    let next = Arc::new(AtomicU64::new(0));
    let (addr, connections) = tcp_server(move |mut stream| {
        let k = next.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut buf = Vec::new();
            if !read_request(&mut stream, &mut buf).await {
                return;
            }
            match k % 5 {
                0 => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .await;
                }
                1 => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
                2 => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
                        .await;
                    // Closing with a zero linger sends a RST; it does not block.
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                }
                3 => {}
                _ => {
                    // Hold the connection until the client closes it.
                    let _ = stream.read(&mut [0; 64]).await;
                }
            }
        }
    })
    .await;
    let mut cfg = config(
        addr,
        Protocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        25,
    );
    cfg.concurrency = 1;
    cfg.timeout = Duration::from_millis(200);
    let report = run(cfg).await;
    let o = &report.outcomes;
    assert_eq!(
        (
            report.sent,
            o.ok,
            o.bad_response,
            o.reset,
            o.timeout,
            o.refused
        ),
        (25, 5, 5, 10, 5, 0),
        "{report}"
    );
    assert!(o.other.is_empty() && report.retried == 0, "{report}");
    assert_eq!(report.responders, responders(&[("ok", 5)]));
    assert_eq!(connections.load(Ordering::Relaxed), 25);
}

#[tokio::test]
async fn invalid_config_is_an_error() {
    let mut cfg = config(
        SocketAddr::from((LOCALHOST, 9)),
        Protocol::http("/"),
        ConnectionMode::KeepAlive,
        1,
    );
    cfg.concurrency = 0;
    assert!(load::run(cfg).await.is_err());
}

#[test]
fn run_blocking_builds_its_own_runtime() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lab = runtime.block_on(Lab::start("alpha"));
    let mut cfg = config(lab.http, Protocol::http("/"), ConnectionMode::KeepAlive, 50);
    cfg.concurrency = 2;
    let report = std::thread::spawn(move || load::run_blocking(cfg))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(report.outcomes.ok, 50, "{report}");
    assert_eq!(runtime.block_on(lab.stop()).http_requests, 50);
}
