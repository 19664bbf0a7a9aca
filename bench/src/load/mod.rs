//! The load generator.
//!
//! A run sends requests of one [`Protocol`] to one target address from `concurrency`
//! workers, and always ends by itself: after [`Config::max_requests`] requests or once
//! [`Config::max_duration`] has passed, whichever comes first. Requests already in flight at
//! the deadline are completed (each is bounded by [`Config::timeout`], twice if retried), so a
//! run lasts at most `max_duration + 2 * timeout`.
//!
//! Two ways to send. *Closed loop* (no [`Config::rate`]): each of the `concurrency` workers
//! sends its next request as soon as its previous one ended, and latency is measured from the
//! send. *Open loop* (a rate): request `i` is scheduled at `start + i / rate` whatever the
//! server does, and its latency is measured from that *scheduled* time, so a slow server
//! shows as the queueing it causes instead of silently slowing the schedule down (no
//! coordinated omission). `concurrency` is then the most requests in flight: when all are
//! busy, the next request waits for a free worker and its wait is part of its latency.
//! Requests scheduled before the deadline that no worker could start before it are not sent
//! (a `sent` below `rate * max_duration` says the run fell behind).
//!
//! Every request is counted as it is sent ([`Report::sent`]) and again as exactly one
//! [`Outcome`] when it ends, so `report.sent == report.outcomes.ok + report.failures()` holds
//! for every run that completed (a test that it does is meaningful). The [`Report`] also has
//! HdrHistogram latency percentiles and a per-second [`Report::timeline`]; a [`Live`] passed
//! to [`run_with`] shows the counts while the run goes ([`ProgressLine`]). One failure is
//! recovered rather than reported: with [`ConnectionMode::KeepAlive`], an idempotent request
//! that fails with [`Outcome::Refused`] or [`Outcome::Reset`] on a *reused* connection before
//! any byte of its reply arrived (typically: the server closed the idle connection just as the
//! request went out) is sent once more on a fresh connection. The retry's result is the
//! request's outcome, and [`Report::retried`] counts such requests, so recoveries stay visible.
//! Timeouts are never retried: the request may still be in progress.
//!
//! Network namespaces: sockets belong to the namespace of the thread that creates them. Use
//! [`run_blocking`] from a thread that has entered the namespace (setns); it creates its runtime
//! and worker threads from that thread, and new threads inherit its namespace.

mod progress;
mod report;
mod timeline;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

pub use progress::{Display, Live, ProgressLine, Snapshot};
pub use report::{Latency, OTHER_RESPONDERS, Outcome, Outcomes, RESPONDERS_CAP, Report};
pub use timeline::{Second, TIMELINE_RESPONDERS_CAP};

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to send, where, how often, and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Address every request goes to.
    pub target: SocketAddr,
    /// Request kind and its parameters.
    pub protocol: Protocol,
    /// Whether connections (for UDP: sockets, hence source ports) are reused.
    pub mode: ConnectionMode,
    /// Number of requests in flight at once; with [`ConnectionMode::KeepAlive`] also the
    /// number of pooled connections. At least 1.
    pub concurrency: usize,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Stop starting requests once this much time has passed since the start.
    #[serde(with = "crate::secs")]
    pub max_duration: Duration,
    /// Open loop: schedule requests at this many per second over the whole run (across all
    /// workers), request `i` at `i / rate` after the start, and measure latency from the
    /// scheduled time (see the module documentation). `None`: closed loop, as fast as the
    /// workers go, latency from the send.
    pub rate: Option<f64>,
    /// Limit for one attempt of a request: connecting (when needed), sending, and receiving
    /// the whole reply.
    #[serde(with = "crate::secs")]
    pub timeout: Duration,
    /// Local addresses to send from, used round-robin for each new connection or socket.
    /// Empty: let the kernel choose. Must be of the target's address family.
    pub source_ips: Vec<IpAddr>,
    /// A reply must contain this substring (HTTP: in the body; TCP/UDP: in the reply) to be
    /// [`Outcome::Ok`]; otherwise it is [`Outcome::BadResponse`].
    pub expect: Option<String>,
}

impl Config {
    /// A configuration with the defaults: keep-alive, one worker, 1000 requests, 10 s,
    /// unpaced, [`DEFAULT_TIMEOUT`], kernel-chosen source addresses, any reply accepted.
    pub fn new(target: SocketAddr, protocol: Protocol) -> Self {
        Self {
            target,
            protocol,
            mode: ConnectionMode::KeepAlive,
            concurrency: 1,
            max_requests: 1000,
            max_duration: Duration::from_secs(10),
            rate: None,
            timeout: DEFAULT_TIMEOUT,
            source_ips: Vec::new(),
            expect: None,
        }
    }

