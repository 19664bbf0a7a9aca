//! `cargo xtask demo [--keep]`: the acceptance story (DESIGN.md, "The walkthrough"): builds
//! every binary, then runs `sluice-demo` (the `demo` crate) as root and exits with its status.
//!
//! `--keep` leaves the lab running after the walkthrough, prints how to reach it (curl
//! through the NodePort and the VIP from the client namespace, the agent's metrics, `sluice
//! services` in the node namespace), and cleans up on Ctrl-C.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::setup::sh;

fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map_or(xtask.clone(), PathBuf::from)
}

/// Where cargo puts the binaries: `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
fn bin_dir() -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    target.join("debug")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// Lets a Ctrl-C on the terminal reach only the demo (same process group), which cleans up
/// and exits; xtask waits for it instead of dying first.
fn ignore_sigint() {
    const SIGINT: i32 = 2;
    const SIG_IGN: usize = 1;
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    unsafe {
        signal(SIGINT, SIG_IGN);
    }
}

/// Builds every binary and runs the demo; exits with the demo's status when it fails.
pub fn run(keep: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    sh(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--workspace",
        "--bins",
        "--examples",
    ]))?;
    let demo = bin_dir().join("sluice-demo");
    let mut cmd = Command::new(&demo);
    cmd.current_dir(workspace_root());
    if keep {
        cmd.arg("--keep");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", demo.display()))?;
    // After the spawn, so that the demo itself keeps the default disposition.
    ignore_sigint();
    let status = child.wait().context("waiting for sluice-demo")?;
    if !status.success() {
        eprintln!("xtask: sluice-demo failed ({status})");
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
