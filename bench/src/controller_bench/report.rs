//! The report: one [`Row`] per service count (JSON `rows`), and the markdown table with the
//! targets (DESIGN.md, "Control plane") and the ratio of each figure to the N = 1 row.

use serde::Serialize;

/// A histogram of the agent's `/metrics` (kube-proxy's names).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Histogram {
    pub count: u64,
    pub sum_s: f64,
    pub mean_ms: Option<f64>,
    /// Upper bounds of the buckets holding the median and the 99th percentile.
    pub p50_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
}

/// Map entries counted in the kernel's maps by the benchmark itself (read-only, through the
/// pins, with `lb_userspace::inspect::pinned_occupancy`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelView {
    pub frontends: u64,
    pub backends: u64,
    pub slots: u64,
    /// What the benchmark expects for its objects.
    pub expected_frontends: u64,
    pub expected_backends: u64,
    pub expected_slots: u64,
    /// How long one such full read took (it walks every map: not usable as a poll).
    pub read_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapMemory {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    pub memlock_mib: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub services: usize,
    /// Headline: from the moment every watcher had listed (the agent's `/readyz` left
    /// "waiting for the first full list") until the data path held every service.
    pub program_all_s: Option<f64>,
    pub change_p50_ms: Option<f64>,
    pub change_p99_ms: Option<f64>,
    /// `VmRSS` after programming.
    pub rss_mib: Option<f64>,
    /// Sum of `memlock` over the agent's BPF maps (fdinfo).
    pub maps_mib: Option<f64>,
    pub idle_cpu_pct: Option<f64>,

    pub endpoints_per_service: usize,
    pub node_port_services: usize,
    /// Agent start until its data path was loaded and attached (its "attached" log line).
    pub load_s: Option<f64>,
    /// Attached until every watcher had listed.
    pub list_s: Option<f64>,
    /// Agent start until every service was in the data path.
    pub start_to_programmed_s: Option<f64>,
    /// The same without the data-path load: listing plus programming.
    pub start_minus_load_s: Option<f64>,
    /// False when `/readyz` went from listing to ready between two polls (1 ms apart): the
    /// listing then ended at most one poll earlier than taken.
    pub listed_exact: bool,
    /// The agent's own word: `took_ms` of its first reconcile round.
    pub first_round_took_ms: Option<f64>,
    pub first_round_upserted: Option<u64>,
    pub kernel_after_programming: Option<KernelView>,
    pub kernel_after_changes: Option<KernelView>,

    pub changes_requested: usize,
    pub changes_done: usize,
    pub change_timeouts: usize,
    pub change_min_ms: Option<f64>,
    pub change_p90_ms: Option<f64>,
    pub change_max_ms: Option<f64>,
    /// Median round trip of the endpoint-view polls that showed a change: at most this is
    /// added to the moment the data path held it.
    pub poll_ms: Option<f64>,
    /// Median round trip of one counters answer once programmed: at most this is added to
    /// `program_all_s`.
    pub counters_poll_ms: Option<f64>,
    /// From just before `apply` to the arrival of the agent's log line of the round that
    /// applied the change (the agent's word; the data path is checked after it).
    pub change_logged_p50_ms: Option<f64>,
    pub change_logged_p99_ms: Option<f64>,
    /// `took_ms` of the agent's reconcile rounds during the changes.
    pub change_round_took_ms_p50: Option<f64>,
    pub change_round_took_ms_p99: Option<f64>,

    pub rss_anon_mib: Option<f64>,
    pub rss_file_mib: Option<f64>,
    pub rss_after_changes_mib: Option<f64>,
    pub bpf_maps: Vec<MapMemory>,
    pub idle_seconds: f64,

    pub sync_proxy_rules: Option<Histogram>,
    pub network_programming: Option<Histogram>,
    /// One `/metrics` scrape (after everything else: its series are created on the first one).
    pub metrics_scrape_s: Option<f64>,
    pub metrics_bytes: Option<usize>,
    pub rss_after_scrape_mib: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub method: Vec<String>,
}

pub const TARGET_PROGRAM_S: f64 = 1.0;
pub const STRETCH_PROGRAM_S: f64 = 0.2;
pub const TARGET_CHANGE_P99_MS: f64 = 5.0;
pub const TARGET_IDLE_CPU_PCT: f64 = 1.0;
pub const TARGET_MEMORY_MIB: f64 = 128.0;

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => {
            let r = v / b;
            if r >= 100.0 {
                format!(" (×{r:.0})")
            } else {
                format!(" (×{r:.2})")
            }
        }
        _ => String::new(),
    }
}

fn verdict(v: Option<f64>, limit: f64) -> &'static str {
    match v {
        Some(v) if v <= limit => "**met**",
        Some(_) => "**missed**",
        None => "not measured",
    }
}

