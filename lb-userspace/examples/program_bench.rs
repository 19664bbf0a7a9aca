//! How fast the controller can program the data path, and what it costs in memory (root):
//!
//! ```text
//! cargo run --release -p lb-userspace --example program_bench \
//!     [-- --services N --backends M --slots-per-backend S]
//! ```
//!
//! In a fresh network namespace (nothing is attached, nothing is pinned) it loads a
//! [`Dataplane`] with the default capacities (raised only where N x M does not fit them; the
//! default Maglev configuration unless `--slots-per-backend` is given), then measures:
//! - the first service (NodePort + one address frontend, M ready backends) on empty maps;
//! - N such services in all (default 10 000 x 10);
//! - an unchanged resync of all N;
//! - one-backend changes at N services, 1000 each, p50/p99/max: one endpoint turning not
//!   ready and back (the table changes in place), and one endpoint replaced by a new address
//!   (a rollout step: add one, remove one);
//! - removing all N;
//! - memory: a table of every map's `memlock` from `/proc/self/fdinfo` (the kernel's exact
//!   accounting, per-element overhead and per-CPU copies included; per service too) and the
//!   process's RSS (`RssAnon` is the heap; `RssFile` holds the mmap'ed maps, which are the
//!   map memory counted again).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_userspace::{
    BackendSpec, Capacities, Dataplane, DataplaneConfig, EndpointState, Frontend, MaglevConfig,
    Protocol, ServiceSpec,
};

fn main() -> anyhow::Result<()> {
    let (mut services, mut per) = (10_000usize, 10usize);
    let mut maglev = MaglevConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> anyhow::Result<usize> {
            args.next()
                .with_context(|| format!("{a} needs a value"))?
                .parse()
                .with_context(|| format!("{a}: not a number"))
        };
        match a.as_str() {
            "--services" => services = value()?,
            "--backends" => per = value()?,
            "--slots-per-backend" => maglev.slots_per_backend = value()? as u32,
            other => {
                bail!("unknown argument {other} (--services N --backends M --slots-per-backend S)")
            }
        }
    }
    if services == 0 || services > 20_000 || per == 0 || per > 250 {
        bail!("--services 1..=20000, --backends 1..=250");
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET) (run as root)")?;

    let table = lb_userspace::maglev::table_size(&maglev, per);
    // The default capacities, raised only where the requested size does not fit them:
    // every table in force plus room for a few tables being resized at once.
    let defaults = Capacities::default();
    let slots = (services as u32 * table + 4 * lb_userspace::maglev::table_size(&maglev, 2 * per))
        .next_multiple_of(lb_common::SLOTS_PER_ENTRY);
    let capacities = Capacities {
        services: defaults.services.max(services as u32),
        frontends: defaults.frontends.max(2 * services as u32),
        backends: defaults.backends.max((services * per) as u32),
        slots: defaults.slots.max(slots),
        ..defaults
    };
    let cfg = DataplaneConfig {
        capacities,
        maglev,
        ..DataplaneConfig::default()
    };
    println!(
        "config: {services} services x {per} backends, table {table} slots a service, \
         maglev {maglev:?}; capacities {} ({capacities:?})",
        if capacities == defaults {
            "the defaults"
        } else {
            "raised"
        }
    );
    let t = Instant::now();
    let mut dp = Dataplane::load(cfg).context("load")?;
    println!("load: {:.1} ms", ms(t.elapsed()));

    let specs: Vec<ServiceSpec> = (0..services).map(|i| spec(i, per, 0)).collect();
    // The bench's own heap (its specs) and the loaded, empty data path.
    let rss0 = rss()?;
    let cpu0 = cpu_time();
    let t = Instant::now();
    dp.upsert_service(&specs[0])?;
    let first = t.elapsed();
    let t = Instant::now();
    for s in &specs[1..] {
        dp.upsert_service(s)?;
    }
    let all = first + t.elapsed();
    let cpu = cpu_time() - cpu0;
    println!("upsert 1 service (empty maps): {:.3} ms", ms(first));
    println!(
        "upsert {services} services: {:.3} s ({:.1} us a service; CPU time {:.3} s, the rest \
         is waiting for a core)",
        all.as_secs_f64(),
        all.as_secs_f64() * 1e6 / services as f64,
        cpu.as_secs_f64()
    );
    let t = Instant::now();
    for s in &specs {
        dp.upsert_service(s)?;
    }
    println!(
        "resync {services} unchanged services: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    memory(&dp, rss0, services)?;

    // One endpoint of a service turns not ready, then ready again (in-place table changes).
    let mut lat = Vec::with_capacity(1000);
    for k in 0..1000usize {
        let i = (k / 2 * 7919) % services;
        let mut s = specs[i].clone();
        if k % 2 == 0 {
            s.backends[k / 2 % per].state = EndpointState::NotServing;
        }
        let t = Instant::now();
        dp.upsert_service(&s)?;
        lat.push(t.elapsed());
    }
    report(
        &format!("one endpoint not ready / ready again, {services} services"),
        &mut lat,
    );

    // One endpoint replaced by a new address (rollout step: one added, one removed).
    let mut specs = specs;
    let mut lat = Vec::with_capacity(1000);
    for k in 0..1000usize {
        let i = (k * 7919) % services;
        let j = k % per;
        specs[i].backends[j].addr = backend_addr(i, per, j, 1 + k / services);
        let t = Instant::now();
        dp.upsert_service(&specs[i])?;
        lat.push(t.elapsed());
    }
    report(
        &format!("one endpoint replaced, {services} services"),
        &mut lat,
    );
    let t = Instant::now();
    let purged = dp.purge_stale()?;
    println!(
        "purge_stale after the replacements: {:.3} ms ({purged} flows)",
        ms(t.elapsed())
    );
    memory(&dp, rss0, services)?;
    let t = Instant::now();
    let sizes: std::collections::BTreeSet<u32> = dp.dump().iter().map(|d| d.table_size).collect();
    println!(
        "dump of {services} services: {:.1} ms; table sizes in force: {sizes:?}",
        ms(t.elapsed())
    );

    let t = Instant::now();
    for s in &specs {
        dp.remove_service(&s.name)?;
    }
    println!(
        "remove {services} services: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; no other preconditions.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, lat: &mut [Duration]) {
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{what}: {} changes, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        lat.len(),
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        lat[lat.len() - 1].as_secs_f64() * 1e6
    );
}

