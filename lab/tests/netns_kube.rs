//! Netns tier, the agent in Kubernetes mode: `sluice run --kubeconfig` attached to the lab
//! node's uplink and fed by kube-mock's list/watch API server (listening inside the node
//! namespace, so the agent reaches it at 127.0.0.1), moving real traffic from the client
//! namespace through a NodePort while the objects change:
//!
//! 1. the agent starts while the API server already holds a Node, a NodePort Service and its
//!    EndpointSlice (one ready pod): `/readyz`, then traffic reaches that pod;
//! 2. scale 1 -> 3 through an EndpointSlice update: new connections spread over the three;
//! 3. a readiness flip: the not-ready pod accepts no new connection, then is ready again;
//! 4. scale 3 -> 2 through the drain handshake: terminating, the agent's
//!    `/sluice/v1/dataplane/endpoints/<ip>` says `selectable: false`, SIGTERM, removal;
//! 5. (mock only) API-server trouble: down for a while (a change made meanwhile arrives once
//!    it is back), then compaction + disconnected watches (410, relist): the relist removes
//!    nothing that exists and a change made after it reaches the data path;
//! 6. the Service becomes a LoadBalancer: the agent (holding the IPAM Lease) writes an
//!    address of its pool into the Service's status and serves it: traffic through it works;
//! 7. the Service is deleted: the NodePort refuses (TCP RST).
//!
//! Bounded load runs in both connection modes (keep-alive and a new connection per request)
//! during every phase, and every request is counted: 0 failed (`retried` is reported). Every
//! wait is on an observable event (the agent's HTTP views and metrics, the mock's open
//! watches) with a deadline. The same scenario, without the mock-only step 5, runs against a
//! real kube-apiserver when `KUBEBUILDER_ASSETS` names a folder with kube-apiserver and etcd
//! (envtest's convention); otherwise that test reports `skipped: ...` and passes.

mod common;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol, Report};
use common::*;
use kube_mock::{Cluster, Envtest, MockApiServer};
use lab::{Lab, PinDir, Signal, process::Process};
use serde_json::{Value, json};

const API: &str = "127.0.0.1:10260";
const METRICS: &str = "127.0.0.1:10249";
const NAMESPACE: &str = "default";
const SERVICE: &str = "web";
const SLICE: &str = "web-x7k2p";
/// In the NodePort range (30000-32767).
const NODE_PORT: u16 = 30480;
/// In envtest's service range (10.96.0.0/12); no traffic is ever sent to it.
const CLUSTER_IP: &str = "10.96.0.80";
/// The LoadBalancer IP pool: 203.0.113.65 and .66 (the lab routes 203.0.113.0/24 from the
/// client to the node).
const LB_POOL: &str = "203.0.113.64/30";
/// The first address the assigner hands out.
const LB_IP: &str = "203.0.113.65";
/// The data-path name of the Service's one port.
const SPEC: &str = "default/web:http/TCP";
/// Pods in the lab: 0..3 are in the slice at some point, 3 only after the relist (mock).
const PODS: usize = 4;
/// Requests per second of each background load.
const RATE: f64 = 200.0;
/// Longest wait for one event.
const WAIT: Duration = Duration::from_secs(20);
/// Longest wait for every watch to relist after 410 (see step 5b).
const RELIST_WAIT: Duration = Duration::from_secs(15);
/// Kinds the agent watches, as kube-mock's plurals.
const WATCHED: [&str; 5] = [
    "services",
    "endpointslices",
    "nodes",
    "deployments",
    "replicasets",
];
/// The same kinds, as the agent's metrics label them.
const KINDS: [&str; 5] = [
    "Service",
    "EndpointSlice",
    "Node",
    "Deployment",
    "ReplicaSet",
];

/// An endpoint's conditions, as the EndpointSlice controller writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    /// ready, serving, not terminating.
    Ready,
    /// A running pod failing its readiness probe: not ready, not serving.
    NotReady,
    /// A pod being deleted, still serving: not ready, serving, terminating.
    Terminating,
}

fn pod_name(i: usize) -> String {
    format!("web-5d8f7c9b4-p{i}")
}

