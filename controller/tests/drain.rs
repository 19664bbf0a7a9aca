//! The cluster-wide drain handshake (`sluice drain-wait --all-nodes`): in-process agents,
//! each fed by a kube-mock API server of its own (so the test decides when each one learns
//! that an endpoint terminates) and serving its API on a listener of its own; the CLI's
//! `drain_wait_all` asks them over TCP, as in a pod's preStop hook.
//!
//! Every wait is on an event (a reconcile round, an answered API request) with a deadline;
//! nothing sleeps.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{extract::Request, middleware::Next};
use controller::{
    api, client, fake::FakeDataPath, kube as source, model::Key, reconcile::sync_dirty,
    state::Shared,
};
use kube_mock::MockApiServer;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

const WAIT: Duration = Duration::from_secs(20);
/// Pod addresses of `web` (DESIGN.md's pod range).
const A: &str = "198.51.100.31";
const B: &str = "198.51.100.32";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An endpoint of `web`: ready, or terminating (still serving) as during a pod's preStop.
#[derive(Clone, Copy)]
enum Phase {
    Ready,
    Terminating,
}

fn web_slice(a: Phase, b: Phase) -> Value {
    let endpoint = |addr: &str, phase| {
        let conditions = match phase {
            Phase::Ready => json!({"ready": true, "serving": true, "terminating": false}),
            Phase::Terminating => json!({"ready": false, "serving": true, "terminating": true}),
        };
        json!({"addresses": [addr], "conditions": conditions, "nodeName": "node-1"})
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-7xk2p", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [endpoint(A, a), endpoint(B, b)],
    })
}

/// What every mock holds: `web` with both endpoints ready, and the agents' headless Service
/// with one slice per agent (the API port is per slice).
fn cluster(agents: &[(&str, SocketAddr)]) -> Vec<Value> {
    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                "nodePort": 30050, "protocol": "TCP"}]},
        }),
        web_slice(Phase::Ready, Phase::Ready),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "sluice-agents", "namespace": "kube-system"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                     "selector": {"app.kubernetes.io/name": "sluice"},
                     "ports": [{"name": "api", "port": 10260, "protocol": "TCP"}]},
        }),
    ];
    for (node, addr) in agents {
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("sluice-agents-{node}"), "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "sluice-agents"}},
            "addressType": "IPv4",
            "ports": [{"name": "api", "port": addr.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr.ip().to_string()], "nodeName": node,
                           "conditions": {"ready": true}}],
        }));
    }
    objects
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// One agent: the Kubernetes source on its own mock, a reconcile loop over the fake data
/// path, and the API served on `listener`. Everything stops when it is dropped.
struct Agent {
    node: &'static str,
    addr: SocketAddr,
    /// The router without a socket, for the test's own reads (not counted).
    router: axum::Router,
    /// Reconcile rounds done.
    rounds: watch::Receiver<u64>,
    /// Answered endpoint requests from outside (drain-wait's).
    endpoint_answers: watch::Receiver<u64>,
    mock: MockApiServer,
    _watchers: JoinSet<()>,
    _tasks: JoinSet<()>,
}

