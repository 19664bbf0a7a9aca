//! The server: shared state, the accept loop (which also plays an API server that is down),
//! and the ways to start it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::log::RequestRecord;
use crate::store::{DEFAULT_HISTORY_LIMIT, Store};

/// Generation counters that open watch streams react to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Signals {
    /// Bumped on every store change.
    pub changes: u64,
    /// Bumped by `send_bookmarks()`.
    pub bookmarks: u64,
    /// Bumped by `disconnect_watches()`.
    pub disconnects: u64,
}

/// State shared by the control methods, the handlers and the watch streams.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub signals: watch::Sender<Signals>,
    /// While true, connections are accepted and closed at once, and open ones are cut.
    pub down: watch::Sender<bool>,
    /// Bumped whenever the request log or the open-watch counts change (for the waits).
    pub activity: watch::Sender<u64>,
    pub log: Mutex<Vec<RequestRecord>>,
    /// Connections closed unanswered because the server was down.
    pub refused: std::sync::atomic::AtomicU64,
    pub open_watches: Mutex<HashMap<&'static str, usize>>,
    pub bookmark_interval: Option<Duration>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the state).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn new(history_limit: usize, bookmark_interval: Option<Duration>) -> Self {
        Self {
            store: Mutex::new(Store::new(history_limit)),
            signals: watch::Sender::new(Signals::default()),
            down: watch::Sender::new(false),
            activity: watch::Sender::new(0),
            log: Mutex::new(Vec::new()),
            refused: std::sync::atomic::AtomicU64::new(0),
            open_watches: Mutex::new(HashMap::new()),
            bookmark_interval,
        }
    }

    /// Runs `f` on the store and wakes the watch streams.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut lock(&self.store));
        self.signals.send_modify(|s| s.changes += 1);
        out
    }

    pub fn bump_activity(&self) {
        self.activity.send_modify(|n| *n += 1);
    }

    pub fn record(&self, rec: RequestRecord) {
        lock(&self.log).push(rec);
        self.bump_activity();
    }
}

/// Counts an open watch of a resource for as long as it lives.
#[derive(Debug)]
pub(crate) struct OpenWatch {
    shared: Arc<Shared>,
    resource: &'static str,
}

impl OpenWatch {
    pub fn new(shared: Arc<Shared>, resource: &'static str) -> Self {
        *lock(&shared.open_watches).entry(resource).or_default() += 1;
        shared.bump_activity();
        Self { shared, resource }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.shared.open_watches).get_mut(self.resource) {
            *n = n.saturating_sub(1);
        }
        self.shared.bump_activity();
    }
}

/// An in-process Kubernetes API server speaking real list/watch over HTTP/1.1.
///
/// Start it with [`MockApiServer::start_local`], [`MockApiServer::spawn`] (on the caller's
/// tokio runtime) or [`MockApiServer::spawn_on_thread`] (its own thread and runtime), or
/// through [`MockApiServer::builder`] for options. Dropping it stops the server and cuts every
/// connection. All control methods take `&self` and are safe to call from any thread.
#[derive(Debug)]
pub struct MockApiServer {
    pub(crate) shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Options of a [`MockApiServer`].
#[derive(Debug, Clone)]
pub struct MockApiServerBuilder {
    history_limit: usize,
    bookmark_interval: Option<Duration>,
}

impl Default for MockApiServerBuilder {
    fn default() -> Self {
        Self {
            history_limit: DEFAULT_HISTORY_LIMIT,
            bookmark_interval: None,
        }
    }
}

impl MockApiServerBuilder {
    /// How many changes (of all resources together) the watch history keeps; a watch that
    /// resumes from before the oldest kept change gets `410 Expired`. Default 1024.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// Sends a `BOOKMARK` on every watch that allows bookmarks at this interval (off by
    /// default; [`MockApiServer::send_bookmarks`] sends them on demand).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = Some(every);
        self
    }

    /// Serves `listener` on the current tokio runtime (must be called inside one).
    pub fn spawn(self, listener: tokio::net::TcpListener) -> Result<MockApiServer> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("listener address", e))?;
        let shared = Arc::new(Shared::new(self.history_limit, self.bookmark_interval));
        let shutdown = watch::Sender::new(false);
        tokio::spawn(serve(listener, shared.clone(), shutdown.subscribe()));
        Ok(MockApiServer {
            shared,
            addr,
            shutdown,
            thread: None,
        })
    }

    /// Serves `listener` on a thread of its own with its own single-threaded tokio runtime.
    /// The listener may have been created anywhere, e.g. inside a network namespace.
    pub fn spawn_on_thread(self, listener: std::net::TcpListener) -> Result<MockApiServer> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("listener address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set the listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("build the server's runtime", e))?;
        let shared = Arc::new(Shared::new(self.history_limit, self.bookmark_interval));
        let shutdown = watch::Sender::new(false);
        let (task_shared, task_shutdown) = (shared.clone(), shutdown.subscribe());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::io("register the listener", e))?
        };
        let thread = std::thread::Builder::new()
            .name("kube-mock".into())
            .spawn(move || runtime.block_on(serve(listener, task_shared, task_shutdown)))
            .map_err(|e| Error::io("spawn the server thread", e))?;
        Ok(MockApiServer {
            shared,
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Binds 127.0.0.1 on a port the kernel picks and serves it on a thread of its own.
    pub fn start_local(self) -> Result<MockApiServer> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
        self.spawn_on_thread(listener)
    }
}

impl MockApiServer {
    /// Options: history size, periodic bookmarks.
    pub fn builder() -> MockApiServerBuilder {
        MockApiServerBuilder::default()
    }

    /// Binds 127.0.0.1 on a port the kernel picks and serves it on a thread of its own.
    pub fn start_local() -> Result<Self> {
        Self::builder().start_local()
    }

    /// Serves `listener` on the current tokio runtime (must be called inside one).
    pub fn spawn(listener: tokio::net::TcpListener) -> Result<Self> {
        Self::builder().spawn(listener)
    }

    /// Serves `listener` on a thread of its own with its own tokio runtime.
    pub fn spawn_on_thread(listener: std::net::TcpListener) -> Result<Self> {
        Self::builder().spawn_on_thread(listener)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the server's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MockApiServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Returns once the flag is true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// The accept loop: one HTTP/1.1 connection task per accepted socket.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = crate::routes::router(shared.clone());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("kube-mock: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = until_true(&mut shutdown) => break,
        };
        let down_now = *shared.down.borrow();
        if down_now {
            // An API server that is restarting: the connection is closed unanswered.
            drop(stream);
            shared
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.activity.send_modify(|n| *n += 1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut down = shared.down.subscribe();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(err) = result {
                        tracing::debug!("kube-mock: connection ended: {err}");
                    }
                }
                // Dropping the connection closes the socket mid-whatever, like a crash.
                () = until_true(&mut down) => {}
                () = until_true(&mut stop) => {}
            }
        });
    }
}
