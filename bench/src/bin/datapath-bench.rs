//! `datapath-bench`: the per-packet cost of the XDP data path, measured with
//! `BPF_PROG_TEST_RUN` beside a minimal parse-and-pass program, at 1 and at 10 000 services
//! (DESIGN.md, "Measuring performance"). Run it with `cargo xtask bench datapath` (as root).
//!
//! Rows, each at both service counts:
//! - `established`: a TCP ACK of a tracked flow (conntrack hit, DNAT, fib lookup);
//! - `snat_established`: the same for a flow to an endpoint on another node (conntrack
//!   hit, DNAT and source NAT, fib lookup);
//! - `first_packet`: a TCP SYN, which always selects a backend afresh and writes conntrack;
//! - `not_ours`: a TCP SYN to a port no service uses (passed untouched);
//! - `parse_pass`: the baseline program (parse Ethernet + IPv4 + TCP/UDP ports, pass) on the
//!   same SYN; it does not depend on the services, so its two rows show the noise.
//!
//! `BPF_PROG_TEST_RUN` does not restore the packet between repeats (TOOLCHAIN.md), so the
//! measured service's only backend is its own frontend address and port: the DNAT rewrite is
//! the identity and every repeat takes the same path. After every run the verdict and the
//! reason counters are checked (a conntrack hit per repeat, a new flow per repeat, ...); a
//! mismatch ends the benchmark with an error.
//!
//! A round runs every row once, in an order rotated from round to round; each row's figure
//! is the median over rounds of the mean ns/packet the kernel reports (whole nanoseconds).
//! Output: a table on stdout and `target/bench/datapath.json` under the workspace root.
//! Exit status 0 whatever the ratios; 1 if a check failed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use lab::{Lab, PacketBuilder, ParsedPacket, TcpFlags, packet::Transport};
use lb_userspace::{
    BackendSpec, BaselineProgram, Capacities, Dataplane, DataplaneConfig, Frontend, MaglevConfig,
    Protocol, Reason, ServiceSpec, TestRunOutput,
};
use serde::Serialize;

/// The measured service's VIP; the other services use the same address on other ports.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP_PORT: u16 = 80;
/// Frontend ports of the other services: `FILLER_PORT_BASE + i`.
const FILLER_PORT_BASE: u16 = 10_000;
/// A port no service uses.
const NOT_OURS_PORT: u16 = 443;
/// Client ports: one flow per row, so the rows do not share conntrack entries.
const ESTABLISHED_SPORT: u16 = 40_000;
const FIRST_PACKET_SPORT: u16 = 40_001;
const NOT_OURS_SPORT: u16 = 40_002;
/// The source-NATed service's frontend port (its backend is itself, on "another node"), and
/// the one port of the NAT range.
const SNAT_VIP_PORT: u16 = 81;
const NAT_PORT: u16 = 61_000;
/// The scaling ratio the fast path should stay under (DESIGN.md: it must not grow with the
/// number of services).
const TARGET_RATIO: f64 = 1.2;

const XDP_PASS: u32 = 2;

/// Per-packet cost of the XDP data path beside a parse-and-pass baseline.
#[derive(Debug, Parser)]
#[command(name = "datapath-bench")]
struct Args {
    /// BPF_PROG_TEST_RUN repeats per run (the kernel reports the mean per repeat).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(10_000..))]
    repeat: u32,
    /// Rounds; each row's figure is the median over rounds.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(5..=1000))]
    rounds: u32,
    /// The large service count (the small one is 1).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=50_000))]
    services: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Established,
    SnatEstablished,
    FirstPacket,
    NotOurs,
    ParsePass,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Established,
        Case::SnatEstablished,
        Case::FirstPacket,
        Case::NotOurs,
        Case::ParsePass,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Established => "established",
            Case::SnatEstablished => "snat_established",
            Case::FirstPacket => "first_packet",
            Case::NotOurs => "not_ours",
            Case::ParsePass => "parse_pass",
        }
    }
}

fn verdict_name(v: u32) -> String {
    match v {
        0 => "XDP_ABORTED".into(),
        1 => "XDP_DROP".into(),
        2 => "XDP_PASS".into(),
        3 => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        other => format!("unknown({other})"),
    }
}

