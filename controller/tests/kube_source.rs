//! The Kubernetes source against an API server: kube-mock's in-process list/watch server,
//! and (envtest's convention) a real kube-apiserver when `KUBEBUILDER_ASSETS` names a folder
//! with kube-apiserver and etcd, else reported as skipped. The objects are the golden
//! fixtures, exactly as `kubectl get -o yaml` prints them.
//!
//! Every wait is on an event (the source's change notification, the mock's request log)
//! with a deadline; nothing sleeps.

mod common;

use std::{path::Path, time::Duration};

use controller::{
    fake::FakeDataPath,
    files, kube as source,
    model::Key,
    reconcile::{Reconciler, sync_dirty},
    state::Shared,
    store::Store,
};
use kube_mock::{Cluster, MockApiServer, Verb};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const NODE: &str = "sluice-lab-node";
const WAIT: Duration = Duration::from_secs(20);

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/kubectl"))
}

/// The agent's source side: shared state with the fake data path, and the watchers.
struct Agent {
    shared: Shared,
    journal: controller::fake::Journal,
    _watchers: JoinSet<()>,
}

impl Agent {
    async fn start(client: kube::Client) -> Agent {
        let (fake, journal) = FakeDataPath::with_journal();
        let shared = Shared::new(Box::new(fake), None);
        shared.store.lock().await.set_cluster_mode();
        shared.reconciler.lock().await.allow_pruning();
        let watchers = source::spawn(&shared, client, NODE);
        Agent {
            shared,
            journal,
            _watchers: watchers,
        }
    }

    /// Waits, on the source's change notifications, until `cond` holds for the store.
    async fn until(&self, what: &str, cond: impl Fn(&Store) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if cond(&*self.shared.store.lock().await) {
                return;
            }
            let woke = tokio::time::timeout_at(deadline, self.shared.changed.notified()).await;
            assert!(woke.is_ok(), "timed out waiting until {what}");
        }
    }

    async fn synced(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.shared.sources.all_synced() {
            let woke = tokio::time::timeout_at(deadline, self.shared.changed.notified()).await;
            assert!(
                woke.is_ok(),
                "sources never listed: {:?}",
                self.shared.sources.waiting()
            );
        }
    }

    /// One reconcile round; the data path's dump afterwards.
    async fn round(&self) -> (controller::reconcile::Round, String) {
        let mut store = self.shared.store.lock().await;
        let mut rec = self.shared.reconciler.lock().await;
        let round = sync_dirty(&mut store.tables, &Default::default(), &mut rec);
        let dump = render(rec.data_path());
        (round, dump)
    }
}

/// Every service the data path holds, one line each with its backends and their states.
fn render(dp: &dyn lb_datapath::DataPath) -> String {
    dp.dump()
        .iter()
        .map(|s| {
            let backends: Vec<_> = s.backends.iter().map(|b| (b.addr, b.state)).collect();
            format!("{} {backends:?}", s.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The data path the same fixtures give through the manifest files (the reference: the
/// Kubernetes source must agree with it).
fn through_files() -> String {
    let mut store = Store::default();
    let mut paths: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let objs = files::parse_file(&p, &std::fs::read_to_string(&p).unwrap()).unwrap();
        store.replace_file(&p, objs);
    }
    let mut rec = Reconciler::new(FakeDataPath::default());
    rec.allow_pruning();
    sync_dirty(&mut store.tables, &Default::default(), &mut rec);
    render(rec.data_path())
}

fn slice(ready: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}, "nodeName": NODE}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes-bootcamp-9qv4d", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes-bootcamp"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn bootcamp() -> Key {
    Key::new("default", "kubernetes-bootcamp")
}

fn backends(store: &Store) -> Vec<String> {
    let mut out: Vec<String> = store
        .tables
        .slices_of(&bootcamp())
        .flat_map(|s| {
            s.endpoints
                .iter()
                .map(|e| format!("{}:{}", e.addr, e.ready))
        })
        .collect();
    out.sort();
    out
}

/// Waits until the mock answered more than `above` requests of `verb` on `resource`.
async fn requests_above(mock: &MockApiServer, verb: Verb, resource: &str, above: usize) {
    mock.wait_for_requests(
        |log| {
            log.iter()
                .filter(|r| r.verb == verb && r.resource == Some(resource))
                .count()
                > above
        },
        WAIT,
    )
    .await
    .unwrap();
}

async fn mock_with_fixtures() -> MockApiServer {
    let mock = MockApiServer::start_local().unwrap();
    mock.apply_dir(fixtures()).unwrap();
    // Another node: the Node watch selects only this one.
    mock.apply(json!({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": "other-node"},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.99"}]}}))
        .unwrap();
    mock
}

