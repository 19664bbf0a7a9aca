//! `controller-bench`: the control plane end to end (DESIGN.md, "Measuring performance" and
//! "Control plane"). Run it with `cargo xtask bench controller` (as root).
//!
//! For N = 1, 1 000 and 10 000 services of 10 endpoints each, side by side in one run: the
//! release `sluice run` agent in a lab's node namespace, attached to the node's uplink, in
//! Kubernetes mode against kube-mock's in-process API server (listening inside the same
//! namespace), which holds a Node, N Services and N EndpointSlices before the agent starts.
//! Every object reaches the agent through the same list/watch path a real API server feeds.
//!
//! Measured per N (see `report::Row` for every field):
//! - `program_all_s` (headline): from the moment every watcher had listed (`/readyz`, polled
//!   every millisecond, stops naming sources still listing) until the data path holds every
//!   frontend and backend (the agent's `/sluice/v1/dataplane/counters`, polled from then on:
//!   its answer waits for the reconcile round in progress). The kernel's maps are then
//!   counted by this process through the pins (`lb_userspace::inspect::pinned_occupancy`)
//!   and must hold what was expected. Also from agent start, with and without the data-path
//!   load (agent start until its "attached" log line);
//! - change latency: single-endpoint changes (one endpoint of a random service's slice
//!   replaced by a spare address, through `MockApiServer::apply`: a MODIFIED event), each
//!   timed from just before `apply` to the answer of the agent's drain-handshake view
//!   (`/sluice/v1/dataplane/endpoints/{ip}`) that first names the new backend of that
//!   service selectable, i.e. in its selection table as read from the mmap'ed `SLOTS` map.
//!   That view costs O(all services) and holds the agent's data-path lock, so polls start
//!   when the agent logs its next reconcile round; the round line's arrival is reported too
//!   (the agent's word). lb-userspace has no read-only O(one service) lookup in pinned maps
//!   that would let this process read the kernel's maps itself;
//! - memory: `VmRSS` (and `RssAnon`) of the agent after programming, and the `memlock` of
//!   every BPF map it holds a descriptor of (`/proc/<pid>/fdinfo`);
//! - idle CPU: utime + stime of the agent over 10 s without changes, as % of one core;
//! - the agent's `kubeproxy_sync_proxy_rules_duration_seconds` and
//!   `kubeproxy_network_programming_duration_seconds` (from each changed slice's
//!   `endpoints.kubernetes.io/last-change-trigger-time`, set when it is applied), scraped
//!   last.
//!
//! The capacities are the same for every N (sized for the largest), so only N differs. The
//! table goes to stdout, `target/bench/controller.json` (`--json NAME`: `NAME.json`) holds the
//! rows, the agents' logs go
//! to `target/bench/controller-agent-<N>.log`. Every wait has a deadline; what was reached
//! is reported. Exit status 0 whether or not the targets are met.

#[path = "../controller_bench/agent.rs"]
mod agent;
#[path = "../controller_bench/http.rs"]
mod http;
#[path = "../controller_bench/objects.rs"]
mod objects;
#[path = "../controller_bench/procfs.rs"]
mod procfs;
#[path = "../controller_bench/report.rs"]
mod report;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bench::stats::{Rng, percentile};
use clap::Parser;
use kube_mock::MockApiServer;
use lab::{Lab, PinDir};
use lb_userspace::{MaglevConfig, PinConfig};
use serde_json::Value;

use agent::Agent;
use http::Client;
use report::{Histogram, KernelView, MapMemory, Report, Row};

const API: &str = "127.0.0.1:10260";
const METRICS: &str = "127.0.0.1:10249";
/// The agent starts and attaches within this.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(90);
/// Every watcher lists within this after the agent attached.
const LIST_TIMEOUT: Duration = Duration::from_secs(120);
/// Every service is in the data path within this after listing.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(180);
/// One change is visible within this (else it counts as a timeout).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// All changes of one N end within this.
const CHANGES_BUDGET: Duration = Duration::from_secs(150);
/// Pause between a visibility poll's answer and the next poll.
const POLL_GAP: Duration = Duration::from_micros(200);
/// Pause between two changes (the previous round's removal settles).
const CHANGE_GAP: Duration = Duration::from_millis(2);