/// One data path loaded with `services` services.
struct Setup {
    services: u32,
    dp: Dataplane,
}

struct Packets {
    /// The SYN that opens the tracked flow (client port `ESTABLISHED_SPORT`), sent once.
    open: Vec<u8>,
    /// ACK of the tracked flow.
    ack: Vec<u8>,
    /// SYN to the measured service (client port `FIRST_PACKET_SPORT`).
    syn: Vec<u8>,
    /// SYN to `NOT_OURS_PORT`.
    not_ours: Vec<u8>,
    /// SYN and ACK of the source-NATed flow (from the node's address and the NAT port).
    snat_open: Vec<u8>,
    snat_ack: Vec<u8>,
}

/// One run of one row.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ns: f64,
    verdict: u32,
    ct_hits: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Row {
    name: &'static str,
    services: u32,
    ns_per_packet: f64,
    ratio: f64,
    verdict: String,
    repeat: u32,
    ct_hits: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: Vec<Row>,
    ratios: BTreeMap<String, f64>,
}

fn main() -> std::process::ExitCode {
    bench::output::exit_status("datapath-bench", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("datapath-bench: BPF_PROG_TEST_RUN per-packet cost");
    println!("machine: nproc {nproc}, kernel {kernel}, cpu {cpu}");
    println!(
        "rounds {}, repeat {} per run, services 1 and {}; figures: median over rounds of the \
         kernel's mean ns/packet",
        args.rounds, args.repeat, args.services
    );

    let lab = Lab::builder()
        .backends(1)
        .build()
        .context("cannot build the lab")?;
    // The measured service's backend is its own VIP; routing the VIP to the pod makes the
    // fib lookup after DNAT succeed as it does for a real backend. The device is not a
    // redirect target, so the program then passes the packet unchanged (no TTL decrement),
    // and every repeat sees the same packet.
    let pod = lab.backend_addr(0);
    lab.node()
        .run(
            "ip",
            [
                "route".to_string(),
                "add".into(),
                format!("{VIP}/32"),
                "via".into(),
                pod.to_string(),
            ],
        )
        .context("cannot route the VIP to the pod in the node namespace")?;
    let ifindex = lab.node_uplink_ifindex()?;
    let packets = Packets {
        open: tcp(&lab, ESTABLISHED_SPORT, VIP_PORT, TcpFlags::SYN),
        ack: tcp(&lab, ESTABLISHED_SPORT, VIP_PORT, TcpFlags::ACK),
        syn: tcp(&lab, FIRST_PACKET_SPORT, VIP_PORT, TcpFlags::SYN),
        not_ours: tcp(&lab, NOT_OURS_SPORT, NOT_OURS_PORT, TcpFlags::SYN),
        snat_open: snat_tcp(&lab, TcpFlags::SYN),
        snat_ack: snat_tcp(&lab, TcpFlags::ACK),
    };

    let report = lab
        .node()
        .enter(|| measure_all(args, ifindex, &packets))
        .context("cannot enter the node namespace")??;

    print_table(&report, args);
    let path = bench::output::write_json("datapath", &report)
        .context("writing target/bench/datapath.json")?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// A TCP segment from the lab's client to `VIP:dport`.
fn tcp(lab: &Lab, sport: u16, dport: u16, flags: TcpFlags) -> Vec<u8> {
    let mut b = PacketBuilder::new()
        .eth(lab.client_mac(), lab.node_uplink_mac())
        .ipv4(lab.client_addr(), VIP)
        .tcp(sport, dport)
        .seq(1000)
        .tcp_flags(flags);
    if flags.contains(TcpFlags::ACK) {
        b = b.ack(2000).payload(b"GET / HTTP/1.1\r\n\r\n");
    }
    b.build()
}

/// A TCP segment of the source-NATed flow: from the node's address towards the VIP (the
/// route's source, what SNAT gives it) and the NAT port, so the rewrite is the identity.
fn snat_tcp(lab: &Lab, flags: TcpFlags) -> Vec<u8> {
    let mut b = PacketBuilder::new()
        .eth(lab.client_mac(), lab.node_uplink_mac())
        .ipv4(lab.node_pod_addr(0), VIP)
        .tcp(NAT_PORT, SNAT_VIP_PORT)
        .seq(1000)
        .tcp_flags(flags);
    if flags.contains(TcpFlags::ACK) {
        b = b.ack(2000).payload(b"GET / HTTP/1.1\r\n\r\n");
    }
    b.build()
}

/// The data path config for both setups: the same capacities, so only the number of
/// services differs.
fn config(services: u32) -> DataplaneConfig {
    let maglev = MaglevConfig::default();
    let per_service = lb_userspace::maglev::table_size(&maglev, 1);
    let n = services + 1;
    DataplaneConfig {
        capacities: Capacities {
            services: n + 1,
            frontends: n + 1,
            backends: n + 1,
            slots: (n * per_service).next_power_of_two(),
            ..Capacities::default()
        },
        maglev,
        nat: lb_userspace::NatConfig {
            port_min: NAT_PORT,
            port_max: NAT_PORT,
        },
        ..DataplaneConfig::default()
    }
}

/// Loads a data path holding `services` services; the measured one is inserted last.
fn load(services: u32, cfg: DataplaneConfig) -> Result<Setup> {
    let t = Instant::now();
    let mut dp = Dataplane::load(cfg).context("loading the data path")?;
    for i in 0..services - 1 {
        let port = FILLER_PORT_BASE + u16::try_from(i).context("too many services")?;
        let backend = Ipv4Addr::new(198, 51, 100, 1 + (i % 254) as u8);
        dp.upsert_service(&ServiceSpec {
            name: format!("bench/filler-{i}"),
            protocol: Protocol::Tcp,
            frontends: vec![Frontend::Address(SocketAddr::V4(SocketAddrV4::new(
                VIP, port,
            )))],
            backends: vec![BackendSpec::ready(SocketAddr::V4(SocketAddrV4::new(
                backend, 8080,
            )))],
            affinity: None,
            ..Default::default()
        })
        .with_context(|| format!("inserting service {i}"))?;
    }
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT));
    dp.upsert_service(&ServiceSpec {
        name: "bench/measured".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::Address(vip)],
        // The DNAT rewrite is the identity: every repeat sees the same packet.
        backends: vec![BackendSpec::ready(vip)],
        affinity: None,
        ..Default::default()
    })
    .context("inserting the measured service")?;
    let snat_vip = SocketAddr::V4(SocketAddrV4::new(VIP, SNAT_VIP_PORT));
    dp.upsert_service(&ServiceSpec {
        name: "bench/measured-snat".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::Address(snat_vip)],
        backends: vec![BackendSpec::ready(snat_vip).on_another_node()],
        ..Default::default()
    })
    .context("inserting the source-NATed service")?;
    let occupancy = dp.occupancy()?;
    ensure!(
        occupancy.frontends == u64::from(services) + 1,
        "{services} services loaded but the frontend map holds {}",
        occupancy.frontends
    );
    eprintln!(
        "loaded {services} services ({} frontends, {} backends, {} slots) in {:.1} s",
        occupancy.frontends,
        occupancy.backends,
        occupancy.slots,
        t.elapsed().as_secs_f64()
    );
    Ok(Setup { services, dp })
}

