//! One kube-proxy backend measured: the full sync of every service, then single-endpoint
//! changes applied as kube-proxy applies them, in a fresh namespace, the tools in a fresh
//! memory cgroup.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bench::kube_proxy::{
    self, Config, EndpointChange, RunOptions, Service,
    iptables::{self, Backend},
    names, nftables,
};
use lab::Netns;

use super::cgroup::MemCgroup;
use bench::stats::{Rng, percentile};

use super::report::{RulesRow, mib, round};

/// The rule sets kube-proxy can program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Iptables(Backend),
    Nftables,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Iptables(b) => b.label(),
            Mode::Nftables => "nftables",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Mode::Iptables(b) => b.restore(),
            Mode::Nftables => "nft -f",
        }
    }
}

/// All changes of one backend end within this (what was done is reported).
const CHANGES_BUDGET: Duration = Duration::from_secs(900);

/// kube-proxy (nftables) deletes a flushed chain once it has been stale this long.
const STALE_DELETE_AFTER: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Measures `mode` on `services`; a failure is reported in the row's notes.
pub fn measure(mode: Mode, services: Vec<Service>, changes: usize) -> RulesRow {
    let mut row = RulesRow {
        mode: mode.label().to_owned(),
        tool: mode.tool().to_owned(),
        services: services.len(),
        endpoints_per_service: services.first().map_or(0, |s| s.endpoints.len()),
        node_port_services: services.iter().filter(|s| s.node_port.is_some()).count(),
        large_cluster_mode: kube_proxy::large_cluster(&services),
        changes_requested: changes,
        ..RulesRow::default()
    };
    if let Err(e) = run(mode, services, changes, &mut row) {
        eprintln!("{}: stopped early: {e:#}", row.mode);
        row.notes.push(format!("stopped early: {e:#}"));
    }
    row
}

fn apply(mode: Mode, ns: &Netns, input: &str, opts: &RunOptions) -> Result<Duration> {
    let d = ns.enter(|| match mode {
        Mode::Iptables(b) => iptables::apply_with(input, b, opts),
        Mode::Nftables => nftables::apply_with(input, opts),
    })??;
    Ok(d)
}

/// The kernel's view: every DNAT rule (iptables: in the `nat` table; nftables: in the table).
fn read_back(mode: Mode, ns: &Netns) -> Result<String> {
    Ok(ns.enter(|| match mode {
        Mode::Iptables(b) => iptables::save(b, "nat"),
        Mode::Nftables => nftables::list(),
    })??)
}

fn dnat_rules(mode: Mode, text: &str) -> usize {
    match mode {
        Mode::Iptables(_) => text.matches(" -j DNAT --to-destination ").count(),
        Mode::Nftables => text.matches(" dnat to ").count(),
    }
}

/// Rules in a read-back: iptables `-A` lines; nft rule lines (not a chain's or a map's
/// header, elements or comment).
fn rules_read_back(mode: Mode, text: &str) -> usize {
    match mode {
        Mode::Iptables(_) => text.lines().filter(|l| l.starts_with("-A ")).count(),
        Mode::Nftables => text
            .lines()
            .filter(|l| l.starts_with("\t\t") && !l.starts_with("\t\t\t"))
            .filter(|l| {
                !["type ", "comment ", "elements ", "flags ", "policy "]
                    .iter()
                    .any(|h| l[2..].starts_with(h))
            })
            .count(),
    }
}

fn dnat_of(mode: Mode, ep: SocketAddrV4) -> String {
    match mode {
        Mode::Iptables(_) => format!("-j DNAT --to-destination {ep}\n"),
        Mode::Nftables => format!("dnat to {ep}\n"),
    }
}

