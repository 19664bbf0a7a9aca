//! One load worker: claims requests from the shared schedule, sends them over its own
//! connection (or socket), and tallies their outcomes (for the whole run, for the second they
//! were sent in, and on the live counters).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::{Instant, sleep_until, timeout};

use super::progress::Live;
use super::report::{Outcome, Tally, responder_key};
use super::timeline::{self, Recorder};
use super::{Config, ConnectionMode, LoadError, Protocol};
use crate::http;

/// Free space ensured in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// Largest reply (HTTP body or raw TCP reply) accepted; larger is a bad response.
const MAX_REPLY: usize = 16 * 1024 * 1024;
/// Receive buffer for one UDP datagram.
const MAX_DATAGRAM: usize = 64 * 1024;

/// State shared by all workers of a run.
pub(super) struct Shared {
    cfg: Config,
    kind: Kind,
    /// Bytes written for every request: the HTTP request, or the raw payload.
    request: Vec<u8>,
    idempotent: bool,
    start: Instant,
    deadline: Instant,
    next_request: AtomicU64,
    next_source: AtomicUsize,
    pub(super) live: Arc<Live>,
    pub(super) timeline: Arc<timeline::Sink>,
}

/// The protocol, reduced to what the request loop dispatches on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Http,
    Tcp { reply_bytes: Option<usize> },
    Udp,
}