fn measure_all(args: &Args, ifindex: u32, pkts: &Packets) -> Result<Report> {
    let cfg = config(args.services);
    let setups = [load(1, cfg.clone())?, load(args.services, cfg)?];
    let baseline = BaselineProgram::load().context("loading the baseline program")?;

    // The tracked flows of the `established` rows: one SYN creates each conntrack entry.
    for s in &setups {
        for open in [&pkts.open, &pkts.snat_open] {
            let before = s.dp.reason(Reason::CtNew)?;
            let out = s.dp.test_xdp(open, ifindex, 1)?;
            let new = s.dp.reason(Reason::CtNew)? - before;
            ensure!(
                new == 1,
                "the SYN of an established flow at {} services tracked {new} flows, expected \
                 1 (verdict {})",
                s.services,
                verdict_name(out.verdict)
            );
        }
    }

    // Every (setup, path) pair, a path's service counts next to each other so that their
    // ratio sees the same machine; a round runs them all, starting one further each round.
    let cells: Vec<(usize, Case)> = Case::ALL
        .into_iter()
        .flat_map(|p| (0..setups.len()).map(move |s| (s, p)))
        .collect();
    // A warm-up round (checked, not recorded).
    for &(s, p) in &cells {
        sample(&setups[s], &baseline, p, pkts, ifindex, args.repeat)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cells.len()];
    for round in 0..args.rounds as usize {
        for k in 0..cells.len() {
            let i = (k + round) % cells.len();
            let (s, p) = cells[i];
            samples[i].push(sample(
                &setups[s],
                &baseline,
                p,
                pkts,
                ifindex,
                args.repeat,
            )?);
        }
    }

    let medians: Vec<f64> = samples
        .iter()
        .map(|v| median(v.iter().map(|x| x.ns).collect()))
        .collect();
    let at = |s: usize, p: Case| -> usize {
        cells
            .iter()
            .position(|&c| c == (s, p))
            .expect("every cell is measured")
    };
    let mut rows = Vec::new();
    for (s, setup) in setups.iter().enumerate() {
        for p in Case::ALL {
            let i = at(s, p);
            let last = samples[i].last().expect("at least one round");
            rows.push(Row {
                name: p.name(),
                services: setup.services,
                ns_per_packet: medians[i],
                ratio: round4(medians[i] / medians[at(s, Case::ParsePass)]),
                verdict: verdict_name(last.verdict),
                repeat: args.repeat,
                ct_hits: last.ct_hits,
            });
        }
    }
    let mut ratios = BTreeMap::new();
    for p in Case::ALL {
        ratios.insert(
            p.name().to_string(),
            round4(medians[at(1, p)] / medians[at(0, p)]),
        );
    }
    for p in [
        Case::Established,
        Case::SnatEstablished,
        Case::FirstPacket,
        Case::NotOurs,
    ] {
        for (s, setup) in setups.iter().enumerate() {
            ratios.insert(
                format!("{}_to_parse_pass_at_{}", p.name(), setup.services),
                round4(medians[at(s, p)] / medians[at(s, Case::ParsePass)]),
            );
        }
    }
    Ok(Report { rows, ratios })
}