fn run(mode: Mode, mut services: Vec<Service>, changes: usize, row: &mut RulesRow) -> Result<()> {
    let label = mode.label();
    let cfg = Config::default();
    let n = services.len();
    let ns = Netns::new("sync").context("creating the namespace")?;
    let cgroup = match MemCgroup::new(&label.replace('-', "")) {
        Ok(c) => Some(c),
        Err(e) => {
            row.notes.push(format!("memory not measured: {e:#}"));
            None
        }
    };
    row.memory_method = cgroup.as_ref().map(|c| c.method().to_owned());
    let opts = RunOptions {
        cgroup_procs: cgroup.as_ref().map(MemCgroup::procs),
        ..RunOptions::default()
    };

    // 1. The full sync.
    let t = Instant::now();
    let full = match mode {
        Mode::Iptables(_) => iptables::full(&services, &cfg),
        Mode::Nftables => nftables::full(&services, &cfg),
    };
    row.generate_full_s = Some(round(t.elapsed().as_secs_f64(), 4));
    row.full_input_mib = Some(round(mib(full.len() as u64), 2));
    eprintln!(
        "{label}: full input of {n} services generated in {:.3} s ({:.1} MiB); applying with {}",
        t.elapsed().as_secs_f64(),
        mib(full.len() as u64),
        mode.tool()
    );
    let took = apply(mode, &ns, &full, &opts).context("the full sync")?;
    drop(full);
    row.full_s = Some(round(took.as_secs_f64(), 4));
    eprintln!("{label}: full sync applied in {:.3} s", took.as_secs_f64());
    if let Some(c) = &cgroup {
        let u = c.usage()?;
        row.kernel_after_full_mib = Some(round(mib(u.kernel), 2));
        row.charged_after_full_mib = Some(round(mib(u.total), 2));
    }
    let t = Instant::now();
    let text = read_back(mode, &ns)?;
    let expected = services.iter().map(|s| s.endpoints.len()).sum::<usize>();
    let found = dnat_rules(mode, &text);
    row.read_back_s = Some(round(t.elapsed().as_secs_f64(), 3));
    ensure!(
        found == expected,
        "{label}: the kernel holds {found} DNAT rules after the full sync, expected {expected}"
    );
    row.rules_after_full = Some(rules_read_back(mode, &text));
    drop(text);

    // 2. Single-endpoint changes, each as kube-proxy's next partial sync writes it.
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut lat = Vec::new();
    let mut gen_ms = Vec::new();
    let mut bytes = Vec::new();
    let mut stale: Vec<(Instant, Vec<String>)> = Vec::new();
    let mut kept_stale = 0usize;
    let mut last = None;
    let budget = Instant::now() + CHANGES_BUDGET;
    let progress_every = (changes / 4).max(1);
    for c in 0..changes {
        if Instant::now() > budget {
            row.notes.push(format!(
                "the change budget of {CHANGES_BUDGET:?} ran out after {c} changes"
            ));
            break;
        }
        let i = rng.below(n);
        let e = services[i].endpoints.len();
        if e == 0 {
            continue;
        }
        let j = rng.below(e);
        let new = loop {
            let a = kube_proxy::synthetic_endpoint(rng.below(65_534));
            if !services[i].endpoints.contains(&a) {
                break a;
            }
        };
        let old = std::mem::replace(&mut services[i].endpoints[j], new);
        let change = EndpointChange {
            service: i,
            removed: vec![old],
        };
        let t = Instant::now();
        let input = match mode {
            Mode::Iptables(_) => iptables::partial(&services, std::slice::from_ref(&change), &cfg),
            Mode::Nftables => nftables::partial(&services, std::slice::from_ref(&change), &cfg),
        };
        gen_ms.push(ms(t.elapsed()));
        bytes.push(input.len() as f64);
        // nftables: the sync first deletes the chains stale for more than a second.
        let mut took = Duration::ZERO;
        if mode == Mode::Nftables {
            let due: Vec<String> = stale
                .iter()
                .filter(|(at, _)| at.elapsed() > STALE_DELETE_AFTER)
                .flat_map(|(_, c)| c.iter().cloned())
                .collect();
            stale.retain(|(at, _)| at.elapsed() <= STALE_DELETE_AFTER);
            if !due.is_empty() {
                took += apply(mode, &ns, &nftables::delete_chains(&due), &opts)
                    .context("deleting stale chains")?;
                row.stale_chains_deleted += due.len();
            }
        }
        took += apply(mode, &ns, &input, &opts).with_context(|| format!("change {c}"))?;
        lat.push(ms(took));
        match mode {
            Mode::Nftables => stale.push((
                Instant::now(),
                nftables::stale_chains(&services[i], &change.removed),
            )),
            Mode::Iptables(_) if row.large_cluster_mode => kept_stale += 1,
            Mode::Iptables(_) => {}
        }
        last = Some((
            i,
            SocketAddrV4::new(new, services[i].target_port),
            SocketAddrV4::new(old, services[i].target_port),
        ));
        if (c + 1) % progress_every == 0 {
            eprintln!("{label}: changes {}/{changes}", c + 1);
        }
    }
    row.changes_done = lat.len();
    lat.sort_by(f64::total_cmp);
    gen_ms.sort_by(f64::total_cmp);
    bytes.sort_by(f64::total_cmp);
    let p = |v: &[f64], q| percentile(v, q).map(|x| round(x, 3));
    row.change_min_ms = lat.first().map(|v| round(*v, 3));
    row.change_p50_ms = p(&lat, 0.5);
    row.change_p90_ms = p(&lat, 0.9);
    row.change_p99_ms = p(&lat, 0.99);
    row.change_max_ms = lat.last().map(|v| round(*v, 3));
    row.change_generate_p50_ms = p(&gen_ms, 0.5);
    row.change_input_kib_p50 = percentile(&bytes, 0.5).map(|b| round(b / 1024.0, 1));
    row.stale_chains_kept = kept_stale;
    eprintln!(
        "{label}: {} changes: p50 {} ms, p99 {} ms (generating one: p50 {} ms, {} KiB)",
        lat.len(),
        row.change_p50_ms.unwrap_or(f64::NAN),
        row.change_p99_ms.unwrap_or(f64::NAN),
        row.change_generate_p50_ms.unwrap_or(f64::NAN),
        row.change_input_kib_p50.unwrap_or(f64::NAN),
    );
    if let Some(c) = &cgroup {
        let u = c.usage()?;
        row.kernel_after_changes_mib = Some(round(mib(u.kernel), 2));
        row.peak_charged_mib = Some(round(mib(u.peak), 2));
    }

    // 3. The kernel holds the last change, and every other endpoint.
    if let Some((i, new, old)) = last {
        let text = read_back(mode, &ns)?;
        ensure!(
            text.contains(&dnat_of(mode, new)),
            "{label}: the last change ({new} in service {i}) is not in the kernel"
        );
        let found = dnat_rules(mode, &text);
        ensure!(
            found == expected + kept_stale,
            "{label}: {found} DNAT rules after the changes, expected {expected} (+{kept_stale} in stale chains)"
        );
        let chain = match mode {
            Mode::Iptables(_) => names::sep_chain(&services[i], old),
            Mode::Nftables => names::nft_endpoint_chain(&services[i], old),
        };
        ensure!(
            !text.contains(&format!("-j {chain}")) && !text.contains(&format!("goto {chain}")),
            "{label}: the replaced endpoint {old} is still selected"
        );
        row.verified = true;
    }
    if mode == Mode::Nftables {
        // What kube-proxy also reads on every nftables sync (not in the change time).
        let t = Instant::now();
        ns.enter(nftables::list_chains)??;
        row.list_chains_ms = Some(round(ms(t.elapsed()), 2));
    }
    drop(ns);
    Ok(())
}
