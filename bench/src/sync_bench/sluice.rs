//! sluice's row: `controller-bench` (the sibling binary) at one service count, through the
//! agent's Kubernetes path, read back from its JSON report.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::report::SluiceRow;

/// The report controller-bench writes for sync-bench (`target/bench/<JSON>.json`).
pub const JSON: &str = "sync-controller";

/// controller-bench at 10 000 services takes minutes (the agent's load, listing, 10 s idle
/// window, changes, a metrics scrape); this bounds a hung run.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// Runs controller-bench for `services` services only and reads its row.
pub fn measure(out_dir: &Path, services: usize, changes: usize) -> Result<SluiceRow> {
    let exe = std::env::current_exe()?.with_file_name("controller-bench");
    if !exe.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p bench -p sluice`",
            exe.display()
        );
    }
    let json = out_dir.join(format!("{JSON}.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(&exe);
    cmd.args(["--services", &services.to_string()])
        .args(["--counts", &services.to_string()])
        // controller-bench takes at least 10 changes.
        .args(["--changes", &changes.max(10).to_string()])
        .args(["--idle-seconds", "1"])
        .args(["--json", JSON])
        .stdin(Stdio::null())
        // Its table goes to our stderr: our stdout holds only our own table.
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());
    eprintln!("sluice: running {} ...", exe.display());
    let mut p = lab::Process::spawn_with_stdio(cmd)?;
    match p.wait_timeout(TIMEOUT)? {
        Some(s) if s.success() => {}
        Some(s) => bail!("controller-bench exited with {s}"),
        None => bail!("controller-bench did not finish within {TIMEOUT:?}"),
    }
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let r = v["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["services"].as_u64() == Some(services as u64))
        })
        .with_context(|| format!("{} has no row for {services} services", json.display()))?;
    let f = |k: &str| r[k].as_f64();
    Ok(SluiceRow {
        services,
        endpoints_per_service: r["endpoints_per_service"].as_u64().unwrap_or(0) as usize,
        node_port_services: r["node_port_services"].as_u64().unwrap_or(0) as usize,
        program_all_s: f("program_all_s"),
        change_p50_ms: f("change_p50_ms"),
        change_p99_ms: f("change_p99_ms"),
        changes_done: r["changes_done"].as_u64().unwrap_or(0) as usize,
        change_timeouts: r["change_timeouts"].as_u64().unwrap_or(0) as usize,
        rss_mib: f("rss_mib"),
        rss_anon_mib: f("rss_anon_mib"),
        maps_mib: f("maps_mib"),
        memory_mib: match (f("rss_mib"), f("maps_mib")) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        },
        report: json.display().to_string(),
        notes: r["notes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
