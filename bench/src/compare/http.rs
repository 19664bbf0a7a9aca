//! HTTP requests per second from the client to the pod's `lab-server`, keep-alive and with a
//! new connection per request: closed loop, every request counted (a failed one fails the
//! benchmark).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lab::Lab;
use lab::{Result, ensure, error::Context as _};
use serde::Serialize;

use crate::load::{self, ConnectionMode, Protocol};

/// The port `lab-server` answers HTTP on in the pod.
pub const HTTP_PORT: u16 = 8080;

/// What one measurement saw.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measured {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Starts the release `lab-server` (found at `bin`) in pod 0, answering HTTP on
/// [`HTTP_PORT`]; the lab ends it.
pub fn start_server(lab: &Lab, bin: &Path) -> Result<()> {
    ensure!(
        bin.exists(),
        "{} is missing: build the bench crate's binaries (cargo build --release -p bench)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1").args([
        "--name",
        "pod0",
        "--http",
        &HTTP_PORT.to_string(),
        "--bind",
        "0.0.0.0",
    ]);
    let mut p = lab.backend(0).spawn(&cmd)?;
    p.wait_for_line("ready", Duration::from_secs(10))?;
    lab.adopt(p);
    Ok(())
}

/// `concurrency` closed-loop workers for `duration` against `target` from the client.
pub fn measure(
    lab: &Lab,
    target: SocketAddr,
    mode: ConnectionMode,
    concurrency: usize,
    duration: Duration,
) -> Result<Measured> {
    let mut cfg = load::Config::new(target, Protocol::http("/"));
    cfg.mode = mode;
    cfg.concurrency = concurrency;
    cfg.max_requests = 100_000_000;
    cfg.max_duration = duration;
    let r = lab
        .client()
        .enter(|| load::run_blocking(cfg))?
        .context("the load run")?;
    ensure!(
        r.failures() == 0 && r.retried == 0,
        "HTTP to {target} ({mode:?}): {r}"
    );
    Ok(Measured {
        requests: r.outcomes.ok,
        rps: r.rate,
        p50_us: r.latency_us.p50,
        p99_us: r.latency_us.p99,
    })
}
