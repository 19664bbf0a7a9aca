//! The workload driver: the lab's kubelet, Deployment controller and EndpointSlice
//! controller in one, publishing what they decide through the agent's API.
//!
//! - **Deployment controller**: a Deployment owns one ReplicaSet per pod template (the
//!   template hash is derived from the image); a template change is a rolling update with
//!   `maxSurge` and `maxUnavailable` computed as Kubernetes does ([`plan`]: scale the new
//!   ReplicaSet up within the surge, then old ones down within the unavailability budget,
//!   unhealthy old pods first), `rollout undo` returns to the previous revision's template,
//!   and a rollout that makes no progress for `progressDeadlineSeconds` is marked
//!   `Progressing=False` / `ProgressDeadlineExceeded`. The Deployment (spec, status,
//!   conditions, `deployment.kubernetes.io/revision`) is published on every change.
//! - **kubelet**: a pod is a `bootcamp` process in one of the lab's pod namespaces. Its
//!   readiness probe (`GET /ready`, from the node namespace) gates it: before it is published
//!   ready, its `/stats` must show no connection accepted besides the driver's own probes
//!   (else they count as `served_while_not_ready`); once published it is *available* only
//!   when the agent reports it selectable. A container that exits is restarted with a
//!   back-off (CrashLoopBackOff).
//! - **termination** (scale-down, rollout, deletion) follows the drain handshake: the pod is
//!   published terminating (`ready: false, serving: true, terminating: true`), the driver
//!   waits until the agent no longer selects it for new flows
//!   (`/sluice/v1/dataplane/endpoints/{ip}`), checks that it accepts no new connection for a
//!   moment, then sends SIGTERM (the server answers in-flight and next keep-alive requests with
//!   `Connection: close`), waits for the exit and only then removes it from the slice.
//! - **EndpointSlice controller**: while the Service exists, one slice lists every pod of the
//!   Deployment with its conditions.
//!
//! Everything is driven by [`Cluster::tick`] (one observation and reconcile round) and
//! [`Cluster::converge`] (rounds until a goal holds). Every event is printed as it happens.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Process, Signal};
use serde_json::Value;

use crate::agent::AgentClient;
use crate::bootcamp::Stats;
use crate::http::{self, Failure, Response};
use crate::interrupt;
use crate::k8s::{self, APP, DeploymentView, EndpointEntry, Exposure, Rng};

/// Timeout of one probe or counter request to a pod.
const POD_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of [`Cluster::converge`].
const ROUND: Duration = Duration::from_millis(20);
/// First CrashLoopBackOff delay (doubles up to [`MAX_BACKOFF`]); scaled down from the
/// kubelet's 10 s to fit a demo.
const FIRST_BACKOFF: Duration = Duration::from_millis(1000);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// How the driver runs pods and paces its decisions.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The `bootcamp` binary.
    pub bootcamp: PathBuf,
    /// Directory for the pods' logs (`<pod>.log`).
    pub logs: PathBuf,
    /// The container port.
    pub port: u16,
    /// The pods' startup delay (`/ready` is 503 meanwhile).
    pub startup_delay: Duration,
    /// Readiness probe period.
    pub probe_period: Duration,
    /// Longest wait for the drain handshake (and for a ready pod to be selected).
    pub drain_timeout: Duration,
    /// After the handshake, how long the pod is watched for new connections before SIGTERM.
    pub quiesce: Duration,
    /// How long after SIGTERM a pod may take to exit before SIGKILL.
    pub stop_timeout: Duration,
    /// `maxSurge` and `maxUnavailable` of the rolling update strategy.
    pub max_surge: u32,
    pub max_unavailable: u32,
    /// `progressDeadlineSeconds`.
    pub progress_deadline: Duration,
}

/// What [`Cluster::converge`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// The rollout is complete and every pod is ready (none starting or terminating).
    Complete,
    /// The rollout exceeded its progress deadline and no pod is terminating any more.
    Stalled,
    /// No pod is left.
    NoPods,
}

/// What the driver observed during a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCounters {
    /// Connections pods accepted before their first readiness, or after the agent stopped
    /// selecting them (besides the driver's own probes). Must be 0.
    pub served_while_not_ready: u64,
    /// Unexpected events by kind (`drain_handshake_timeout`, `pod_exited`, ...).
    pub failures: BTreeMap<String, u64>,
    pub pods_started: u32,
    pub pods_ready: u32,
    pub pods_removed: u32,
    pub container_restarts: u32,
    /// Times from "published terminating" to "no longer selectable", in order.
    pub handshakes: Vec<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum PodState {
    /// The container runs; `/ready` has not answered 200 yet.
    Starting,
    /// The container exited; it is restarted at `restart_at`.
    Crashed { restart_at: Instant },
    /// Published ready; waiting until the data path selects it.
    Confirming { since: Instant },
    /// Ready and selected (available).
    Ready { since: Instant },
    /// Published terminating; waiting for the drain handshake.
    Draining { since: Instant, was_ready: bool },
    /// Not selected any more; watching for stray new connections before SIGTERM.
    Quiescing {
        since: Instant,
        accepted: u64,
        own: u64,
    },
    /// SIGTERM sent; waiting for the exit. `was_ready`: it ran a healthy server, so it must
    /// exit cleanly.
    Stopping {
        since: Instant,
        killed: bool,
        was_ready: bool,
    },
}

impl PodState {
    fn terminating(self) -> bool {
        matches!(
            self,
            PodState::Draining { .. } | PodState::Quiescing { .. } | PodState::Stopping { .. }
        )
    }