/// The markdown table: a line per figure, a column per service count (the ratio to N = 1 in
/// parentheses), then the target and whether the largest count meets it.
pub fn table(rows: &[Row]) -> String {
    let Some(big) = rows.iter().max_by_key(|r| r.services) else {
        return String::new();
    };
    let base = rows.iter().find(|r| r.services == 1);
    let n = big.services;
    let mut out = String::new();
    out.push_str("| figure |");
    for r in rows {
        out.push_str(&format!(" N = {} |", r.services));
    }
    out.push_str(&format!(" target (at N = {n}) | met |\n|---|"));
    for _ in rows {
        out.push_str("---:|");
    }
    out.push_str("---|---|\n");
    type Get = fn(&Row) -> Option<f64>;
    let both = |r: &Row| match (r.rss_mib, r.maps_mib) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    let anon_both = |r: &Row| match (r.rss_anon_mib, r.maps_mib) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    let program_target = |v: Option<f64>| -> String {
        let main = verdict(v, TARGET_PROGRAM_S);
        let stretch = match v {
            Some(v) if v <= STRETCH_PROGRAM_S => "met",
            Some(_) => "missed",
            None => "—",
        };
        format!("{main} (stretch {stretch})")
    };
    let lines: Vec<(&str, Get, usize, String, String)> = vec![
        (
            "program all, listed → in data path (s)",
            |r| r.program_all_s,
            3,
            format!("≤ {TARGET_PROGRAM_S} s (stretch ≤ {STRETCH_PROGRAM_S} s)"),
            program_target(big.program_all_s),
        ),
        (
            "program all, agent start → in data path, minus data-path load (s)",
            |r| r.start_minus_load_s,
            3,
            format!("≤ {TARGET_PROGRAM_S} s (stretch ≤ {STRETCH_PROGRAM_S} s)"),
            program_target(big.start_minus_load_s),
        ),
        (
            "data-path load, agent start → attached (s)",
            |r| r.load_s,
            3,
            "—".into(),
            "—".into(),
        ),
        (
            "listing, attached → every watcher listed (s)",
            |r| r.list_s,
            3,
            "—".into(),
            "—".into(),
        ),
        (
            "one-endpoint change p50, seen in the data path (ms)",
            |r| r.change_p50_ms,
            2,
            "—".into(),
            "—".into(),
        ),
        (
            "one-endpoint change p99, seen in the data path (ms)",
            |r| r.change_p99_ms,
            2,
            format!("≤ {TARGET_CHANGE_P99_MS} ms"),
            verdict(big.change_p99_ms, TARGET_CHANGE_P99_MS).into(),
        ),
        (
            "one-endpoint change p99, the agent's round logged (ms)",
            |r| r.change_logged_p99_ms,
            2,
            "(agent's word)".into(),
            "—".into(),
        ),
        (
            "one endpoint-view poll that showed a change (ms)",
            |r| r.poll_ms,
            2,
            "—".into(),
            "—".into(),
        ),
        (
            "agent RSS, VmRSS (MiB)",
            |r| r.rss_mib,
            1,
            "—".into(),
            "—".into(),
        ),
        (
            "of which RssAnon (heap) (MiB)",
            |r| r.rss_anon_mib,
            1,
            "—".into(),
            "—".into(),
        ),
        (
            "BPF maps, memlock (MiB)",
            |r| r.maps_mib,
            1,
            "—".into(),
            "—".into(),
        ),
        (
            "RSS + maps (MiB)",
            both,
            1,
            format!("≤ {TARGET_MEMORY_MIB} MiB"),
            verdict(both(big), TARGET_MEMORY_MIB).into(),
        ),
        (
            "RssAnon + maps, without the mmap'ed maps counted twice (MiB)",
            anon_both,
            1,
            format!("≤ {TARGET_MEMORY_MIB} MiB"),
            verdict(anon_both(big), TARGET_MEMORY_MIB).into(),
        ),
        (
            "idle CPU (% of one core)",
            |r| r.idle_cpu_pct,
            2,
            format!("≤ {TARGET_IDLE_CPU_PCT} %"),
            verdict(big.idle_cpu_pct, TARGET_IDLE_CPU_PCT).into(),
        ),
    ];
    for (name, get, digits, target, met) in lines {
        out.push_str(&format!("| {name} |"));
        for r in rows {
            let v = get(r);
            let rat = if r.services == 1 {
                String::new()
            } else {
                ratio(v, base.and_then(get))
            };
            out.push_str(&format!(" {}{rat} |", fmt(v, digits)));
        }
        out.push_str(&format!(" {target} | {met} |\n"));
    }
    out
}
