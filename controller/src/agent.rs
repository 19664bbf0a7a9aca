//! `sluice run`: validates the whole configuration before anything is attached, loads (or
//! adopts) the pinned data path, then runs the sources, the reconcile loop, the API and the
//! metrics listener until SIGTERM/SIGINT. A shutdown leaves the data path serving.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use lb_datapath::{DataplaneConfig, PinConfig};
use serde::Deserialize;
use tokio::{net::TcpListener, sync::Mutex};

use crate::{desired, files::Directory, health, metrics, state::Shared};

/// The agent's configuration file (YAML), every field optional; flags override it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct AgentConfig {
    /// External interfaces to attach the load balancer to (NodePort on their addresses).
    pub interfaces: Vec<String>,
    /// Devices translated frames may be redirected to (NICs, or veths whose peer runs XDP).
    pub redirect_interfaces: Vec<String>,
    /// Directory of Kubernetes YAML (Service, EndpointSlice, Deployment), watched.
    pub manifests: Option<PathBuf>,
    /// The HTTP API (127.0.0.1 by default: it changes what the node forwards).
    pub api_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: SocketAddr,
    /// File holding the bearer token API writes must carry; without it the API is read-only.
    pub token_file: Option<PathBuf>,
    /// Full resync period.
    pub resync_seconds: u64,
    /// `/healthz` answers 503 when the last sync is older than this.
    pub healthz_max_age_seconds: u64,
    /// Manifest directory poll period, in milliseconds.
    pub poll_millis: u64,
    /// Where objects written through the API are kept across restarts.
    pub state_dir: PathBuf,
    pub dataplane: DataplaneConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interfaces: Vec::new(),
            redirect_interfaces: Vec::new(),
            manifests: None,
            api_listen: "127.0.0.1:10260".parse().expect("address"),
            metrics_listen: "127.0.0.1:10249".parse().expect("address"),
            token_file: None,
            resync_seconds: 30,
            healthz_max_age_seconds: 60,
            poll_millis: 500,
            state_dir: PathBuf::from("/var/lib/sluice"),
            dataplane: DataplaneConfig {
                pin: Some(PinConfig::default()),
                ..Default::default()
            },
        }
    }
}

impl AgentConfig {
    /// Checks everything that can be checked before touching the node.
    pub fn validate(&self) -> anyhow::Result<Option<String>> {
        if self.interfaces.is_empty() {
            bail!(
                "no interface to attach to: pass --interface IFNAME (or `interfaces:` in the config file)"
            );
        }
        if let Some(d) = &self.manifests {
            std::fs::read_dir(d).with_context(|| format!("manifest directory {}", d.display()))?;
        }
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("state directory {}", self.state_dir.display()))?;
        if self.resync_seconds == 0 || self.poll_millis == 0 || self.healthz_max_age_seconds == 0 {
            bail!("resync_seconds, poll_millis and healthz_max_age_seconds must be > 0");
        }
        match &self.token_file {
            None => Ok(None),
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .with_context(|| format!("token file {}", p.display()))?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    bail!(
                        "token file {}: the token must be at least 16 characters",
                        p.display()
                    );
                }
                Ok(Some(t))
            }
        }
    }
}

#[derive(Clone)]
struct Health {
    last_sync_unix: Arc<AtomicU64>,
    synced_once: Arc<std::sync::atomic::AtomicBool>,
    max_age: Duration,
    shared: Shared,
    prom: metrics_exporter_prometheus::PrometheusHandle,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    {
        let rec = h.shared.reconciler.lock().await;
        metrics::export_datapath(rec.data_path());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        h.prom.render(),
    )
}

/// kube-proxy compatible: 200 when synced within the window, 503 otherwise, with the times.
async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    let last = h.last_sync_unix.load(Ordering::Relaxed);
    let now = unix_now();
    let healthy = last != 0 && now.saturating_sub(last) <= h.max_age.as_secs();
    let body = serde_json::json!({ "lastUpdated": last, "currentTime": now });
    (
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        axum::Json(body),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.synced_once.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full sync",
        )
    }
}

fn metrics_router(h: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(h)
}