    /// (ready, serving, terminating) as published in the EndpointSlice.
    fn conditions(self) -> (bool, bool, bool) {
        match self {
            PodState::Starting | PodState::Crashed { .. } => (false, false, false),
            PodState::Confirming { .. } | PodState::Ready { .. } => (true, true, false),
            PodState::Draining { was_ready, .. } => (false, was_ready, true),
            PodState::Quiescing { .. } => (false, true, true),
            // SIGTERM sent: the listener is closed, so it no longer serves new connections.
            PodState::Stopping { .. } => (false, false, true),
        }
    }
}

/// One pod: a `bootcamp` process in a pod namespace.
#[derive(Debug)]
struct Pod {
    name: String,
    rs_hash: String,
    version: u32,
    slot: usize,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    created: Instant,
    restarts: u32,
    state: PodState,
    process: Option<Process>,
    log: PathBuf,
    /// TCP connections the driver itself made to the pod (probes, counters, exec).
    own_connections: u64,
    next_probe: Instant,
    probes: u32,
}

impl Pod {
    fn active(&self) -> bool {
        !self.state.terminating()
    }

    fn available(&self) -> bool {
        matches!(self.state, PodState::Ready { .. })
    }

    fn ready(&self) -> bool {
        matches!(
            self.state,
            PodState::Ready { .. } | PodState::Confirming { .. }
        )
    }

    fn ready_since(&self) -> Option<Instant> {
        match self.state {
            PodState::Ready { since } | PodState::Confirming { since } => Some(since),
            _ => None,
        }
    }
}

/// A pod as `kubectl get pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    pub status: &'static str,
    pub restarts: u32,
    pub age: Duration,
    pub ip: Ipv4Addr,
    /// The pod namespace it runs in.
    pub netns: String,
    pub version: u32,
    pub labels: BTreeMap<String, String>,
}

/// A ReplicaSet as `kubectl get rs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetView {
    pub name: String,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub age: Duration,
    pub image: String,
    pub revision: u64,
}

/// The Service as `kubectl get services` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    pub port: u16,
    pub exposure: Exposure,
    pub age: Duration,
}

#[derive(Debug, Clone)]
struct ReplicaSet {
    hash: String,
    version: u32,
    revision: u64,
    replicas: u32,
    created: Instant,
}

#[derive(Debug, Clone)]
struct Deployment {
    replicas: u32,
    version: u32,
    revision: u64,
    generation: i64,
    replica_sets: Vec<ReplicaSet>,
    last_progress: Instant,
    stalled: bool,
    created: Instant,
}

impl Deployment {
    fn new_rs_hash(&self) -> String {
        k8s::template_hash(&k8s::image(self.version))
    }
}

#[derive(Debug, Clone)]
struct ServiceState {
    name: String,
    port: u16,
    exposure: Exposure,
    slice: String,
    created: Instant,
}

/// One ReplicaSet's counts, as the rolling update sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsCount {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Pods available (ready and selected).
    pub available: u32,
}

/// One sync of Kubernetes' rolling update for a Deployment of `desired` replicas: the new
/// `spec.replicas` of every ReplicaSet (`rs[new]` is the one of the current template; the
/// others are old, oldest first). As `rolloutRolling` does, a sync either scales the new
/// ReplicaSet up (within `desired + max_surge` replicas in total) or scales old ones down
/// (keeping `desired - max_unavailable` available, unhealthy old replicas first). With no
/// old replicas left it is a scale event: the new ReplicaSet gets `desired`.
pub fn plan(
    desired: u32,
    max_surge: u32,
    max_unavailable: u32,
    new: usize,
    rs: &[RsCount],
) -> Vec<u32> {
    let mut spec: Vec<u32> = rs.iter().map(|r| r.replicas).collect();
    let olds: Vec<usize> = (0..rs.len()).filter(|&i| i != new).collect();
    if olds.iter().all(|&i| spec[i] == 0) {
        spec[new] = desired;
        return spec;
    }
    // reconcileNewReplicaSet: surge.
    let max_total = desired + max_surge;
    let total: u32 = spec.iter().sum();
    if spec[new] < desired && total < max_total {
        spec[new] = desired.min(spec[new] + (max_total - total));
        return spec;
    }
    // reconcileOldReplicaSets: unavailability budget.
    let min_available = desired.saturating_sub(max_unavailable);
    let all: u32 = spec.iter().sum();
    let new_unavailable = spec[new].saturating_sub(rs[new].available);
    let mut max_scaled_down =
        i64::from(all) - i64::from(min_available) - i64::from(new_unavailable);
    if max_scaled_down <= 0 {
        return spec;
    }
    // cleanupUnhealthyReplicas.
    for &i in &olds {
        let unhealthy = spec[i].saturating_sub(rs[i].available);
        let n = i64::from(unhealthy).min(max_scaled_down);
        spec[i] -= n as u32;
        max_scaled_down -= n;
        if max_scaled_down == 0 {
            break;
        }
    }
    // scaleDownOldReplicaSetsForRollingUpdate.
    let available: u32 = rs.iter().map(|r| r.available).sum();
    let mut budget = available.saturating_sub(min_available);
    for &i in &olds {
        let n = spec[i].min(budget);
        spec[i] -= n;
        budget -= n;
    }
    spec
}

