//! Rollout tracking: a recorded sequence of a Deployment `web`, its ReplicaSets and its
//! EndpointSlice, as `kubectl get -o yaml` prints them (`tests/golden/rollouts/*.yaml`: v1,
//! v2 mid-rollout, v2 complete, a stalled v10, `rollout undo` back to v2 as revision 4), fed
//! through the manifest-file source into the store, reconciled into the fake data path whose
//! per-backend new-flow counters are set at each step. Pinned at each step: the exact
//! `/sluice/v1/rollouts` JSON (`<step>.json`: the revision table and the per-ReplicaSet
//! new-flow split) that `sluice rollouts -o json` prints, and for one step the table `sluice
//! rollouts` prints. Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change
//! (and review the diff). Also: the rollout metrics only for rolling Deployments, and
//! `kubeproxy_network_programming_duration_seconds` measured from the slices'
//! `endpoints.kubernetes.io/last-change-trigger-time`.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use controller::{
    api, client,
    fake::{Counters, FakeDataPath},
    files,
    metrics::{self, PROGRAMMING_DURATION},
    model::Key,
    reconcile::{Reconciler, sync_dirty},
    rollouts::{self, Scope},
    state::Shared,
    store::Store,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use serde_json::Value;

/// The data-path name of `web`'s one port (80, unnamed).
const WEB: &str = "default/web:80/TCP";

fn dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/rollouts"
    ))
    .to_path_buf()
}

fn fixture(step: &str) -> String {
    std::fs::read_to_string(dir().join(format!("{step}.yaml"))).unwrap()
}

/// Compares with `<name>` in the golden directory (rewritten with UPDATE_GOLDEN=1).
fn check(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "differs from {}", path.display());
}

/// An agent's shared state over the fake data path, and the fake's counters.
struct Agent {
    shared: Shared,
    counters: Counters,
}

impl Agent {
    fn new() -> Self {
        let fake = FakeDataPath::default();
        let counters = fake.counters.clone();
        Agent {
            shared: Shared::new(Box::new(fake), None),
            counters,
        }
    }

    /// The manifest file now holds `step`'s objects (as the directory source applies a
    /// changed file); then one reconcile round.
    async fn step(&self, step: &str) {
        // One file whose content changes, so objects the step no longer lists go away.
        let path = dir().join("cluster.yaml");
        let objs = files::parse_file(&path, &fixture(step)).unwrap_or_else(|e| panic!("{e:?}"));
        let mut store = self.shared.store.lock().await;
        assert_eq!(store.replace_file(&path, objs), Vec::<String>::new());
        let probes = self.shared.probes.lock().await;
        let mut rec = self.shared.reconciler.lock().await;
        rec.allow_pruning();
        let round = sync_dirty(&mut store.tables, &probes, &mut rec);
        assert!(round.errors.is_empty(), "{step}: {round:?}");
    }

    /// Sets the new-flow counters of `web`'s backends (pod IP, count).
    fn flows(&self, counts: &[(&str, u64)]) {
        for (ip, n) in counts {
            let backend = SocketAddr::new(ip.parse().unwrap(), 8080);
            self.counters.set_new_flows(WEB, backend, *n);
        }
    }

    /// `GET /sluice/v1/rollouts`, as `sluice rollouts -o json` prints it.
    async fn rollouts(&self) -> Value {
        let (status, body) =
            common::get(&api::router(self.shared.clone()), "/sluice/v1/rollouts").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The rollouts the metrics would export now (mid-rollout Deployments only).
    async fn mid_rollout(&self) -> Vec<rollouts::Rollout> {
        let plan = {
            let store = self.shared.store.lock().await;
            let probes = self.shared.probes.lock().await;
            rollouts::plan(&store.tables, &probes, Scope::MidRollout)
        };
        let rec = self.shared.reconciler.lock().await;
        rollouts::view(plan, rec.data_path()).unwrap()
    }
}

/// (ReplicaSet, revision, new flows, share) of the one Deployment, in the JSON's order.
fn split(v: &Value) -> Vec<(String, String, u64, Option<f64>)> {
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v:#}");
    items[0]["replicasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["revision"].as_str().unwrap().to_string(),
                r["new_flows"].as_u64().unwrap(),
                r["new_flow_share"].as_f64(),
            )
        })
        .collect()
}

fn row(
    name: &str,
    rev: &str,
    flows: u64,
    share: Option<f64>,
) -> (String, String, u64, Option<f64>) {
    (name.into(), rev.into(), flows, share)
}

