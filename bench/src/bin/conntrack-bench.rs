//! `cargo xtask bench conntrack` (root): what tracked flows cost the control plane.
//!
//! In a lab's node namespace it loads the data path with 1 000 services of 10 backends and
//! a conntrack sized for `--flows` confirmed TCP flows (default 1 000 000, two entries each),
//! then measures, side by side in one run:
//! - one-endpoint changes (a backend turning not ready, then ready again: `--changes`,
//!   default 500) with an empty conntrack, and again with `--flows` confirmed flows tracked
//!   (each opened through the XDP program, answered through the TC program and confirmed:
//!   three BPF_PROG_TEST_RUNs a flow); the ratio of the two is the cost of traffic on the
//!   update path (target <= 1.2);
//! - one full GC pass over those entries (the background collector's work per million);
//! - the `memlock` of the three conntrack maps (`/proc/self/fdinfo`, exact).
//!
//! Writes target/bench/conntrack.json.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use lab::{Lab, PacketBuilder, TcpFlags};
use lb_userspace::{
    BackendSpec, Capacities, Dataplane, DataplaneConfig, EndpointState, Frontend, Protocol,
    ServiceSpec,
};
use serde::Serialize;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TARGET_PORT: u16 = 8080;
const SERVICES: u16 = 1000;
const BACKENDS: u8 = 10;

#[derive(Parser)]
#[command(about = "conntrack: update cost with and without tracked flows, GC cost, memory")]
struct Args {
    /// Confirmed TCP flows to track for the second measurement.
    #[arg(long, default_value_t = 1_000_000)]
    flows: u32,
    /// One-endpoint changes per measurement.
    #[arg(long, default_value_t = 500)]
    changes: u32,
}

#[derive(Serialize)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

#[derive(Serialize)]
struct Report {
    services: u16,
    backends_per_service: u8,
    flows: u32,
    conntrack_entries: u64,
    change_empty: Latency,
    change_with_flows: Latency,
    p50_ratio: f64,
    p99_ratio: f64,
    fill_seconds: f64,
    gc_pass_seconds: f64,
    gc_seconds_per_million_entries: f64,
    conntrack_memlock_mib: Vec<(String, f64)>,
}

fn main() -> std::process::ExitCode {
    bench::output::exit_status("conntrack-bench", run(&Args::parse()))
}

fn spec(i: u16, ready: bool) -> ServiceSpec {
    ServiceSpec {
        name: format!("bench/svc-{i}:http/TCP"),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::Address(SocketAddr::V4(SocketAddrV4::new(
            VIP,
            1000 + i,
        )))],
        backends: (0..BACKENDS)
            .map(|b| BackendSpec {
                addr: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(
                        198,
                        51,
                        100,
                        1 + b + (i % 20) as u8 * BACKENDS,
                    )),
                    TARGET_PORT,
                ),
                state: if b == 0 && !ready {
                    EndpointState::NotServing
                } else {
                    EndpointState::Ready
                },
                remote: false,
            })
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// `changes` upserts of service 0, its first backend flipping; microseconds each.
fn changes(dp: &mut Dataplane, n: u32) -> Result<Latency> {
    let mut us = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = spec(0, i % 2 == 1);
        let t = Instant::now();
        dp.upsert_service(&s)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
    Ok(Latency {
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: *us.last().unwrap_or(&0.0),
    })
}

/// Opens, answers and confirms `n` flows to service 0 (three program runs each).
fn fill(dp: &Dataplane, lab: &Lab, ifindex: u32, n: u32) -> Result<()> {
    let (cmac, nmac) = (lab.client_mac(), lab.node_uplink_mac());
    for i in 0..n {
        // Clients 192.0.2.2-251, ports 1024-60023: distinct 4-tuples.
        let client = Ipv4Addr::new(192, 0, 2, 2 + (i / 60_000 % 250) as u8);
        let sport = 1024 + (i % 60_000) as u16;
        let syn = PacketBuilder::new()
            .eth(cmac, nmac)
            .ipv4(client, VIP)
            .tcp(sport, 1000)
            .tcp_flags(TcpFlags::SYN)
            .build();
        let out = dp.test_xdp(&syn, ifindex, 1)?;
        // The backend the flow was translated to: IPv4 destination of the output.
        let d = &out.data;
        ensure!(d.len() >= 34, "flow {i}: no translated packet");
        let backend = Ipv4Addr::new(d[30], d[31], d[32], d[33]);
        let syn_ack = PacketBuilder::new()
            .eth(nmac, cmac)
            .ipv4(backend, client)
            .tcp(TARGET_PORT, sport)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .build();
        dp.test_tc(&syn_ack)?;
        let ack = PacketBuilder::new()
            .eth(cmac, nmac)
            .ipv4(client, VIP)
            .tcp(sport, 1000)
            .tcp_flags(TcpFlags::ACK)
            .build();
        dp.test_xdp(&ack, ifindex, 1)?;
    }
    Ok(())
}

