//! The health-check node ports of Services of type LoadBalancer with
//! `externalTrafficPolicy: Local` (`spec.healthCheckNodePort`), served as kube-proxy's
//! service health server serves them, so that a load balancer sends a service's traffic only
//! to the nodes that have a ready endpoint of it.
//!
//! Each such service gets an HTTP server on its port on every node address (the IPv4 and
//! IPv6 wildcards). Any request (kube-proxy answers every method and path) gets
//! `{"service": {"namespace": ..., "name": ...}, "localEndpoints": N, "serviceProxyHealthy": H}`
//! laid out as kube-proxy prints it, with `Content-Type: application/json`,
//! `X-Content-Type-Options: nosniff` and `X-Load-Balancing-Endpoint-Weight: N`: status 200
//! while N (the service's ready local endpoints, [`crate::desired::local_ready_endpoints`])
//! is at least 1 and the agent is healthy (H, what `/healthz` says), 503 otherwise.
//!
//! [`HealthChecks`] holds the servers, one per service; [`HealthChecks::update`] applies one
//! service's change (open, close, new count), so the cost follows the change. A port that
//! cannot be opened is logged with the service and port and counted
//! (`sluice_health_check_node_port_errors_total`) once per distinct error, and tried again
//! at the next change of any health-checked service; the rest of the agent goes on.
//! [`run`] is the agent's task: it waits for the first reconcile round (a restarted agent
//! would otherwise answer 503 for services whose endpoints are not listed yet), then follows
//! the tables' health-check changes. How ports are opened is a [`Listen`], so tests hand
//! over listeners they bound themselves.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, Response, StatusCode, header},
};
use futures::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

use crate::{desired, metrics, model::Key, state::Shared};

/// Whether the agent is healthy (the `serviceProxyHealthy` of every answer).
pub type ProxyHealth = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// A proxy health that is always healthy (tests, tools).
pub fn always_healthy() -> ProxyHealth {
    Arc::new(|| Box::pin(async { true }))
}

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the listeners of one health-check node port.
pub trait Listen: Send {
    fn listen(&mut self, port: u16) -> io::Result<Vec<TcpListener>>;
}

/// The node's wildcard addresses, `0.0.0.0:port` and `[::]:port` (IPv6 only, so the two do
/// not collide; skipped on a node without IPv6), with `SO_REUSEADDR` as Go's listeners
/// set it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wildcards;

impl Listen for Wildcards {
    fn listen(&mut self, port: u16) -> io::Result<Vec<TcpListener>> {
        let mut out = vec![bind((Ipv4Addr::UNSPECIFIED, port).into())?];
        match bind((Ipv6Addr::UNSPECIFIED, port).into()) {
            Ok(l) => out.push(l),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                tracing::debug!(port, "no IPv6 on this node: health check on IPv4 only");
            }
            Err(e) => return Err(e),
        }
        Ok(out)
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// What one service's server answers from.
#[derive(Debug)]
struct Status {
    service: Key,
    local_endpoints: AtomicUsize,
}

/// The server of one service.
struct Instance {
    port: u16,
    status: Arc<Status>,
    /// One accept loop per listener; each owns its connections, so dropping them (or
    /// shutting them down) closes the listeners and every connection.
    servers: JoinSet<()>,
}

/// What one service's health-check node port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub port: u16,
    /// Its ready local endpoints (the `localEndpoints` it answers).
    pub local_endpoints: usize,
}

/// The open health-check node ports, by service.
pub type ServedPorts = BTreeMap<Key, Served>;

