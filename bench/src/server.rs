//! The lab backend server (`lab-server`).
//!
//! It answers with its name, so a client can tell which backend served it:
//! - HTTP/1.1 with keep-alive: `GET` (any path) gets `200` with body `NAME\n`; `HEAD` the same
//!   head without body; other methods `405`.
//! - raw TCP: every chunk read is answered with `NAME:` followed by the chunk.
//! - UDP: every datagram is answered with `NAME:` followed by the payload.
//!
//! It counts accepted connections and requests. On shutdown it drains: each listener takes the
//! connections the kernel already completed, then closes (new connections are refused), each
//! open connection answers its next request with `Connection: close` (raw TCP: answers the
//! next chunk, then closes), and the server waits up to the drain timeout for connections to
//! finish before closing the rest. UDP is answered until the end of the drain. The HTTP side
//! is [`crate::serve`], shared with the demo's bootcamp pods.

use crate::lifecycle::{Phase, linger_close, reached};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::serve::{self, Answer, Request, response};
use std::borrow::Cow;

/// How long a draining server waits for open connections by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// After answering with `Connection: close`, how long the server keeps reading (and
/// discarding) what the client still sends, so that closing does not reset the connection
/// under the response.
/// After the drain, how long connection tasks get to notice the stop.
const STOP_GRACE: Duration = Duration::from_secs(1);
const TCP_CHUNK: usize = 16 * 1024;
const MAX_DATAGRAM: usize = 64 * 1024;