/// memlock of every LRU hash map this process holds (the conntrack and affinity maps),
/// by max_entries.
fn lru_memlock() -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("map_type:").as_deref() != Some("9") {
            continue;
        }
        if let (Some(max), Some(mem)) = (field("max_entries:"), field("memlock:")) {
            let mib = mem.parse::<f64>().unwrap_or(0.0) / (1024.0 * 1024.0);
            out.push((
                format!("LRU hash of {max} entries"),
                (mib * 100.0).round() / 100.0,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup();
    out
}

fn run(args: &Args) -> Result<()> {
    if args.flows == 0 || args.changes < 10 {
        bail!("--flows must be > 0 and --changes >= 10");
    }
    let lab = Lab::builder().backends(1).build().context("the lab")?;
    let ifindex = lab.node_uplink_ifindex()?;
    let report = lab
        .node()
        .enter(|| -> Result<Report> {
            let mut cfg = DataplaneConfig {
                capacities: Capacities {
                    conntrack: (2 * args.flows).next_power_of_two(),
                    ..Capacities::default()
                },
                ..DataplaneConfig::default()
            };
            // The GC is stepped by hand here (its pass is measured).
            cfg.conntrack.gc_interval_millis = 3_600_000;
            let mut dp = Dataplane::load(cfg).context("loading the data path")?;
            for i in 0..SERVICES {
                dp.upsert_service(&spec(i, true))?;
            }
            let change_empty = changes(&mut dp, args.changes)?;
            dp.upsert_service(&spec(0, true))?;
            let t = Instant::now();
            fill(&dp, &lab, ifindex, args.flows)?;
            let fill_seconds = t.elapsed().as_secs_f64();
            let t = Instant::now();
            dp.conntrack_gc_pass()?;
            let gc_pass_seconds = t.elapsed().as_secs_f64();
            let stats = dp.conntrack_stats();
            let entries: u64 = stats.entries.iter().map(|(_, n)| n).sum();
            let established: u64 = stats
                .flows
                .iter()
                .filter(|(t, s, _)| t == "tcp" && s == "established")
                .map(|(_, _, n)| n)
                .sum();
            ensure!(
                established >= u64::from(args.flows) * 99 / 100,
                "only {established} of {} flows were confirmed: {stats:?}",
                args.flows
            );
            let change_with_flows = changes(&mut dp, args.changes)?;
            Ok(Report {
                services: SERVICES,
                backends_per_service: BACKENDS,
                flows: args.flows,
                conntrack_entries: entries,
                p50_ratio: change_with_flows.p50_us / change_empty.p50_us,
                p99_ratio: change_with_flows.p99_us / change_empty.p99_us,
                change_empty,
                change_with_flows,
                fill_seconds,
                gc_pass_seconds,
                gc_seconds_per_million_entries: gc_pass_seconds / (entries as f64 / 1e6),
                conntrack_memlock_mib: lru_memlock(),
            })
        })
        .context("entering the node namespace")??;

    println!(
        "conntrack-bench: {} services x {} backends; one-endpoint change, {} changes each",
        report.services, report.backends_per_service, args.changes
    );
    println!("| tracked flows | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|");
    for (what, l) in [
        ("0".to_string(), &report.change_empty),
        (report.flows.to_string(), &report.change_with_flows),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            l.p50_us, l.p99_us, l.max_us
        );
    }
    println!(
        "ratio with/without flows: p50 {:.2}, p99 {:.2} (target <= 1.2: {})",
        report.p50_ratio,
        report.p99_ratio,
        if report.p99_ratio <= 1.2 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "GC: one pass over {} entries took {:.2} s ({:.2} s per million entries); filling took {:.1} s",
        report.conntrack_entries,
        report.gc_pass_seconds,
        report.gc_seconds_per_million_entries,
        report.fill_seconds
    );
    for (map, mib) in &report.conntrack_memlock_mib {
        println!("memlock: {map}: {mib} MiB");
    }
    let path = bench::output::write_json("conntrack", &report)
        .context("writing target/bench/conntrack.json")?;
    println!("wrote {}", path.display());
    Ok(())
}
