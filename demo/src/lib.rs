//! The tutorial walkthrough (DESIGN.md, "The walkthrough") in a local lab, under load.
//!
//! [`run`] builds the lab (a client, the node, [`Options::pods`] pod namespaces, all created
//! up front), starts `sluice run` in the node namespace, and plays the story of the seed
//! tutorial against it with a workload driver ([`workload::Cluster`]) that plays kubelet,
//! Deployment controller and EndpointSlice controller, publishing Services, EndpointSlices
//! and the Deployment through the agent's HTTP API:
//!
//! | step | kubectl | what must hold |
//! |---|---|---|
//! | `create-deployment` | `create deployment kubernetes-bootcamp --image=...:v1` | 1 ready pod |
//! | `expose-nodeport` | `expose ... --type=NodePort --port 8080` | `192.0.2.1:<nodePort>` answers from the pod |
//! | `label-pod` | `label pods $POD_NAME version=v1`, `get pods -l version=v1` | the selector picks the pod |
//! | `delete-service` | `delete service -l app=kubernetes-bootcamp` | the NodePort refuses; the pod answers inside |
//! | `expose-loadbalancer` | `expose ... --type=LoadBalancer --port 8080` | the VIP answers |
//! | `scale-up` | `scale ... --replicas=4` | new connections reach all 4 pods, 15-35 % each |
//! | `scale-down` | `scale ... --replicas=2` | only the 2 survivors answer |
//! | `rolling-update-v2` | `set image ...:v2` | under load: 0 failures, no pod served while not ready |
//! | `rollout-status` | `rollout status` | complete; only `v=2` answers |
//! | `set-image-v10` | `set image ...:v10` | under load: stalls (ProgressDeadlineExceeded), 0 failures, only v2 answers |
//! | `rollout-undo` | `rollout undo` | under load: back to 2 pods of v2, 0 failures |
//! | `delete` | `delete deployments/... services/...` | no services; SERVICES, BACKENDS, SLOTS, CONNTRACK empty (read through the pins) |
//!
//! Every step prints a transcript and is recorded in [`Report`] (`report.json` in
//! [`Options::out_dir`]); beside it, `rollout.png` draws the requests answered per second by
//! version and the failures over the whole story, each step marked, with its data in
//! `rollout.json` ([`rollout`]). Everything the run creates is removed at the end, also when it fails
//! or is interrupted ([`interrupt`]): pods, the agent and its pinned data path, the
//! namespaces.
//!
//! Modules: [`bootcamp`] (the pod server), [`workload`] (the driver), [`agent`] (`sluice
//! run` and its API), [`k8s`] (names and objects), [`kubectl`] (tables), [`report`],
//! [`rollout`] (the chart), [`error`], [`interrupt`] (Ctrl-C); HTTP goes through the agent's
//! client, [`controller::http_client`].

pub mod agent;
pub mod bootcamp;
pub mod error;
pub mod interrupt;
pub mod k8s;
pub mod kubectl;
pub mod report;
pub mod rollout;
pub mod workload;

mod story;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Result;
use lab::error::Context as _;
use lab::{Lab, PinDir};
use lab::{bail, ensure};
use lb_userspace::{PassProgram, PinConfig};
use serde::Serialize;

pub use report::{Report, StepReport};

use crate::agent::{Agent, AgentClient, AgentSettings};
use crate::k8s::Exposure;
use crate::workload::{Cluster, DriverConfig, Goal};

/// The background load of the steps that run under load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadOptions {
    /// New connections per second (one request each) to the LoadBalancer VIP.
    pub new_connection_rate: f64,
    /// Keep-alive requests per second to the NodePort.
    pub keep_alive_rate: f64,
    /// Requests in flight (keep-alive: connections) per generator.
    pub concurrency: usize,
    /// Load duration of the rolling update to v2.
    pub rolling_update_secs: f64,
    /// Load duration of the update to the broken image v10.
    pub broken_image_secs: f64,
    /// Load duration of the rollback.
    pub undo_secs: f64,
    /// Load before the change starts.
    pub warmup_secs: f64,
    /// Timeout of one request (a request not answered within it fails).
    pub timeout_secs: f64,
}