    /// Checks the configuration; [`run`] and [`run_blocking`] do this first.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.concurrency == 0 {
            return Err(LoadError::ZeroConcurrency);
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(LoadError::InvalidRate(rate));
        }
        if self.timeout.is_zero() {
            return Err(LoadError::ZeroTimeout);
        }
        if tokio::time::Instant::now()
            .checked_add(self.max_duration)
            .is_none()
        {
            return Err(LoadError::DurationTooLong(self.max_duration));
        }
        if let Some(&source_ip) = self
            .source_ips
            .iter()
            .find(|ip| ip.is_ipv4() != self.target.is_ipv4())
        {
            return Err(LoadError::SourceFamily {
                source_ip,
                target: self.target,
            });
        }
        match &self.protocol {
            Protocol::Http { path, host } => {
                if !path.starts_with('/') || !is_visible_ascii(path) {
                    return Err(LoadError::InvalidPath(path.clone()));
                }
                if let Some(host) = host
                    && (host.is_empty() || !is_visible_ascii(host))
                {
                    return Err(LoadError::InvalidHost(host.clone()));
                }
            }
            Protocol::Tcp {
                reply_bytes: Some(0),
                ..
            } => return Err(LoadError::ZeroReplyBytes),
            Protocol::Tcp { .. } | Protocol::Udp { .. } => {}
        }
        Ok(())
    }
}

fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// The request kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 `GET path` with a `Host` header. A reply is a response with a 2xx status and
    /// its complete body (`Content-Length`, chunked, or up to EOF). GET is idempotent, so
    /// these requests are always eligible for the keep-alive retry. The client honours
    /// `Connection: close` (and HTTP/1.0 semantics): it opens a new connection next time.
    Http {
        /// Request target; starts with `/`.
        path: String,
        /// `Host` header value; `None` uses the target address (`ip:port`, `[ip6]:port`).
        host: Option<String>,
    },
    /// Raw TCP: write `payload`, then read the reply.
    Tcp {
        /// Bytes written for each request.
        payload: Vec<u8>,
        /// The reply is complete after this many bytes. `None`: the client half-closes after
        /// writing and the reply runs to EOF, so every request needs its own connection
        /// (keep-alive then behaves like one connection per request).
        reply_bytes: Option<usize>,
        /// The request may be sent twice (eligible for the keep-alive retry).
        idempotent: bool,
    },
    /// UDP: send `payload` as one datagram and wait for one datagram back. With keep-alive the
    /// worker keeps its connected socket (same source port, so the same flow) across
    /// requests; otherwise each request uses a new socket.
    Udp {
        /// Datagram payload sent for each request.
        payload: Vec<u8>,
        /// The request may be sent twice (eligible for the keep-alive retry).
        idempotent: bool,
    },
}

impl Protocol {
    /// `GET path` with the default `Host` header.
    pub fn http(path: impl Into<String>) -> Self {
        Self::Http {
            path: path.into(),
            host: None,
        }
    }

    /// Raw TCP with a fixed-size reply, not idempotent.
    pub fn tcp(payload: impl Into<Vec<u8>>, reply_bytes: Option<usize>) -> Self {
        Self::Tcp {
            payload: payload.into(),
            reply_bytes,
            idempotent: false,
        }
    }

    /// UDP, not idempotent.
    pub fn udp(payload: impl Into<Vec<u8>>) -> Self {
        Self::Udp {
            payload: payload.into(),
            idempotent: false,
        }
    }
}

/// Connection reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMode {
    /// Every request opens (and then closes) its own connection or socket. HTTP requests say
    /// `Connection: close`.
    NewConnectionPerRequest,
    /// Each worker keeps its connection for the next request, unless the request failed or the
    /// server asked to close it; the pool therefore holds up to `concurrency` connections.
    KeepAlive,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("rate must be a positive, finite number of requests per second, not {0}")]
    InvalidRate(f64),
    #[error("the per-request timeout must be longer than zero")]
    ZeroTimeout,
    #[error("max duration {0:?} is too long")]
    DurationTooLong(Duration),
    #[error("HTTP path {0:?} must start with '/' and contain only visible ASCII characters")]
    InvalidPath(String),
    #[error("HTTP host {0:?} must be non-empty visible ASCII")]
    InvalidHost(String),
    #[error("the expected TCP reply length must be at least 1 byte")]
    ZeroReplyBytes,
    #[error("source address {source_ip} is not in the address family of target {target}")]
    SourceFamily {
        source_ip: IpAddr,
        target: SocketAddr,
    },
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the load on the current tokio runtime and reports the outcome of every request.
///
/// Sockets are created on the runtime's worker threads (see the module documentation about
/// network namespaces).
pub async fn run(cfg: Config) -> Result<Report, LoadError> {
    run_with(cfg, Arc::default()).await
}