/// A directory removed on drop; if the test is failing it first prints the agent's log.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("work dir");
        WorkDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn log(&self) -> PathBuf {
        self.0.join("agent.log")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of the agent's log ({}):\n{}",
                self.log().display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One scenario's world: the lab, the API server (as a [`Cluster`]) and the runtime that
/// drives its client, which lives in the node namespace like the agent.
struct World<'a, C> {
    lab: &'a Lab,
    cluster: &'a C,
    rt: &'a tokio::runtime::Runtime,
    node_name: String,
    service_uid: String,
}

impl<C: Cluster + Sync> World<'_, C> {
    /// Runs `f` to completion on the runtime, on a thread inside the node namespace (so
    /// whatever it connects to or spawns is there too).
    fn block_on<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        self.lab
            .node()
            .enter(|| self.rt.block_on(f))
            .expect("enter the node namespace")
    }

    fn apply(&self, obj: Value) -> Value {
        let what = format!("{}/{}", obj["kind"], obj["metadata"]["name"]);
        self.block_on(self.cluster.apply(obj))
            .unwrap_or_else(|e| panic!("apply {what}: {e}"))
    }

    fn delete(&self, kind: &str, name: &str) {
        self.block_on(self.cluster.delete(kind, NAMESPACE, name))
            .unwrap_or_else(|e| panic!("delete {kind} {name}: {e}"));
    }

    fn node_object(&self) -> Value {
        let name = &self.node_name;
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                },
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"podCIDR": "198.51.100.0/24", "podCIDRs": ["198.51.100.0/24"]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": self.lab.node_addr().to_string()},
                    {"type": "Hostname", "address": name},
                ],
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2025-10-14T09:20:02Z",
                    "lastTransitionTime": "2025-10-14T09:02:41Z",
                }],
                "nodeInfo": {
                    "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://2.1.4",
                    "kernelVersion": "6.12.48", "kubeProxyVersion": "", "kubeletVersion": "v1.35.0",
                    "machineID": "", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 13 (trixie)",
                    "systemUUID": "",
                },
            },
        })
    }

    /// The Service's EndpointSlice listing `pods` with their conditions.
    fn slice_object(&self, pods: &[(usize, Cond)]) -> Value {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|&(i, cond)| {
                let (ready, serving, terminating) = match cond {
                    Cond::Ready => (true, true, false),
                    Cond::NotReady => (false, false, false),
                    Cond::Terminating => (false, true, true),
                };
                json!({
                    "addresses": [self.lab.backend_addr(i).to_string()],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": self.node_name,
                    "targetRef": {
                        "kind": "Pod", "namespace": NAMESPACE, "name": pod_name(i),
                        "uid": format!("0d3e6b1a-2c4f-4e8a-b1d7-5a9c3e2f7b{i:02}"),
                    },
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": SLICE, "namespace": NAMESPACE, "generateName": format!("{SERVICE}-"),
                "labels": {
                    "kubernetes.io/service-name": SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "annotations": {
                    "endpoints.kubernetes.io/last-change-trigger-time": "2025-10-14T09:21:37Z",
                },
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Service", "name": SERVICE,
                    "uid": self.service_uid, "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    }

    fn set_slice(&self, pods: &[(usize, Cond)]) {
        self.apply(self.slice_object(pods));
    }

    /// `GET path` from inside the node namespace: (status, body).
    fn get(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        common::agent_http(self.lab.node(), addr, "GET", path, &[], None)
    }

    fn get_json(&self, path: &str) -> Option<Value> {
        match self.get(API, path)? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The agent's drain-handshake view of pod `i`: (selectable, states per service); an
    /// empty list when the data path does not know the address.
    fn endpoint(&self, i: usize) -> Option<(bool, Vec<String>)> {
        let v = self.get_json(&format!(
            "/sluice/v1/dataplane/endpoints/{}",
            self.lab.backend_addr(i)
        ))?;
        let states = v["items"]
            .as_array()?
            .iter()
            .map(|item| item["state"].as_str().unwrap_or("?").to_string())
            .collect();
        Some((v["selectable"].as_bool()?, states))
    }

    /// What the data path holds for the Service: its backends as (address, state), `None`
    /// when it holds no such service.
    fn backends(&self) -> Option<Vec<(String, String)>> {
        let v = self.get_json("/sluice/v1/dataplane/services")?;
        let svc = v["items"].as_array()?.iter().find(|s| s["name"] == SPEC)?;
        Some(
            svc["backends"]
                .as_array()?
                .iter()
                .map(|b| {
                    (
                        b["addr"].as_str().unwrap_or("?").to_string(),
                        b["state"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect(),
        )
    }

    /// The data path's backends the scenario expects for `pods`.
    fn expected(&self, pods: &[(usize, Cond)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = pods
            .iter()
            .map(|&(i, c)| {
                let state = match c {
                    Cond::Ready => "Ready",
                    Cond::NotReady => "NotServing",
                    Cond::Terminating => "ServingTerminating",
                };
                (
                    SocketAddr::new(self.lab.backend_addr(i).into(), HTTP_PORT).to_string(),
                    state.to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Waits until the data path holds exactly `pods` (in the agent's view).
    fn wait_backends(&self, what: &str, pods: &[(usize, Cond)]) {
        let want = self.expected(pods);
        let mut last = None;
        wait_for(what, || {
            last = self.backends().map(|mut b| {
                b.sort();
                b
            });
            last.as_ref() == Some(&want)
        })
        .unwrap_or_else(|e| panic!("{e}: want {want:?}, last seen {last:?}"));
    }

    fn wait_selectable(&self, what: &str, i: usize, selectable: bool) {
        let mut last = None;
        wait_for(what, || {
            last = self.endpoint(i);
            last.as_ref()
                .is_some_and(|(s, items)| *s == selectable && !items.is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}: last seen {last:?}"));
    }

    fn metrics(&self) -> String {
        match self.get(METRICS, "/metrics") {
            Some((200, body)) => body,
            other => panic!("/metrics: {other:?}"),
        }
    }

    /// `n` new connections to the NodePort from the client namespace.
    fn who_answers(&self, n: u64) -> Report {
        load_from_client(
            self.lab,
            SocketAddr::new(self.lab.node_addr().into(), NODE_PORT),
            LoadProtocol::http("/"),
            ConnectionMode::NewConnectionPerRequest,
            n,
            4,
        )
    }
}

/// The NodePort Service, as `kubectl get -o yaml` prints one (less what the server sets).
fn service_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {"app": SERVICE}},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": SERVICE},
            "ports": [{
                "name": "http", "port": 80, "protocol": "TCP",
                "targetPort": HTTP_PORT, "nodePort": NODE_PORT,
            }],
        },
        "status": {"loadBalancer": {}},
    })
}

/// Polls `f` (an observation of the agent or the mock) every 50 ms until it holds, for at
/// most [`WAIT`].
fn wait_for(what: &str, f: impl FnMut() -> bool) -> Result<Duration, String> {
    wait_within(WAIT, what, f)
}

/// [`wait_for`] with a deadline of `limit`.
fn wait_within(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the samples of metric `name` whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn kind_label(kind: &str) -> String {
    format!("kind=\"{kind}\"")
}

/// The agent, `sluice run` in Kubernetes mode inside the node namespace, its stderr in a
/// log file; terminated by PID on drop.
fn start_agent(lab: &Lab, dir: &WorkDir, pins: &PinDir, node_name: &str) -> Process {
    let log = std::fs::File::create(dir.log()).expect("agent log");
    // LoadBalancer IP assignment on, from a pool of the lab's VIP range (step 6).
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("ipam:\n  pools: [\"{LB_POOL}\"]\n")).expect("agent config");
    let mut cmd = lab.node().command(sluice_bin());
    cmd.arg("run").arg("--config").arg(&config);
    cmd.args(["--mode", mode_arg()]);
    cmd.args([
        "--interface",
        lab.node_uplink(),
        "--api-listen",
        API,
        "--metrics-listen",
        METRICS,
        "--node-name",
        node_name,
        "--instance",
        "kube",
    ])
    .arg("--kubeconfig")
    .arg(dir.path().join("kubeconfig"))
    .arg("--pin-root")
    .arg(pins.path())
    .arg("--state-dir")
    .arg(dir.path().join("state"));
    for i in 0..lab.backends().len() {
        cmd.args(["--redirect", &lab.node_pod_link(i)]);
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Process::spawn_with_stdio(cmd).expect("spawn sluice")
}

/// Both background loads of one phase, against the NodePort from the client namespace.
struct Loads {
    started: Instant,
    keep_alive: JoinHandle<lab::Result<Report>>,
    new_conn: JoinHandle<lab::Result<Report>>,
}

fn start_loads(lab: &Lab, secs: u64, keep_alive_conns: usize) -> Loads {
    let run = |mode, concurrency| {
        let mut cfg = load::Config::new(
            SocketAddr::new(lab.node_addr().into(), NODE_PORT),
            LoadProtocol::http("/"),
        );
        cfg.mode = mode;
        cfg.concurrency = concurrency;
        cfg.rate = Some(RATE);
        cfg.max_requests = 100_000;
        cfg.max_duration = Duration::from_secs(secs);
        lab.client()
            .thread(move || load::run_blocking(cfg).expect("load run"))
            .expect("client thread")
    };
    Loads {
        started: Instant::now(),
        keep_alive: run(ConnectionMode::KeepAlive, keep_alive_conns),
        new_conn: run(ConnectionMode::NewConnectionPerRequest, 8),
    }
}

/// One phase's counted requests.
struct Phase {
    name: &'static str,
    keep_alive: Report,
    new_conn: Report,
    steps: Duration,
}

impl Loads {
    /// Joins both loads; they must have run past the phase's last step (`steps_done`) and
    /// lost no request.
    fn finish(self, name: &'static str, steps_done: Instant) -> Phase {
        let keep_alive = self.keep_alive.join().unwrap().unwrap();
        let new_conn = self.new_conn.join().unwrap().unwrap();
        let steps = steps_done - self.started;
        println!("{name}: steps took {:.2} s", steps.as_secs_f64());
        println!("{name}: keep-alive: {keep_alive}");
        println!("{name}: new connection per request: {new_conn}");
        for (mode, r) in [("keep-alive", &keep_alive), ("new connection", &new_conn)] {
            assert_eq!(r.failures(), 0, "{name}, {mode}: no request failed: {r}");
            assert_eq!(
                r.sent,
                r.outcomes.total(),
                "{name}, {mode}: every request counted"
            );
            assert!(
                r.duration > steps,
                "{name}, {mode}: the load ({:?}) covered every step ({steps:?})",
                r.duration
            );
            assert!(r.sent >= 200, "{name}, {mode}: {r}");
        }
        Phase {
            name,
            keep_alive,
            new_conn,
            steps,
        }
    }
}

/// The scenario, against any API server; `mock` adds step 5 (faults only the mock can play).
/// Returns the phases' reports.
fn scenario<C: Cluster + Sync>(
    w: &World<'_, C>,
    dir: &WorkDir,
    pins: &PinDir,
    servers: &mut [Process],
    mock: Option<&MockApiServer>,
) -> Vec<Phase> {
    use Cond::{NotReady, Ready, Terminating};
    let lab = w.lab;
    let mut phases = Vec::new();

    // 1. The agent starts while the API server already holds the objects.
    let mut pods = vec![(0, Ready)];
    let started = Instant::now();
    let mut sluice = start_agent(lab, dir, pins, &w.node_name);
    let ready = wait_for("/readyz 200", || {
        assert!(sluice.is_running(), "sluice exited during start");
        w.get(METRICS, "/readyz").map(|(s, _)| s) == Some(200)
    })
    .unwrap_or_else(|e| panic!("{e}: last /readyz {:?}", w.get(METRICS, "/readyz")));
    println!("start: /readyz 200 after {:.2} s", ready.as_secs_f64());
    if let Some(mock) = mock {
        for resource in WATCHED {
            w.block_on(mock.wait_for_watchers(resource, watches(resource), WAIT))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        println!(
            "start: the agent listed and watches {WATCHED:?} (lists of endpointslices: {})",
            mock.list_count("endpointslices")
        );
    }
    w.wait_backends("the first pod in the data path", &pods);
    let first = w.who_answers(20);
    assert_eq!(
        (
            first.outcomes.ok,
            first.responders.keys().cloned().collect::<Vec<_>>()
        ),
        (20, vec!["pod0".to_string()]),
        "{first}"
    );
    println!(
        "start: traffic reaches pod0 {:.2} s after the agent started",
        started.elapsed().as_secs_f64()
    );
    let loads = start_loads(lab, 3, 8);
    phases.push(loads.finish("1 steady, one pod", Instant::now()));

    // 2. Scale 1 -> 3: new connections spread over the three pods.
    let loads = start_loads(lab, 6, 8);
    std::thread::sleep(Duration::from_secs(1));
    pods = vec![(0, Ready), (1, Ready), (2, Ready)];
    w.set_slice(&pods);
    w.wait_backends("scale 1 -> 3 in the data path", &pods);
    let spread = w.who_answers(90);
    println!("scale 1 -> 3: 90 new connections: {spread}");
    assert_eq!(spread.outcomes.ok, 90, "{spread}");
    for i in 0..3 {
        assert!(
            spread
                .responders
                .get(&format!("pod{i}"))
                .copied()
                .unwrap_or(0)
                > 0,
            "pod{i} got none of 90 new connections: {spread}"
        );
    }
    phases.push(loads.finish("2 scale 1 -> 3", Instant::now()));

    // 3. Readiness flip: pod1 not ready accepts no new connection; then ready again.
    let loads = start_loads(lab, 8, 8);
    std::thread::sleep(Duration::from_secs(1));
    pods[1].1 = NotReady;
    w.set_slice(&pods);
    w.wait_selectable("pod1 not selectable once not ready", 1, false);
    let before = server_counters(&mut servers[1]).http_connections;
    let probe = w.who_answers(90);
    std::thread::sleep(Duration::from_secs(1)); // the background load keeps connecting
    let after = server_counters(&mut servers[1]).http_connections;
    println!(
        "not ready: pod1 accepted {} connections while not ready; 90 new connections: {probe}",
        after - before
    );
    assert_eq!(before, after, "pod1 accepted connections while not ready");
    assert_eq!(probe.outcomes.ok, 90, "{probe}");
    assert!(!probe.responders.contains_key("pod1"), "{probe}");
    pods[1].1 = Ready;
    w.set_slice(&pods);
    w.wait_selectable("pod1 selectable again once ready", 1, true);
    wait_for("pod1 to get new connections again", || {
        w.who_answers(30).responders.contains_key("pod1")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    phases.push(loads.finish("3 readiness flip", Instant::now()));

    // 4. Scale 3 -> 2 through the drain handshake. 24 keep-alive connections: the chance
    // that pod2 holds none of them is (2/3)^24 < 1e-4.
    let loads = start_loads(lab, 10, 24);
    std::thread::sleep(Duration::from_secs(1));
    pods[2].1 = Terminating;
    w.set_slice(&pods);
    let marked = Instant::now();
    w.wait_selectable("the drain handshake: pod2 not selectable", 2, false);
    let handshake = marked.elapsed();
    servers[2].signal(Signal::SIGTERM).unwrap();
    let status = servers[2].wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "pod2 drained and exited: {status:?}"
    );
    pods.retain(|p| p.0 != 2);
    w.set_slice(&pods);
    w.wait_backends("pod2 removed from the data path", &pods);
    wait_for("the data path to forget pod2", || {
        w.endpoint(2)
            .is_some_and(|(s, items)| !s && items.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "drain: pod2 not selectable {:.3} s after it was marked terminating",
        handshake.as_secs_f64()
    );
    let p = loads.finish("4 drain pod2, scale 3 -> 2", Instant::now());
    assert!(
        p.keep_alive.responders.contains_key("pod2"),
        "pod2 held keep-alive connections when it drained: {}",
        p.keep_alive
    );
    assert!(p.new_conn.responders.contains_key("pod2"), "{}", p.new_conn);
    phases.push(p);

    // 5. API-server trouble (mock only).
    if let Some(mock) = mock {
        api_server_trouble(w, mock, servers, &mut pods, &mut phases);
    }

    // 6. The Service becomes a LoadBalancer: the agent, the Lease holder, assigns it an
    // address of its pool through the status subresource, and the data path serves it.
    let mut lb = service_object();
    lb["spec"]["type"] = "LoadBalancer".into();
    lb["metadata"]["uid"] = w.service_uid.clone().into();
    w.apply(lb);
    let frontend = format!("{LB_IP}:80");
    let assigned = wait_for("the assigned LoadBalancer IP in the data path", || {
        w.get(API, "/sluice/v1/dataplane/services")
            .is_some_and(|(s, body)| s == 200 && body.contains(&frontend))
    })
    .unwrap_or_else(|e| panic!("{e}: IPAM {:?}", w.get_json("/sluice/v1/ipam")));
    let ipam = w.get_json("/sluice/v1/ipam").expect("/sluice/v1/ipam");
    assert_eq!(ipam["leader"], true, "{ipam}");
    assert_eq!(
        ipam["assignments"][LB_IP],
        format!("{NAMESPACE}/{SERVICE}"),
        "{ipam}"
    );
    let through_vip = load_from_client(
        lab,
        SocketAddr::new(LB_IP.parse().unwrap(), 80),
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        40,
        4,
    );
    println!(
        "LoadBalancer: {LB_IP} assigned and served {:.3} s after the type change; 40 new connections: {through_vip}",
        assigned.as_secs_f64()
    );
    assert_eq!(through_vip.outcomes.ok, 40, "{through_vip}");

    // 7. Delete the Service: the NodePort refuses (RST) shortly after.
    let text = w.metrics();
    let rejected = metric(&text, "sluice_objects_rejected_total", "");
    assert_eq!(rejected, 0.0, "no object was rejected by the agent");
    w.delete("Service", SERVICE);
    let deleted = Instant::now();
    let mut last = None;
    let refused_after = wait_for("the NodePort to refuse", || {
        let r = w.who_answers(5);
        let refused = r.outcomes.refused == 5;
        last = Some(r);
        refused
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}"));
    println!(
        "delete: the NodePort refuses {:.3} s after the Service's deletion (5 of 5 refused)",
        refused_after.as_secs_f64()
    );
    assert!(deleted.elapsed() < Duration::from_secs(5));
    assert_eq!(w.backends(), None, "the service left the data path");
    w.delete("EndpointSlice", SLICE);
    wait_for("the data path to forget pod0", || {
        w.endpoint(0).is_some_and(|(_, items)| items.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The agent stops cleanly (the data path stays), then the pins are uninstalled.
    sluice.signal(Signal::SIGTERM).unwrap();
    let status = sluice.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "sluice exit: {status:?}"
    );
    let out = lab
        .node()
        .command(sluice_bin())
        .arg("uninstall")
        .arg("--pin-root")
        .arg(pins.path())
        .args(["--instance", "kube"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    phases
}

/// Step 5: the API server goes down for a while, then loses its watch history and drops
/// every watch; the data path keeps forwarding throughout, changes made meanwhile and after
/// arrive, and the relist removes nothing that still exists.
fn api_server_trouble<C: Cluster + Sync>(
    w: &World<'_, C>,
    mock: &MockApiServer,
    servers: &mut [Process],
    pods: &mut Vec<(usize, Cond)>,
    phases: &mut Vec<Phase>,
) {
    let errors = |text: &str| -> Vec<f64> {
        KINDS
            .iter()
            .map(|k| metric(text, "sluice_kubernetes_watch_errors_total", &kind_label(k)))
            .collect()
    };

    // 5a. Down: the agent's watches fail, the data path keeps forwarding. A change made
    // while it is down (pod1 not ready) reaches the agent once it is back.
    let loads = start_loads(w.lab, 14, 8);
    std::thread::sleep(Duration::from_secs(1));
    let errors_before = errors(&w.metrics());
    mock.set_down(true);
    let down = Instant::now();
    let mut errors_now = Vec::new();
    let seen = wait_for("every watch of the agent to fail", || {
        errors_now = errors(&w.metrics());
        errors_now.iter().zip(&errors_before).all(|(a, b)| a > b)
    })
    .unwrap_or_else(|e| panic!("{e}: watch errors {errors_before:?} -> {errors_now:?}"));
    pods[1].1 = Cond::NotReady;
    w.set_slice(pods);
    // Held down a little longer under load (the outage's length, not a synchronisation).
    std::thread::sleep(Duration::from_secs(2));
    let still = w.endpoint(1);
    assert_eq!(
        still.as_ref().map(|e| e.0),
        Some(true),
        "while the API server is down the agent keeps its last state: {still:?}"
    );
    let readyz = w.get(METRICS, "/readyz").map(|(s, _)| s);
    let healthz = w.get(METRICS, "/healthz").map(|(s, _)| s);
    mock.set_down(false);
    let outage = down.elapsed();
    let errors_during: f64 =
        errors(&w.metrics()).iter().sum::<f64>() - errors_before.iter().sum::<f64>();
    let back = Instant::now();
    for resource in WATCHED {
        w.block_on(mock.wait_for_watchers(resource, watches(resource), WAIT + WAIT))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let rewatched = back.elapsed();
    w.wait_selectable("the change made while down to arrive", 1, false);
    let arrived = back.elapsed();
    pods[1].1 = Cond::Ready;
    w.set_slice(pods);
    w.wait_selectable("pod1 ready again", 1, true);
    println!(
        "down: the agent saw it after {:.2} s ({errors_during} watch errors over a {:.1} s outage; \
         /readyz {readyz:?}, /healthz {healthz:?} meanwhile); every watch back {:.2} s after the \
         API server, the change made meanwhile applied after {:.2} s",
        seen.as_secs_f64(),
        outage.as_secs_f64(),
        rewatched.as_secs_f64(),
        arrived.as_secs_f64()
    );
    let p = loads.finish("5a API server down", Instant::now());
    assert_eq!(p.keep_alive.retried, 0, "no keep-alive flow was disturbed");
    phases.push(p);

    // 5b. Compaction + disconnected watches: every watch resumes, gets 410 and relists. The
    // relist keeps everything (the data path unchanged, traffic on), and a change made after
    // it (pod3 added) reaches the data path.
    // The watches of kinds that had no event since the outage may still carry a raised
    // retry delay (the agent's policy: 0.5 s doubling to at most 10 s, jittered, reset 30 s
    // after the last error), so their relist may take up to that: the load and the wait
    // allow for it.
    let loads = start_loads(w.lab, RELIST_WAIT.as_secs() + 5, 8);
    std::thread::sleep(Duration::from_secs(1));
    let text = w.metrics();
    let lists_before: Vec<f64> = KINDS
        .iter()
        .map(|k| metric(&text, "sluice_kubernetes_lists_total", &kind_label(k)))
        .collect();
    let mock_lists: Vec<usize> = WATCHED.iter().map(|r| mock.list_count(r)).collect();
    let held = w.backends();
    mock.compact();
    mock.disconnect_watches();
    let cut = Instant::now();
    let mut lists_after = Vec::new();
    let relisted = wait_within(RELIST_WAIT, "every watch to relist after 410", || {
        let text = w.metrics();
        lists_after = KINDS
            .iter()
            .map(|k| metric(&text, "sluice_kubernetes_lists_total", &kind_label(k)))
            .collect();
        lists_after.iter().zip(&lists_before).all(|(a, b)| a > b)
    })
    .unwrap_or_else(|e| panic!("{e}: lists {lists_before:?} -> {lists_after:?}"));
    for resource in WATCHED {
        w.block_on(mock.wait_for_watchers(resource, watches(resource), WAIT))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(w.backends(), held, "the relist removed nothing that exists");
    w.wait_backends("the data path unchanged by the relist", pods);
    let pod3_before = server_counters(&mut servers[3]).http_connections;
    assert_eq!(
        pod3_before, 0,
        "pod3 accepted connections before it was listed"
    );
    pods.push((3, Cond::Ready));
    w.set_slice(pods);
    w.wait_backends("pod3, added after the relist, in the data path", pods);
    wait_for("pod3 to get new connections", || {
        w.who_answers(30).responders.contains_key("pod3")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "relist: every watch relisted {:.2} s after compaction + disconnect (agent lists by kind \
         {KINDS:?}: {lists_before:?} -> {lists_after:?}); pod3 added after it serves ({:.2} s \
         after the disconnect)",
        relisted.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    let p = loads.finish("5b 410 and relist", Instant::now());
    assert_eq!(p.keep_alive.retried, 0, "no keep-alive flow was disturbed");
    phases.push(p);
    // One relist per watch, not one per retry (counted by the mock, across the whole phase).
    let lists_now: Vec<usize> = WATCHED.iter().map(|r| mock.list_count(r)).collect();
    println!("relist: lists answered by the mock for {WATCHED:?}: {mock_lists:?} -> {lists_now:?}");
    let once: Vec<usize> = WATCHED
        .iter()
        .zip(&mock_lists)
        .map(|(r, n)| n + watches(r))
        .collect();
    assert_eq!(lists_now, once, "each watch relisted exactly once");
}

/// How many watches the agent keeps on `resource`: Services are watched by the source and by
/// the LoadBalancer IP assigner (the agent holds the IPAM Lease).
fn watches(resource: &str) -> usize {
    if resource == "services" { 2 } else { 1 }
}

fn summary(backend: &str, phases: &[Phase], took: Duration) {
    println!("--- {backend}: requests per phase (all counted; failed must be 0)");
    println!(
        "{:<28} {:>6} {:>9} {:>8} {:>8} {:>8} {:>9}",
        "phase", "steps", "mode", "sent", "ok", "failed", "retried"
    );
    for p in phases {
        for (mode, r) in [("keep-alive", &p.keep_alive), ("new-conn", &p.new_conn)] {
            println!(
                "{:<28} {:>5.1}s {:>9} {:>8} {:>8} {:>8} {:>9}",
                p.name,
                p.steps.as_secs_f64(),
                mode,
                r.sent,
                r.outcomes.ok,
                r.failures(),
                r.retried
            );
        }
    }
    println!("--- {backend}: scenario took {:.1} s", took.as_secs_f64());
}

/// A multi-thread runtime whose workers live in the node namespace.
fn node_runtime(lab: &Lab) -> tokio::runtime::Runtime {
    lab.node()
        .enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })
        .expect("enter the node namespace")
        .expect("tokio runtime")
}

fn lab_with_servers() -> (Lab, Vec<Process>) {
    let lab = lab(PODS);
    let servers = servers(&lab);
    (lab, servers)
}

#[test]
fn netns_kube_mock_api_server_drives_the_agent_under_load() {
    let took = Instant::now();
    let (lab, mut servers) = lab_with_servers();
    let pins = PinDir::new("kube").unwrap();
    let dir = WorkDir::new("kube-mock");
    // The API server listens inside the node namespace, where the agent runs.
    let listener = lab
        .node()
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .expect("bind the mock's listener");
    let mock = MockApiServer::spawn_on_thread(listener).expect("kube-mock");
    mock.write_kubeconfig(dir.path().join("kubeconfig"))
        .unwrap();
    let rt = node_runtime(&lab);
    let mut world = World {
        lab: &lab,
        cluster: &mock,
        rt: &rt,
        node_name: lab.node().name().to_string(),
        service_uid: String::new(),
    };
    world.apply(world.node_object());
    let svc = world.apply(service_object());
    assert!(
        svc["metadata"]["uid"].is_string() && svc["metadata"]["resourceVersion"].is_string(),
        "the mock stores objects as an API server does: {svc}"
    );
    world.service_uid = svc["metadata"]["uid"].as_str().unwrap().to_string();
    world.set_slice(&[(0, Cond::Ready)]);

    let phases = scenario(&world, &dir, &pins, &mut servers, Some(&mock));
    summary("mock", &phases, took.elapsed());
    print_agent_warnings(&dir);
    lab.assert_no_checksum_errors();
}

#[test]
fn netns_kube_envtest_api_server_drives_the_agent_under_load() {
    if let Err(skipped) = kube_mock::envtest::assets() {
        skipped.report();
        return;
    }
    let took = Instant::now();
    let (lab, mut servers) = lab_with_servers();
    let pins = PinDir::new("kube-envtest").unwrap();
    let dir = WorkDir::new("kube-envtest");
    let rt = node_runtime(&lab);
    // etcd and kube-apiserver are spawned from a thread in the node namespace: they listen
    // on its 127.0.0.1, where the agent runs.
    let envtest = lab
        .node()
        .enter(|| rt.block_on(kube_mock::envtest::start()))
        .unwrap()
        .expect("start envtest");
    let server = match envtest {
        Envtest::Running(server) => server,
        Envtest::Skipped(skipped) => {
            skipped.report();
            return;
        }
    };
    server
        .write_kubeconfig(dir.path().join("kubeconfig"))
        .unwrap();
    let mut world = World {
        lab: &lab,
        cluster: &*server,
        rt: &rt,
        node_name: lab.node().name().to_string(),
        service_uid: String::new(),
    };
    world.apply(world.node_object());
    let svc = world.apply(service_object());
    world.service_uid = svc["metadata"]["uid"]
        .as_str()
        .expect("the API server set the uid")
        .to_string();
    world.set_slice(&[(0, Cond::Ready)]);

    let phases = scenario(&world, &dir, &pins, &mut servers, None);
    summary("envtest", &phases, took.elapsed());
    print_agent_warnings(&dir);
    lab.assert_no_checksum_errors();
}

/// The agent's WARN and ERROR lines, for the test output.
fn print_agent_warnings(dir: &WorkDir) {
    let log = std::fs::read_to_string(dir.log()).unwrap_or_default();
    let noteworthy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("watch recovered"))
        .collect();
    println!(
        "--- the agent logged {} lines, {} WARN/ERROR/recovered:",
        log.lines().count(),
        noteworthy.len()
    );
    for l in noteworthy.iter().take(60) {
        println!("{l}");
    }
}