impl Agent {
    async fn start(
        node: &'static str,
        listener: TcpListener,
        objects: &[Value],
        peer_service: Option<Key>,
    ) -> Agent {
        let addr = listener.local_addr().unwrap();
        let mock = MockApiServer::start_local().unwrap();
        for o in objects {
            mock.apply(o).unwrap();
        }
        let shared = Shared::new(Box::new(FakeDataPath::default()), None);
        let shared = match peer_service {
            Some(k) => shared.with_peer_service(Some(k)),
            None => shared,
        };
        shared.store.lock().await.set_cluster_mode();
        shared.reconciler.lock().await.allow_pruning();
        let watchers = source::spawn(&shared, mock.client().unwrap(), node);

        let mut tasks = JoinSet::new();
        let (round_tx, rounds) = watch::channel(0u64);
        let looping = shared.clone();
        tasks.spawn(async move {
            loop {
                looping.changed.notified().await;
                {
                    let mut store = looping.store.lock().await;
                    let mut rec = looping.reconciler.lock().await;
                    let round = sync_dirty(&mut store.tables, &Default::default(), &mut rec);
                    assert!(round.errors.is_empty(), "{round:?}");
                }
                round_tx.send_modify(|n| *n += 1);
            }
        });

        let router = api::router(shared);
        let (answer_tx, endpoint_answers) = watch::channel(0u64);
        let answer_tx = Arc::new(answer_tx);
        let served = router.clone().layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let answer_tx = answer_tx.clone();
                async move {
                    let counted = req
                        .uri()
                        .path()
                        .starts_with("/sluice/v1/dataplane/endpoints/");
                    let response = next.run(req).await;
                    if counted {
                        answer_tx.send_modify(|n| *n += 1);
                    }
                    response
                }
            },
        ));
        tasks.spawn(async move { axum::serve(listener, served).await.unwrap() });
        Agent {
            node,
            addr,
            router,
            rounds,
            endpoint_answers,
            mock,
            _watchers: watchers,
            _tasks: tasks,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = common::get(&self.router, path).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits, round by round, until `cond` holds for the answer to `path`.
    async fn until(&mut self, what: &str, path: &str, cond: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.rounds.borrow_and_update();
            let v = self.get(path).await;
            if cond(&v) {
                return;
            }
            let woke = tokio::time::timeout_at(deadline, self.rounds.changed()).await;
            assert!(
                woke.is_ok(),
                "{}: timed out waiting until {what}; last: {v}",
                self.node
            );
        }
    }

    async fn until_selectable(&mut self, addr: &str, want: bool) {
        let path = format!("/sluice/v1/dataplane/endpoints/{addr}?flows=false");
        let what = format!("{addr} selectable={want}");
        self.until(&what, &path, |v| {
            v["items"].as_array().is_some_and(|i| !i.is_empty()) && v["selectable"] == want
        })
        .await;
    }

    async fn until_peers(&mut self, n: usize) {
        self.until(&format!("{n} peers"), "/sluice/v1/peers", |v| {
            v["peers"].as_array().map(Vec::len) == Some(n)
        })
        .await;
    }

    /// Waits until this agent answered `n` more endpoint requests than when `seen` was read.
    async fn answered_more(&mut self, seen: u64, n: u64) {
        tokio::time::timeout(WAIT, self.endpoint_answers.wait_for(|c| *c >= seen + n))
            .await
            .expect("drain-wait kept asking")
            .unwrap();
    }
}