/// Everything the run can be tuned by. [`Options::default`] is the demo;
/// [`Options::quick`] a shorter run for tests.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `sluice` and `bootcamp` are (the target directory of the build).
    pub bin_dir: PathBuf,
    /// Where `report.json` and the logs go.
    pub out_dir: PathBuf,
    /// Pod namespaces, created up front (enough for the whole story: at most 4 pods run, plus
    /// the ones terminating).
    pub pods: usize,
    /// The Service's node port.
    pub node_port: u16,
    /// The LoadBalancer VIP.
    pub vip: Ipv4Addr,
    /// A second address of the client namespace (on its link to the node), the source of the
    /// keep-alive load (see the story's `start_load`).
    pub second_client: Ipv4Addr,
    /// The agent's API and metrics addresses (inside the node namespace).
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    pub load: LoadOptions,
    /// New connections of the spread check at 4 replicas.
    pub spread_requests: u64,
    /// New connections of the other traffic checks.
    pub sample_requests: u64,
    /// The pods' startup delay (`/ready` is 503 meanwhile).
    pub startup_delay: Duration,
    /// Readiness probe period.
    pub probe_period: Duration,
    /// `progressDeadlineSeconds` (whole seconds).
    pub progress_deadline: Duration,
    /// Longest time a step may take to converge.
    pub step_timeout: Duration,
    /// Least number of requests over the whole run.
    pub min_total_requests: u64,
    /// Leave the lab running after the story (until Ctrl-C).
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Self {
        let bin_dir = default_bin_dir();
        let out_dir = bin_dir
            .parent()
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
            .join("demo");
        Self {
            bin_dir,
            out_dir,
            pods: 8,
            node_port: 30080,
            vip: Ipv4Addr::new(203, 0, 113, 10),
            second_client: Ipv4Addr::new(192, 0, 2, 3),
            api: SocketAddr::from(([127, 0, 0, 1], 10260)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 10249)),
            load: LoadOptions {
                new_connection_rate: 250.0,
                keep_alive_rate: 250.0,
                concurrency: 8,
                rolling_update_secs: 20.0,
                broken_image_secs: 12.0,
                undo_secs: 10.0,
                warmup_secs: 1.0,
                timeout_secs: 5.0,
            },
            spread_requests: 400,
            sample_requests: 200,
            startup_delay: Duration::from_millis(300),
            probe_period: Duration::from_millis(100),
            progress_deadline: Duration::from_secs(5),
            step_timeout: Duration::from_secs(60),
            min_total_requests: 10_000,
            keep: false,
        }
    }
}

impl Options {
    /// The same story with shorter loads (for tests): about half the time.
    pub fn quick() -> Self {
        let mut o = Self::default();
        o.load.new_connection_rate = 200.0;
        o.load.keep_alive_rate = 200.0;
        o.load.rolling_update_secs = 10.0;
        o.load.broken_image_secs = 8.0;
        o.load.undo_secs = 7.0;
        o.progress_deadline = Duration::from_secs(3);
        o.min_total_requests = 5_000;
        o
    }
}

/// The directory of the running executable, or its parent when that holds the binaries
/// (test executables live in `target/<profile>/deps`).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("sluice").exists() {
        return dir;
    }
    dir.parent().map_or(dir.clone(), Path::to_path_buf)
}

fn preflight(opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the demo creates network namespaces and loads eBPF programs: run it as root"
    );
    for bin in ["sluice", "bootcamp"] {
        let path = opts.bin_dir.join(bin);
        ensure!(
            path.exists(),
            "{} is missing: build the workspace first (`cargo build --workspace --bins`; `cargo \
             xtask demo` does)",
            path.display()
        );
    }
    ensure!(
        (4..=lab::topology::MAX_BACKENDS).contains(&opts.pods),
        "the story needs 4 to {} pod namespaces, not {}",
        lab::topology::MAX_BACKENDS,
        opts.pods
    );
    Ok(())
}

/// The run's files under the output directory.
struct RunDirs {
    /// The agent's and the pods' logs.
    logs: PathBuf,
    /// Watched by the agent; empty (drop YAML there with `--keep`).
    manifests: PathBuf,
    /// The agent's state (API objects kept across its restarts).
    state: PathBuf,
    token_file: PathBuf,
    token: String,
}

/// A fresh output directory: `logs/`, `manifests/`, `state/` and the API token.
fn prepare_out_dir(opts: &Options) -> Result<RunDirs> {
    let logs = opts.out_dir.join("logs");
    let manifests = opts.out_dir.join("manifests");
    let state = opts.out_dir.join("state");
    for dir in [&logs, &manifests, &state] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => Err::<(), _>(e).with_context(|| format!("cannot clear {}", dir.display()))?,
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let token = format!(
        "{:016x}{:016x}",
        k8s::Rng::from_entropy().next_u64(),
        k8s::Rng::new(u64::from(std::process::id())).next_u64()
    );
    let token_file = opts.out_dir.join("token");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::remove_file(&token_file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .with_context(|| format!("cannot create {}", token_file.display()))?;
        f.write_all(token.as_bytes())
            .context("writing the API token file")?;
    }
    Ok(RunDirs {
        logs,
        manifests,
        state,
        token_file,
        token,
    })
}