/// Backend `j` of service `i`, generation `g` (0: the initial address; a replacement gets
/// the next generation), all distinct.
fn backend_addr(i: usize, per: usize, j: usize, g: usize) -> SocketAddr {
    let n = (g * 20_000 * per + i * per + j) as u32;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + n)), 8080)
}

fn spec(i: usize, per: usize, g: usize) -> ServiceSpec {
    ServiceSpec {
        name: format!("bench/svc-{i}:http"),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(20_000 + i as u16),
            Frontend::Address(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i as u32)),
                80,
            )),
        ],
        backends: (0..per)
            .map(|j| BackendSpec::ready(backend_addr(i, per, j, g)))
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// (VmRSS, RssAnon, RssFile, RssShmem) in KiB.
fn rss() -> anyhow::Result<[u64; 4]> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let mut out = [0; 4];
    for (k, key) in ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"]
        .iter()
        .enumerate()
    {
        out[k] = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
    }
    Ok(out)
}

/// Map memory by the kernel's accounting (`memlock` of every BPF map fd of this process),
/// and the process's RSS.
/// Every map's memory as the kernel accounts it (`memlock` in `/proc/self/fdinfo`, exact:
/// what the map's creation charged, per-element overhead of hash maps and per-CPU copies
/// included), one line per map, then the process's RSS.
fn memory(_dp: &Dataplane, rss0: [u64; 4], services: usize) -> anyhow::Result<()> {
    let names: std::collections::BTreeMap<u32, String> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| (m.id(), m.name_as_str().unwrap_or("?").to_string()))
        .collect();
    let mut total = 0u64;
    let mut maps = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(info) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        total += memlock;
        let name = names
            .get(&(id as u32))
            .cloned()
            .unwrap_or_else(|| format!("id {id}"));
        maps.push((
            memlock,
            name,
            field("max_entries:").unwrap_or(0),
            field("key_size:").unwrap_or(0),
            field("value_size:").unwrap_or(0),
        ));
    }
    maps.sort_by(|a, b| b.cmp(a));
    println!(
        "map memory (memlock; {} possible CPUs for the per-CPU maps):",
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "  {:<14} {:>10} {:>5} {:>6} {:>10} {:>12}",
        "MAP", "ENTRIES", "KEY", "VALUE", "MIB", "B/SERVICE"
    );
    for (m, name, n, k, v) in &maps {
        println!(
            "  {name:<14} {n:>10} {k:>5} {v:>6} {:>10.2} {:>12.0}",
            *m as f64 / MIB,
            *m as f64 / services as f64
        );
    }
    println!(
        "  {:<14} {:>10} {:>5} {:>6} {:>10.2} {:>12.0}",
        "total",
        "",
        "",
        "",
        total as f64 / MIB,
        total as f64 / services as f64
    );
    let r = rss()?;
    println!(
        "memory: maps {:.1} MiB; RSS {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1}; anon \
         before the first upsert {:.1}); maps + anon RSS {:.1} MiB",
        total as f64 / MIB,
        r[0] as f64 / 1024.0,
        r[1] as f64 / 1024.0,
        r[2] as f64 / 1024.0,
        r[3] as f64 / 1024.0,
        rss0[1] as f64 / 1024.0,
        (total as f64 / MIB) + r[1] as f64 / 1024.0,
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;