/// Two agents, each knowing both as peers, both selecting A and B.
async fn two_agents(extra_peers: &[(&str, SocketAddr)]) -> (Agent, Agent) {
    let (l1, l2) = (listener().await, listener().await);
    let mut peers = vec![
        ("node-1", l1.local_addr().unwrap()),
        ("node-2", l2.local_addr().unwrap()),
    ];
    peers.extend_from_slice(extra_peers);
    let objects = cluster(&peers);
    let mut one = Agent::start("node-1", l1, &objects, None).await;
    let mut two = Agent::start("node-2", l2, &objects, None).await;
    for agent in [&mut one, &mut two] {
        agent.until_peers(peers.len()).await;
        agent.until_selectable(A, true).await;
        agent.until_selectable(B, true).await;
    }
    (one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_all_nodes_returns_only_after_every_agent_stopped_selecting() {
    let (mut one, mut two) = two_agents(&[]).await;
    let api = one.addr;
    let drain = tokio::task::spawn_blocking(move || {
        client::drain_wait_all(api, ip(A), Duration::from_secs(60), true)
    });

    // Agent 1 learns that A terminates; agent 2 does not yet.
    one.mock
        .apply(web_slice(Phase::Terminating, Phase::Ready))
        .unwrap();
    one.until_selectable(A, false).await;
    two.until_selectable(A, true).await;
    // Three more answers from agent 1 after it stopped selecting: the second came from a
    // round that began after agent 1 drained, and the third from the round after that one,
    // so a round saw agent 1 drained and drain-wait went on asking.
    let seen = *one.endpoint_answers.borrow();
    one.answered_more(seen, 3).await;
    assert!(
        !drain.is_finished(),
        "drain-wait returned while agent 2 still selects {A}"
    );

    two.mock
        .apply(web_slice(Phase::Terminating, Phase::Ready))
        .unwrap();
    two.until_selectable(A, false).await;
    let out = tokio::time::timeout(WAIT, drain)
        .await
        .expect("drain-wait returned")
        .unwrap()
        .expect("drained everywhere");
    for agent in [&one, &two] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(agent.node) && l.contains(&agent.addr.to_string())),
            "one line per agent: {out}"
        );
    }
    assert!(out.contains("kube-system/sluice-agents"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_all_nodes_times_out_naming_the_agents_not_confirmed() {
    // A third peer that accepts connections and never answers (a hung node).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (mut one, mut two) = two_agents(&[("node-3", silent_addr)]).await;

    one.mock
        .apply(web_slice(Phase::Ready, Phase::Terminating))
        .unwrap();
    one.until_selectable(B, false).await;
    two.until_selectable(B, true).await;

    let api = one.addr;
    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || {
        client::drain_wait_all(api, ip(B), Duration::from_secs(1), false)
    })
    .await
    .unwrap()
    .expect_err("agent 2 still selects B");
    let elapsed = started.elapsed();
    let msg = format!("{err:#}");
    let line = |node: &str| msg.lines().find(|l| l.trim_start().starts_with(node));
    let two_line = line("node-2").unwrap_or_else(|| panic!("names agent 2: {msg}"));
    assert!(
        two_line.contains(&two.addr.to_string()) && two_line.contains("still selects"),
        "{msg}"
    );
    let silent_line = line("node-3").unwrap_or_else(|| panic!("names the silent agent: {msg}"));
    assert!(silent_line.contains("did not answer"), "{msg}");
    assert!(line("node-1").is_none(), "agent 1 has drained: {msg}");
    assert!(msg.contains("--timeout"), "says how to wait longer: {msg}");
    assert!(
        elapsed < Duration::from_secs(4),
        "the silent agent does not hold drain-wait past its timeout: {elapsed:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_all_nodes_fails_clearly_without_peers() {
    // The mock lists the default peer service's slices; this agent looks for another one.
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let objects = cluster(&[("node-1", addr)]);
    let mut agent = Agent::start("node-1", l, &objects, Some(Key::new("lab", "agents"))).await;
    agent.until_selectable(A, true).await;

    let view = agent.get("/sluice/v1/peers").await;
    assert_eq!(view["service"], "lab/agents");
    assert_eq!(view["peers"], json!([]));
    let note = view["note"].as_str().unwrap();
    assert!(note.contains("deploy/agents-service.yaml"), "{note}");

    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || {
        client::drain_wait_all(addr, ip(A), Duration::from_secs(30), false)
    })
    .await
    .unwrap()
    .expect_err("no peers");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails at once, not at the timeout"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("lab/agents") && msg.contains("deploy/agents-service.yaml"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_view_lists_the_agents_with_their_nodes() {
    let (one, two) = two_agents(&[]).await;
    let view = one.get("/sluice/v1/peers").await;
    let mut expected = vec![
        json!({"node": "node-1", "address": one.addr.to_string()}),
        json!({"node": "node-2", "address": two.addr.to_string()}),
    ];
    expected.sort_by_key(|p| {
        p["address"]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap()
    });
    assert_eq!(
        view,
        json!({"service": "kube-system/sluice-agents", "peers": expected})
    );
}