/// The lab's control plane and kubelet (see the module docs).
#[derive(Debug)]
pub struct Cluster<'l> {
    lab: &'l Lab,
    api: &'l AgentClient<'l>,
    cfg: DriverConfig,
    rng: Rng,
    slot_used: Vec<bool>,
    next_slot: usize,
    pods: Vec<Pod>,
    deployment: Option<Deployment>,
    service: Option<ServiceState>,
    published_slice: Option<Value>,
    published_deployment: Option<Value>,
    counters: StepCounters,
    epoch: Instant,
    rollout_line: Option<String>,
}

impl<'l> Cluster<'l> {
    /// A cluster on `lab`'s pod namespaces, publishing through `api`.
    pub fn new(lab: &'l Lab, api: &'l AgentClient<'l>, cfg: DriverConfig) -> Self {
        Self {
            lab,
            api,
            cfg,
            rng: Rng::from_entropy(),
            slot_used: vec![false; lab.backends().len()],
            next_slot: 0,
            pods: Vec::new(),
            deployment: None,
            service: None,
            published_slice: None,
            published_deployment: None,
            counters: StepCounters::default(),
            epoch: Instant::now(),
            rollout_line: None,
        }
    }

    /// Starts a step: counters from zero, event times from now.
    pub fn begin_step(&mut self) {
        self.counters = StepCounters::default();
        self.epoch = Instant::now();
        self.rollout_line = None;
    }

    /// The step's counters (and a reset).
    pub fn take_counters(&mut self) -> StepCounters {
        std::mem::take(&mut self.counters)
    }

    fn note(&self, msg: &str) {
        println!("    {:>6.2}s  {msg}", self.epoch.elapsed().as_secs_f64());
    }

    fn fail(&mut self, kind: &str, msg: &str) {
        *self.counters.failures.entry(kind.to_owned()).or_default() += 1;
        self.note(&format!("UNEXPECTED ({kind}): {msg}"));
    }

    // -----------------------------------------------------------------------------------
    // kubectl verbs

    /// `kubectl create deployment <APP> --image=...`, with `replicas` replicas.
    pub fn create_deployment(&mut self, version: u32, replicas: u32) -> Result<()> {
        if self.deployment.is_some() {
            bail!("deployment {APP} already exists");
        }
        let now = Instant::now();
        self.deployment = Some(Deployment {
            replicas,
            version,
            revision: 1,
            generation: 1,
            replica_sets: vec![ReplicaSet {
                hash: k8s::template_hash(&k8s::image(version)),
                version,
                revision: 1,
                replicas: 0,
                created: now,
            }],
            last_progress: now,
            stalled: false,
            created: now,
        });
        self.tick()
    }

    /// `kubectl scale deployments/<APP> --replicas=N`.
    pub fn scale(&mut self, replicas: u32) -> Result<()> {
        let d = self.deployment_mut()?;
        d.replicas = replicas;
        d.generation += 1;
        d.last_progress = Instant::now();
        d.stalled = false;
        self.tick()
    }

    /// `kubectl set image deployments/<APP> <APP>=<image of version>`.
    pub fn set_image(&mut self, version: u32) -> Result<()> {
        let d = self.deployment_mut()?;
        if d.version == version {
            return Ok(());
        }
        let hash = k8s::template_hash(&k8s::image(version));
        let revision = d.replica_sets.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let now = Instant::now();
        match d.replica_sets.iter_mut().find(|r| r.hash == hash) {
            Some(rs) => rs.revision = revision,
            None => d.replica_sets.push(ReplicaSet {
                hash,
                version,
                revision,
                replicas: 0,
                created: now,
            }),
        }
        d.version = version;
        d.revision = revision;
        d.generation += 1;
        d.last_progress = now;
        d.stalled = false;
        self.tick()
    }

    /// `kubectl rollout undo deployments/<APP>`: back to the template of the previous
    /// revision, which becomes the newest revision. Returns that template's version.
    pub fn rollout_undo(&mut self) -> Result<u32> {
        let d = self.deployment_mut()?;
        let mut by_revision: Vec<&ReplicaSet> = d.replica_sets.iter().collect();
        by_revision.sort_by_key(|r| std::cmp::Reverse(r.revision));
        let Some(previous) = by_revision.get(1) else {
            bail!("no rollout history to undo: deployment {APP} has one revision");
        };
        let version = previous.version;
        self.set_image(version)?;
        Ok(version)
    }

    /// `kubectl delete deployments/<APP>`: the Deployment goes, its pods terminate (through
    /// the drain handshake).
    pub fn delete_deployment(&mut self) -> Result<()> {
        if self.deployment.take().is_none() {
            bail!("no deployment {APP}");
        }
        self.api.delete(&k8s::deployment_path(APP))?;
        self.published_deployment = None;
        self.tick()
    }

    /// `kubectl expose deployment/<APP> --type=... --port PORT`: the Service and its
    /// EndpointSlice.
    pub fn expose(&mut self, port: u16, exposure: Exposure) -> Result<()> {
        if self.service.is_some() {
            bail!("service {APP} already exists");
        }
        let slice = format!("{APP}-{}", self.rng.suffix(5));
        self.api
            .put(&k8s::service_path(APP), &k8s::service(APP, port, exposure))?;
        self.service = Some(ServiceState {
            name: APP.to_owned(),
            port,
            exposure,
            slice,
            created: Instant::now(),
        });
        self.published_slice = None;
        self.tick()
    }

    /// `kubectl delete service -l app=<APP>`: the Service and its EndpointSlice. Returns
    /// whether there was one.
    pub fn delete_service(&mut self) -> Result<bool> {
        let Some(svc) = self.service.take() else {
            return Ok(false);
        };
        // The slice first: the data path never sees the service without its endpoints
        // flipping back; either order ends with neither.
        self.api.delete(&k8s::slice_path(&svc.slice))?;
        self.api.delete(&k8s::service_path(&svc.name))?;
        self.published_slice = None;
        Ok(true)
    }