impl Shared {
    pub(super) fn new(cfg: Config, live: Arc<Live>) -> Result<Self, LoadError> {
        let start = Instant::now();
        let deadline = start
            .checked_add(cfg.max_duration)
            .ok_or(LoadError::DurationTooLong(cfg.max_duration))?;
        let (kind, request, idempotent) = match &cfg.protocol {
            Protocol::Http { path, host } => {
                let host = host.clone().unwrap_or_else(|| cfg.target.to_string());
                let close = match cfg.mode {
                    ConnectionMode::NewConnectionPerRequest => "Connection: close\r\n",
                    ConnectionMode::KeepAlive => "",
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-load\r\n\
                     Accept: */*\r\n{close}\r\n"
                );
                // GET is idempotent.
                (Kind::Http, request.into_bytes(), true)
            }
            Protocol::Tcp {
                payload,
                reply_bytes,
                idempotent,
            } => (
                Kind::Tcp {
                    reply_bytes: *reply_bytes,
                },
                payload.clone(),
                *idempotent,
            ),
            Protocol::Udp {
                payload,
                idempotent,
            } => (Kind::Udp, payload.clone(), *idempotent),
        };
        Ok(Self {
            cfg,
            kind,
            request,
            idempotent,
            start,
            deadline,
            next_request: AtomicU64::new(0),
            next_source: AtomicUsize::new(0),
            live,
            timeline: Arc::default(),
        })
    }

    /// Time since the run started.
    pub(super) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Claims the next request of the run. `None`: the run is over (count or time bound).
    /// `Some(Some(at))`: send it at `at` (paced runs; `at` may have passed already when every
    /// worker was busy). `Some(None)`: send it now.
    fn claim(&self) -> Option<Option<Instant>> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        if index >= self.cfg.max_requests {
            return None;
        }
        let Some(rate) = self.cfg.rate else {
            return Some(None);
        };
        let offset = Duration::try_from_secs_f64(index as f64 / rate).ok()?;
        let at = self.start.checked_add(offset)?;
        (at < self.deadline).then_some(Some(at))
    }

    /// The source address for the next new connection, round-robin.
    fn source_ip(&self) -> Option<IpAddr> {
        let ips = &self.cfg.source_ips;
        if ips.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed) % ips.len();
        Some(ips[i])
    }
}

enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// Where a successful reply's bytes are.
enum Reply {
    /// In the worker's read buffer.
    Buf(Range<usize>),
    /// In the worker's decoded-body buffer (chunked HTTP).
    Decoded,
}

/// A failed attempt.
#[derive(Debug, Clone, Copy)]
struct Failure {
    outcome: Outcome,
    /// Some reply byte had arrived when it failed.
    reply_started: bool,
}

impl Failure {
    fn io(error: &io::Error, reply_started: bool) -> Self {
        Self {
            outcome: Outcome::from_io_error(error),
            reply_started,
        }
    }

    fn eof(reply_started: bool) -> Self {
        Self {
            outcome: Outcome::Reset,
            reply_started,
        }
    }

    fn bad_response() -> Self {
        Self {
            outcome: Outcome::BadResponse,
            reply_started: true,
        }
    }

    fn timeout() -> Self {
        Self {
            outcome: Outcome::Timeout,
            reply_started: false,
        }
    }

    /// The connection was found dead before the request got any answer: safe to send an
    /// idempotent request again on a new connection.
    fn connection_was_dead(&self) -> bool {
        !self.reply_started && matches!(self.outcome, Outcome::Refused | Outcome::Reset)
    }
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    keep_alive: bool,
    /// The kept connection (keep-alive mode only); taken out while a request uses it and put
    /// back only after a complete, reusable reply.
    conn: Option<Conn>,
    /// Read buffer, reused across requests.
    buf: Vec<u8>,
    /// Decoded chunked body, reused across requests.
    body: Vec<u8>,
    tally: Tally,
    timeline: Recorder,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            keep_alive: shared.cfg.mode == ConnectionMode::KeepAlive,
            conn: None,
            buf: Vec::new(),
            body: Vec::new(),
            tally: Tally::default(),
            timeline: Recorder::new(Arc::clone(&shared.timeline)),
            shared,
        }
    }

    /// Sends requests until the run is over. Latency runs from the scheduled time in a paced
    /// run (so waiting for this worker to be free counts), else from the send.
    pub(super) async fn run(mut self) -> Tally {
        while let Some(at) = self.shared.claim() {
            if let Some(at) = at {
                sleep_until(at).await;
            }
            let now = Instant::now();
            let since = at.unwrap_or(now);
            self.tally.record_sent();
            self.timeline.sent(now.duration_since(self.shared.start));
            self.shared.live.sent();
            let (result, retried) = self.request().await;
            self.finish(result, retried, since.elapsed());
        }
        self.tally
    }

    /// Sends one request, retrying it once if it found its reused connection dead.
    async fn request(&mut self) -> (Result<Reply, Failure>, bool) {
        let reused = self.conn.is_some();
        match self.attempt().await {
            Err(failure) if reused && self.shared.idempotent && failure.connection_was_dead() => {
                (self.attempt().await, true)
            }
            result => (result, false),
        }
    }

    fn finish(&mut self, result: Result<Reply, Failure>, retried: bool, latency: Duration) {
        match result {
            Ok(reply) => {
                let bytes = match reply {
                    Reply::Buf(range) => &self.buf[range],
                    Reply::Decoded => &self.body[..],
                };
                if let Some(expect) = &self.shared.cfg.expect
                    && !http::contains(bytes, expect.as_bytes())
                {
                    self.conn = None;
                    self.failed(Outcome::BadResponse, retried);
                } else {
                    let text = String::from_utf8_lossy(bytes);
                    let responder = responder_key(&text);
                    self.tally.record_ok(latency, responder, retried);
                    self.timeline.ok(latency, responder);
                    self.shared.live.ended(true);
                }
            }
            Err(failure) => self.failed(failure.outcome, retried),
        }
    }

    fn failed(&mut self, outcome: Outcome, retried: bool) {
        self.tally.record_failure(outcome, retried);
        self.timeline.failure(outcome);
        self.shared.live.ended(false);
    }

    /// One attempt, bounded by the timeout. A failed attempt never leaves a connection behind.
    async fn attempt(&mut self) -> Result<Reply, Failure> {
        let limit = self.shared.cfg.timeout;
        let exchange = async {
            match self.shared.kind {
                Kind::Http => self.http().await,
                Kind::Tcp { reply_bytes } => self.tcp(reply_bytes).await,
                Kind::Udp => self.udp().await,
            }
        };
        timeout(limit, exchange)
            .await
            .unwrap_or_else(|_elapsed| Err(Failure::timeout()))
    }

    async fn http(&mut self) -> Result<Reply, Failure> {
        let mut stream = self.take_or_connect_tcp().await?;
        self.buf.clear();
        stream
            .write_all(&self.shared.request)
            .await
            .map_err(|e| Failure::io(&e, false))?;

        // The head, skipping interim (1xx) responses.
        let mut scanned = 0;
        let mut started = false;
        let (head, head_len) = loop {
            if let Some(end) = http::head_end(&self.buf, scanned) {
                let head = http::parse_response_head(&self.buf[..end])
                    .map_err(|_| Failure::bad_response())?;
                if (100..200).contains(&head.status) && head.status != 101 {
                    self.buf.drain(..end);
                    scanned = 0;
                    continue;
                }
                break (head, end);
            }
            if self.buf.len() > http::MAX_HEAD {
                return Err(Failure::bad_response());
            }
            scanned = self.buf.len().saturating_sub(3);
            read_more(&mut stream, &mut self.buf, started).await?;
            started = true;
        };
        if !(200..300).contains(&head.status) {
            return Err(Failure::bad_response());
        }

        let framing = head.framing;
        let mut persistent = head.persistent;
        let reply = if head.status == 204 || head.status == 304 {
            persistent &= self.buf.len() == head_len;
            Reply::Buf(head_len..head_len)
        } else if framing.chunked {
            loop {
                match http::decode_chunked(&self.buf[head_len..], &mut self.body, MAX_REPLY) {
                    Ok(Some(used)) => {
                        persistent &= self.buf.len() == head_len + used;
                        break Reply::Decoded;
                    }
                    Ok(None) => read_more(&mut stream, &mut self.buf, true).await?,
                    Err(_) => return Err(Failure::bad_response()),
                }
            }
        } else if let (Some(length), false) = (framing.content_length, framing.transfer_encoding) {
            if length > MAX_REPLY {
                return Err(Failure::bad_response());
            }
            let end = head_len + length;
            while self.buf.len() < end {
                read_more(&mut stream, &mut self.buf, true).await?;
            }
            // Bytes beyond the response mean the connection is out of step.
            persistent &= self.buf.len() == end;
            Reply::Buf(head_len..end)
        } else {
            // No length: the body runs to EOF.
            read_to_eof(&mut stream, &mut self.buf, true).await?;
            persistent = false;
            Reply::Buf(head_len..self.buf.len())
        };
        if self.keep_alive && persistent {
            self.conn = Some(Conn::Tcp(stream));
        }
        Ok(reply)
    }

    async fn tcp(&mut self, reply_bytes: Option<usize>) -> Result<Reply, Failure> {
        let mut stream = self.take_or_connect_tcp().await?;
        self.buf.clear();
        stream
            .write_all(&self.shared.request)
            .await
            .map_err(|e| Failure::io(&e, false))?;
        match reply_bytes {
            Some(length) => {
                while self.buf.len() < length {
                    let started = !self.buf.is_empty();
                    read_more(&mut stream, &mut self.buf, started).await?;
                }
                if self.keep_alive && self.buf.len() == length {
                    self.conn = Some(Conn::Tcp(stream));
                }
                Ok(Reply::Buf(0..length))
            }
            None => {
                stream
                    .shutdown()
                    .await
                    .map_err(|e| Failure::io(&e, false))?;
                read_to_eof(&mut stream, &mut self.buf, false).await?;
                if self.buf.is_empty() {
                    return Err(Failure::eof(false));
                }
                Ok(Reply::Buf(0..self.buf.len()))
            }
        }
    }

    async fn udp(&mut self) -> Result<Reply, Failure> {
        let socket = match self.conn.take() {
            Some(Conn::Udp(socket)) => socket,
            _ => self.bind_udp().await.map_err(|e| Failure::io(&e, false))?,
        };
        socket
            .send(&self.shared.request)
            .await
            .map_err(|e| Failure::io(&e, false))?;
        if self.buf.len() != MAX_DATAGRAM {
            self.buf.resize(MAX_DATAGRAM, 0);
        }
        // On a connected socket an ICMP unreachable for the target surfaces here as
        // ECONNREFUSED.
        let n = socket
            .recv(&mut self.buf)
            .await
            .map_err(|e| Failure::io(&e, false))?;
        if self.keep_alive {
            self.conn = Some(Conn::Udp(socket));
        }
        Ok(Reply::Buf(0..n))
    }

    async fn take_or_connect_tcp(&mut self) -> Result<TcpStream, Failure> {
        if let Some(Conn::Tcp(stream)) = self.conn.take() {
            return Ok(stream);
        }
        self.connect_tcp().await.map_err(|e| Failure::io(&e, false))
    }

    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        let target = self.shared.cfg.target;
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.shared.source_ip() {
            bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn bind_udp(&self) -> io::Result<UdpSocket> {
        let target = self.shared.cfg.target;
        let ip = self.shared.source_ip().unwrap_or(if target.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        socket.connect(target).await?;
        Ok(socket)
    }
}

/// Reads more bytes into `buf`; EOF is a failure (`started`: some reply byte arrived before).
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    started: bool,
) -> Result<(), Failure> {
    match read_some(stream, buf).await {
        Ok(0) => Err(Failure::eof(started || !buf.is_empty())),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::io(&e, started || !buf.is_empty())),
    }
}

/// Reads until EOF, within [`MAX_REPLY`].
async fn read_to_eof(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    started: bool,
) -> Result<(), Failure> {
    loop {
        match read_some(stream, buf).await {
            Ok(0) => return Ok(()),
            Ok(_) if buf.len() > MAX_REPLY => return Err(Failure::bad_response()),
            Ok(_) => {}
            Err(e) => return Err(Failure::io(&e, started || !buf.is_empty())),
        }
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_RESERVE / 2 {
        buf.reserve(READ_RESERVE);
    }
    stream.read_buf(buf).await
}

/// Lets connect() pick the local port of a socket bound to a source address, so the port is
/// chosen per 4-tuple rather than reserved at bind time: the whole port range stays usable for
/// each target. Best effort: without it, bind() picks the port.
fn bind_address_no_port(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: the descriptor is a live socket owned by `socket` for the whole call, and
        // the option value points to a c_int whose size is passed along.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}