/// [`run`], counting on `live` as it goes (read it from another task or thread).
pub async fn run_with(cfg: Config, live: Arc<Live>) -> Result<Report, LoadError> {
    cfg.validate()?;
    let workers = cfg
        .concurrency
        .min(usize::try_from(cfg.max_requests).unwrap_or(usize::MAX));
    let shared = Arc::new(worker::Shared::new(cfg, live)?);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker::Worker::new(Arc::clone(&shared)).run());
    }
    let mut tally = report::Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(worker_tally) => tally.merge(&worker_tally),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down; report what completed.
            Err(_) => {}
        }
    }
    let duration = shared.elapsed();
    Ok(tally.into_report(duration, shared.timeline.timeline()))
}

/// Runs the load on a new multi-thread runtime and blocks until it is done.
///
/// The runtime's worker threads are spawned by the calling thread while the runtime is built,
/// so they, and every socket the run creates, are in the calling thread's network namespace.
/// Must not be called from within an async context.
pub fn run_blocking(cfg: Config) -> Result<Report, LoadError> {
    run_blocking_with(cfg, Arc::default())
}

/// [`run_blocking`], counting on `live` as it goes.
pub fn run_blocking_with(cfg: Config, live: Arc<Live>) -> Result<Report, LoadError> {
    cfg.validate()?;
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(cfg.concurrency)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-load")
        .enable_io()
        .enable_time()
        .build()
        .map_err(LoadError::Runtime)?;
    runtime.block_on(run_with(cfg, live))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn config(protocol: Protocol) -> Config {
        Config::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 80)), protocol)
    }

    #[test]
    fn defaults_validate() {
        config(Protocol::http("/")).validate().unwrap();
        config(Protocol::tcp("x", Some(3))).validate().unwrap();
        config(Protocol::udp("x")).validate().unwrap();
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mut cfg = config(Protocol::http("/"));
        cfg.concurrency = 0;
        assert!(matches!(cfg.validate(), Err(LoadError::ZeroConcurrency)));

        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut cfg = config(Protocol::http("/"));
            cfg.rate = Some(rate);
            assert!(matches!(cfg.validate(), Err(LoadError::InvalidRate(_))));
        }

        let mut cfg = config(Protocol::http("/"));
        cfg.timeout = Duration::ZERO;
        assert!(matches!(cfg.validate(), Err(LoadError::ZeroTimeout)));

        let mut cfg = config(Protocol::http("/"));
        cfg.max_duration = Duration::MAX;
        assert!(matches!(cfg.validate(), Err(LoadError::DurationTooLong(_))));

        for path in ["", "x", "/a b", "/a\r\nX: y"] {
            let cfg = config(Protocol::http(path));
            assert!(matches!(cfg.validate(), Err(LoadError::InvalidPath(_))));
        }

        let cfg = config(Protocol::Http {
            path: "/".into(),
            host: Some("a\r\nb".into()),
        });
        assert!(matches!(cfg.validate(), Err(LoadError::InvalidHost(_))));

        let cfg = config(Protocol::tcp("x", Some(0)));
        assert!(matches!(cfg.validate(), Err(LoadError::ZeroReplyBytes)));

        let mut cfg = config(Protocol::udp("x"));
        cfg.source_ips = vec![Ipv6Addr::LOCALHOST.into()];
        assert!(matches!(
            cfg.validate(),
            Err(LoadError::SourceFamily { .. })
        ));
    }

    #[test]
    fn config_serializes_readably() {
        let mut cfg = config(Protocol::http("/hello"));
        cfg.timeout = Duration::from_millis(1500);
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["protocol"]["kind"], "http");
        assert_eq!(json["mode"], "keep_alive");
        assert_eq!(json["timeout"], 1.5);
        let back: Config = serde_json::from_value(json).unwrap();
        assert_eq!(back, cfg);
    }
}
