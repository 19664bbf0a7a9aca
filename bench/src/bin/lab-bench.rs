//! `lab-bench`: requests per second through a NodePort (XDP DNAT, redirected straight to
//! the pod's veth) beside the untranslated path to the same pod (the node's own
//! forwarding), in one lab and one run, keep-alive and a new connection per request. Run it
//! with `cargo xtask bench lab` (as root).
//!
//! The lab: the standard client / node / pod namespaces (`lab::Lab`), one `lab-server` pod,
//! pass XDP programs on the peers, TX checksum offload off on the senders. Each round
//! measures the four cells (path x connection mode) in an order rotated from round to
//! round with a closed-loop load of `--concurrency` workers for `--seconds`; each figure
//! is the median over rounds, and the ratio is translated / untranslated (target ≥ 1.0
//! with keep-alive, ≥ 0.95 with new connections). Every request is counted: a failed one
//! ends the benchmark with an error. Output: a table on stdout and
//! `target/bench/lab.json`. Exit status 0 whatever the ratios.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bench::load::{self, ConnectionMode, Protocol as LoadProtocol};
use clap::Parser;
use lab::Lab;
use lb_userspace::{BackendSpec, Dataplane, DataplaneConfig, Frontend, Protocol, ServiceSpec};
use serde::Serialize;

const NODE_PORT: u16 = 30080;
const HTTP_PORT: u16 = 8080;

/// Requests/s through a NodePort beside the untranslated path to the same pod.
#[derive(Debug, Parser)]
#[command(name = "lab-bench")]
struct Args {
    /// Seconds of load per cell and round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// Rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..=100))]
    rounds: u32,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
}

#[derive(Debug, Serialize)]
struct Cell {
    path: &'static str,
    mode: &'static str,
    /// Requests/s of each round, and their median.
    rounds: Vec<f64>,
    median_rps: f64,
    /// p50 / p99 latency of the median round, µs.
    p50_us: u64,
    p99_us: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    seconds: u32,
    rounds: u32,
    concurrency: u32,
    cells: Vec<Cell>,
    /// NodePort / untranslated, per connection mode.
    ratio_keep_alive: f64,
    ratio_new_connections: f64,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-bench: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn lab_server(lab: &Lab) -> Result<lab::Process> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("lab-server");
    ensure!(
        bin.exists(),
        "{} is missing: build the bench crate's binaries",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1").args([
        "--name",
        "pod0",
        "--http",
        &HTTP_PORT.to_string(),
        "--bind",
        "0.0.0.0",
    ]);
    let mut p = lab.backend(0).spawn(&cmd)?;
    p.wait_for_line("ready", Duration::from_secs(10))?;
    Ok(p)
}

fn run(args: &Args) -> Result<()> {
    let lab = Lab::builder()
        .backends(1)
        .xdp_pass_attacher(|ifname| {
            let p = lb_userspace::PassProgram::attach(ifname)?;
            Ok(Box::new(p) as Box<dyn std::any::Any + Send>)
        })
        .build()
        .context("lab")?;
    let _server = lab_server(&lab)?;
    let pod = SocketAddr::new(IpAddr::V4(lab.backend_addr(0)), HTTP_PORT);
    let (uplink, pod_link) = (lab.node_uplink(), lab.node_pod_link(0));
    let _dp = lab.node().enter(|| -> Result<Dataplane> {
        let mut dp = Dataplane::load(DataplaneConfig::default())?;
        dp.attach(uplink)?;
        dp.allow_redirect(&pod_link)?;
        dp.upsert_service(&ServiceSpec {
            name: "bench/web:http/TCP".into(),
            protocol: Protocol::Tcp,
            frontends: vec![Frontend::NodePort(NODE_PORT)],
            backends: vec![BackendSpec::ready(pod)],
            ..Default::default()
        })?;
        Ok(dp)
    })??;
    let node_port = SocketAddr::new(lab.node_addr().into(), NODE_PORT);
    let cells: [(&'static str, SocketAddr, &'static str, ConnectionMode); 4] = [
        (
            "nodeport",
            node_port,
            "keep_alive",
            ConnectionMode::KeepAlive,
        ),
        ("untranslated", pod, "keep_alive", ConnectionMode::KeepAlive),
        (
            "nodeport",
            node_port,
            "new_connection",
            ConnectionMode::NewConnectionPerRequest,
        ),
        (
            "untranslated",
            pod,
            "new_connection",
            ConnectionMode::NewConnectionPerRequest,
        ),
    ];
    let mut samples: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); cells.len()];
    for round in 0..args.rounds as usize {
        for k in 0..cells.len() {
            let i = (k + round) % cells.len();
            let (path, target, mode_name, mode) = cells[i];
            let mut cfg = load::Config::new(target, LoadProtocol::http("/"));
            cfg.mode = mode;
            cfg.concurrency = args.concurrency as usize;
            cfg.max_requests = 10_000_000;
            cfg.max_duration = Duration::from_secs(u64::from(args.seconds));
            let r = lab.client().enter(|| load::run_blocking(cfg))??;
            ensure!(
                r.failures() == 0 && r.retried == 0,
                "{path} {mode_name}, round {round}: {r}"
            );
            samples[i].push((r.rate, r.latency_us.p50, r.latency_us.p99));
        }
    }
    let mut out = Vec::new();
    for (i, (path, _, mode, _)) in cells.iter().enumerate() {
        let mut v = samples[i].clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = v[v.len() / 2];
        out.push(Cell {
            path,
            mode,
            rounds: samples[i].iter().map(|s| s.0.round()).collect(),
            median_rps: mid.0.round(),
            p50_us: mid.1,
            p99_us: mid.2,
        });
    }
    let ratio =
        |a: usize, b: usize| (out[a].median_rps / out[b].median_rps * 1000.0).round() / 1000.0;
    let report = Report {
        seconds: args.seconds,
        rounds: args.rounds,
        concurrency: args.concurrency,
        ratio_keep_alive: ratio(0, 1),
        ratio_new_connections: ratio(2, 3),
        cells: out,
    };
    println!("| path | connections | req/s (median) | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|");
    for c in &report.cells {
        println!(
            "| {} | {} | {} | {} | {} |",
            c.path, c.mode, c.median_rps, c.p50_us, c.p99_us
        );
    }
    let verdict = |r: f64, target: f64| if r >= target { "met" } else { "MISSED" };
    println!(
        "NodePort / untranslated: keep-alive {} (target >= 1.0: {}), new connections {} \
         (target >= 0.95: {})",
        report.ratio_keep_alive,
        verdict(report.ratio_keep_alive, 1.0),
        report.ratio_new_connections,
        verdict(report.ratio_new_connections, 0.95)
    );
    let path =
        bench::output::write_json("lab", &report).context("writing target/bench/lab.json")?;
    println!("wrote {}", path.display());
    Ok(())
}
