//! The metrics listener: `/metrics` (Prometheus), `/healthz` and `/readyz`, as kube-proxy
//! serves them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use k8s_openapi::jiff::Timestamp;

use crate::{metrics, rollouts, state::Shared};

#[derive(Clone)]
pub struct Health {
    /// When the last reconcile round ended (unix seconds; 0: none yet).
    pub last_sync_unix: Arc<AtomicU64>,
    /// Every source listed once and the first round ran (subscribe to wait for it).
    pub ready: Arc<tokio::sync::watch::Sender<bool>>,
    pub max_age: Duration,
    /// Export per-backend series too (`per_backend_metrics`).
    pub per_backend: bool,
    pub shared: Shared,
    pub prom: metrics_exporter_prometheus::PrometheusHandle,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &*self.ready.borrow())
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Health {
    pub fn new(
        shared: Shared,
        max_age: Duration,
        prom: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Self {
        Health {
            last_sync_unix: Arc::new(AtomicU64::new(0)),
            ready: Arc::new(tokio::sync::watch::Sender::new(false)),
            max_age,
            per_backend: false,
            shared,
            prom,
        }
    }

    pub fn synced_now(&self) {
        self.last_sync_unix.store(unix_now(), Ordering::Relaxed);
    }

    /// As kube-proxy's: unhealthy while a change has waited longer than the allowed age to
    /// be applied (the agent is stuck or far behind); an idle agent is healthy however long
    /// ago it last synced.
    pub async fn healthy(&self) -> bool {
        let waiting = self.shared.store.lock().await.tables.pending_since();
        waiting.is_none_or(|t| t.elapsed() <= self.max_age)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn rfc3339(unix: u64) -> String {
    Timestamp::from_second(unix as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    // The tables first (released before the data path is read): only rolling Deployments.
    let plan = {
        let store = h.shared.store.lock().await;
        let probes = h.shared.probes.lock().await;
        rollouts::plan(&store.tables, &probes, rollouts::Scope::MidRollout)
    };
    {
        let rec = h.shared.reconciler.lock().await;
        metrics::export_datapath(rec.data_path(), h.per_backend);
        match rollouts::view(plan, rec.data_path()) {
            Ok(v) => metrics::export_rollouts(&v),
            Err(e) => tracing::debug!(error = %e, "reading rollout counters for /metrics failed"),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        h.prom.render(),
    )
}

/// As kube-proxy's: 503 when [`Health::healthy`] says no, 200 otherwise, with the times.
async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    let behind = !h.healthy().await;
    let body = serde_json::json!({
        "lastUpdated": rfc3339(h.last_sync_unix.load(Ordering::Relaxed)),
        "currentTime": rfc3339(unix_now()),
        "nodeEligible": true,
    });
    let status = if behind {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body))
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if *h.ready.borrow() {
        return (StatusCode::OK, "ok".to_string());
    }
    let waiting = h.shared.sources.waiting();
    let msg = if waiting.is_empty() {
        "waiting for the first sync round".to_string()
    } else {
        format!("waiting for the first full list of: {}", waiting.join(", "))
    };
    (StatusCode::SERVICE_UNAVAILABLE, msg)
}

pub fn router(h: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(h)
}