/// Runs one row once and checks its verdict and counters.
fn sample(
    setup: &Setup,
    baseline: &BaselineProgram,
    case: Case,
    pkts: &Packets,
    ifindex: u32,
    repeat: u32,
) -> Result<Sample> {
    let dp = &setup.dp;
    let n = setup.services;
    let expect = u64::from(repeat);
    let counters = |dp: &Dataplane| -> Result<[u64; 3]> {
        Ok([
            dp.reason(Reason::CtHit)?,
            dp.reason(Reason::CtNew)?,
            dp.reason(Reason::PassNotOurs)?,
        ])
    };
    let (out, delta) = match case {
        Case::ParsePass => {
            let out = baseline.test_run(&pkts.syn, repeat)?;
            ensure!(
                out.verdict == XDP_PASS,
                "parse_pass returned {}, expected XDP_PASS",
                verdict_name(out.verdict)
            );
            return Ok(Sample {
                ns: nanos(&out),
                verdict: out.verdict,
                ct_hits: None,
            });
        }
        Case::Established => run_counted(dp, &pkts.ack, ifindex, repeat, counters)?,
        Case::SnatEstablished => run_counted(dp, &pkts.snat_ack, ifindex, repeat, counters)?,
        Case::FirstPacket => run_counted(dp, &pkts.syn, ifindex, repeat, counters)?,
        Case::NotOurs => run_counted(dp, &pkts.not_ours, ifindex, repeat, counters)?,
    };
    let [hits, new, not_ours] = delta;
    let name = case.name();
    match case {
        Case::Established => {
            if hits != expect || new != 0 {
                bail!(
                    "{name} at {n} services: ct_hit rose by {hits} and ct_new by {new} in \
                     {repeat} repeats; expected {repeat} and 0 (every repeat must take the \
                     established path)"
                );
            }
            check_dst(&out.data, VIP, VIP_PORT).with_context(|| format!("{name} at {n}"))?;
        }
        Case::SnatEstablished => {
            if hits != expect || new != 0 {
                bail!(
                    "{name} at {n} services: ct_hit rose by {hits} and ct_new by {new} in \
                     {repeat} repeats; expected {repeat} and 0"
                );
            }
            check_dst(&out.data, VIP, SNAT_VIP_PORT).with_context(|| format!("{name} at {n}"))?;
        }
        Case::FirstPacket => {
            if new != expect {
                bail!(
                    "{name} at {n} services: ct_new rose by {new} in {repeat} repeats; \
                     expected {repeat} (a SYN always selects afresh)"
                );
            }
            check_dst(&out.data, VIP, VIP_PORT).with_context(|| format!("{name} at {n}"))?;
        }
        Case::NotOurs => {
            if out.verdict != XDP_PASS || not_ours != expect || hits != 0 || new != 0 {
                bail!(
                    "{name} at {n} services: verdict {}, xdp_pass_not_ours rose by {not_ours}, \
                     ct_hit by {hits}, ct_new by {new} in {repeat} repeats; expected XDP_PASS, \
                     {repeat}, 0, 0",
                    verdict_name(out.verdict)
                );
            }
        }
        Case::ParsePass => unreachable!("returned above"),
    }
    Ok(Sample {
        ns: nanos(&out),
        verdict: out.verdict,
        ct_hits: Some(hits),
    })
}