const V1: &str = "web-5d9c7b8f46";
const V2: &str = "web-7f6b4c9d58";
const V10: &str = "web-84d6f5b7c9";

#[tokio::test]
async fn a_recorded_rollout_v1_v2_stalled_v10_and_undo() {
    let agent = Agent::new();

    // v1: one ReplicaSet takes every new flow.
    agent.step("1-v1").await;
    agent.flows(&[("10.244.1.11", 10), ("10.244.1.12", 10)]);
    let v = agent.rollouts().await;
    assert_eq!(v["items"][0]["status"], "complete");
    assert_eq!(split(&v), vec![row(V1, "1", 20, Some(1.0))]);
    check(
        "1-v1.json",
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
    assert!(agent.mid_rollout().await.is_empty());

    // v2 rolling: the new ReplicaSet's pod is ready, an old one terminating (its backend
    // serving-terminating, not selected while ready ones exist, so it gains no flows).
    agent.step("2-v2-rolling").await;
    agent.flows(&[
        ("10.244.1.11", 30),
        ("10.244.1.12", 10),
        ("10.244.1.21", 40),
    ]);
    let v = agent.rollouts().await;
    assert_eq!(v["items"][0]["status"], "rolling: 1 of 2 updated replicas");
    assert_eq!(
        split(&v),
        vec![row(V2, "2", 40, Some(0.5)), row(V1, "1", 40, Some(0.5))]
    );
    assert_eq!(
        v["items"][0]["replicasets"][1]["backends"],
        serde_json::json!({"ready": 1, "serving_terminating": 1, "not_serving": 0})
    );
    check(
        "2-v2-rolling.json",
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
    check("2-v2-rolling.table", &client::render_rollouts(&v));
    // Mid-rollout: the metrics carry the split, per ReplicaSet and revision.
    let mid = agent.mid_rollout().await;
    assert_eq!(mid.len(), 1);
    let recorder = PrometheusBuilder::new().build_recorder();
    ::metrics::with_local_recorder(&recorder, || metrics::export_rollouts(&mid));
    let text = recorder.handle().render();
    for line in [
        r#"sluice_rollout_new_flows_total{namespace="default",deployment="web",replicaset="web-7f6b4c9d58",revision="2"} 40"#,
        r#"sluice_rollout_new_flows_total{namespace="default",deployment="web",replicaset="web-5d9c7b8f46",revision="1"} 40"#,
        r#"sluice_rollout_backends{namespace="default",deployment="web",replicaset="web-7f6b4c9d58"} 1"#,
        r#"sluice_rollout_backends{namespace="default",deployment="web",replicaset="web-5d9c7b8f46"} 2"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }

    // v2 complete: v1 scaled to 0 keeps its row, with no backends and no flows.
    agent.step("3-v2-complete").await;
    agent.flows(&[("10.244.1.21", 60), ("10.244.1.22", 20)]);
    let v = agent.rollouts().await;
    assert_eq!(v["items"][0]["status"], "complete");
    assert_eq!(
        split(&v),
        vec![row(V2, "2", 80, Some(1.0)), row(V1, "1", 0, Some(0.0))]
    );
    check(
        "3-v2-complete.json",
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
    assert!(
        agent.mid_rollout().await.is_empty(),
        "one ReplicaSet serves"
    );

    // v10 stalled: its pod never becomes ready (a not-serving backend, no flows); the
    // progress deadline passed.
    agent.step("4-v10-stalled").await;
    agent.flows(&[("10.244.1.21", 90), ("10.244.1.22", 50)]);
    let v = agent.rollouts().await;
    assert_eq!(
        v["items"][0]["status"],
        "stalled: progress deadline exceeded"
    );
    assert_eq!(
        split(&v),
        vec![
            row(V10, "3", 0, Some(0.0)),
            row(V2, "2", 140, Some(1.0)),
            row(V1, "1", 0, Some(0.0)),
        ]
    );
    assert_eq!(
        v["items"][0]["replicasets"][0]["backends"],
        serde_json::json!({"ready": 0, "serving_terminating": 0, "not_serving": 1})
    );
    check(
        "4-v10-stalled.json",
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
    assert_eq!(
        agent.mid_rollout().await.len(),
        1,
        "v2 and v10 have backends"
    );

    // Undo: the v2 ReplicaSet is revision 4 now and sorts first; v10 has no backends left.
    agent.step("5-undo").await;
    agent.flows(&[("10.244.1.21", 120), ("10.244.1.22", 80)]);
    let v = agent.rollouts().await;
    assert_eq!(v["items"][0]["workload"]["revision"], "4");
    assert_eq!(v["items"][0]["status"], "complete");
    assert_eq!(
        split(&v),
        vec![
            row(V2, "4", 200, Some(1.0)),
            row(V10, "3", 0, Some(0.0)),
            row(V1, "1", 0, Some(0.0)),
        ]
    );
    check(
        "5-undo.json",
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
    assert!(agent.mid_rollout().await.is_empty());
}

/// A sample's value in a Prometheus text rendering (`name` with its labels, if any).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .unwrap()
        .to_string()
}

/// The web Service and its slice of step 1, with `trigger` as the slice's trigger-time
/// annotation (or none) and its second endpoint at `second` instead of 10.244.1.12.
fn web_with_trigger(trigger: Option<&str>, second: &str) -> String {
    let annotation =
        "      endpoints.kubernetes.io/last-change-trigger-time: \"2026-12-01T10:00:11Z\"\n";
    let text = fixture("1-v1");
    assert!(text.contains(annotation));
    let text = match trigger {
        Some(t) => text.replace(
            annotation,
            &format!("      endpoints.kubernetes.io/last-change-trigger-time: \"{t}\"\n"),
        ),
        None => text.replace(&format!("    annotations:\n{annotation}"), ""),
    };
    text.replace("10.244.1.12", second)
}

#[test]
fn programming_latency_is_measured_from_each_new_trigger_time_once_programmed() {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    let sample_of = |suffix: &str| {
        sample(
            &recorder.handle().render(),
            &format!("{PROGRAMMING_DURATION}_{suffix}"),
        )
    };
    let path = dir().join("cluster.yaml");
    let mut store = Store::default();
    // As if the agent had started a minute ago: older trigger times are not its changes.
    let now = SystemTime::now();
    store.tables.triggers_since = now - Duration::from_secs(60);
    let mut rec = Reconciler::new(FakeDataPath::default());
    rec.allow_pruning();
    let apply = |store: &mut Store, rec: &mut Reconciler<FakeDataPath>, text: &str| {
        let objs = files::parse_file(&path, text).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(store.replace_file(&path, objs).is_empty());
        ::metrics::with_local_recorder(&recorder, || {
            sync_dirty(&mut store.tables, &Default::default(), rec)
        })
    };

    // Changed 2 s ago, programmed now: one observation of at least 2 s.
    let two_s_ago = rfc3339(now - Duration::from_secs(2));
    let round = apply(
        &mut store,
        &mut rec,
        &web_with_trigger(Some(&two_s_ago), "10.244.1.12"),
    );
    assert_eq!(round.upserted, vec![WEB.to_string()]);
    assert_eq!(sample_of("count"), Some(1.0));
    let s = sample_of("sum").unwrap();
    assert!((2.0..60.0).contains(&s), "{s}");

    // The endpoints change again under the same trigger time: it is observed once only.
    let round = apply(
        &mut store,
        &mut rec,
        &web_with_trigger(Some(&two_s_ago), "10.244.1.14"),
    );
    assert_eq!(round.upserted, vec![WEB.to_string()]);
    assert_eq!(sample_of("count"), Some(1.0));

    // A new trigger time whose write fails is observed once the service is programmed.
    let one_s_ago = rfc3339(now - Duration::from_secs(1));
    rec.data_path_mut().fail_on = Some(WEB.into());
    let round = apply(
        &mut store,
        &mut rec,
        &web_with_trigger(Some(&one_s_ago), "10.244.1.13"),
    );
    assert_eq!(round.errors.len(), 1, "{round:?}");
    assert_eq!(sample_of("count"), Some(1.0), "not programmed yet");
    rec.data_path_mut().fail_on = None;
    store.tables.mark_dirty(Key::new("default", "web"));
    let round = ::metrics::with_local_recorder(&recorder, || {
        sync_dirty(&mut store.tables, &Default::default(), &mut rec)
    });
    assert_eq!(round.upserted, vec![WEB.to_string()]);
    assert_eq!(sample_of("count"), Some(2.0));
    let s = sample_of("sum").unwrap();
    assert!((3.0..120.0).contains(&s), "2 s and 1 s observed: {s}");

    // Programmed, but a trigger time from before the agent started, or none: nothing.
    let an_hour_ago = rfc3339(now - Duration::from_secs(3600));
    for text in [
        web_with_trigger(Some(&an_hour_ago), "10.244.1.15"),
        web_with_trigger(None, "10.244.1.16"),
    ] {
        let round = apply(&mut store, &mut rec, &text);
        assert_eq!(round.upserted, vec![WEB.to_string()]);
    }
    assert_eq!(sample_of("count"), Some(2.0));
}
