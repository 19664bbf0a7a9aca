//! The metrics listener's `/healthz`, as kube-proxy's: healthy while no change waits longer
//! than the allowed age (an idle agent included), with RFC 3339 times.

mod common;

use std::time::Duration;

use controller::{agent::endpoints, fake::FakeDataPath, objects::Object, state::Shared};
use serde_json::{Value, json};

async fn healthz(router: &axum::Router) -> (u16, Value) {
    let (status, body) = common::get(router, "/healthz").await;
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn healthz_is_503_only_while_a_change_waits_too_long() {
    let shared = Shared::new(Box::new(FakeDataPath::default()), None);
    let prom = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    // An allowed age of zero: any waiting change is too old.
    let health = endpoints::Health::new(shared.clone(), Duration::ZERO, prom);
    let router = endpoints::router(health.clone());

    let (status, body) = healthz(&router).await;
    assert_eq!(status, 200, "idle and never synced is healthy: {body}");
    assert_eq!(body["lastUpdated"], "1970-01-01T00:00:00Z");
    assert!(
        body["currentTime"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    assert_eq!(body["nodeEligible"], true);

    let svc = Object::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
    }))
    .unwrap()
    .object;
    shared.store.lock().await.tables.apply(&svc).unwrap();
    let (status, _) = healthz(&router).await;
    assert_eq!(status, 503, "a change waits");

    // The reconcile loop takes it: healthy again.
    shared.store.lock().await.tables.take_dirty();
    health.synced_now();
    let (status, body) = healthz(&router).await;
    assert_eq!(status, 200);
    assert_ne!(body["lastUpdated"], "1970-01-01T00:00:00Z");
}
