//! The pod server of the walkthrough: what the tutorial's `kubernetes-bootcamp` image serves,
//! plus the probe and counter endpoints the lab's workload driver needs.
//!
//! HTTP/1.1 with keep-alive on one port:
//! - `GET /`: `200`, `Hello Kubernetes bootcamp! | Running on: <pod-name> | v=<N>\n`;
//! - `GET /ready`: `200` once started (after the configured startup delay), `503` before and
//!   while terminating: the readiness probe;
//! - `GET /stats`: `200`, [`Stats`] as JSON: connections accepted and requests answered
//!   since the start (the connection carrying this request included);
//! - `HEAD` of these: the same heads without bodies; other paths `404`, other methods `405`.
//!
//! Shutdown ([`Server::run`]'s future completes, e.g. on SIGTERM) drains gracefully: the
//! connections the kernel already completed are accepted and the listener closes (new
//! connections are refused from then on; [`Server::listener_closed`] completes), every open
//! connection answers its in-flight or next request with `Connection: close`, and the server
//! waits up to the drain timeout (5 s by default) for connections to finish before closing
//! the rest.
//!
//! Image versions: the tutorial's images `v1` and `v2` exist; any other version (the
//! tutorial's `v10`) is an image that cannot start ([`image_exists`]).

use bench::lifecycle::Phase;
use bench::serve::{self, Answer, Request, response};
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The first words of every `GET /` answer.
pub const GREETING: &str = "Hello Kubernetes bootcamp!";

/// Default longest wait for open connections once draining.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The image versions that exist (the tutorial's `v1` and `v2`).
pub const EXISTING_VERSIONS: [u32; 2] = [1, 2];

/// After the drain, how long connection tasks get to notice the stop.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Parses an image tag `vN` (e.g. `v2`) into `N`.
pub fn parse_version(tag: &str) -> Result<u32, String> {
    tag.strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("image version {tag:?} is not of the form vN (e.g. v1)"))
}

/// Whether the image of this version exists, i.e. whether a pod running it can start.
pub fn image_exists(version: u32) -> bool {
    EXISTING_VERSIONS.contains(&version)
}

/// The body of a `GET /` answer (with its final newline).
pub fn greeting(name: &str, version: u32) -> String {
    format!("{GREETING} | Running on: {name} | v={version}\n")
}

/// A `GET /` answer body (trimmed or not) split into (pod name, version), if it is one.
pub fn parse_greeting(body: &str) -> Option<(&str, u32)> {
    let rest = body.trim().strip_prefix(GREETING)?;
    let rest = rest.strip_prefix(" | Running on: ")?;
    let (name, version) = rest.rsplit_once(" | v=")?;
    Some((name, version.parse().ok()?))
}

/// What the server answers and how it shuts down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The pod name put in every greeting.
    pub name: String,
    /// The image version (`N` of `vN`).
    pub version: u32,
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// `/ready` answers `503` for this long after the start.
    pub startup_delay: Duration,
    /// Longest wait for open connections once draining.
    pub drain_timeout: Duration,
}

