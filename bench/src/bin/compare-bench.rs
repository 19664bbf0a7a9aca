//! `compare-bench`: sluice side by side with kube-proxy's rule shapes in one lab and one run.
//! Run it with `cargo xtask bench compare` (as root).
//!
//! For each service count (1, 1 000 and `--services`, default 10 000) and round, the same
//! services (`bench::compare::services`: one measured NodePort service whose endpoint is the
//! lab's pod, the rest ClusterIP services of `--endpoints` endpoints) are programmed four
//! ways (`bench::compare::Way`): sluice's XDP data path; kube-proxy's iptables-mode rules
//! (`iptables-restore`, nf_tables backend); kube-proxy's nftables-mode rules (`nft -f`); and
//! no translation (straight to the pod: the lab's limit). Each cell gets a fresh lab (so no
//! conntrack entries or caches carry over), in an order rotated from round to round, and
//! measures:
//! - packets/s through the node on one core (`bench::compare::pps`): UDP frames from the XDP
//!   live-frames generator pinned to the last CPU, counted by the sink on the pod's link;
//!   once with a new flow per frame (every frame walks the rules and makes a conntrack
//!   entry: the kube-proxy worst case) and once over 256 established flows;
//! - HTTP requests/s to the pod's `lab-server` through the NodePort, keep-alive and with a
//!   new connection per request, `--concurrency` closed-loop workers for `--seconds`, p50 /
//!   p99 latency; every request counted, a failure ends the benchmark.
//!
//! Each figure is the median over rounds; the ratios are sluice over each other way, and the
//! targets are printed with each ratio (met / MISSED). For the run, the kernel's conntrack
//! table (`nf_conntrack_max`, `hashsize`) is raised to hold every new flow and restored
//! afterwards. Output: markdown on stdout and in `target/bench/compare.md`, JSON in
//! `target/bench/compare.json`, bar charts `target/bench/compare-*.png` (their data beside
//! them as `.json`). Exit status 0 whatever the ratios.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use bench::compare::{
    self, TCP_NODE_PORT, UDP_NODE_PORT, UDP_TARGET_PORT, Way, http, pps,
    report::{Report, Row, Samples},
    ways,
};
use bench::load::ConnectionMode;
use clap::Parser;
use lab::Lab;
use lb_userspace::traffic::Sink;

/// Side by side: sluice, kube-proxy's iptables and nftables shapes, and no translation.
#[derive(Debug, Parser)]
#[command(name = "compare-bench")]
struct Args {
    /// The largest service count; 1 and 1 000 (when smaller) are measured too.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=16_000))]
    services: u32,
    /// Endpoints of each ClusterIP service besides the measured one.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    endpoints: u32,
    /// Rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Seconds of HTTP load per connection mode and cell, and the longest a packets/s
    /// measurement sends.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// Most frames one packets/s measurement sends (and so the most new flows).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u32).range(100_000..=16_000_000))]
    max_frames: u32,
    /// The ways to measure (default: all four).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Way::ALL)]
    ways: Vec<Way>,
    /// Closed-loop HTTP workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
}

fn main() -> std::process::ExitCode {
    bench::output::exit_status("compare-bench", run(&Args::parse()))
}

/// 1, 1 000 and `largest`, those below `largest`.
fn sizes(largest: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 1000].into_iter().filter(|&n| n < largest).collect();
    v.push(largest);
    v
}

const ESTABLISHED_FLOWS: u32 = 256;

struct Cell<'a> {
    args: &'a Args,
    server: &'a std::path::Path,
    cpu: usize,
}

fn measure_cell(cell: &Cell<'_>, way: Way, n: usize, samples: &mut Samples) -> Result<String> {
    let args = cell.args;
    let lab = Lab::builder().backends(1).build().context("lab")?;
    let pod = lab.backend_addr(0);
    let sink = lab
        .backend(0)
        .enter(|| Sink::attach(lab.pod_link(0), UDP_TARGET_PORT))?
        .context("attaching the sink to the pod's link")?;
    http::start_server(&lab, cell.server)?;
    let services = match way {
        Way::Untranslated => Vec::new(),
        _ => compare::services(n, args.endpoints as usize, pod),
    };
    let (programmed, took) = ways::program(&lab, way, &services)
        .with_context(|| format!("programming {n} services ({way})"))?;
    let node = lab.node_addr();
    let (udp, tcp) = match way {
        Way::Untranslated => (
            SocketAddrV4::new(pod, UDP_TARGET_PORT),
            SocketAddr::new(IpAddr::V4(pod), http::HTTP_PORT),
        ),
        _ => (
            SocketAddrV4::new(node, UDP_NODE_PORT),
            SocketAddr::new(IpAddr::V4(node), TCP_NODE_PORT),
        ),
    };
    let bounds = pps::Bounds {
        duration: Duration::from_secs(u64::from(args.seconds)),
        max_frames: args.max_frames,
        cpu: cell.cpu,
    };
    let new = pps::measure(&lab, &sink, udp, pps::Flows::New, bounds)?;
    let est = pps::measure(
        &lab,
        &sink,
        udp,
        pps::Flows::Established(ESTABLISHED_FLOWS),
        bounds,
    )?;
    for (what, m) in [("new flows", &new), ("established flows", &est)] {
        ensure!(
            m.counted > 0,
            "{way} at {n} services, {what}: none of {} frames reached the pod",
            m.sent
        );
    }
    let duration = Duration::from_secs(u64::from(args.seconds));
    let concurrency = args.concurrency as usize;
    let ka = http::measure(&lab, tcp, ConnectionMode::KeepAlive, concurrency, duration)?;
    let nc = http::measure(
        &lab,
        tcp,
        ConnectionMode::NewConnectionPerRequest,
        concurrency,
        duration,
    )?;
    drop(programmed);
    drop(sink);
    drop(lab);

    samples.pps_new_flows.push(new.pps);
    samples.pps_established.push(est.pps);
    samples.rps_keep_alive.push(ka.rps);
    samples.rps_new_connection.push(nc.rps);
    samples.keep_alive_p50_us.push(ka.p50_us);
    samples.keep_alive_p99_us.push(ka.p99_us);
    samples.new_connection_p50_us.push(nc.p50_us);
    samples.new_connection_p99_us.push(nc.p99_us);
    samples.program_s.push(took.as_secs_f64());
    Ok(format!(
        "programmed in {:.3} s; {:.0} pkt/s new flows ({} of {} arrived), {:.0} pkt/s \
         established ({} of {}); HTTP {:.0} req/s keep-alive, {:.0} req/s new connections",
        took.as_secs_f64(),
        new.pps,
        new.counted,
        new.sent,
        est.pps,
        est.counted,
        est.sent,
        ka.rps,
        nc.rps
    ))
}

