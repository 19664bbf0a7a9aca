//! The kubelet's part: a pod is a `bootcamp` process in one of the lab's pod namespaces
//! ([`Pod`], its [`PodState`]).
//!
//! - **start and probes**: `create_pod` takes a free pod namespace and spawns the container;
//!   its readiness probe (`GET /ready`, from the node namespace) gates it: before it is
//!   published ready, its `/stats` must show no connection accepted besides the driver's own
//!   probes (else they count as `served_while_not_ready`); once published it is *available*
//!   only when the agent reports it selectable.
//! - **back-off**: a container that exits is restarted with a back-off (CrashLoopBackOff,
//!   [`FIRST_BACKOFF`] doubling up to [`MAX_BACKOFF`]).
//! - **termination** (`terminate`, then one state per round in `observe_pod`): the pod is
//!   published terminating, the driver waits until the agent no longer selects it for new
//!   flows (the drain handshake), checks that it accepts no new connection for
//!   [`DriverConfig::quiesce`](super::DriverConfig::quiesce), then sends SIGTERM, waits for
//!   the exit (SIGKILL after
//!   [`DriverConfig::stop_timeout`](super::DriverConfig::stop_timeout)) and only then
//!   removes it.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::Result;
use lab::bail;
use lab::error::Context as _;
use lab::{Process, Signal};

use super::Cluster;
use crate::bootcamp::Stats;
use crate::k8s::APP;
use controller::http_client::{self as http, Failure, Response};

/// Timeout of one probe or counter request to a pod.
const POD_TIMEOUT: Duration = Duration::from_secs(2);
/// First CrashLoopBackOff delay (doubles up to [`MAX_BACKOFF`]); scaled down from the
/// kubelet's 10 s to fit a demo.
const FIRST_BACKOFF: Duration = Duration::from_millis(1000);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
pub(super) enum PodState {
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
    pub(super) fn terminating(self) -> bool {
        matches!(
            self,
            PodState::Draining { .. } | PodState::Quiescing { .. } | PodState::Stopping { .. }
        )
    }

    /// (ready, serving, terminating) as published in the EndpointSlice.
    pub(super) fn conditions(self) -> (bool, bool, bool) {
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
pub(super) struct Pod {
    pub(super) name: String,
    pub(super) rs_hash: String,
    pub(super) version: u32,
    pub(super) slot: usize,
    pub(super) ip: Ipv4Addr,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) created: Instant,
    pub(super) restarts: u32,
    pub(super) state: PodState,
    pub(super) process: Option<Process>,
    pub(super) log: PathBuf,
    /// TCP connections the driver itself made to the pod (probes, counters, exec).
    pub(super) own_connections: u64,
    pub(super) next_probe: Instant,
    pub(super) probes: u32,
}

impl Pod {
    pub(super) fn active(&self) -> bool {
        !self.state.terminating()
    }

    pub(super) fn available(&self) -> bool {
        matches!(self.state, PodState::Ready { .. })
    }

    pub(super) fn ready(&self) -> bool {
        matches!(
            self.state,
            PodState::Ready { .. } | PodState::Confirming { .. }
        )
    }

    pub(super) fn ready_since(&self) -> Option<Instant> {
        match self.state {
            PodState::Ready { since } | PodState::Confirming { since } => Some(since),
            _ => None,
        }
    }
}

impl Cluster<'_> {
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
        Ok(self
            .pod_request(i, path)
            .map_err(|e| lab::Error::Invalid(format!("GET {path} to pod {pod}: {e}")))?)
    }

    pub(super) fn create_pod(&mut self, hash: &str, version: u32) -> Result<()> {
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
            .stdout(file.try_clone().context("duplicating the pod log handle")?)
            .stderr(file)
            .process_group(0);
        Ok(Process::spawn_with_stdio(cmd)?)
    }

    /// Starts a pod's termination.
    pub(super) fn terminate(&mut self, i: usize) {
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
            .map_err(|e| lab::Error::Invalid(format!("GET /stats: {e}")))?;
        if r.status != 200 {
            bail!("GET /stats answered {}", r.status);
        }
        Ok(serde_json::from_slice(&r.body).context("GET /stats: not the counters")?)
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
    pub(super) fn observe(&mut self) -> Result<()> {
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
                    || self.agent.endpoint(IpAddr::V4(self.pods[i].ip))?.selectable;
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
                let view = self.agent.endpoint(IpAddr::V4(self.pods[i].ip))?;
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