/// What to listen on and what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Identity put in every answer.
    pub name: String,
    /// Addresses to listen on; every port is bound on each of them.
    pub bind: Vec<IpAddr>,
    /// HTTP ports (0: any free port).
    pub http_ports: Vec<u16>,
    /// Raw TCP ports (0: any free port).
    pub tcp_ports: Vec<u16>,
    /// UDP ports (0: any free port).
    pub udp_ports: Vec<u16>,
    /// Longest wait for open connections once draining.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// No ports, listening on 0.0.0.0, [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bind: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            http_ports: Vec::new(),
            tcp_ports: Vec::new(),
            udp_ports: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCounters {
    pub name: String,
    /// HTTP connections accepted.
    pub http_connections: u64,
    /// HTTP requests answered (parsed requests of any method).
    pub http_requests: u64,
    /// Raw TCP connections accepted.
    pub tcp_connections: u64,
    /// Raw TCP chunks answered.
    pub tcp_requests: u64,
    /// UDP datagrams answered.
    pub udp_requests: u64,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no port configured: give at least one HTTP, TCP or UDP port")]
    NoPorts,
    #[error("no address to bind configured")]
    NoBindAddress,
    #[error("cannot bind {protocol} on {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Default)]
struct Counts {
    http_connections: AtomicU64,
    http_requests: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_requests: AtomicU64,
    udp_requests: AtomicU64,
}

/// A handle on a server's live counters; cheap to clone.
#[derive(Debug, Clone)]
pub struct CounterHandle {
    name: Arc<str>,
    counts: Arc<Counts>,
}

impl CounterHandle {
    /// The counters now.
    pub fn snapshot(&self) -> ServerCounters {
        let c = &self.counts;
        ServerCounters {
            name: self.name.to_string(),
            http_connections: c.http_connections.load(Ordering::Relaxed),
            http_requests: c.http_requests.load(Ordering::Relaxed),
            tcp_connections: c.tcp_connections.load(Ordering::Relaxed),
            tcp_requests: c.tcp_requests.load(Ordering::Relaxed),
            udp_requests: c.udp_requests.load(Ordering::Relaxed),
        }
    }
}

/// Prebuilt answers.
#[derive(Debug)]
struct Answers {
    get: Vec<u8>,
    get_close: Vec<u8>,
    head: Vec<u8>,
    head_close: Vec<u8>,
    not_allowed: Vec<u8>,
    not_allowed_close: Vec<u8>,
    /// `NAME:`, the prefix of raw TCP and UDP answers.
    prefix: Vec<u8>,
}

impl Answers {
    fn new(name: &str) -> Self {
        let body = format!("{name}\n");
        let get = |close| response("200 OK", "text/plain", "", body.as_bytes(), true, close);
        let head = |close| response("200 OK", "text/plain", "", body.as_bytes(), false, close);
        let not_allowed = |close| {
            response(
                "405 Method Not Allowed",
                "text/plain",
                "Allow: GET, HEAD\r\n",
                b"method not allowed\n",
                true,
                close,
            )
        };
        Self {
            get: get(false),
            get_close: get(true),
            head: head(false),
            head_close: head(true),
            not_allowed: not_allowed(false),
            not_allowed_close: not_allowed(true),
            prefix: format!("{name}:").into_bytes(),
        }
    }
}

/// Any path: the name; prebuilt, so an answer is one write.
impl Answer for Answers {
    fn answer(&self, request: &Request<'_>, _phase: Phase, close: bool) -> Cow<'_, [u8]> {
        Cow::Borrowed(match (request.method, close) {
            (b"GET", false) => &self.get,
            (b"GET", true) => &self.get_close,
            (b"HEAD", false) => &self.head,
            (b"HEAD", true) => &self.head_close,
            (_, false) => &self.not_allowed,
            (_, true) => &self.not_allowed_close,
        })
    }
}

/// What serving tasks share.
#[derive(Debug)]
struct Context {
    answers: Answers,
    counts: Arc<Counts>,
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    http: Vec<TcpListener>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    counters: CounterHandle,
    answers: Answers,
    drain_timeout: Duration,
}

impl Server {
    /// Binds every listener; fails on the first that cannot be bound.
    pub async fn bind(cfg: &ServerConfig) -> Result<Self, ServerError> {
        if cfg.http_ports.is_empty() && cfg.tcp_ports.is_empty() && cfg.udp_ports.is_empty() {
            return Err(ServerError::NoPorts);
        }
        if cfg.bind.is_empty() {
            return Err(ServerError::NoBindAddress);
        }
        let (mut http, mut tcp, mut udp) = (Vec::new(), Vec::new(), Vec::new());
        for &ip in &cfg.bind {
            for &port in &cfg.http_ports {
                http.push(bind_tcp("HTTP", SocketAddr::new(ip, port)).await?);
            }
            for &port in &cfg.tcp_ports {
                tcp.push(bind_tcp("TCP", SocketAddr::new(ip, port)).await?);
            }
            for &port in &cfg.udp_ports {
                let addr = SocketAddr::new(ip, port);
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        protocol: "UDP",
                        addr,
                        source,
                    })?;
                udp.push(socket);
            }
        }
        Ok(Self {
            http,
            tcp,
            udp,
            counters: CounterHandle {
                name: cfg.name.as_str().into(),
                counts: Arc::default(),
            },
            answers: Answers::new(&cfg.name),
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// Bound HTTP addresses (useful with port 0).
    pub fn http_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.http.iter().map(TcpListener::local_addr).collect()
    }

    /// Bound raw TCP addresses.
    pub fn tcp_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.tcp.iter().map(TcpListener::local_addr).collect()
    }

    /// Bound UDP addresses.
    pub fn udp_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.udp.iter().map(UdpSocket::local_addr).collect()
    }

    /// A handle to read the counters while the server runs.
    pub fn counters(&self) -> CounterHandle {
        self.counters.clone()
    }

    /// Serves until `shutdown` completes, then drains (see the module documentation) and
    /// returns the final counters.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ServerCounters {
        let (phase_tx, phase) = watch::channel(Phase::Serving);
        // Every connection task holds a clone of `open`; `recv` on `all_closed` returns once
        // all of them are gone.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let ctx = Arc::new(Context {
            answers: self.answers,
            counts: Arc::clone(&self.counters.counts),
        });

        let mut acceptors = JoinSet::new();
        for (listeners, kind) in [(self.http, Stream::Http), (self.tcp, Stream::Tcp)] {
            for listener in listeners {
                acceptors.spawn(accept_loop(
                    listener,
                    kind,
                    Arc::clone(&ctx),
                    phase.clone(),
                    open.clone(),
                ));
            }
        }
        drop(open);
        let mut datagrams = JoinSet::new();
        for socket in self.udp {
            datagrams.spawn(serve_udp(socket, Arc::clone(&ctx), phase.clone()));
        }

        shutdown.await;
        phase_tx.send_replace(Phase::Draining);
        join_all(&mut acceptors).await;
        let _ = tokio::time::timeout(self.drain_timeout, all_closed.recv()).await;
        phase_tx.send_replace(Phase::Stopped);
        join_all(&mut datagrams).await;
        let _ = tokio::time::timeout(STOP_GRACE, all_closed.recv()).await;
        self.counters.snapshot()
    }
}