/// The health-check servers of every service that has one.
pub struct HealthChecks {
    instances: HashMap<Key, Instance>,
    /// What is served, published after every change (its listeners already open or
    /// closed): tests and views wait on it.
    served: watch::Sender<ServedPorts>,
    /// Services whose port could not be opened: (port, error), tried again at the next
    /// change.
    failed: BTreeMap<Key, (u16, String)>,
    listen: Box<dyn Listen>,
    proxy: ProxyHealth,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("open", &*self.served.borrow())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl HealthChecks {
    pub fn new(listen: impl Listen + 'static, proxy: ProxyHealth) -> Self {
        HealthChecks {
            instances: HashMap::new(),
            served: watch::Sender::new(ServedPorts::new()),
            failed: BTreeMap::new(),
            listen: Box::new(listen),
            proxy,
        }
    }

    /// What is served, updated after every change (subscribe before handing this to
    /// [`run`]).
    pub fn subscribe(&self) -> watch::Receiver<ServedPorts> {
        self.served.subscribe()
    }

    /// The services whose port could not be opened, with the port.
    pub fn failed(&self) -> impl Iterator<Item = (&Key, u16)> {
        self.failed.iter().map(|(k, (p, _))| (k, *p))
    }

    /// Applies what the service `key` wants now: `Some((port, ready local endpoints))`, or
    /// `None` (it is gone or has no health-check node port). A new port is opened, a changed
    /// one closed and the new one opened, a gone one closed; when this returns, a closed
    /// port's listeners are closed (and its connections aborted).
    pub async fn update(&mut self, key: &Key, want: Option<(u16, usize)>) {
        self.apply(key, want).await;
        let now = self.instances.get(key).map(|i| Served {
            port: i.port,
            local_endpoints: i.status.local_endpoints.load(Ordering::Relaxed),
        });
        self.served.send_if_modified(|s| match now {
            Some(n) => s.insert(key.clone(), n) != Some(n),
            None => s.remove(key).is_some(),
        });
    }

    async fn apply(&mut self, key: &Key, want: Option<(u16, usize)>) {
        if let (Some(i), Some((port, n))) = (self.instances.get(key), want)
            && i.port == port
        {
            i.status.local_endpoints.store(n, Ordering::Relaxed);
            return;
        }
        if let Some(old) = self.instances.remove(key) {
            let port = old.port;
            close(old).await;
            tracing::info!(service = %key, port, "health-check node port closed");
        }
        let Some((port, n)) = want else {
            self.failed.remove(key);
            return;
        };
        let opened = match self.instances.iter().find(|(_, i)| i.port == port) {
            Some((holder, _)) => Err(format!(
                "port {port} is the health-check node port of Service {holder}"
            )),
            None => self.listen.listen(port).map_err(|e| e.to_string()),
        };
        match opened {
            Ok(listeners) => {
                let status = Arc::new(Status {
                    service: key.clone(),
                    local_endpoints: AtomicUsize::new(n),
                });
                let mut servers = JoinSet::new();
                for l in listeners {
                    servers.spawn(serve(l, status.clone(), self.proxy.clone()));
                }
                if self.failed.remove(key).is_some() {
                    tracing::info!(service = %key, port, "a health-check node port that failed is open now");
                } else {
                    tracing::info!(service = %key, port, "health-check node port open");
                }
                self.instances.insert(
                    key.clone(),
                    Instance {
                        port,
                        status,
                        servers,
                    },
                );
            }
            Err(e) => {
                // Once per distinct error of a service, not on every retry.
                if self.failed.get(key) != Some(&(port, e.clone())) {
                    tracing::warn!(service = %key, port, error = %e, "cannot open the health-check node port (tried again at the next change)");
                    metrics::health_check_node_port_error();
                }
                self.failed.insert(key.clone(), (port, e));
            }
        }
    }
}

async fn close(mut i: Instance) {
    i.servers.shutdown().await;
}

/// Accepts connections on one listener until aborted (which drops the listener and every
/// connection it accepted).
async fn serve(listener: TcpListener, status: Arc<Status>, proxy: ProxyHealth) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, status.clone(), proxy.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!(service = %status.service, error = %e, "health check: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: TcpStream, status: Arc<Status>, proxy: ProxyHealth) {
    let service = hyper::service::service_fn(move |_req| {
        let (status, proxy) = (status.clone(), proxy.clone());
        async move { Ok::<_, Infallible>(answer(&status, proxy().await)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "health check: connection ended");
    }
}

/// kube-proxy's answer: 200 with N ≥ 1 ready local endpoints and a healthy agent, else
/// 503; its JSON layout (tab-indented) and headers.
fn answer(status: &Status, healthy: bool) -> Response<Body> {
    let n = status.local_endpoints.load(Ordering::Relaxed);
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        quote(&status.service.namespace),
        quote(&status.service.name),
    );
    let code = if n != 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-load-balancing-endpoint-weight", HeaderValue::from(n));
    r
}

/// The agent's task: once `ready` (the first reconcile round ran), follows the tables'
/// health-check changes until aborted. Each change costs the changed services, then those
/// whose port failed before (tried again after the changes, so a port another service just
/// gave up is taken).
pub async fn run(shared: Shared, mut ready: watch::Receiver<bool>, mut checks: HealthChecks) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    loop {
        let (changed, keys) = {
            let mut store = shared.store.lock().await;
            (
                store.tables.health_checks_changed(),
                store.tables.take_health_check_changes(),
            )
        };
        for (k, w) in wants(&shared, keys).await {
            checks.update(&k, w).await;
        }
        let failed: Vec<Key> = checks.failed().map(|(k, _)| k.clone()).collect();
        for (k, w) in wants(&shared, failed).await {
            checks.update(&k, w).await;
        }
        changed.notified().await;
    }
}

/// What each of `keys` wants now (under the store and probe locks, released on return).
async fn wants(
    shared: &Shared,
    keys: impl IntoIterator<Item = Key>,
) -> Vec<(Key, Option<(u16, usize)>)> {
    let store = shared.store.lock().await;
    let probes = shared.probes.lock().await;
    keys.into_iter()
        .map(|k| {
            let w = desired::health_check(&store.tables, &k, &probes);
            (k, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv6 wildcard is IPv6 only: it binds beside the IPv4 wildcard on the same port
    /// (a dual-stack socket would collide with it), and a second IPv4 listener does not.
    #[tokio::test]
    async fn the_ipv6_wildcard_binds_beside_the_ipv4_one() {
        let v4 = bind((Ipv4Addr::UNSPECIFIED, 0).into()).unwrap();
        let port = v4.local_addr().unwrap().port();
        match bind((Ipv6Addr::UNSPECIFIED, port).into()) {
            Ok(v6) => assert_eq!(v6.local_addr().unwrap().port(), port),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                eprintln!("no IPv6 here: only the IPv4 side is checked");
            }
            Err(e) => panic!("[::]:{port} beside 0.0.0.0:{port}: {e}"),
        }
        let again = bind((Ipv4Addr::UNSPECIFIED, port).into()).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
    }
}