/// Runs the walkthrough and writes `report.json`. Returns the report (whose `ok` says whether
/// everything held) unless the lab could not be set up or the run was interrupted. Everything
/// created is removed before it returns.
pub fn run(opts: &Options) -> Result<Report> {
    preflight(opts)?;
    let RunDirs {
        logs,
        manifests,
        state,
        token_file,
        token,
    } = prepare_out_dir(opts)?;
    let started = Instant::now();

    println!("sluice demo: the kubernetes-basics walkthrough in a local lab");
    let lab = Lab::builder()
        .backends(opts.pods)
        .xdp_pass_attacher(|ifname| {
            let p = PassProgram::attach(ifname)?;
            Ok(Box::new(p) as Box<dyn std::any::Any + Send>)
        })
        .build()?;
    // The second client address, set up as the lab sets up the first: the address on the
    // client's link, a permanent neighbour entry for it on the node's uplink.
    let second = IpAddr::V4(opts.second_client);
    lab::veth::add_ip(lab.client(), lab.client_link(), second, 24)?;
    lab::veth::add_neighbour(lab.node(), lab.node_uplink(), second, lab.client_mac())?;
    let pins = PinDir::new("demo")?;
    let pin = PinConfig {
        root: pins.path().to_path_buf(),
        instance: "demo".to_owned(),
    };
    let namespaces: Vec<String> = lab
        .namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    println!(
        "  lab: client namespace {} ({} and {}), node namespace {} ({} on {}), {} pod namespaces \
         {}..{} (198.51.100.0/24, a /30 each)",
        lab.client().name(),
        lab.client_addr(),
        opts.second_client,
        lab.node().name(),
        lab.node_addr(),
        lab.node_uplink(),
        opts.pods,
        lab.backend(0).name(),
        lab.backend(opts.pods - 1).name(),
    );

    let client = AgentClient::new(lab.node(), opts.api, opts.metrics, token);
    let settings = AgentSettings {
        bin: opts.bin_dir.join("sluice"),
        interface: lab.node_uplink().to_owned(),
        redirect: (0..opts.pods).map(|i| lab.node_pod_link(i)).collect(),
        manifests,
        token_file,
        pin: pin.clone(),
        state_dir: state,
        api: opts.api,
        metrics: opts.metrics,
        log: logs.join("sluice.log"),
    };
    println!(
        "  agent: sluice run --interface {} --redirect pod0..pod{} --api-listen {} \
         --metrics-listen {} --pin-root {} --instance {} --state-dir {}   (log: {})",
        settings.interface,
        opts.pods - 1,
        opts.api,
        opts.metrics,
        pin.root.display(),
        pin.instance,
        settings.state_dir.display(),
        settings.log.display()
    );
    let mut agent = Agent::start(lab.node(), settings, &client)?;
    println!(
        "  agent ready (pid {}) after {:.1} s",
        agent.pid().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );

    let driver = DriverConfig {
        bootcamp: opts.bin_dir.join("bootcamp"),
        logs: logs.clone(),
        port: k8s::CONTAINER_PORT,
        startup_delay: opts.startup_delay,
        probe_period: opts.probe_period,
        drain_timeout: Duration::from_secs(10),
        quiesce: Duration::from_millis(200),
        stop_timeout: Duration::from_secs(8),
        max_surge: 1,
        max_unavailable: 1,
        progress_deadline: opts.progress_deadline,
    };
    let mut cluster = Cluster::new(&lab, &client, &client, driver);
    let mut story = story::Story::new(opts, &lab, &client, &mut cluster, pin.clone());
    let played = story.play();
    let interrupted = interrupt::interrupted();
    println!("\n== Summary ==");
    let mut report = story.report(interrupted);
    let chart_path = opts.out_dir.join("rollout.png");
    match story.recording().write(&chart_path) {
        Ok(data) => {
            println!(
                "  rollout chart: {} (data: {})",
                chart_path.display(),
                data.display()
            );
            report.rollout_chart = Some("rollout.png".to_owned());
        }
        // The chart illustrates the run; without it the run's verdict stands.
        Err(e) => println!("  [FAIL] rollout chart not drawn: {e}"),
    }
    drop(story);
    let report_path = opts.out_dir.join("report.json");
    report.write(&report_path)?;
    println!(
        "  {} steps, {} ok; {} requests, {} failed, {} retried; report: {}",
        report.steps.len(),
        report.steps.iter().filter(|s| s.ok).count(),
        report.total_requests,
        report.total_failures,
        report.total_retried,
        report_path.display()
    );
    if let Err(e) = &played {
        println!("  the walkthrough stopped: {e:#}");
    }
    println!("  result: {}", if report.ok { "PASS" } else { "FAIL" });

    if opts.keep
        && !interrupted
        && let Err(e) = keep(opts, &lab, &mut cluster, &pin, &logs)
    {
        println!("  --keep: {e:#}");
    }

    println!("\n== Cleaning up ==");
    cluster.shutdown();
    drop(cluster);
    agent.stop()?;
    drop(agent);
    println!("  agent stopped, its pinned data path uninstalled, its state removed");
    drop(client);
    drop(lab);
    let pin_dir = pins.path().to_path_buf();
    drop(pins);
    let left: Vec<&String> = namespaces
        .iter()
        .filter(|n| lab::netns::exists(n))
        .collect();
    println!(
        "  namespaces removed ({} left), pins removed ({})",
        left.len(),
        if pin_dir.exists() {
            "still there!"
        } else {
            "gone"
        }
    );
    if interrupted {
        return Err(interrupt::Interrupted.into());
    }
    Ok(report)
}

