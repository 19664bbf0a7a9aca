//! `sync-bench`: programming N services and single-endpoint changes, sluice beside
//! kube-proxy's iptables (nf_tables and legacy backends) and nftables rule sets (DESIGN.md,
//! "Measuring performance": "full sync of 10 000 services x 10 endpoints, and one endpoint
//! change until the data path uses it (p50/p99), against iptables-restore and nft for the
//! same state"). Run as root; `cargo xtask bench sync`.
//!
//! State: `--services` N (default 10 000) of `--endpoints` E (default 10) ready endpoints
//! each; the first min(N, 2 000) have a NodePort (30000 + i), as in controller-bench.
//!
//! - **sluice**: the sibling `controller-bench` binary at N only (`--counts N`, its JSON in
//!   `target/bench/sync-controller.json`): the release agent fed by an in-process Kubernetes
//!   API server. Full programming = every watcher listed -> the data path holds every frontend
//!   and backend; a change = one endpoint of a random service's EndpointSlice replaced,
//!   applied to the API server -> the data path selects the new backend; memory = the agent's
//!   VmRSS + the memlock of its BPF maps. controller-bench always uses 10 endpoints.
//! - **iptables-nft / iptables-legacy / nftables**: kube-proxy's rule sets for the same state
//!   (`bench::kube_proxy`), each in a fresh network namespace. Full programming = the wall time
//!   of `iptables-{nft,legacy}-restore -w 5 --noflush --counters` / `nft -f -` applying the
//!   full sync's input, spawn to exit; a change = one endpoint of a random service replaced,
//!   the input kube-proxy's next partial sync writes generated, then applied and timed the
//!   same way (nftables: plus the deletion of chains stale for more than a second, which
//!   kube-proxy's sync does first; iptables in large-cluster mode leaves stale chains to its
//!   periodic cleanup). Generating the text is timed apart (our generator is not kube-proxy).
//!   The changes are back to back, so a change's time is the tool's and the kernel's alone,
//!   without kube-proxy's own work and its minimum sync interval. After the full sync and
//!   the changes the kernel's rules are read back and checked (every DNAT; the last change
//!   present, its replaced endpoint no longer selected).
//!   Memory: each tool runs in a fresh memory cgroup below this process's own (joined before
//!   it reads its input); the kernel charges the netfilter objects it creates to that cgroup
//!   (`GFP_KERNEL_ACCOUNT`), and they stay charged after it exits: the kernel memory of the
//!   cgroup after the full sync is the rules' memory (the run's peak, with the tools' own
//!   memory, is in the JSON).
//!
//! The table goes to stdout (targets beside sluice's values: one endpoint change at 10 000
//! services p99 <= 5 ms, 10 000 x 10 programmed <= 1 s; the ratios of the others' change p99
//! to sluice's), `target/bench/sync.json` holds every figure. Every wait has a deadline; what
//! was reached is reported; the exit status is 0 whether or not the targets are met.

#[path = "../sync_bench/cgroup.rs"]
mod cgroup;
#[path = "../sync_bench/report.rs"]
mod report;
#[path = "../sync_bench/rules.rs"]
mod rules;
#[path = "../sync_bench/sluice.rs"]
mod sluice;

use anyhow::{Result, bail};
use bench::kube_proxy::{self, iptables::Backend};
use clap::Parser;

use report::Report;
use rules::Mode;

/// Services that get a NodePort (as controller-bench's `objects::NODE_PORTS`).
const NODE_PORTS: usize = 2000;

