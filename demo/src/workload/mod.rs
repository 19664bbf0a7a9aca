//! The workload driver: the lab's kubelet, Deployment controller and EndpointSlice
//! controller in one, publishing what they decide through one [`ClusterApi`] (in the lab,
//! the agent's API).
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
//!
//! Where each decision lives:
//!
//! | module | holds |
//! |---|---|
//! | `mod.rs` | [`Cluster`], its configuration, the step counters and the round loop ([`Cluster::tick`], [`Cluster::converge`]) |
//! | `deployment.rs` | rollout planning: Deployments and their ReplicaSets, the rolling update ([`plan`]), `rollout undo`, the progress deadline, which pods a ReplicaSet scale-down removes |
//! | `kubelet.rs` | pod processes, readiness probes, CrashLoopBackOff, termination (drain handshake, quiesce, SIGTERM, exit) |
//! | `publish.rs` | the Service, the EndpointSlice built from the pods' conditions and the Deployment object, written through the [`ClusterApi`] seam |
//! | `views.rs` | what `kubectl get` and `kubectl rollout status` show (printed as tables by [`crate::kubectl`]) |

mod deployment;
mod kubelet;
mod publish;
mod views;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Result;
use lab::Lab;
use lab::bail;
use serde_json::Value;

use crate::agent::AgentClient;
use crate::interrupt;
use crate::k8s::Rng;

pub use deployment::{RsCount, plan};
pub use publish::{ClusterApi, ObjectKind};
pub use views::{PodView, ReplicaSetView, ServiceView};

use deployment::Deployment;
use kubelet::Pod;
use publish::ServiceState;

/// Pause between rounds of [`Cluster::converge`].
const ROUND: Duration = Duration::from_millis(20);

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

/// The lab's control plane and kubelet (see the module docs).
#[derive(Debug)]
pub struct Cluster<'l> {
    lab: &'l Lab,
    /// Where the Service, EndpointSlice and Deployment are published.
    api: &'l dyn ClusterApi,
    /// The agent's API, for the drain handshake (whether the data path still selects a pod).
    agent: &'l AgentClient<'l>,
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
    /// A cluster on `lab`'s pod namespaces, publishing its objects through `api` and asking
    /// `agent` whether the data path still selects a pod (the drain handshake). In the lab
    /// both are the agent's HTTP API; with the agent's Kubernetes source configured, `api` is
    /// a Kubernetes-API implementation of [`ClusterApi`] and `agent` stays the agent.
    pub fn new(
        lab: &'l Lab,
        agent: &'l AgentClient<'l>,
        api: &'l dyn ClusterApi,
        cfg: DriverConfig,
    ) -> Self {
        Self {
            lab,
            api,
            agent,
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
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