    /// `kubectl label pods <pod> key=value`.
    pub fn label_pod(&mut self, pod: &str, key: &str, value: &str) -> Result<()> {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p.name == pod)
            .with_context(|| format!("no pod {pod}"))?;
        p.labels.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// `GET path` to a pod's own address from the node namespace (`kubectl exec ... curl`).
    pub fn pod_get(&mut self, pod: &str, path: &str) -> Result<Response> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == pod)
            .with_context(|| format!("no pod {pod}"))?;
        self.pod_request(i, path)
            .map_err(|e| anyhow::anyhow!("GET {path} to pod {pod}: {e}"))
    }

    // -----------------------------------------------------------------------------------
    // Driving

    /// Runs rounds until `goal` holds; fails after `timeout`. Prints `kubectl rollout
    /// status` lines as they change.
    pub fn converge(&mut self, goal: Goal, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            self.tick()?;
            if goal != Goal::NoPods
                && let Some(line) = self.rollout_status()
                && self.rollout_line.as_ref() != Some(&line)
            {
                self.note(&format!("rollout status: {line}"));
                self.rollout_line = Some(line);
            }
            if self.reached(goal) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{goal:?} not reached within {timeout:?}; pods: {}",
                    self.pods
                        .iter()
                        .map(|p| format!("{} {:?}", p.name, p.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            std::thread::sleep(ROUND);
        }
    }

    fn reached(&self, goal: Goal) -> bool {
        match goal {
            Goal::Complete => self.rollout_complete() && self.pods.iter().all(Pod::available),
            Goal::Stalled => {
                self.deployment.as_ref().is_some_and(|d| d.stalled)
                    && self.pods.iter().all(Pod::active)
            }
            Goal::NoPods => self.pods.is_empty(),
        }
    }

    /// One round: observe the pods, run the Deployment controller, start and stop pods,
    /// publish what changed.
    pub fn tick(&mut self) -> Result<()> {
        self.observe()?;
        self.reconcile_deployment();
        self.sync_pods()?;
        self.check_progress();
        self.publish()
    }

    fn deployment_mut(&mut self) -> Result<&mut Deployment> {
        self.deployment
            .as_mut()
            .with_context(|| format!("no deployment {APP}"))
    }

    /// (spec replicas, available) of every ReplicaSet.
    fn rs_counts(&self, d: &Deployment) -> Vec<RsCount> {
        d.replica_sets
            .iter()
            .map(|rs| RsCount {
                replicas: rs.replicas,
                available: self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.available())
                    .count() as u32,
            })
            .collect()
    }

    fn reconcile_deployment(&mut self) {
        let Some(d) = self.deployment.as_ref() else {
            return;
        };
        let hash = d.new_rs_hash();
        let Some(new) = d.replica_sets.iter().position(|r| r.hash == hash) else {
            return;
        };
        let counts = self.rs_counts(d);
        let spec = plan(
            d.replicas,
            self.cfg.max_surge,
            self.cfg.max_unavailable,
            new,
            &counts,
        );
        let mut notes = Vec::new();
        let Some(d) = self.deployment.as_mut() else {
            return;
        };
        for (i, (rs, replicas)) in d.replica_sets.iter_mut().zip(spec).enumerate() {
            if rs.replicas != replicas {
                notes.push(format!(
                    "replicaset {APP}-{} (v{}) scaled {} -> {replicas}",
                    rs.hash, rs.version, rs.replicas
                ));
                let progress = if i == new {
                    replicas > rs.replicas
                } else {
                    replicas < rs.replicas
                };
                if progress {
                    d.last_progress = Instant::now();
                }
                rs.replicas = replicas;
            }
        }
        for n in notes {
            self.note(&n);
        }
    }

    fn rollout_complete(&self) -> bool {
        let Some(d) = &self.deployment else {
            return false;
        };
        let hash = d.new_rs_hash();
        d.replica_sets.iter().all(|rs| {
            let active = self
                .pods
                .iter()
                .filter(|p| p.rs_hash == rs.hash && p.active())
                .count() as u32;
            if rs.hash == hash {
                let available = self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.available())
                    .count() as u32;
                rs.replicas == d.replicas && active == d.replicas && available == d.replicas
            } else {
                rs.replicas == 0 && active == 0
            }
        })
    }

    fn check_progress(&mut self) {
        let complete = self.rollout_complete();
        let deadline = self.cfg.progress_deadline;
        let Some(d) = self.deployment.as_mut() else {
            return;
        };
        if !complete && !d.stalled && d.last_progress.elapsed() > deadline {
            d.stalled = true;
            let msg = format!(
                "progress deadline ({}s) exceeded: Progressing=False, reason \
                 ProgressDeadlineExceeded",
                deadline.as_secs()
            );
            self.note(&msg);
        }
    }

    /// Starts pods for ReplicaSets below their count and terminates pods above it (and every
    /// pod once the Deployment is gone).
    fn sync_pods(&mut self) -> Result<()> {
        let plan: Vec<(String, u32, u32)> = match &self.deployment {
            Some(d) => d
                .replica_sets
                .iter()
                .map(|rs| (rs.hash.clone(), rs.version, rs.replicas))
                .collect(),
            None => Vec::new(),
        };
        // Pods of no ReplicaSet (the Deployment was deleted) terminate.
        let orphans: Vec<usize> = (0..self.pods.len())
            .filter(|&i| {
                self.pods[i].active() && !plan.iter().any(|(h, _, _)| *h == self.pods[i].rs_hash)
            })
            .collect();
        for i in orphans {
            self.terminate(i);
        }
        for (hash, version, replicas) in plan {
            let mut active: Vec<usize> = (0..self.pods.len())
                .filter(|&i| self.pods[i].rs_hash == hash && self.pods[i].active())
                .collect();
            let n = active.len() as u32;
            if n < replicas {
                for _ in n..replicas {
                    self.create_pod(&hash, version)?;
                }
            } else if n > replicas {
                // Kubernetes' order: not ready first, then the most recently ready, then the
                // most restarted, then the newest.
                active.sort_by_key(|&i| {
                    let p = &self.pods[i];
                    (
                        p.ready(),
                        std::cmp::Reverse(p.ready_since()),
                        std::cmp::Reverse(p.restarts),
                        std::cmp::Reverse(p.created),
                    )
                });
                for &i in active.iter().take((n - replicas) as usize) {
                    self.terminate(i);
                }
            }
        }
        Ok(())
    }

    fn create_pod(&mut self, hash: &str, version: u32) -> Result<()> {
        let slots = self.slot_used.len();
        let Some(slot) = (0..slots)
            .map(|k| (self.next_slot + k) % slots)
            .find(|&s| !self.slot_used[s])
        else {
            // Like a pod that no node can take: it stays Pending until a slot frees up.
            return Ok(());
        };
        self.next_slot = (slot + 1) % slots;
        let name = format!("{APP}-{hash}-{}", self.rng.suffix(5));
        let ip = self.lab.backend_addr(slot);
        let log = self.cfg.logs.join(format!("{name}.log"));
        let process = self.spawn(&name, version, slot, &log)?;
        self.slot_used[slot] = true;
        let now = Instant::now();
        self.note(&format!(
            "pod {name} (v{version}) created in pod namespace {} ({ip})",
            self.lab.backend(slot).name()
        ));
        self.counters.pods_started += 1;
        self.pods.push(Pod {
            name,
            rs_hash: hash.to_owned(),
            version,
            slot,
            ip,
            labels: BTreeMap::from([
                ("app".to_owned(), APP.to_owned()),
                ("pod-template-hash".to_owned(), hash.to_owned()),
            ]),
            created: now,
            restarts: 0,
            state: PodState::Starting,
            process: Some(process),
            log,
            own_connections: 0,
            next_probe: now,
            probes: 0,
        });
        Ok(())
    }

    /// Starts the pod's container: `bootcamp` in its namespace, logging to its log file, in
    /// its own process group (a Ctrl-C reaches the demo only).
    fn spawn(&self, name: &str, version: u32, slot: usize, log: &PathBuf) -> Result<Process> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = self.lab.backend(slot).command(&self.cfg.bootcamp);
        cmd.args(["--name", name])
            .args(["--version", &format!("v{version}")])
            .args(["--port", &self.cfg.port.to_string()])
            .args([
                "--startup-delay-ms",
                &self.cfg.startup_delay.as_millis().to_string(),
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        Ok(Process::spawn_with_stdio(cmd)?)
    }

    /// Starts a pod's termination.
    fn terminate(&mut self, i: usize) {
        let now = Instant::now();
        let p = &mut self.pods[i];
        if p.state.terminating() {
            return;
        }
        let was_ready = p.ready();
        p.state = PodState::Draining {
            since: now,
            was_ready,
        };
        let name = p.name.clone();
        self.note(&format!(
            "pod {name}: terminating ({})",
            if was_ready {
                "published ready=false serving=true terminating=true; waiting for the drain \
                 handshake"
            } else {
                "it never became ready"
            }
        ));
    }

    /// A request from the node namespace to pod `i`, counting the connection as the driver's.
    fn pod_request(&mut self, i: usize, path: &str) -> Result<Response, Failure> {
        let addr = SocketAddr::new(IpAddr::V4(self.pods[i].ip), self.cfg.port);
        let path = path.to_owned();
        let result = self
            .lab
            .node()
            .enter(move || http::request(addr, "GET", &path, &[], None, POD_TIMEOUT))
            .unwrap_or_else(|e| Err(Failure::Connect(std::io::Error::other(format!("{e:#}")))));
        if result.as_ref().map_or_else(Failure::connected, |_| true) {
            self.pods[i].own_connections += 1;
        }
        result
    }

    fn pod_stats(&mut self, i: usize) -> Result<Stats> {
        let r = self
            .pod_request(i, "/stats")
            .map_err(|e| anyhow::anyhow!("GET /stats: {e}"))?;
        if r.status != 200 {
            bail!("GET /stats answered {}", r.status);
        }
        serde_json::from_slice(&r.body).context("GET /stats: not the counters")
    }

    fn exited(&mut self, i: usize) -> Result<Option<ExitStatus>> {
        match self.pods[i].process.as_mut() {
            Some(p) => Ok(p.try_wait()?),
            None => Ok(None),
        }
    }

    fn log_tail(&self, i: usize) -> String {
        crate::agent::tail(&self.pods[i].log, 1)
    }

    /// Advances every pod: probes, handshakes, exits, restarts.
    fn observe(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.pods.len() {
            if self.observe_pod(i)? {
                let p = self.pods.remove(i);
                self.slot_used[p.slot] = false;
                self.counters.pods_removed += 1;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Advances pod `i`; returns whether it is gone.
    fn observe_pod(&mut self, i: usize) -> Result<bool> {
        let now = Instant::now();
        let name = self.pods[i].name.clone();
        let state = self.pods[i].state;
        match state {
            PodState::Starting => {
                if let Some(status) = self.exited(i)? {
                    let p = &mut self.pods[i];
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << p.restarts.min(4))
                        .min(MAX_BACKOFF);
                    p.state = PodState::Crashed {
                        restart_at: now + backoff,
                    };
                    let tail = self.log_tail(i);
                    self.note(&format!(
                        "pod {name}: container exited ({status}): {tail}; back-off {:.0}s \
                         (CrashLoopBackOff)",
                        backoff.as_secs_f64()
                    ));
                    return Ok(false);
                }
                if now < self.pods[i].next_probe {
                    return Ok(false);
                }
                self.pods[i].next_probe = now + self.cfg.probe_period;
                self.pods[i].probes += 1;
                let ready = matches!(self.pod_request(i, "/ready"), Ok(r) if r.status == 200);
                if ready {
                    self.became_ready(i)?;
                }
            }
            PodState::Crashed { restart_at } => {
                if now >= restart_at {
                    let (version, slot, log) = {
                        let p = &self.pods[i];
                        (p.version, p.slot, p.log.clone())
                    };
                    let process = self.spawn(&name, version, slot, &log)?;
                    let p = &mut self.pods[i];
                    p.process = Some(process);
                    p.restarts += 1;
                    p.state = PodState::Starting;
                    p.next_probe = now;
                    self.counters.container_restarts += 1;
                    self.note(&format!(
                        "pod {name}: restarting its container (restart {})",
                        self.pods[i].restarts
                    ));
                }
            }
            PodState::Confirming { since } => {
                let selected = self.service.is_none()
                    || self.api.endpoint(IpAddr::V4(self.pods[i].ip))?.selectable;
                if selected {
                    self.pods[i].state = PodState::Ready { since: now };
                    self.counters.pods_ready += 1;
                    if self.is_new_rs(i)
                        && let Some(d) = self.deployment.as_mut()
                    {
                        d.last_progress = now;
                    }
                    if self.service.is_some() {
                        self.note(&format!(
                            "pod {name}: selected by the data path {} ms after it was published \
                             ready: available",
                            since.elapsed().as_millis()
                        ));
                    }
                } else if since.elapsed() > self.cfg.drain_timeout {
                    self.fail(
                        "not_selected",
                        &format!(
                            "pod {name} was published ready but not selected within {:?}",
                            self.cfg.drain_timeout
                        ),
                    );
                    self.pods[i].state = PodState::Ready { since: now };
                }
                self.check_alive(i)?;
            }
            PodState::Ready { .. } => self.check_alive(i)?,
            PodState::Draining { since, was_ready } => {
                if !was_ready {
                    return self.stop(i, false);
                }
                let view = self.api.endpoint(IpAddr::V4(self.pods[i].ip))?;
                let timed_out = since.elapsed() > self.cfg.drain_timeout;
                if view.selectable && !timed_out {
                    return Ok(false);
                }
                if view.selectable {
                    self.fail(
                        "drain_handshake_timeout",
                        &format!(
                            "the agent still selects pod {name} after {:?}",
                            self.cfg.drain_timeout
                        ),
                    );
                } else {
                    self.counters.handshakes.push(since.elapsed());
                    self.note(&format!(
                        "pod {name}: drain handshake: not selected for new flows after {} ms \
                         ({} tracked flows)",
                        since.elapsed().as_millis(),
                        view.flows
                    ));
                }
                match self.pod_stats(i) {
                    Ok(stats) => {
                        self.pods[i].state = PodState::Quiescing {
                            since: now,
                            accepted: stats.connections_accepted,
                            own: self.pods[i].own_connections,
                        };
                    }
                    Err(e) => {
                        self.fail("pod_unreachable", &format!("pod {name}: {e:#}"));
                        return self.stop(i, true);
                    }
                }
            }
            PodState::Quiescing {
                since,
                accepted,
                own,
            } => {
                if since.elapsed() < self.cfg.quiesce {
                    return Ok(false);
                }
                match self.pod_stats(i) {
                    Ok(stats) => {
                        let ours = self.pods[i].own_connections - own;
                        let stray = stats
                            .connections_accepted
                            .saturating_sub(accepted)
                            .saturating_sub(ours);
                        if stray > 0 {
                            self.counters.served_while_not_ready += stray;
                            self.note(&format!(
                                "pod {name}: UNEXPECTED: accepted {stray} new connections after the \
                                 data path stopped selecting it"
                            ));
                        }
                    }
                    Err(e) => self.fail("pod_unreachable", &format!("pod {name}: {e:#}")),
                }
                return self.stop(i, true);
            }
            PodState::Stopping {
                since,
                killed,
                was_ready,
            } => {
                if let Some(status) = self.exited(i)? {
                    if was_ready && !status.success() {
                        self.fail(
                            "unclean_exit",
                            &format!("pod {name} exited with {status} after SIGTERM"),
                        );
                    }
                    self.note(&format!(
                        "pod {name}: exited ({status}) {} ms after SIGTERM; removed from the \
                         EndpointSlice",
                        since.elapsed().as_millis()
                    ));
                    return Ok(true);
                }
                if !killed && since.elapsed() > self.cfg.stop_timeout {
                    self.fail(
                        "stop_timeout",
                        &format!(
                            "pod {name} still runs {:?} after SIGTERM: SIGKILL",
                            self.cfg.stop_timeout
                        ),
                    );
                    if let Some(p) = self.pods[i].process.as_mut() {
                        let _ = p.signal(Signal::SIGKILL);
                    }
                    self.pods[i].state = PodState::Stopping {
                        since,
                        killed: true,
                        was_ready,
                    };
                }
            }
        }
        Ok(false)
    }

    fn is_new_rs(&self, i: usize) -> bool {
        self.deployment
            .as_ref()
            .is_some_and(|d| d.new_rs_hash() == self.pods[i].rs_hash)
    }

    /// The probe answered 200: check that nothing but the driver reached the pod before,
    /// then publish it ready.
    fn became_ready(&mut self, i: usize) -> Result<()> {
        let name = self.pods[i].name.clone();
        let stats = match self.pod_stats(i) {
            Ok(s) => s,
            // It answered /ready a moment ago; try again next round.
            Err(_) => return Ok(()),
        };
        let p = &self.pods[i];
        let early = stats.connections_accepted.saturating_sub(p.own_connections);
        let after = p.created.elapsed();
        let probes = p.probes;
        if early > 0 {
            self.counters.served_while_not_ready += early;
            self.note(&format!(
                "pod {name}: UNEXPECTED: accepted {early} connections before its first readiness"
            ));
        }
        let now = Instant::now();
        self.pods[i].state = if self.service.is_some() {
            PodState::Confirming { since: now }
        } else {
            self.counters.pods_ready += 1;
            PodState::Ready { since: now }
        };
        self.note(&format!(
            "pod {name}: ready after {} ms ({probes} probes; /stats: {} connections accepted, all \
             the driver's own){}",
            after.as_millis(),
            stats.connections_accepted,
            if self.service.is_some() {
                "; published ready"
            } else {
                ""
            }
        ));
        Ok(())
    }

    fn check_alive(&mut self, i: usize) -> Result<()> {
        if let Some(status) = self.exited(i)? {
            let name = self.pods[i].name.clone();
            let tail = self.log_tail(i);
            self.fail(
                "pod_exited",
                &format!("pod {name} exited ({status}): {tail}"),
            );
            self.pods[i].state = PodState::Crashed {
                restart_at: Instant::now() + FIRST_BACKOFF,
            };
        }
        Ok(())
    }

    /// SIGTERM (if the container runs), then [`PodState::Stopping`]; a pod without a
    /// running container is gone at once.
    fn stop(&mut self, i: usize, was_ready: bool) -> Result<bool> {
        let name = self.pods[i].name.clone();
        if self.exited(i)?.is_some() || self.pods[i].process.is_none() {
            self.note(&format!("pod {name}: no running container; removed"));
            return Ok(true);
        }
        if let Some(p) = self.pods[i].process.as_mut() {
            p.signal(Signal::SIGTERM)?;
        }
        self.pods[i].state = PodState::Stopping {
            since: Instant::now(),
            killed: false,
            was_ready,
        };
        self.note(&format!("pod {name}: SIGTERM"));
        Ok(false)
    }

    /// Publishes the EndpointSlice and the Deployment if they changed.
    fn publish(&mut self) -> Result<()> {
        if let Some(svc) = &self.service {
            let endpoints: Vec<EndpointEntry> = self
                .pods
                .iter()
                .map(|p| {
                    let (ready, serving, terminating) = p.state.conditions();
                    EndpointEntry {
                        pod: p.name.clone(),
                        ip: p.ip,
                        ready,
                        serving,
                        terminating,
                    }
                })
                .collect();
            let slice = k8s::endpoint_slice(&svc.slice, &svc.name, &endpoints);
            if self.published_slice.as_ref() != Some(&slice) {
                self.api.put(&k8s::slice_path(&svc.slice), &slice)?;
                self.published_slice = Some(slice);
            }
        }
        if let Some(view) = self.deployment_view() {
            let object = k8s::deployment(&view);
            if self.published_deployment.as_ref() != Some(&object) {
                self.api.put(&k8s::deployment_path(APP), &object)?;
                self.published_deployment = Some(object);
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Views

    /// The Deployment as published, if it exists.
    pub fn deployment_view(&self) -> Option<DeploymentView> {
        let d = self.deployment.as_ref()?;
        let hash = d.new_rs_hash();
        let active = self.pods.iter().filter(|p| p.active());
        let status_replicas = active.clone().count() as u32;
        let updated = active.clone().filter(|p| p.rs_hash == hash).count() as u32;
        let ready = active.clone().filter(|p| p.ready()).count() as u32;
        let available = active.filter(|p| p.available()).count() as u32;
        let min_available = d.replicas.saturating_sub(self.cfg.max_unavailable);
        let complete = self.rollout_complete();
        let rs_name = format!("{APP}-{hash}");
        let mut conditions = Vec::new();
        conditions.push(if available >= min_available {
            (
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            (
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            )
        });
        conditions.push(if d.stalled {
            (
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else if complete {
            (
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else {
            (
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        });
        Some(DeploymentView {
            name: APP.to_owned(),
            replicas: d.replicas,
            image: k8s::image(d.version),
            revision: d.revision,
            generation: d.generation,
            max_surge: self.cfg.max_surge,
            max_unavailable: self.cfg.max_unavailable,
            progress_deadline_s: self.cfg.progress_deadline.as_secs(),
            status_replicas,
            updated,
            ready,
            available,
            conditions,
        })
    }

    /// How long the Deployment has existed.
    pub fn deployment_age(&self) -> Option<Duration> {
        self.deployment.as_ref().map(|d| d.created.elapsed())
    }

    /// What `kubectl rollout status` would print now.
    pub fn rollout_status(&self) -> Option<String> {
        let d = self.deployment.as_ref()?;
        let v = self.deployment_view()?;
        Some(if d.stalled {
            format!("error: deployment \"{APP}\" exceeded its progress deadline")
        } else if v.updated < v.replicas {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} out of {} new replicas \
                 have been updated...",
                v.updated, v.replicas
            )
        } else if v.status_replicas > v.updated {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} old replicas are pending \
                 termination...",
                v.status_replicas - v.updated
            )
        } else if v.available < v.updated {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} of {} updated replicas \
                 are available...",
                v.available, v.updated
            )
        } else {
            format!("deployment \"{APP}\" successfully rolled out")
        })
    }

    /// The pods, oldest first.
    pub fn pods(&self) -> Vec<PodView> {
        self.pods
            .iter()
            .map(|p| PodView {
                name: p.name.clone(),
                ready: p.ready(),
                status: match p.state {
                    PodState::Starting | PodState::Confirming { .. } | PodState::Ready { .. } => {
                        "Running"
                    }
                    PodState::Crashed { .. } if p.restarts == 0 => "Error",
                    PodState::Crashed { .. } => "CrashLoopBackOff",
                    _ => "Terminating",
                },
                restarts: p.restarts,
                age: p.created.elapsed(),
                ip: p.ip,
                netns: self.lab.backend(p.slot).name().to_owned(),
                version: p.version,
                labels: p.labels.clone(),
            })
            .collect()
    }

    /// The ReplicaSets, oldest first.
    pub fn replica_sets(&self) -> Vec<ReplicaSetView> {
        let Some(d) = &self.deployment else {
            return Vec::new();
        };
        d.replica_sets
            .iter()
            .map(|rs| {
                let active = self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.active());
                ReplicaSetView {
                    name: format!("{APP}-{}", rs.hash),
                    desired: rs.replicas,
                    current: active.clone().count() as u32,
                    ready: active.filter(|p| p.ready()).count() as u32,
                    age: rs.created.elapsed(),
                    image: k8s::image(rs.version),
                    revision: rs.revision,
                }
            })
            .collect()
    }

    /// The Service, if exposed.
    pub fn service(&self) -> Option<ServiceView> {
        self.service.as_ref().map(|s| ServiceView {
            name: s.name.clone(),
            port: s.port,
            exposure: s.exposure,
            age: s.created.elapsed(),
        })
    }

    /// The log file of a pod.
    pub fn pod_log(&self, pod: &str) -> Option<PathBuf> {
        self.pods
            .iter()
            .find(|p| p.name == pod)
            .map(|p| p.log.clone())
    }

    /// Stops every pod at once (SIGTERM to all, then wait): cleanup on drop or interrupt,
    /// not the graceful path.
    pub fn shutdown(&mut self) {
        for p in &mut self.pods {
            if let Some(proc) = p.process.as_mut()
                && proc.is_running()
            {
                let _ = proc.signal(Signal::SIGTERM);
            }
        }
        for mut p in self.pods.drain(..) {
            if let Some(mut proc) = p.process.take() {
                let _ = proc.wait_timeout(Duration::from_secs(6));
                // Drop sends SIGKILL if it still runs.
            }
        }
        self.slot_used.iter_mut().for_each(|s| *s = false);
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: u32, available: u32) -> RsCount {
        RsCount {
            replicas,
            available,
        }
    }

    /// Runs syncs to a fixed point, with `ready` deciding which replicas become available.
    fn settle(desired: u32, new: usize, mut counts: Vec<RsCount>, ready: &[bool]) -> Vec<u32> {
        for _ in 0..20 {
            let spec = plan(desired, 1, 1, new, &counts);
            for (i, c) in counts.iter_mut().enumerate() {
                c.replicas = spec[i];
                c.available = if ready[i] { spec[i] } else { 0 };
            }
        }
        counts.iter().map(|c| c.replicas).collect()
    }

    #[test]
    fn plan_scales_without_rollout() {
        assert_eq!(plan(4, 1, 1, 0, &[rs(1, 1)]), vec![4]);
        assert_eq!(plan(2, 1, 1, 0, &[rs(4, 4)]), vec![2]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(0, 0), rs(2, 2)]), vec![0, 2]);
    }

    #[test]
    fn plan_rolls_within_surge_and_unavailability() {
        // v1 (2 available) -> v2: surge one new, then scale one old down.
        let counts = [rs(2, 2), rs(0, 0)];
        assert_eq!(plan(2, 1, 1, 1, &counts), vec![2, 1]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(2, 2), rs(1, 0)]), vec![1, 1]);
        // The total stays within 3: the second new pod comes once the old one is scaled down.
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(1, 0)]), vec![1, 2]);
        // Nothing more until a new pod is available (1 must stay available).
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(2, 0)]), vec![1, 2]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(2, 1)]), vec![0, 2]);
        assert_eq!(settle(2, 1, counts.to_vec(), &[true, true]), vec![0, 2]);
    }

    #[test]
    fn plan_stalls_on_a_broken_image_and_undo_cleans_up() {
        // v2 (2 available) -> v10 that never becomes ready: 1 v2 pod stays.
        let stalled = settle(2, 1, vec![rs(2, 2), rs(0, 0)], &[true, false]);
        assert_eq!(stalled, vec![1, 2]);
        // Undo: v2 is new again, the unhealthy v10 replicas go first, then v2 scales up.
        assert_eq!(plan(2, 1, 1, 0, &[rs(1, 1), rs(2, 0)]), vec![1, 0]);
        assert_eq!(plan(2, 1, 1, 0, &[rs(1, 1), rs(0, 0)]), vec![2, 0]);
    }
}