/// The initial list of every kind, then add, modify and delete, against any API server.
async fn list_add_modify_delete(cluster: &impl Cluster) {
    let agent = Agent::start(cluster.client().unwrap()).await;
    agent.synced().await;
    let (round, dump) = agent.round().await;
    assert!(round.errors.is_empty(), "{round:?}");
    assert_eq!(
        dump,
        through_files(),
        "the Kubernetes source and the files agree"
    );
    {
        let store = agent.shared.store.lock().await;
        assert!(store.tables.node(NODE).is_some());
        assert!(
            store.tables.node("other-node").is_none(),
            "only this node is watched"
        );
        assert_eq!(store.tables.workloads().count(), 1);
        assert_eq!(store.tables.replicasets().count(), 2);
    }

    // Modify: scale the second slice to three ready endpoints.
    cluster
        .apply(slice(&[
            ("198.51.100.12", true),
            ("198.51.100.13", true),
            ("198.51.100.14", true),
        ]))
        .await
        .unwrap();
    agent
        .until("the new endpoints arrive", |s| {
            backends(s).contains(&"198.51.100.14:true".to_string())
        })
        .await;
    let (round, dump) = agent.round().await;
    assert_eq!(
        round.upserted,
        vec!["default/kubernetes-bootcamp:8080/TCP"],
        "only the changed service"
    );
    assert!(dump.contains("198.51.100.14:8080, Ready"), "{dump}");

    // Add a service; delete another.
    cluster
        .apply(json!({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "late", "namespace": "default"},
                      "spec": {"type": "NodePort", "clusterIP": "10.96.0.77",
                               "ports": [{"port": 80, "nodePort": 30777, "protocol": "TCP"}]}}))
        .await
        .unwrap();
    cluster.delete("Service", "shop", "shop").await.unwrap();
    agent
        .until("the add and the delete arrive", |s| {
            s.tables.service(&Key::new("default", "late")).is_some()
                && s.tables.service(&Key::new("shop", "shop")).is_none()
        })
        .await;
    let (round, dump) = agent.round().await;
    assert_eq!(round.upserted, vec!["default/late:80/TCP"]);
    let mut removed = round.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "shop/shop:dns/UDP",
            "shop/shop:dns/UDP/v6",
            "shop/shop:http/TCP",
            "shop/shop:http/TCP/v6"
        ]
    );
    assert!(!dump.contains("shop/shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_initial_list_add_modify_delete() {
    let mock = mock_with_fixtures().await;
    list_add_modify_delete(&mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envtest_initial_list_add_modify_delete() {
    match kube_mock::envtest::start().await.unwrap() {
        kube_mock::Envtest::Skipped(why) => why.report(),
        kube_mock::Envtest::Running(server) => {
            for obj in kube_mock::fixtures::load_dir(fixtures()).unwrap() {
                server.apply(obj).await.unwrap();
            }
            server
                .apply(
                    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "other-node"}}),
                )
                .await
                .unwrap();
            list_add_modify_delete(&*server).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_change_nothing_and_cause_no_relist() {
    let mock = mock_with_fixtures().await;
    let agent = Agent::start(mock.client().unwrap()).await;
    agent.synced().await;
    agent.round().await;
    mock.wait_for_watchers("endpointslices", 1, WAIT)
        .await
        .unwrap();
    let lists = mock.list_count("endpointslices");
    mock.send_bookmarks();
    // A change after the bookmark still arrives on the same watch.
    mock.apply(slice(&[("198.51.100.12", true), ("198.51.100.17", true)]))
        .unwrap();
    agent
        .until("the change after the bookmark", |s| {
            backends(s).contains(&"198.51.100.17:true".to_string())
        })
        .await;
    assert_eq!(
        mock.list_count("endpointslices"),
        lists,
        "no relist for a bookmark"
    );
    let (round, _) = agent.round().await;
    assert_eq!(
        round.upserted,
        vec!["default/kubernetes-bootcamp:8080/TCP"],
        "{round:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_without_pruning_what_still_exists() {
    let mock = mock_with_fixtures().await;
    let agent = Agent::start(mock.client().unwrap()).await;
    agent.synced().await;
    agent.round().await;
    for r in ["services", "endpointslices"] {
        mock.wait_for_watchers(r, 1, WAIT).await.unwrap();
    }
    let lists = mock.list_count("endpointslices");
    // Compacted history and cut watches: every watcher resumes from before the compaction,
    // gets 410 and relists. One slice is deleted once the watches are cut (deleted while a
    // watch is still open, its event could arrive on it and move the watcher past the
    // compaction, and then nothing would relist).
    mock.compact();
    mock.disconnect_watches();
    mock.delete("EndpointSlice", "default", "kubernetes-bootcamp-9qv4d")
        .unwrap();
    requests_above(&mock, Verb::List, "endpointslices", lists).await;
    agent
        .until("the relist removes the deleted slice", |s| {
            s.tables
                .slice(&Key::new("default", "kubernetes-bootcamp-9qv4d"))
                .is_none()
        })
        .await;
    let (round, dump) = agent.round().await;
    // Only the service whose slice went away is rewritten; everything else stays.
    assert_eq!(
        round.upserted,
        vec!["default/kubernetes-bootcamp:8080/TCP"],
        "{round:?}"
    );
    assert!(round.removed.is_empty(), "{round:?}");
    assert!(dump.contains("shop/shop:http/TCP"), "{dump}");
    assert!(!dump.contains("198.51.100.13"), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_resumes_the_watch_and_loses_no_change() {
    let mock = mock_with_fixtures().await;
    let agent = Agent::start(mock.client().unwrap()).await;
    agent.synced().await;
    agent.round().await;
    mock.wait_for_watchers("endpointslices", 1, WAIT)
        .await
        .unwrap();
    let watches = mock.watch_count("endpointslices");
    mock.disconnect_watches();
    requests_above(&mock, Verb::Watch, "endpointslices", watches).await;
    mock.apply(slice(&[("198.51.100.12", true), ("198.51.100.15", true)]))
        .unwrap();
    agent
        .until("the change after the reconnect", |s| {
            backends(s).contains(&"198.51.100.15:true".to_string())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_down_at_start_then_up_syncs_and_down_later_loses_nothing() {
    let mock = mock_with_fixtures().await;
    mock.set_down(true);
    let agent = Agent::start(mock.client().unwrap()).await;
    // Down: the watchers fail and retry; nothing is listed, nothing is ready.
    mock.wait_for_refused(5, WAIT).await.unwrap();
    assert!(!agent.shared.sources.all_synced());
    assert!(!agent.shared.sources.waiting().is_empty());
    mock.set_down(false);
    agent.synced().await;
    let (_, dump) = agent.round().await;
    assert_eq!(dump, through_files());

    // Down later: the data path keeps everything; a change made meanwhile arrives after.
    let refused = mock.refused_connections();
    mock.set_down(true);
    // Once clients fail to reconnect, every watch is cut: a change now is not seen.
    mock.wait_for_refused(refused + 2, WAIT).await.unwrap();
    mock.apply(slice(&[("198.51.100.12", true), ("198.51.100.16", true)]))
        .unwrap();
    let (round, dump) = agent.round().await;
    assert!(
        !round.wrote(),
        "nothing is removed while the API server is down: {round:?}"
    );
    assert_eq!(dump, through_files());
    mock.set_down(false);
    agent
        .until("the change made while down", |s| {
            backends(s).contains(&"198.51.100.16:true".to_string())
        })
        .await;
}

/// `/readyz` through the real reconcile loop: 503 naming the watches still listing while the
/// API server is down, 200 once every watch listed and the first round ran; the loop then
/// programs what was listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_every_watch_and_the_first_round() {
    use controller::agent::{endpoints, reconcile_loop};

    let mock = mock_with_fixtures().await;
    mock.set_down(true);
    let agent = Agent::start(mock.client().unwrap()).await;
    let prom = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = endpoints::Health::new(agent.shared.clone(), Duration::from_secs(60), prom);
    let router = endpoints::router(health.clone());
    let readyz = || async {
        let (status, body) = common::get(&router, "/readyz").await;
        (status, String::from_utf8_lossy(&body).to_string())
    };
    let looped = tokio::spawn(reconcile_loop::run(
        agent.shared.clone(),
        health.clone(),
        Duration::from_secs(300),
        NODE.to_string(),
        controller::agent::seed::SeedPlan::Fixed(7),
    ));
    mock.wait_for_refused(5, WAIT).await.unwrap();
    let (status, body) = readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("Kubernetes Service watch")
            && body.contains("Kubernetes EndpointSlice watch"),
        "{body}"
    );
    let mut ready = health.ready.subscribe();
    mock.set_down(false);
    // The loop runs its first round once every watch listed; readiness follows it.
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("never ready")
        .unwrap();
    assert_eq!(readyz().await.0, 200);
    let dump = {
        let rec = agent.shared.reconciler.lock().await;
        render(rec.data_path())
    };
    assert_eq!(dump, through_files());
    let calls = agent.journal.lock().unwrap().clone();
    assert!(
        calls.contains(&"node addresses [192.0.2.2, 2001:db8:192::2]".to_string()),
        "the Node's InternalIPs are NodePort addresses: {calls:?}"
    );
    looped.abort();
}