impl Config {
    /// Listens on `0.0.0.0:port`, ready at once, [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(name: impl Into<String>, version: u32, port: u16) -> Self {
        Self {
            name: name.into(),
            version,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            startup_delay: Duration::ZERO,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The counters `GET /stats` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The pod name.
    pub name: String,
    /// The image version tag (`v1`).
    pub version: String,
    /// TCP connections accepted since the start.
    pub connections_accepted: u64,
    /// Requests answered since the start (every path and status).
    pub requests: u64,
    /// Whether `/ready` answers `200` now.
    pub ready: bool,
    /// Whether the server is draining.
    pub terminating: bool,
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// What connection tasks share.
#[derive(Debug)]
struct Shared {
    name: String,
    version: u32,
    greeting: String,
    ready_at: Instant,
    counts: Counts,
}

impl Shared {
    fn stats(&self, phase: Phase) -> Stats {
        Stats {
            name: self.name.clone(),
            version: format!("v{}", self.version),
            connections_accepted: self.counts.connections.load(Ordering::Relaxed),
            requests: self.counts.requests.load(Ordering::Relaxed),
            ready: self.is_ready(phase),
            terminating: phase != Phase::Serving,
        }
    }

    fn is_ready(&self, phase: Phase) -> bool {
        phase == Phase::Serving && Instant::now() >= self.ready_at
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    drain_timeout: Duration,
    /// `true` once [`Server::run`] has closed the listener.
    listener_closed: watch::Sender<bool>,
}

impl Server {
    /// Binds the listener; the startup delay counts from here.
    pub async fn bind(cfg: &Config) -> io::Result<Self> {
        let listener = TcpListener::bind(cfg.listen).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                name: cfg.name.clone(),
                version: cfg.version,
                greeting: greeting(&cfg.name, cfg.version),
                ready_at: Instant::now() + cfg.startup_delay,
                counts: Counts::default(),
            }),
            drain_timeout: cfg.drain_timeout,
            listener_closed: watch::Sender::new(false),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Completes once [`run`](Server::run) has closed the listener after `shutdown` (new
    /// connections are refused from then on; open ones are still draining), or when the server
    /// is dropped without getting there. Take it before `run`.
    pub fn listener_closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.listener_closed.subscribe();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Serves until `shutdown` completes, then drains (see the module docs) and returns the
    /// final counters.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stats {
        let (phase_tx, phase) = watch::channel(Phase::Serving);
        // Every connection task holds a clone of `open`: `recv` on `all_closed` returns once
        // all of them are gone.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let acceptor = tokio::spawn(accept_loop(
            self.listener,
            Arc::clone(&self.shared),
            phase.clone(),
            open,
        ));
        shutdown.await;
        phase_tx.send_replace(Phase::Draining);
        if let Err(e) = acceptor.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        // The accept loop owned the listener: it is closed now.
        self.listener_closed.send_replace(true);
        let _ = tokio::time::timeout(self.drain_timeout, all_closed.recv()).await;
        phase_tx.send_replace(Phase::Stopped);
        let _ = tokio::time::timeout(STOP_GRACE, all_closed.recv()).await;
        self.shared.stats(Phase::Stopped)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    open: mpsc::Sender<()>,
) {
    serve::accept(listener, phase.clone(), |stream| {
        shared.counts.connections.fetch_add(1, Ordering::Relaxed);
        let (shared, phase, open) = (Arc::clone(&shared), phase.clone(), open.clone());
        tokio::spawn(async move {
            serve::connection(stream, &*shared, &shared.counts.requests, phase).await;
            drop(open);
        });
    })
    .await;
}

/// The routes: the greeting, the readiness probe, the counters.
impl Answer for Shared {
    fn answer(&self, request: &Request<'_>, phase: Phase, close: bool) -> Cow<'_, [u8]> {
        const TEXT: &str = "text/plain; charset=utf-8";
        let with_body = match request.method {
            b"GET" => true,
            b"HEAD" => false,
            _ => {
                return Cow::Owned(response(
                    "405 Method Not Allowed",
                    TEXT,
                    "",
                    b"method not allowed\n",
                    true,
                    close,
                ));
            }
        };
        let answer = |status, content_type, body: &[u8]| {
            Cow::Owned(response(status, content_type, "", body, with_body, close))
        };
        match request.path() {
            "/" => answer("200 OK", TEXT, self.greeting.as_bytes()),
            "/ready" if self.is_ready(phase) => answer("200 OK", TEXT, b"ready\n"),
            "/ready" if phase == Phase::Serving => {
                answer("503 Service Unavailable", TEXT, b"starting\n")
            }
            "/ready" => answer("503 Service Unavailable", TEXT, b"terminating\n"),
            "/stats" => {
                let mut body = serde_json::to_vec(&self.stats(phase)).unwrap_or_default();
                body.push(b'\n');
                answer("200 OK", "application/json", &body)
            }
            _ => answer("404 Not Found", TEXT, b"not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    fn head_end(buf: &[u8]) -> Option<usize> {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
    }

    #[test]
    fn versions_and_greetings() {
        assert_eq!(parse_version("v10"), Ok(10));
        assert!(parse_version("10").is_err() && parse_version("vx").is_err());
        assert!(image_exists(1) && image_exists(2) && !image_exists(10));
        let body = greeting("kubernetes-bootcamp-9bc58d867-j7852", 1);
        assert_eq!(
            body,
            "Hello Kubernetes bootcamp! | Running on: kubernetes-bootcamp-9bc58d867-j7852 | v=1\n"
        );
        assert_eq!(
            parse_greeting(&body),
            Some(("kubernetes-bootcamp-9bc58d867-j7852", 1))
        );
        assert_eq!(parse_greeting("pod0"), None);
    }

    /// One request on a fresh connection that the answer closes; returns the raw answer.
    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// One request on a kept connection; returns the raw answer (its head, then as many body
    /// bytes as `Content-Length` says).
    async fn ask_kept(s: &mut TcpStream, request: &str) -> String {
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            if let Some(end) = head_end(&buf) {
                let head = std::str::from_utf8(&buf[..end]).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .expect("a Content-Length")
                    .parse()
                    .unwrap();
                if buf.len() >= end + len {
                    return String::from_utf8(buf[..end + len].to_vec()).unwrap();
                }
            }
            let n = s.read_buf(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    fn stats_of(answer: &str) -> Stats {
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    /// The clock is paused: it moves only when the test advances it (a server serving a kept
    /// connection sleeps on nothing, so nothing advances it for us), and the delay is counted
    /// on that clock, so "1 ms before" and "at" the end of the startup delay are exact.
    #[tokio::test(start_paused = true)]
    async fn ready_answers_200_only_from_the_end_of_the_startup_delay() {
        let mut cfg = Config::new("pod-a", 1, 0);
        cfg.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let delay = Duration::from_millis(200);
        cfg.startup_delay = delay;
        let server = Server::bind(&cfg).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));

        let mut probe = TcpStream::connect(addr).await.unwrap();
        let ready = "GET /ready HTTP/1.1\r\n\r\n";
        let starting = ask_kept(&mut probe, ready).await;
        assert!(
            starting.starts_with("HTTP/1.1 503") && starting.ends_with("\r\n\r\nstarting\n"),
            "{starting}"
        );
        tokio::time::advance(delay - Duration::from_millis(1)).await;
        let still = ask_kept(&mut probe, ready).await;
        assert!(
            still.starts_with("HTTP/1.1 503"),
            "1 ms before the delay: {still}"
        );
        let stats = stats_of(&ask_kept(&mut probe, "GET /stats HTTP/1.1\r\n\r\n").await);
        assert!(!stats.ready && !stats.terminating, "{stats:?}");

        tokio::time::advance(Duration::from_millis(1)).await;
        let now = ask_kept(&mut probe, ready).await;
        assert!(
            now.starts_with("HTTP/1.1 200") && now.ends_with("\r\n\r\nready\n"),
            "at the end of the delay: {now}"
        );
        let stats = stats_of(&ask_kept(&mut probe, "GET /stats HTTP/1.1\r\n\r\n").await);
        // One connection (the probe's), five requests (this one included).
        assert_eq!(
            (stats.ready, stats.connections_accepted, stats.requests),
            (true, 1, 5),
            "{stats:?}"
        );

        drop(probe);
        stop_tx.send(()).unwrap();
        let last = run.await.unwrap();
        assert_eq!((last.connections_accepted, last.requests), (1, 5));
    }

    #[tokio::test]
    async fn serves_counts_and_drains() {
        let mut cfg = Config::new("pod-a", 2, 0);
        cfg.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        // Long enough that the drain never ends by its timeout while the test still uses the
        // kept connection: it ends when that connection closes.
        cfg.drain_timeout = Duration::from_secs(60);
        let server = Server::bind(&cfg).await.unwrap();
        let addr = server.local_addr().unwrap();
        let listener_closed = server.listener_closed();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));

        // No startup delay: ready at once. Each `ask` is one connection and one request.
        let close = "Connection: close\r\n\r\n";
        let ready = ask(addr, &format!("GET /ready HTTP/1.1\r\n{close}")).await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        let hello = ask(addr, &format!("GET / HTTP/1.1\r\n{close}")).await;
        assert!(hello.ends_with("Running on: pod-a | v=2\n"), "{hello}");

        // A keep-alive connection answers, then gets `Connection: close` once draining.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        let first = ask_kept(&mut kept, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(
            first.starts_with("HTTP/1.1 200") && !first.contains("Connection: close"),
            "{first}"
        );

        let stats = stats_of(&ask(addr, &format!("GET /stats HTTP/1.1\r\n{close}")).await);
        // The probe, the greeting, the kept connection and this one.
        assert_eq!(
            (stats.connections_accepted, stats.requests),
            (4, 4),
            "{stats:?}"
        );
        assert!(stats.ready && !stats.terminating);

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), listener_closed)
            .await
            .expect("the listener closes once the drain begins");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "new connections are refused"
        );
        kept.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = String::new();
        kept.read_to_string(&mut rest).await.unwrap();
        assert!(
            rest.contains("Connection: close") && rest.ends_with("v=2\n"),
            "{rest}"
        );
        drop(kept);
        let last = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the drain ends once the kept connection is closed")
            .unwrap();
        assert_eq!((last.connections_accepted, last.requests), (4, 5));
        assert!(last.terminating);
    }
}
