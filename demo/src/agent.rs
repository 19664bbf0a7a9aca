//! The node agent in the lab: `sluice run` started in the node namespace ([`Agent`]) and its
//! HTTP API, reached from inside that namespace ([`AgentClient`]).

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Result;
use lab::error::Context as _;
use lab::{Netns, Process, Signal};
use lab::{bail, ensure};
use lb_userspace::PinConfig;
use serde_json::Value;

use crate::interrupt;
use controller::http_client::{self as http, Response};

/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to load, attach and finish its first sync.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent listens and keeps its state.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The `sluice` binary.
    pub bin: PathBuf,
    /// Interface to attach to (the node's uplink).
    pub interface: String,
    /// Devices translated frames may be redirected to (the node's pod links).
    pub redirect: Vec<String>,
    /// Watched manifest directory (the demo leaves it empty; drop YAML there with `--keep`).
    pub manifests: PathBuf,
    /// File holding the API token.
    pub token_file: PathBuf,
    /// Where the agent pins its maps and links.
    pub pin: PinConfig,
    /// Where the agent keeps the objects written through its API across restarts (a fresh
    /// directory per run: the demo's objects must not outlive it, nor meet another run's).
    pub state_dir: PathBuf,
    /// The API address, inside the node namespace.
    pub api: SocketAddr,
    /// The metrics address, inside the node namespace.
    pub metrics: SocketAddr,
    /// The agent's log (stdout and stderr).
    pub log: PathBuf,
}

/// `sluice run` in the node namespace, stopped on drop (SIGTERM), after which its pinned
/// data path is uninstalled (`sluice uninstall`) and its state directory, manifest directory
/// and token file are removed, so nothing stays attached, pinned or kept.
#[derive(Debug)]
pub struct Agent {
    process: Option<Process>,
    settings: AgentSettings,
}