/// Full programming and single-endpoint changes: sluice beside kube-proxy's iptables
/// (nf_tables and legacy) and nftables rules.
#[derive(Debug, Parser)]
#[command(name = "sync-bench")]
struct Args {
    /// Services.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=65_000))]
    services: u32,
    /// Endpoints per service (kube-proxy rows; controller-bench always uses 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    endpoints: u32,
    /// Single-endpoint changes per system.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    changes: u32,
    /// Only these systems (comma-separated: sluice, iptables-nft, iptables-legacy, nftables).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

const SYSTEMS: [&str; 4] = ["sluice", "iptables-nft", "iptables-legacy", "nftables"];

fn main() -> std::process::ExitCode {
    bench::output::exit_status("sync-bench", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("sync-bench creates namespaces, cgroups and netfilter rules: run it as root");
    }
    if let Some(bad) = args.only.iter().find(|s| !SYSTEMS.contains(&s.as_str())) {
        bail!("--only {bad:?}: not one of {SYSTEMS:?}");
    }
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let n = args.services as usize;
    let e = args.endpoints as usize;
    let changes = args.changes as usize;
    let out_dir = bench::output::dir()?;

    println!(
        "sync-bench: programming {n} services x {e} endpoints, {changes} single-endpoint changes"
    );
    println!(
        "machine: nproc {}, kernel {}, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut report = Report {
        services: n,
        endpoints_per_service: e,
        changes,
        sluice: None,
        kube_proxy: Vec::new(),
        method: method(),
        notes: Vec::new(),
    };
    let state = || {
        let mut s = kube_proxy::synthetic(n, e);
        for (i, svc) in s.iter_mut().take(NODE_PORTS).enumerate() {
            svc.node_port = Some(30_000 + i as u16);
        }
        s
    };
    for mode in [
        Mode::Iptables(Backend::Nft),
        Mode::Iptables(Backend::Legacy),
        Mode::Nftables,
    ] {
        if !wanted(mode.label()) {
            continue;
        }
        eprintln!("\n== {} ==", mode.label());
        report
            .kube_proxy
            .push(rules::measure(mode, state(), changes));
    }
    if wanted("sluice") {
        eprintln!("\n== sluice ==");
        match sluice::measure(&out_dir, n, changes) {
            Ok(row) => {
                if row.endpoints_per_service != e {
                    report.notes.push(format!(
                        "sluice's row has {} endpoints per service (controller-bench's), the others {e}",
                        row.endpoints_per_service
                    ));
                }
                report.sluice = Some(row);
            }
            Err(err) => {
                eprintln!("sluice: not measured: {err:#}");
                report.notes.push(format!("sluice not measured: {err:#}"));
            }
        }
    }

    println!();
    println!("{}", report::table(&report));
    print_details(&report);
    let path = bench::output::write_json("sync", &report)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn method() -> Vec<String> {
    vec![
        "sluice: controller-bench at one service count (release agent, Kubernetes mode against kube-mock); \
         full = listed -> data path holds everything; change = slice applied -> data path selects the new backend; \
         memory = VmRSS + BPF map memlock"
            .into(),
        "kube-proxy rows: bench::kube_proxy's inputs (kube-proxy v1.33 shapes) applied in a fresh namespace; \
         full/change = wall time of the tool (spawn to exit); changes back to back; generation timed apart"
            .into(),
        "memory (kube-proxy rows): kernel memory charged to a fresh memory cgroup the tools ran in, after the full sync"
            .into(),
        format!(
            "state: synthetic services (cluster IPs 198.18.0.0/15, endpoints 198.19.0.0/16, never sent to); \
             the first {NODE_PORTS} have a NodePort"
        ),
    ]
}

fn print_details(r: &Report) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}"));
    if let Some(s) = &r.sluice {
        println!(
            "\nsluice: {} changes ({} timed out); VmRSS {} MiB (RssAnon {}), BPF maps {} MiB; report {}",
            s.changes_done,
            s.change_timeouts,
            f(s.rss_mib),
            f(s.rss_anon_mib),
            f(s.maps_mib),
            s.report
        );
        for n in &s.notes {
            println!("  note: {n}");
        }
    }
    for k in &r.kube_proxy {
        println!(
            "\n{} ({}; large-cluster mode {}): generating the full input {} s ({} MiB), one partial \
             input p50 {} ms ({} KiB); {} of {} changes, min {} p90 {} max {} ms; kernel memory after \
             the full sync {} MiB, after the changes {} MiB, peak charged {} MiB ({}); \
             verified in the kernel: {}",
            k.mode,
            k.tool,
            k.large_cluster_mode,
            f(k.generate_full_s),
            f(k.full_input_mib),
            f(k.change_generate_p50_ms),
            f(k.change_input_kib_p50),
            k.changes_done,
            k.changes_requested,
            f(k.change_min_ms),
            f(k.change_p90_ms),
            f(k.change_max_ms),
            f(k.kernel_after_full_mib),
            f(k.kernel_after_changes_mib),
            f(k.peak_charged_mib),
            k.memory_method.as_deref().unwrap_or("not measured"),
            k.verified
        );
        if let (Some(mib), Some(rules)) = (k.kernel_after_full_mib, k.rules_after_full)
            && rules > 0
        {
            println!(
                "  ≈ {:.0} bytes of kernel memory per rule read back ({rules} rules)",
                mib * 1_048_576.0 / rules as f64
            );
        }
        if let Some(ms) = k.list_chains_ms {
            println!(
                "  kube-proxy's per-sync `nft list chains`: {ms} ms (not in the change time); {} stale chains deleted",
                k.stale_chains_deleted
            );
        }
        if k.stale_chains_kept > 0 {
            println!(
                "  {} stale KUBE-SEP chains left for kube-proxy's periodic cleanup (large-cluster mode)",
                k.stale_chains_kept
            );
        }
        for n in &k.notes {
            println!("  note: {n}");
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