/// The control plane end to end: programming, change latency, memory and idle CPU of the
/// agent at 1, 1 000 and 10 000 services.
#[derive(Debug, Parser)]
#[command(name = "controller-bench")]
struct Args {
    /// The largest service count; rows are 1, 1 000 (if smaller) and this.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=65_000))]
    services: u32,
    /// Single-endpoint changes per row (default: 1000 at N = 1, 500 up to 1 000, 200 above).
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    changes: Option<u32>,
    /// Idle CPU window, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    idle_seconds: u32,
    /// The `sluice` binary (default: next to this one, i.e. the same release build).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Only these service counts (comma-separated), e.g. to profile one; default 1, 1 000
    /// and --services.
    #[arg(long, value_delimiter = ',')]
    counts: Vec<u32>,
    /// Extra environment of the agent (KEY=VALUE, repeat), e.g. allocator settings.
    #[arg(long = "agent-env", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    /// The report's name: target/bench/<NAME>.json (sync-bench runs this benchmark as its
    /// sluice row and reads its own copy).
    #[arg(long, default_value = "controller", value_parser = parse_name)]
    json: String,
}

fn parse_name(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: letters, digits, '-' and '_' only"))
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() -> std::process::ExitCode {
    bench::output::exit_status("controller-bench", run(&Args::parse()))
}

fn changes_for(args: &Args, n: usize) -> usize {
    match args.changes {
        Some(c) => c as usize,
        None if n <= 1 => 1000,
        None if n <= 1000 => 500,
        None => 200,
    }
}

/// The same data-path configuration for every row: capacities for the largest N and its
/// changes (a replaced backend's id is held until the purge, 10 s after the removal).
fn config_yaml(max_n: usize, max_changes: usize, pins: &Path, instance: &str) -> String {
    let table = lb_userspace::maglev::table_size(&MaglevConfig::default(), objects::ENDPOINTS);
    let services = max_n + 64;
    let frontends = objects::frontends(max_n) + 64;
    let backends = max_n * objects::ENDPOINTS + max_changes + 1024;
    let slots = (services as u64 * u64::from(table)).next_multiple_of(64);
    format!(
        "dataplane:\n  capacities:\n    services: {services}\n    frontends: {frontends}\n    \
         backends: {backends}\n    slots: {slots}\n  pin:\n    root: {}\n    instance: {instance}\n",
        pins.display()
    )
}

fn run(args: &Args) -> Result<()> {
    let sluice = match &args.sluice {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the executable")?
            .join("sluice"),
    };
    ensure!(
        sluice.exists(),
        "{} is missing: build it with `cargo build --release -p sluice` (cargo xtask bench \
         controller does)",
        sluice.display()
    );
    let mut counts: Vec<usize> = args.counts.iter().map(|&c| c as usize).collect();
    if counts.is_empty() {
        counts.push(1);
        if args.services > 1000 {
            counts.push(1000);
        }
        counts.push(args.services as usize);
    }
    ensure!(
        counts.iter().all(|&c| (1..=65_000).contains(&c)),
        "service counts must be 1..=65000: {counts:?}"
    );
    counts.sort_unstable();
    counts.dedup();
    let max_n = counts.iter().copied().max().unwrap_or(1);
    let max_changes = counts
        .iter()
        .map(|&n| changes_for(args, n))
        .max()
        .unwrap_or(0);

    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    println!("controller-bench: the sluice agent in Kubernetes mode against kube-mock");
    println!(
        "machine: nproc {nproc}, kernel {kernel}, load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "agent: {} (release); services {counts:?} x {} endpoints; the same capacities for \
         every row (sized for {max_n})",
        sluice.display(),
        objects::ENDPOINTS
    );

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench has no parent directory")?
        .to_path_buf();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let lab = Lab::builder()
        .backends(1)
        .build()
        .context("cannot build the lab")?;
    let pins = PinDir::new("controller-bench")?;
    let work = tempdir()?;

    let mut rows = Vec::new();
    for &n in &counts {
        eprintln!("\n== N = {n} services ==");
        let mut row = Row {
            services: n,
            endpoints_per_service: objects::ENDPOINTS,
            node_port_services: n.min(objects::NODE_PORTS),
            idle_seconds: f64::from(args.idle_seconds),
            ..Row::default()
        };
        let ctx = RowCtx {
            lab: &lab,
            sluice: &sluice,
            pins: pins.path(),
            work: &work.0,
            out_dir: &out_dir,
            max_n,
            max_changes,
            changes: changes_for(args, n),
            idle: Duration::from_secs(u64::from(args.idle_seconds)),
            env: &args.agent_env,
        };
        if let Err(e) = measure(&ctx, &mut row) {
            eprintln!("N = {n}: stopped early: {e:#}");
            row.notes.push(format!("stopped early: {e:#}"));
        }
        // Whatever happened: remove this instance's links and maps (the agent is gone).
        let instance = format!("bench-{n}");
        match uninstall(&lab, &sluice, pins.path(), &instance) {
            Ok(()) => {}
            Err(e) => row.notes.push(format!("uninstall of {instance}: {e:#}")),
        }
        rows.push(row);
    }

    let report = Report {
        rows,
        method: method_notes(),
    };
    println!();
    println!("{}", report::table(&report.rows));
    for r in &report.rows {
        print_details(r);
    }
    let path = out_dir.join(format!("{}.json", args.json));
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn method_notes() -> Vec<String> {
    vec![
        "agent: release `sluice run` in Kubernetes mode, in the lab's node namespace, attached to its uplink; \
         kube-mock's API server in the same namespace holds every object before the agent starts"
            .into(),
        format!(
            "services: clusterIP 10.96.0.0/16 port 80; the first {} are NodePort (30000+i, two frontends), \
             the others ClusterIP (one frontend); 10 ready endpoints each from 198.51.100.0/24 and \
             203.0.113.1-127 (reused across services); changes swap in 203.0.113.128-254",
            objects::NODE_PORTS
        ),
        "program_all_s: /readyz leaves 'waiting for the first full list' (1 ms polls) -> \
         /sluice/v1/dataplane/counters holds every frontend and backend (its answer waits for the round); \
         then the kernel's maps are counted through the pins by this process"
            .into(),
        "change latency: MockApiServer::apply of the modified slice -> /sluice/v1/dataplane/endpoints/{new ip}?flows=false \
         names the service's new backend selectable (its slot table, read from the mmap'ed SLOTS map)"
            .into(),
        "rss: /proc/<pid>/status; maps: sum of memlock in /proc/<pid>/fdinfo of bpf-map fds, distinct map ids; \
         RssFile includes the mmap'ed maps (counted twice in VmRSS + maps)"
            .into(),
        "idle: utime+stime from /proc/<pid>/stat over the window, after a 1 s settle, nothing polled".into(),
    ]
}

/// A directory removed on drop.
struct TempDir(PathBuf);

fn tempdir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("sluice-controller-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct RowCtx<'a> {
    lab: &'a Lab,
    sluice: &'a Path,
    pins: &'a Path,
    work: &'a Path,
    out_dir: &'a Path,
    max_n: usize,
    max_changes: usize,
    changes: usize,
    idle: Duration,
    env: &'a [(String, String)],
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib_kib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn measure(ctx: &RowCtx<'_>, row: &mut Row) -> Result<()> {
    let n = row.services;
    let lab = ctx.lab;
    let instance = format!("bench-{n}");
    let dir = ctx.work.join(&instance);
    std::fs::create_dir_all(dir.join("state"))?;

    // The API server, inside the node namespace, with every object before the agent starts.
    let listener = lab
        .node()
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))?
        .context("binding the mock API server in the node namespace")?;
    let mock = MockApiServer::spawn_on_thread(listener)?;
    let kubeconfig = dir.join("kubeconfig");
    mock.write_kubeconfig(&kubeconfig)?;
    let t = Instant::now();
    mock.apply(objects::node(lab.node_addr()))?;
    let mut slices = objects::initial_endpoints(n);
    for (i, eps) in slices.iter().enumerate() {
        mock.apply(objects::service(i))?;
        mock.apply(objects::slice(i, eps))?;
    }
    eprintln!(
        "api server {}: 1 Node, {n} Services, {n} EndpointSlices applied in {:.2} s",
        mock.addr(),
        t.elapsed().as_secs_f64()
    );

    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        config_yaml(ctx.max_n, ctx.max_changes, ctx.pins, &instance),
    )?;
    let args: Vec<String> = [
        "run",
        "--config",
        &config.to_string_lossy(),
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--node-name",
        objects::NODE,
        "--interface",
        lab.node_uplink(),
        "--redirect",
        &lab.node_pod_link(0),
        "--pin-root",
        &ctx.pins.to_string_lossy(),
        "--instance",
        &instance,
        "--state-dir",
        &dir.join("state").to_string_lossy(),
        "--api-listen",
        API,
        "--metrics-listen",
        METRICS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log_path = ctx.out_dir.join(format!("controller-agent-{n}.log"));
    let mut agent = Agent::spawn(lab.node(), ctx.sluice, &args, ctx.env, &log_path)?;
    let result = measure_agent(ctx, row, &mock, &mut agent, &mut slices);
    // The agent's own timing: took_ms of its rounds (first: the full sync).
    let rounds: Vec<(f64, u64)> = agent
        .log
        .lines_with("took_ms=")
        .iter()
        .filter(|(_, l)| l.contains(agent::ROUND))
        .filter_map(|(_, l)| Some((log_field(l, "took_ms")?, log_field(l, "upserted")? as u64)))
        .collect();
    if let Some(&(ms, up)) = rounds.first() {
        row.first_round_took_ms = Some(round(ms, 3));
        row.first_round_upserted = Some(up);
    }
    let mut later: Vec<f64> = rounds.iter().skip(1).map(|r| r.0).collect();
    later.sort_by(f64::total_cmp);
    row.change_round_took_ms_p50 = percentile(&later, 0.50).map(|v| round(v, 3));
    row.change_round_took_ms_p99 = percentile(&later, 0.99).map(|v| round(v, 3));
    let warnings: Vec<String> = agent
        .log
        .tail(100_000)
        .into_iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(5)
        .collect();
    for w in warnings {
        row.notes.push(format!("agent log: {w}"));
    }
    let status = agent.stop()?;
    eprintln!("agent stopped ({status}); log in {}", log_path.display());
    drop(mock);
    result
}

/// `key=value` of a tracing log line.
fn log_field(line: &str, key: &str) -> Option<f64> {
    let pat = format!("{key}=");
    let at = line.find(&pat)? + pat.len();
    line[at..]
        .split(|c: char| c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

fn measure_agent(
    ctx: &RowCtx<'_>,
    row: &mut Row,
    mock: &MockApiServer,
    agent: &mut Agent,
    slices: &mut [Vec<Ipv4Addr>],
) -> Result<()> {
    let n = row.services;
    let lab = ctx.lab;
    let expected_frontends = objects::frontends(n) as u64;
    let expected_backends = (n * objects::ENDPOINTS) as u64;
    let table = lb_userspace::maglev::table_size(&MaglevConfig::default(), objects::ENDPOINTS);
    let expected_slots = n as u64 * u64::from(table);

    // 1. Attached (the agent's log), listed (/readyz), programmed (counters).
    let attached = wait_until(
        agent,
        ATTACH_TIMEOUT,
        "the agent's data path to attach",
        |a| a.log.first_line(&["attached"]),
    )?;
    let load = attached - agent.spawned;
    row.load_s = Some(round(secs(load), 4));
    eprintln!("data path loaded and attached in {:.3} s", secs(load));

    let stop = AtomicBool::new(false);
    let listed_at = OnceLock::new();
    let (listed, programmed) = std::thread::scope(|s| {
        let (log, stop, listed_at) = (agent.log.clone(), &stop, &listed_at);
        let listed = s.spawn(move || {
            let r = watch_listing(lab, &log, stop, attached + LIST_TIMEOUT);
            match r.0 {
                Some(t) => {
                    let _ = listed_at.set(t);
                }
                None => stop.store(true, Ordering::Relaxed),
            }
            r
        });
        let programmed = s.spawn(|| {
            watch_programmed(
                lab,
                stop,
                listed_at,
                attached + LIST_TIMEOUT + PROGRAM_TIMEOUT,
                (expected_frontends, expected_backends),
            )
        });
        // The agent must stay up meanwhile.
        while !programmed.is_finished() {
            if !agent.running() {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (
            listed.join().expect("listing watcher"),
            programmed.join().expect("programming watcher"),
        )
    });
    let (listed, listed_exact) = listed;
    let (programmed, last_counts) = programmed;
    row.listed_exact = listed_exact;
    if let Some(l) = listed {
        row.list_s = Some(round(secs(l.saturating_duration_since(attached)), 4));
    }
    let Some(programmed) = programmed else {
        bail!(
            "the data path never held every service (listed: {}; last counters: frontends/backends \
             {:?} of {expected_frontends}/{expected_backends}; agent running: {}; last log lines: {:?})",
            listed.map_or("no".into(), |l| format!(
                "{:.3} s after start",
                secs(l - agent.spawned)
            )),
            last_counts,
            agent.running(),
            agent.log.tail(5)
        );
    };
    let listed = listed.context("every service was programmed but the listing was not seen")?;
    row.program_all_s = Some(round(secs(programmed.saturating_duration_since(listed)), 4));
    let start_to = programmed - agent.spawned;
    row.start_to_programmed_s = Some(round(secs(start_to), 4));
    row.start_minus_load_s = Some(round(secs(start_to.saturating_sub(load)), 4));
    eprintln!(
        "listed {:.3} s after attaching; every service in the data path {:.4} s after listing \
         ({:.3} s after start)",
        row.list_s.unwrap_or_default(),
        row.program_all_s.unwrap_or_default(),
        secs(start_to)
    );

    // The kernel's maps, counted by this process.
    let pin = PinConfig {
        root: ctx.pins.to_path_buf(),
        instance: format!("bench-{n}"),
    };
    let view = kernel_view(&pin, expected_frontends, expected_backends, expected_slots)?;
    eprintln!(
        "kernel maps: {} frontends, {} backends, {} slots (expected {expected_frontends}, \
         {expected_backends}, {expected_slots}; read in {:.3} s)",
        view.frontends, view.backends, view.slots, view.read_s
    );
    let kernel_ok = view.frontends == expected_frontends && view.backends == expected_backends;
    row.kernel_after_programming = Some(view);
    ensure!(
        kernel_ok,
        "the kernel's maps do not hold what the agent reported"
    );

    // 2. Memory after programming.
    let mem = procfs::memory(agent.pid)?;
    row.rss_mib = Some(round(mib_kib(mem.vm_rss), 2));
    row.rss_anon_mib = Some(round(mib_kib(mem.rss_anon), 2));
    row.rss_file_mib = Some(round(mib_kib(mem.rss_file), 2));
    let maps = procfs::bpf_maps(agent.pid)?;
    let names = procfs::bpftool_names();
    let memlock: u64 = maps.iter().map(|m| m.memlock).sum();
    row.maps_mib = Some(round(memlock as f64 / 1048576.0, 2));
    let mut by_size = maps.clone();
    by_size.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    row.bpf_maps = by_size
        .iter()
        .map(|m| MapMemory {
            id: m.id,
            name: names.get(&m.id).cloned().unwrap_or_default(),
            map_type: m.map_type,
            max_entries: m.max_entries,
            memlock_mib: round(m.memlock as f64 / 1048576.0, 3),
        })
        .collect();
    eprintln!(
        "memory: VmRSS {:.1} MiB (RssAnon {:.1}, RssFile {:.1}), {} BPF maps {:.1} MiB",
        mib_kib(mem.vm_rss),
        mib_kib(mem.rss_anon),
        mib_kib(mem.rss_file),
        maps.len(),
        memlock as f64 / 1048576.0
    );

    // The cost of one counters answer once programmed (the resolution of program_all_s).
    let mut counters = Client::new(lab.node(), API.parse()?);
    let mut rtts = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        counters.get("/sluice/v1/dataplane/counters", Duration::from_secs(10))?;
        rtts.push(secs(t.elapsed()) * 1e3);
    }
    rtts.sort_by(f64::total_cmp);
    row.counters_poll_ms = percentile(&rtts, 0.5).map(|v| round(v, 4));
    drop(counters);

    // 3. Idle CPU: nothing polls the agent meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let tck = procfs::clk_tck();
    let (c0, t0) = (procfs::cpu_ticks(agent.pid)?, Instant::now());
    std::thread::sleep(ctx.idle);
    let (c1, t1) = (procfs::cpu_ticks(agent.pid)?, Instant::now());
    let cpu = (c1 - c0) as f64 / tck as f64;
    row.idle_cpu_pct = Some(round(100.0 * cpu / secs(t1 - t0), 3));
    eprintln!(
        "idle: {:.3} s of CPU in {:.1} s ({:.2} % of a core)",
        cpu,
        secs(t1 - t0),
        row.idle_cpu_pct.unwrap_or_default()
    );

    // 4. Changes.
    measure_changes(ctx, row, mock, &agent.log, slices)?;
    std::thread::sleep(Duration::from_millis(200));
    let after = kernel_view(&pin, expected_frontends, expected_backends, expected_slots)?;
    if after.frontends != expected_frontends || after.backends != expected_backends {
        row.notes.push(format!(
            "after the changes the kernel's maps hold {} frontends and {} backends, expected \
             {expected_frontends} and {expected_backends}",
            after.frontends, after.backends
        ));
    }
    row.kernel_after_changes = Some(after);
    row.rss_after_changes_mib = Some(round(mib_kib(procfs::memory(agent.pid)?.vm_rss), 2));

    // 5. The agent's own histograms (the first scrape creates every per-service series).
    let mut metrics = Client::new(lab.node(), METRICS.parse()?);
    let t = Instant::now();
    match metrics.get("/metrics", Duration::from_secs(120)) {
        Ok((200, body)) => {
            row.metrics_scrape_s = Some(round(t.elapsed().as_secs_f64(), 4));
            row.metrics_bytes = Some(body.len());
            let text = String::from_utf8_lossy(&body);
            row.sync_proxy_rules = histogram(&text, "kubeproxy_sync_proxy_rules_duration_seconds");
            row.network_programming =
                histogram(&text, "kubeproxy_network_programming_duration_seconds");
            eprintln!(
                "/metrics: {} bytes in {:.3} s",
                body.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok((status, _)) => row.notes.push(format!("/metrics answered {status}")),
        Err(e) => row.notes.push(format!("/metrics: {e:#}")),
    }
    row.rss_after_scrape_mib = Some(round(mib_kib(procfs::memory(agent.pid)?.vm_rss), 2));
    Ok(())
}

/// Polls `f` on the agent until it answers, failing when the agent exits or time is up.
fn wait_until<T>(
    agent: &mut Agent,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&Agent) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f(agent) {
            return Ok(v);
        }
        if !agent.running() {
            bail!(
                "the agent exited while waiting for {what}; last log lines: {:?}",
                agent.log.tail(10)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}; last log lines: {:?}",
                agent.log.tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// When every watcher had listed: the first `/readyz` answer that no longer names a source
/// still listing, `(time, exact)`.
///
/// Only answers to requests sent after the watchers registered count: before that (the
/// metrics listener serves while the sources are being registered, and a request queued
/// during the data-path load is answered first) `/readyz` says "waiting for the first sync
/// round" with nothing listed yet. They register right after the agent logs "Kubernetes
/// mode". Not exact when the agent was already ready at the first such answer: the time is
/// then the last answer still listing (or the registration), so `program_all_s` is an upper
/// bound.
fn watch_listing(
    lab: &Lab,
    log: &agent::Log,
    stop: &AtomicBool,
    deadline: Instant,
) -> (Option<Instant>, bool) {
    let Ok(addr) = METRICS.parse::<SocketAddr>() else {
        return (None, false);
    };
    let mut c = Client::new(lab.node(), addr);
    let mut last_listing = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let sent = Instant::now();
        let registered = log.first_line(&["Kubernetes mode"]);
        let valid = registered.is_some_and(|r| r < sent) || last_listing.is_some();
        match c.get("/readyz", Duration::from_secs(2)) {
            Ok((200, _)) if valid => {
                return (last_listing.or(registered), false);
            }
            Ok((_, body)) => {
                let body = String::from_utf8_lossy(&body);
                if body.contains("first full list") {
                    last_listing = Some(Instant::now());
                } else if valid && body.contains("first sync round") {
                    return (Some(Instant::now()), true);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(4)),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (None, false)
}

/// When the data path held every frontend and backend: the answer of the agent's counters
/// view (it waits for the round in progress) that first shows them. Also the last counts.
///
/// Polls start once the listing was seen: each answer walks the conntrack table's buckets
/// (about a millisecond of the agent's CPU even when empty), which would slow the listing
/// down; during the round a poll just waits for the agent's data-path lock.
fn watch_programmed(
    lab: &Lab,
    stop: &AtomicBool,
    listed: &OnceLock<Instant>,
    deadline: Instant,
    (frontends, backends): (u64, u64),
) -> (Option<Instant>, Option<(u64, u64)>) {
    let Ok(addr) = API.parse::<SocketAddr>() else {
        return (None, None);
    };
    while listed.get().is_none() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return (None, None);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut c = Client::new(lab.node(), addr);
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.get("/sluice/v1/dataplane/counters", left) {
            Ok((200, body)) => {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let get = |k: &str| v["occupancy"][k].as_u64().unwrap_or(0);
                    let counts = (get("frontends"), get("backends"));
                    last = Some(counts);
                    if counts.0 >= frontends && counts.1 >= backends {
                        return (Some(at), last);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(4)),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (None, last)
}

fn kernel_view(pin: &PinConfig, frontends: u64, backends: u64, slots: u64) -> Result<KernelView> {
    let t = Instant::now();
    let occ = lb_userspace::inspect::pinned_occupancy(pin)
        .context("counting the pinned maps from the benchmark")?;
    Ok(KernelView {
        frontends: occ.frontends,
        backends: occ.backends,
        slots: occ.slots,
        expected_frontends: frontends,
        expected_backends: backends,
        expected_slots: slots,
        read_s: round(t.elapsed().as_secs_f64(), 4),
    })
}

/// Whether the endpoint view names `backend` of `service` as selectable.
fn selectable(body: &[u8], service: &str, backend: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v["items"].as_array().is_some_and(|items| {
        items.iter().any(|it| {
            it["service"].as_str() == Some(service)
                && it["backend"].as_str() == Some(backend)
                && it["selectable"].as_bool() == Some(true)
        })
    })
}

/// Single-endpoint changes, each timed from just before `MockApiServer::apply` to the
/// answer of the endpoint view that first shows the new backend selectable. The view walks
/// every service (and holds the agent's data-path lock meanwhile), so polling it while the
/// agent works would slow the agent down at 10 000 services: polls start when the agent's
/// log shows its next reconcile round (or at the deadline), and repeat until the data path
/// shows the change. The round line's arrival is kept as the agent's own figure.
fn measure_changes(
    ctx: &RowCtx<'_>,
    row: &mut Row,
    mock: &MockApiServer,
    log: &agent::Log,
    slices: &mut [Vec<Ipv4Addr>],
) -> Result<()> {
    let n = row.services;
    let mut api = Client::new(ctx.lab.node(), API.parse()?);

    // The view answers as expected for an initial endpoint...
    let (status, body) = api.get(
        &format!("/sluice/v1/dataplane/endpoints/{}", slices[0][0]),
        Duration::from_secs(10),
    )?;
    ensure!(
        status == 200
            && selectable(
                &body,
                &objects::spec_name(0),
                &SocketAddr::new(slices[0][0].into(), objects::TARGET_PORT).to_string()
            ),
        "the endpoint view does not show service 0's first endpoint as selectable: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let spare = objects::spare_pool();
    // Round trips of the polls that showed a change: what "seen" adds to the moment the
    // data path held it, at most.
    let mut rtts = Vec::new();

    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut lat = Vec::new();
    let mut logged = Vec::new();
    let mut timeouts = 0;
    row.changes_requested = ctx.changes;
    let budget = Instant::now() + CHANGES_BUDGET;
    let progress_every = (ctx.changes / 4).max(1);
    for c in 0..ctx.changes {
        if Instant::now() > budget {
            row.notes.push(format!(
                "the change budget of {CHANGES_BUDGET:?} ran out after {c} changes"
            ));
            break;
        }
        let s = rng.below(n);
        let j = rng.below(objects::ENDPOINTS);
        let new = loop {
            let a = spare[rng.below(spare.len())];
            if !slices[s].contains(&a) {
                break a;
            }
        };
        slices[s][j] = new;
        let obj = objects::slice(s, &slices[s]);
        let service = objects::spec_name(s);
        let backend = SocketAddr::new(new.into(), objects::TARGET_PORT).to_string();
        let path = format!("/sluice/v1/dataplane/endpoints/{new}?flows=false");
        let rounds = log.rounds();
        let t0 = Instant::now();
        mock.apply(obj)?;
        if let Some(t) = log.wait_round(rounds, t0 + CHANGE_TIMEOUT) {
            logged.push(secs(t.saturating_duration_since(t0)) * 1e3);
        }
        loop {
            let left = (t0 + CHANGE_TIMEOUT).saturating_duration_since(Instant::now());
            if left.is_zero() {
                timeouts += 1;
                break;
            }
            let sent = Instant::now();
            if let Ok((200, body)) = api.get(&path, left)
                && selectable(&body, &service, &backend)
            {
                lat.push(secs(t0.elapsed()) * 1e3);
                rtts.push(secs(sent.elapsed()) * 1e3);
                break;
            }
            std::thread::sleep(POLL_GAP);
        }
        if (c + 1) % progress_every == 0 {
            eprintln!(
                "changes: {}/{} ({} timed out)",
                c + 1,
                ctx.changes,
                timeouts
            );
        }
        std::thread::sleep(CHANGE_GAP);
    }
    rtts.sort_by(f64::total_cmp);
    row.poll_ms = percentile(&rtts, 0.5).map(|v| round(v, 4));
    row.changes_done = lat.len() + timeouts;
    row.change_timeouts = timeouts;
    lat.sort_by(f64::total_cmp);
    let p = |q| percentile(&lat, q).map(|v| round(v, 4));
    row.change_min_ms = lat.first().map(|v| round(*v, 4));
    row.change_p50_ms = p(0.50);
    row.change_p90_ms = p(0.90);
    row.change_p99_ms = p(0.99);
    row.change_max_ms = lat.last().map(|v| round(*v, 4));
    logged.sort_by(f64::total_cmp);
    row.change_logged_p50_ms = percentile(&logged, 0.50).map(|v| round(v, 4));
    row.change_logged_p99_ms = percentile(&logged, 0.99).map(|v| round(v, 4));
    if timeouts > 0 {
        row.notes.push(format!(
            "{timeouts} changes were not visible within {CHANGE_TIMEOUT:?} (left out of the \
             percentiles)"
        ));
    }
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    eprintln!(
        "changes: {} visible, {timeouts} timed out; p50 {} ms, p99 {} ms, max {} ms (one poll \
         {} ms; the agent's round logged: p50 {} ms, p99 {} ms)",
        lat.len(),
        f(row.change_p50_ms),
        f(row.change_p99_ms),
        f(row.change_max_ms),
        f(row.poll_ms),
        f(row.change_logged_p50_ms),
        f(row.change_logged_p99_ms),
    );
    Ok(())
}

/// A Prometheus histogram of the text exposition: count, sum, and the buckets holding the
/// median and the 99th percentile.
fn histogram(text: &str, name: &str) -> Option<Histogram> {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut h = Histogram::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut seen = false;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = l.strip_prefix(&format!("{name}_bucket")) {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(|v| {
                    if v == "+Inf" {
                        f64::INFINITY
                    } else {
                        v.parse().unwrap_or(f64::NAN)
                    }
                });
            if let (Some(le), Some(v)) = (le, value(l)) {
                buckets.push((le, v));
            }
        } else if l.starts_with(&format!("{name}_sum")) {
            h.sum_s = value(l)?;
            seen = true;
        } else if l.starts_with(&format!("{name}_count")) {
            h.count = value(l)? as u64;
            seen = true;
        }
    }
    if !seen {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let q = |q: f64| {
        let want = q * h.count as f64;
        buckets
            .iter()
            .find(|(_, c)| *c >= want && *c > 0.0)
            .map(|(le, _)| round(le * 1e3, 3))
    };
    if h.count > 0 {
        h.mean_ms = Some(round(h.sum_s / h.count as f64 * 1e3, 4));
        h.p50_le_ms = q(0.5);
        h.p99_le_ms = q(0.99);
    }
    Some(h)
}

fn print_details(r: &Row) {
    println!("\nN = {}:", r.services);
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}"));
    println!(
        "  load {} s, list {} s, program {} s (listed exact: {}; one counters answer {} ms), \
         start -> programmed {} s; agent's first round: {} ms for {} services",
        f(r.load_s),
        f(r.list_s),
        f(r.program_all_s),
        r.listed_exact,
        f(r.counters_poll_ms),
        f(r.start_to_programmed_s),
        f(r.first_round_took_ms),
        r.first_round_upserted.map_or("-".into(), |v| v.to_string())
    );
    println!(
        "  changes {}/{} ({} timed out): min {} p50 {} p90 {} p99 {} max {} ms; one poll {} ms; \
         round logged p50 {} p99 {} ms; agent rounds took p50 {} p99 {} ms",
        r.changes_done,
        r.changes_requested,
        r.change_timeouts,
        f(r.change_min_ms),
        f(r.change_p50_ms),
        f(r.change_p90_ms),
        f(r.change_p99_ms),
        f(r.change_max_ms),
        f(r.poll_ms),
        f(r.change_logged_p50_ms),
        f(r.change_logged_p99_ms),
        f(r.change_round_took_ms_p50),
        f(r.change_round_took_ms_p99)
    );
    let largest: Vec<String> = r
        .bpf_maps
        .iter()
        .take(4)
        .map(|m| format!("{} {:.1} MiB", m.name, m.memlock_mib))
        .collect();
    println!(
        "  memory: VmRSS {} MiB (RssAnon {}, RssFile {}), after changes {}, after /metrics {}; \
         maps {} MiB, largest: {}",
        f(r.rss_mib),
        f(r.rss_anon_mib),
        f(r.rss_file_mib),
        f(r.rss_after_changes_mib),
        f(r.rss_after_scrape_mib),
        f(r.maps_mib),
        largest.join(", ")
    );
    for (name, h) in [
        (
            "kubeproxy_sync_proxy_rules_duration_seconds",
            &r.sync_proxy_rules,
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            &r.network_programming,
        ),
    ] {
        match h {
            Some(h) => println!(
                "  {name}: count {}, mean {} ms, p50 <= {} ms, p99 <= {} ms",
                h.count,
                f(h.mean_ms),
                f(h.p50_le_ms),
                f(h.p99_le_ms)
            ),
            None => println!("  {name}: not exported"),
        }
    }
    if let Some(s) = r.metrics_scrape_s {
        println!(
            "  one /metrics scrape: {s} s, {} bytes",
            r.metrics_bytes.unwrap_or(0)
        );
    }
    for note in &r.notes {
        println!("  note: {note}");
    }
}

/// `sluice uninstall` of one instance (links and maps), bounded in time.
fn uninstall(lab: &Lab, sluice: &Path, pins: &Path, instance: &str) -> Result<()> {
    let mut cmd = lab.node().command(sluice);
    cmd.arg("uninstall")
        .arg("--pin-root")
        .arg(pins)
        .args(["--instance", instance])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut p = lab::Process::spawn_with_stdio(cmd)?;
    match p.wait_timeout(Duration::from_secs(30))? {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("sluice uninstall exited with {s}"),
        None => bail!("sluice uninstall did not finish within 30 s"),
    }
}