impl Agent {
    /// Starts the agent and waits until it has finished its first sync (`/readyz` is 200).
    pub fn start(node: &Netns, settings: AgentSettings, client: &AgentClient<'_>) -> Result<Self> {
        let log = File::create(&settings.log)
            .with_context(|| format!("cannot create {}", settings.log.display()))?;
        let mut cmd = node.command(&settings.bin);
        cmd.arg("run").args(["--interface", &settings.interface]);
        for r in &settings.redirect {
            cmd.args(["--redirect", r]);
        }
        cmd.arg("--manifests")
            .arg(&settings.manifests)
            // The node the demo's EndpointSlices name: their endpoints are local, as on a
            // one-node cluster (another name would make them remote, source-NATed).
            .args(["--node-name", crate::k8s::NODE_NAME])
            .args(["--api-listen", &settings.api.to_string()])
            .args(["--metrics-listen", &settings.metrics.to_string()])
            .arg("--token-file")
            .arg(&settings.token_file)
            .arg("--pin-root")
            .arg(&settings.pin.root)
            .args(["--instance", &settings.pin.instance])
            .arg("--state-dir")
            .arg(&settings.state_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("cannot duplicate the log file handle")?,
            )
            .stderr(log)
            // Its own process group: a Ctrl-C on the terminal reaches the demo only, which
            // then stops the agent in order.
            .process_group(0);
        let process = Process::spawn_with_stdio(cmd)?;
        let mut agent = Agent {
            process: Some(process),
            settings,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            interrupt::check()?;
            if let Some(p) = agent.process.as_mut()
                && let Some(status) = p.try_wait()?
            {
                bail!(
                    "sluice run exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                    agent.settings.log.display(),
                    tail(&agent.settings.log, 15)
                );
            }
            if matches!(client.metrics_get("/readyz"), Ok(r) if r.status == 200) {
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                bail!(
                    "sluice run was not ready within {START_TIMEOUT:?}; its log ({}) ends \
                     with:\n{}",
                    agent.settings.log.display(),
                    tail(&agent.settings.log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Whether the agent still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// Stops the agent (SIGTERM: it leaves the data path serving), removes its pinned data
    /// path (`sluice uninstall`) and its files. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            let _ = p.signal(Signal::SIGTERM);
            if p.wait_timeout(STOP_TIMEOUT)?.is_none() {
                tracing::warn!("sluice run did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            // Drop reaps it (and sends SIGKILL if it still runs).
            drop(p);
            let out = Command::new(&self.settings.bin)
                .arg("uninstall")
                .arg("--pin-root")
                .arg(&self.settings.pin.root)
                .args(["--instance", &self.settings.pin.instance])
                .stdin(Stdio::null())
                .output()
                .context("cannot run sluice uninstall")?;
            ensure!(
                out.status.success(),
                "sluice uninstall failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            // Its files: the state it kept, the (demo's) manifest directory, the token.
            for dir in [&self.settings.state_dir, &self.settings.manifests] {
                if let Err(e) = std::fs::remove_dir_all(dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("cannot remove {}: {e}", dir.display());
                }
            }
            let _ = std::fs::remove_file(&self.settings.token_file);
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("demo: cannot stop the agent cleanly: {e:#}");
        }
    }
}

/// The last `n` lines of a text file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The drain handshake's answer for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointView {
    /// Whether any service still selects the address for new flows.
    pub selectable: bool,
    /// Tracked flows that still name it.
    pub flows: u64,
    /// Service backends at this address.
    pub backends: usize,
}

/// The agent's HTTP API, called from a thread inside the node namespace.
#[derive(Debug)]
pub struct AgentClient<'l> {
    node: &'l Netns,
    api: SocketAddr,
    metrics: SocketAddr,
    token: String,
}

impl<'l> AgentClient<'l> {
    pub fn new(node: &'l Netns, api: SocketAddr, metrics: SocketAddr, token: String) -> Self {
        Self {
            node,
            api,
            metrics,
            token,
        }
    }

    fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        let auth = format!("Bearer {}", self.token);
        let write = method != "GET";
        let answer = self.node.enter(|| {
            let mut headers = vec![("Accept", "application/json")];
            if write {
                headers.push(("Authorization", auth.as_str()));
            }
            if body.is_some() {
                headers.push(("Content-Type", "application/json"));
            }
            http::request(addr, method, path, &headers, body.as_deref(), API_TIMEOUT)
        })?;
        Ok(answer.with_context(|| format!("{method} {path} to the agent at {addr}"))?)
    }

    /// `PUT path` with `object` as JSON; 200 or 201 expected. Returns whether it was created.
    pub fn put(&self, path: &str, object: &Value) -> Result<bool> {
        let body = serde_json::to_vec(object).context("encoding the object")?;
        let r = self.call(self.api, "PUT", path, Some(body))?;
        match r.status {
            201 => Ok(true),
            200 => Ok(false),
            s => bail!("PUT {path}: the agent answered {s}: {}", r.text()),
        }
    }

    /// `DELETE path`; 200 expected, 404 (already gone) accepted. Returns whether it existed.
    pub fn delete(&self, path: &str) -> Result<bool> {
        let r = self.call(self.api, "DELETE", path, None)?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            s => bail!("DELETE {path}: the agent answered {s}: {}", r.text()),
        }
    }

    /// `GET path` on the API; 200 expected, the JSON answer.
    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self.call(self.api, "GET", path, None)?;
        ensure!(
            r.status == 200,
            "GET {path}: the agent answered {}: {}",
            r.status,
            r.text()
        );
        Ok(r.json().with_context(|| format!("the answer to {path}"))?)
    }

    /// `GET path` on the metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn metrics_get(&self, path: &str) -> Result<Response> {
        self.call(self.metrics, "GET", path, None)
    }

    /// The services the data path holds (`/sluice/v1/dataplane/services`).
    pub fn dataplane_services(&self) -> Result<Vec<Value>> {
        let v = self.get("/sluice/v1/dataplane/services")?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The drain handshake for `ip` (`/sluice/v1/dataplane/endpoints/{ip}`).
    pub fn endpoint(&self, ip: IpAddr) -> Result<EndpointView> {
        let v = self.get(&format!("/sluice/v1/dataplane/endpoints/{ip}"))?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        Ok(EndpointView {
            selectable: items
                .iter()
                .any(|e| e["selectable"].as_bool().unwrap_or(true)),
            flows: items.iter().map(|e| e["flows"].as_u64().unwrap_or(0)).sum(),
            backends: items.len(),
        })
    }

    /// The data path's packet counters by reason (`/sluice/v1/dataplane/counters`).
    pub fn reasons(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let v = self.get("/sluice/v1/dataplane/counters")?;
        Ok(v["reasons"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
            .collect())
    }

    /// The rollout summary the agent derives from a Deployment (`/sluice/v1/rollouts`).
    pub fn rollout_status(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        let v = self.get("/sluice/v1/rollouts")?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["workload"]["key"]["namespace"] == namespace
                    && r["workload"]["key"]["name"] == name
            })
            .and_then(|r| r["status"].as_str().map(str::to_owned)))
    }
}