async fn bind_tcp(protocol: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            protocol,
            addr,
            source,
        })
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Http,
    Tcp,
}

async fn accept_loop(
    listener: TcpListener,
    kind: Stream,
    ctx: Arc<Context>,
    phase: watch::Receiver<Phase>,
    open: mpsc::Sender<()>,
) {
    serve::accept(listener, phase.clone(), |stream| {
        let (ctx, phase, open) = (Arc::clone(&ctx), phase.clone(), open.clone());
        match kind {
            Stream::Http => {
                ctx.counts.http_connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    serve::connection(stream, &ctx.answers, &ctx.counts.http_requests, phase).await;
                    drop(open);
                });
            }
            Stream::Tcp => {
                ctx.counts.tcp_connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_tcp(stream, ctx, phase, open));
            }
        }
    })
    .await;
}

async fn serve_tcp(
    mut stream: TcpStream,
    ctx: Arc<Context>,
    mut phase: watch::Receiver<Phase>,
    _open: mpsc::Sender<()>,
) {
    let mut buf = vec![0; TCP_CHUNK];
    let mut answer = Vec::with_capacity(ctx.answers.prefix.len() + TCP_CHUNK);
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => {
                    // The client is done sending: finish our side too.
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(n) => n,
                Err(_) => return,
            },
            () = reached(&mut phase, Phase::Stopped) => return,
        };
        ctx.counts.tcp_requests.fetch_add(1, Ordering::Relaxed);
        answer.clear();
        answer.extend_from_slice(&ctx.answers.prefix);
        answer.extend_from_slice(&buf[..n]);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if *phase.borrow() != Phase::Serving {
            linger_close(&mut stream, &mut phase).await;
            return;
        }
    }
}

async fn serve_udp(socket: UdpSocket, ctx: Arc<Context>, mut phase: watch::Receiver<Phase>) {
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut answer = Vec::with_capacity(ctx.answers.prefix.len() + MAX_DATAGRAM);
    loop {
        let (n, peer) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            () = reached(&mut phase, Phase::Stopped) => return,
        };
        ctx.counts.udp_requests.fetch_add(1, Ordering::Relaxed);
        answer.clear();
        answer.extend_from_slice(&ctx.answers.prefix);
        answer.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&answer, peer).await {
            tracing::debug!(error = %e, %peer, "UDP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_name_and_length() {
        let answers = Answers::new("pod-a");
        let http = |method: &[u8], close| {
            let request = Request {
                method,
                target: b"/any",
            };
            answers.answer(&request, Phase::Serving, close).into_owned()
        };
        assert_eq!(
            http(b"GET", false),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\npod-a\n"
        );
        let close = String::from_utf8(http(b"GET", true)).unwrap();
        assert!(close.contains("\r\nConnection: close\r\n") && close.ends_with("\r\n\r\npod-a\n"));
        assert!(http(b"HEAD", false).ends_with(b"\r\n\r\n"));
        let other = String::from_utf8(http(b"DELETE", false)).unwrap();
        assert!(other.starts_with("HTTP/1.1 405 ") && other.contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(answers.prefix, b"pod-a:");
    }
}