/// Runs the agent until a shutdown signal.
pub async fn run(
    cfg: AgentConfig,
    open: impl FnOnce(&AgentConfig) -> anyhow::Result<crate::state::BoxedDataPath>,
) -> anyhow::Result<()> {
    let token = cfg.validate()?;
    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("API listen address {}", cfg.api_listen))?;
    let metrics_listener = TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("metrics listen address {}", cfg.metrics_listen))?;
    let prom = metrics::install()?;

    let dp = open(&cfg)?;
    let adopted = dp.service_names();
    if !adopted.is_empty() {
        tracing::info!(
            services = adopted.len(),
            "adopted pinned services; none is removed before the first full sync"
        );
    }
    let store = crate::store::Store::open(cfg.state_dir.join("api-objects.json"))
        .map_err(|e| anyhow::anyhow!("restoring API objects: {e}"))?;
    let shared = Shared::new(dp, token);
    *shared.store.lock().await = store;
    let health = Health {
        last_sync_unix: Arc::new(AtomicU64::new(0)),
        synced_once: Arc::new(false.into()),
        max_age: Duration::from_secs(cfg.healthz_max_age_seconds),
        shared: shared.clone(),
        prom,
    };

    let api = crate::api::router(shared.clone());
    let api_task = tokio::spawn(async move { axum::serve(api_listener, api).await });
    let mrouter = metrics_router(health.clone());
    let metrics_task = tokio::spawn(async move { axum::serve(metrics_listener, mrouter).await });
    tracing::info!(api = %cfg.api_listen, metrics = %cfg.metrics_listen, "listening");

    let files = Arc::new(Mutex::new(cfg.manifests.clone().map(Directory::new)));
    let watcher = tokio::spawn(watch_files(
        shared.clone(),
        files.clone(),
        Duration::from_millis(cfg.poll_millis),
    ));
    let prober = tokio::spawn(probe_loop(shared.clone()));
    let reconciler = tokio::spawn(reconcile_loop(
        shared.clone(),
        files,
        health,
        Duration::from_secs(cfg.resync_seconds),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down; the data path keeps serving (uninstall removes it)");
    for t in [watcher, prober, reconciler] {
        t.abort();
    }
    api_task.abort();
    metrics_task.abort();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

async fn watch_files(shared: Shared, dir: Arc<Mutex<Option<Directory>>>, every: Duration) {
    loop {
        {
            let mut d = dir.lock().await;
            if let Some(d) = d.as_mut() {
                let mut store = shared.store.lock().await;
                let before = store.generation;
                d.scan(&mut store);
                if store.generation != before {
                    shared.changed.notify_one();
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn reconcile_loop(
    shared: Shared,
    files: Arc<Mutex<Option<Directory>>>,
    health: Health,
    resync: Duration,
) {
    let mut last_full = Instant::now();
    loop {
        let full = last_full.elapsed() >= resync;
        let synced = files.lock().await.as_ref().is_none_or(|d| d.synced());
        let (want, changed_at) = {
            let mut store = shared.store.lock().await;
            let (services, slices, _) = store.models();
            let probes = shared.probes.lock().await;
            (
                desired::desired(&services, &slices, &probes),
                store.take_pending(),
            )
        };
        {
            let mut rec = shared.reconciler.lock().await;
            let round = rec.reconcile(&want, synced, full, changed_at);
            if !round.upserted.is_empty() || !round.removed.is_empty() || !round.errors.is_empty() {
                tracing::info!(upserted = round.upserted.len(), removed = round.removed.len(), errors = ?round.errors, "reconciled");
            }
            if synced {
                health.synced_once.store(true, Ordering::Relaxed);
            }
        }
        health.last_sync_unix.store(unix_now(), Ordering::Relaxed);
        if full {
            last_full = Instant::now();
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep(resync.min(Duration::from_secs(1))) => {}
        }
    }
}

/// Runs every declared probe on its period and feeds the results into the desired state.
async fn probe_loop(shared: Shared) {
    use std::collections::HashMap;
    let mut trackers: HashMap<(crate::model::Key, std::net::IpAddr), (health::Tracker, Instant)> =
        HashMap::new();
    loop {
        let targets: Vec<(crate::model::Key, std::net::IpAddr, health::Probe)> = {
            let store = shared.store.lock().await;
            let (_, slices, _) = store.models();
            slices
                .into_iter()
                .filter_map(|s| s.probe.clone().map(|p| (s, p)))
                .flat_map(|(s, p)| {
                    s.endpoints
                        .iter()
                        .map(|e| (s.key.clone(), e.addr, p.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let now = Instant::now();
        let mut checks = tokio::task::JoinSet::new();
        for (key, addr, probe) in targets {
            let due = trackers
                .get(&(key.clone(), addr))
                .is_none_or(|(_, at)| now.duration_since(*at) >= probe.period());
            if due {
                checks.spawn(async move {
                    let ok = probe.check(addr).await.is_ok();
                    (key, addr, probe, ok)
                });
            }
        }
        let mut changed = false;
        while let Some(Ok((key, addr, probe, ok))) = checks.join_next().await {
            let entry = trackers
                .entry((key.clone(), addr))
                .or_insert_with(|| (health::Tracker::default(), now));
            entry.1 = now;
            if entry.0.record(&probe, ok) {
                changed = true;
                shared
                    .probes
                    .lock()
                    .await
                    .insert((key, addr), entry.0.ready);
            }
        }
        if changed {
            shared.changed.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