/// `--keep`: the Deployment and Service are recreated if the story deleted them, then the
/// lab stays up (the driver keeps running its pods) until Ctrl-C.
fn keep(
    opts: &Options,
    lab: &Lab,
    cluster: &mut Cluster<'_>,
    pin: &PinConfig,
    logs: &Path,
) -> Result<()> {
    println!("\n== The lab stays up (--keep) ==");
    if cluster.service().is_none() && cluster.deployment_view().is_none() {
        println!(
            "  recreating the Deployment (2 replicas of v2) and the LoadBalancer Service to explore:"
        );
        cluster.begin_step();
        cluster.create_deployment(2, 2)?;
        cluster.expose(
            8080,
            Exposure::LoadBalancer {
                node_port: opts.node_port,
                vip: opts.vip,
            },
        )?;
        cluster.converge(Goal::Complete, opts.step_timeout)?;
    }
    let cli = lab.client().path().display().to_string();
    let node = lab.node().path().display().to_string();
    let sluice = opts.bin_dir.join("sluice");
    let sluice = sluice.display();
    let (api, metrics) = (opts.api, opts.metrics);
    let lines = [
        "# the NodePort and the LoadBalancer VIP, from the client namespace".to_owned(),
        format!(
            "nsenter --net={cli} curl http://{}:{}/",
            lab.node_addr(),
            opts.node_port
        ),
        format!("nsenter --net={cli} curl http://{}:8080/", opts.vip),
        "# the agent's metrics and its view of the data path, from the node namespace".to_owned(),
        format!("nsenter --net={node} curl -s http://{metrics}/metrics | grep '^sluice_'"),
        format!("nsenter --net={node} {sluice} services --api {api}"),
        format!("nsenter --net={node} {sluice} backends --api {api}"),
        format!("nsenter --net={node} {sluice} rollouts --api {api}"),
        "# the pinned maps".to_owned(),
        format!(
            "bpftool map dump pinned {}",
            pin.map_path("SERVICES").display()
        ),
        format!(
            "bpftool map show pinned {}",
            pin.map_path("CONNTRACK").display()
        ),
        format!("# logs: {} (the agent's: sluice.log)", logs.display()),
    ];
    println!("\n  As root, from another terminal:");
    for line in lines {
        println!("    {line}");
    }
    println!("\n  Press Ctrl-C to clean up.");
    while !interrupt::interrupted() {
        // The kubelet keeps going: probes, restarts.
        cluster.tick()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!();
    Ok(())
}

/// Fails unless `report` holds what the walkthrough promises, listing every problem found.
/// (The same expectations the steps check, restated over the numbers, for tests.)
pub fn verify(report: &Report) -> Result<()> {
    let mut problems = Vec::new();
    if report.steps.len() != story::STEPS {
        problems.push(format!(
            "{} of {} steps ran",
            report.steps.len(),
            story::STEPS
        ));
    }
    for s in &report.steps {
        if !s.ok {
            problems.push(format!(
                "step {} failed: {:?} {:?}",
                s.name,
                s.error,
                s.checks.iter().filter(|c| !c.ok).collect::<Vec<_>>()
            ));
        }
        if s.failure_count() != 0 || s.served_while_not_ready != 0 {
            problems.push(format!(
                "step {}: failures {:?}, served while not ready {}",
                s.name, s.failures, s.served_while_not_ready
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