fn run_counted(
    dp: &Dataplane,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
    counters: impl Fn(&Dataplane) -> Result<[u64; 3]>,
) -> Result<(TestRunOutput, [u64; 3])> {
    let before = counters(dp)?;
    let out = dp.test_xdp(packet, ifindex, repeat)?;
    let after = counters(dp)?;
    Ok((out, std::array::from_fn(|i| after[i] - before[i])))
}

/// The packet after the run still goes to `ip:port` (the identity DNAT held).
fn check_dst(data: &[u8], ip: Ipv4Addr, port: u16) -> Result<()> {
    let p = ParsedPacket::parse(data).context("parsing the output packet")?;
    let dport = match &p.transport {
        Some(Transport::Tcp(t)) => t.dst_port,
        other => bail!("the output packet is not TCP: {other:?}"),
    };
    let dst = p.dst_ip();
    ensure!(
        dst == Some(IpAddr::V4(ip)) && dport == port,
        "the output packet goes to {dst:?}:{dport}, expected {ip}:{port}"
    );
    Ok(())
}

fn nanos(out: &TestRunOutput) -> f64 {
    out.duration.as_nanos() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn print_table(report: &Report, args: &Args) {
    println!();
    println!(
        "{:<16} {:>8} {:>13} {:>19} {:>12} {:>8} {:>8}",
        "name", "services", "ns_per_packet", "ratio_to_parse_pass", "verdict", "repeat", "ct_hits"
    );
    for r in &report.rows {
        println!(
            "{:<16} {:>8} {:>13.1} {:>19.2} {:>12} {:>8} {:>8}",
            r.name,
            r.services,
            r.ns_per_packet,
            r.ratio,
            r.verdict,
            r.repeat,
            r.ct_hits.map_or("-".to_string(), |h| h.to_string())
        );
    }
    println!(
        "\nscaling, {} services / 1 service (target <= {TARGET_RATIO}):",
        args.services
    );
    for p in Case::ALL {
        let r = report.ratios[p.name()];
        let verdict = match p {
            Case::ParsePass => "(baseline: measurement noise)",
            _ if r <= TARGET_RATIO => "PASS",
            _ => "OVER",
        };
        println!("  {:<16} {r:>6.2}  {verdict}", p.name());
    }
    println!("ratio to parse_pass:");
    for p in [
        Case::Established,
        Case::SnatEstablished,
        Case::FirstPacket,
        Case::NotOurs,
    ] {
        println!(
            "  {:<16} at 1: {:>5.2}   at {}: {:>5.2}",
            p.name(),
            report.ratios[&format!("{}_to_parse_pass_at_1", p.name())],
            args.services,
            report.ratios[&format!("{}_to_parse_pass_at_{}", p.name(), args.services)],
        );
    }
}