/// The generator and the sink alone: frames to the node's own address, counted by the sink
/// on the node's uplink, where they arrive (nothing forwarded).
fn measure_generator(args: &Args, cpu: usize) -> Result<f64> {
    let lab = Lab::builder().backends(1).build().context("lab")?;
    let sink = lab
        .node()
        .enter(|| Sink::attach(lab.node_uplink(), UDP_TARGET_PORT))?
        .context("attaching the sink to the node's uplink")?;
    let bounds = pps::Bounds {
        duration: Duration::from_secs(u64::from(args.seconds)),
        max_frames: args.max_frames,
        cpu,
    };
    let dst = SocketAddrV4::new(lab.node_addr(), UDP_TARGET_PORT);
    let m = pps::measure(&lab, &sink, dst, pps::Flows::New, bounds)?;
    ensure!(
        m.counted > 0,
        "none of {} frames reached the node's sink",
        m.sent
    );
    Ok(m.pps)
}

fn run(args: &Args) -> Result<()> {
    let sizes = sizes(args.services as usize);
    let server: PathBuf = std::env::current_exe()?.with_file_name("lab-server");
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let kernel_ways = args
        .ways
        .iter()
        .any(|w| matches!(w, Way::Iptables | Way::Nftables));
    let _room = kernel_ways
        .then(|| compare::conntrack::Room::raise(u64::from(args.max_frames) * 2))
        .transpose()?;
    let ways = &args.ways;
    let mut samples: Vec<Vec<Samples>> = vec![vec![Samples::default(); ways.len()]; sizes.len()];
    let mut generator = Vec::new();
    for round in 0..args.rounds as usize {
        let pps = measure_generator(args, cpu)
            .with_context(|| format!("round {round}, generator alone"))?;
        eprintln!(
            "round {}/{}, generator and sink alone: {pps:.0} frames/s",
            round + 1,
            args.rounds
        );
        generator.push(pps);
        for (s, &n) in sizes.iter().enumerate() {
            for k in 0..ways.len() {
                let w = (k + round) % ways.len();
                let way = ways[w];
                let line = measure_cell(
                    &Cell {
                        args,
                        server: &server,
                        cpu,
                    },
                    way,
                    n,
                    &mut samples[s][w],
                )
                .with_context(|| format!("round {round}, {n} services, {way}"))?;
                eprintln!(
                    "round {}/{}, {n} services, {way}: {line}",
                    round + 1,
                    args.rounds
                );
            }
        }
    }
    let mut rows = Vec::new();
    for (s, &n) in sizes.iter().enumerate() {
        for (w, &way) in ways.iter().enumerate() {
            let rounds = samples[s][w].clone();
            rows.push(Row {
                services: n,
                way,
                median: rounds.medians(),
                rounds,
            });
        }
    }
    let report = Report::new(method(args, &sizes, cpu), rows, generator);
    let md = report.markdown();
    println!("{md}");
    let dir = bench::output::dir()?;
    std::fs::write(dir.join("compare.md"), &md).context("writing target/bench/compare.md")?;
    let json = bench::output::write_json("compare", &report)
        .context("writing target/bench/compare.json")?;
    for png in report.write_charts(&dir)? {
        println!("wrote {}", png.display());
    }
    println!("wrote {}", json.display());
    Ok(())
}

fn method(args: &Args, sizes: &[usize], cpu: usize) -> Vec<String> {
    vec![
        format!(
            "sizes {:?}, {} endpoints per ClusterIP service, {} rounds (medians), fresh lab per \
             cell",
            sizes, args.endpoints, args.rounds
        ),
        format!(
            "packets/s: 60-byte UDP frames from the XDP live-frames generator pinned to CPU \
             {cpu} (the node forwards in that CPU's softirq), at most {} frames or {} s, \
             counted by the sink XDP program on the pod's link; new flows: a flow per frame; \
             established: {ESTABLISHED_FLOWS} flows seen once before; the generator and the \
             sink alone (frames counted on the node's uplink) each round, for the node's \
             cost per packet",
            args.max_frames, args.seconds
        ),
        format!(
            "HTTP: {} closed-loop workers for {} s per connection mode to lab-server in the \
             pod, through the NodePort (untranslated: to the pod's address)",
            args.concurrency, args.seconds
        ),
        "iptables: kube-proxy's iptables-mode shape via iptables-restore (nf_tables \
         backend); nftables: kube-proxy's nftables-mode shape via nft -f; sluice: its XDP \
         data path, programmed with Dataplane::upsert_service"
            .into(),
    ]
}
