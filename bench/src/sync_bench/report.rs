//! The report: sluice's row (from controller-bench), one row per kube-proxy backend, and the
//! markdown table with the targets (DESIGN.md, "Control plane") and the ratios to sluice.

use serde::Serialize;

pub const TARGET_PROGRAM_S: f64 = 1.0;
pub const TARGET_CHANGE_P99_MS: f64 = 5.0;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SluiceRow {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub node_port_services: usize,
    /// controller-bench's `program_all_s`: every watcher listed -> the data path holds every
    /// frontend and backend.
    pub program_all_s: Option<f64>,
    /// controller-bench's change latency: the slice applied to the API server -> the data
    /// path selects the new backend.
    pub change_p50_ms: Option<f64>,
    pub change_p99_ms: Option<f64>,
    pub changes_done: usize,
    pub change_timeouts: usize,
    /// The agent's VmRSS and the memlock of its BPF maps; `memory_mib` is their sum.
    pub rss_mib: Option<f64>,
    pub rss_anon_mib: Option<f64>,
    pub maps_mib: Option<f64>,
    pub memory_mib: Option<f64>,
    /// controller-bench's full report.
    pub report: String,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RulesRow {
    pub mode: String,
    pub tool: String,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub node_port_services: usize,
    pub large_cluster_mode: bool,
    /// Headline: the wall time of the tool applying the full sync (spawn to exit).
    pub full_s: Option<f64>,
    /// Our generator's time for the full input (not kube-proxy's: reported apart).
    pub generate_full_s: Option<f64>,
    pub full_input_mib: Option<f64>,
    /// Rules the kernel printed back after the full sync (iptables: `-A` lines of `nat`;
    /// nftables: rule lines of the table).
    pub rules_after_full: Option<usize>,
    /// One read back of the whole state (iptables-save -t nat / nft list table).
    pub read_back_s: Option<f64>,

    pub changes_requested: usize,
    pub changes_done: usize,
    /// Headline: the wall time of the tool applying one partial sync (nftables: plus the
    /// deletion of chains stale for more than 1 s, as kube-proxy's sync does first).
    pub change_min_ms: Option<f64>,
    pub change_p50_ms: Option<f64>,
    pub change_p90_ms: Option<f64>,
    pub change_p99_ms: Option<f64>,
    pub change_max_ms: Option<f64>,
    pub change_generate_p50_ms: Option<f64>,
    pub change_input_kib_p50: Option<f64>,
    /// nftables: stale endpoint chains deleted by later syncs.
    pub stale_chains_deleted: usize,
    /// iptables in large-cluster mode: stale endpoint chains left for the periodic cleanup.
    pub stale_chains_kept: usize,
    /// nftables: one `nft list chains ip`, which kube-proxy runs on every sync
    /// (not in the change time).
    pub list_chains_ms: Option<f64>,

    /// Kernel memory charged to the tools' cgroup after the full sync / after the changes.
    pub kernel_after_full_mib: Option<f64>,
    pub kernel_after_changes_mib: Option<f64>,
    /// Everything charged after the full sync, and the high-water mark of the run (the tools'
    /// own memory while they ran included).
    pub charged_after_full_mib: Option<f64>,
    pub peak_charged_mib: Option<f64>,
    pub memory_method: Option<String>,
    /// The kernel held the expected DNAT rules after the full sync and the last change.
    pub verified: bool,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub changes: usize,
    pub sluice: Option<SluiceRow>,
    pub kube_proxy: Vec<RulesRow>,
    pub method: Vec<String>,
    pub notes: Vec<String>,
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn verdict(v: Option<f64>, limit: f64) -> &'static str {
    match v {
        Some(v) if v <= limit => "met",
        Some(_) => "MISSED",
        None => "not measured",
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("×{:.1}", v / b),
        _ => "—".into(),
    }
}

/// The markdown table: a row per system, the targets beside sluice's values, the ratio of
/// each change p99 to sluice's.
pub fn table(r: &Report) -> String {
    let mut out = String::from(
        "| system | full programming (s) | change p50 (ms) | change p99 (ms) | memory (MiB) | change p99 / sluice's |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let at = if r.services == 10_000 && r.endpoints_per_service == 10 {
        String::new()
    } else {
        format!(
            "; the target is for 10 000 x 10, this run is {} x {}",
            r.services, r.endpoints_per_service
        )
    };
    let base = r.sluice.as_ref().and_then(|s| s.change_p99_ms);
    match &r.sluice {
        Some(s) => out.push_str(&format!(
            "| sluice (agent) | {} (target ≤ {TARGET_PROGRAM_S} s: {}{at}) | {} | {} (target ≤ {TARGET_CHANGE_P99_MS} ms: {}{at}) | {} | ×1 |\n",
            fmt(s.program_all_s, 3),
            verdict(s.program_all_s, TARGET_PROGRAM_S),
            fmt(s.change_p50_ms, 2),
            fmt(s.change_p99_ms, 2),
            verdict(s.change_p99_ms, TARGET_CHANGE_P99_MS),
            fmt(s.memory_mib, 1),
        )),
        None => out.push_str("| sluice (agent) | not measured | — | — | — | — |\n"),
    }
    for k in &r.kube_proxy {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            k.mode,
            fmt(k.full_s, 3),
            fmt(k.change_p50_ms, 2),
            fmt(k.change_p99_ms, 2),
            fmt(k.kernel_after_full_mib, 1),
            ratio(k.change_p99_ms, base),
        ));
    }
    out
}
