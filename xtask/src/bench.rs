//! `cargo xtask bench <what>`: benchmarks, never timed tests (DESIGN.md, "Measuring
//! performance"). Each runs a binary of the `bench` crate in release mode; xtask itself does
//! not depend on the data path, so it builds on a fresh machine before `setup` ran.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::setup::sh;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Per-packet cost of the XDP paths (BPF_PROG_TEST_RUN) beside a parse-and-pass
    /// baseline, at 1 and 10 000 services; writes target/bench/datapath.json.
    Datapath,
    /// The control plane: the release `sluice` agent fed by an in-process Kubernetes API
    /// server at 1, 1 000 and 10 000 services of 10 endpoints (time to program all, one
    /// endpoint change until the data path uses it, memory, idle CPU); writes
    /// target/bench/controller.json.
    Controller,
    /// Tracked flows and the control plane: one-endpoint change latency with 0 and with
    /// 1 000 000 confirmed TCP flows (the ratio), one GC pass per million entries, conntrack
    /// map memory; writes target/bench/conntrack.json.
    Conntrack,
    /// sluice side by side with kube-proxy's iptables and nftables rule shapes and with no
    /// translation, in one lab, at 1, 1 000 and 10 000 services: packets/s through the node
    /// on one core (new and established flows) and HTTP requests/s through a NodePort
    /// (keep-alive and a new connection per request); writes target/bench/compare.{json,md}
    /// and target/bench/compare-*.png.
    Compare,
    /// Programming 10 000 services x 10 endpoints and one-endpoint-change latency: sluice
    /// (through the agent) beside iptables-restore and nft -f of kube-proxy's rule sets, with
    /// memory; writes target/bench/sync.json.
    Sync,
}

/// Options passed on to the benchmark binary (its defaults apply when absent).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Options {
    /// datapath: BPF_PROG_TEST_RUN repeats per run (at least 10 000).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// datapath (at least 5) and compare (default 3): rounds; each figure is the median
    /// over rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// The large service count (the small one is 1; controller and compare also run 1 000
    /// below it).
    #[arg(long)]
    pub services: Option<u32>,
    /// controller: single-endpoint changes per service count (default 1000 at 1 service,
    /// 500 up to 1 000, 200 above).
    #[arg(long)]
    pub changes: Option<u32>,
    /// controller: the idle CPU window in seconds (default 10).
    #[arg(long)]
    pub idle_seconds: Option<u32>,
    /// conntrack: confirmed TCP flows tracked for the second measurement (default 1 000 000).
    #[arg(long)]
    pub flows: Option<u32>,
    /// compare: seconds of HTTP load per cell and connection mode, and the longest a
    /// packets/s measurement sends (default 2).
    #[arg(long)]
    pub seconds: Option<u32>,
}

/// A command-line option of a benchmark binary and its value, if given.
type Flag = (&'static str, Option<u32>);

fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map_or(xtask.clone(), PathBuf::from)
}

pub fn run(what: What, opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    if unsafe { geteuid() } != 0 {
        bail!("benchmarks load eBPF programs and create namespaces: run as root");
    }
    // (benchmark binary, the options it takes); any other option given is refused.
    let (bin, passed): (&str, Vec<Flag>) = match what {
        What::Datapath => (
            "datapath-bench",
            vec![
                ("--repeat", opts.repeat),
                ("--rounds", opts.rounds),
                ("--services", opts.services),
            ],
        ),
        What::Controller => (
            "controller-bench",
            vec![
                ("--services", opts.services),
                ("--changes", opts.changes),
                ("--idle-seconds", opts.idle_seconds),
            ],
        ),
        What::Conntrack => (
            "conntrack-bench",
            vec![("--flows", opts.flows), ("--changes", opts.changes)],
        ),
        What::Compare => (
            "compare-bench",
            vec![
                ("--services", opts.services),
                ("--seconds", opts.seconds),
                ("--rounds", opts.rounds),
            ],
        ),
        What::Sync => (
            "sync-bench",
            vec![("--services", opts.services), ("--changes", opts.changes)],
        ),
    };
    let given: [Flag; 7] = [
        ("--repeat", opts.repeat),
        ("--rounds", opts.rounds),
        ("--services", opts.services),
        ("--changes", opts.changes),
        ("--idle-seconds", opts.idle_seconds),
        ("--flows", opts.flows),
        ("--seconds", opts.seconds),
    ];
    let refused = given
        .iter()
        .find(|(flag, v)| v.is_some() && !passed.iter().any(|(p, _)| p == flag));
    if let Some((flag, _)) = refused {
        bail!(
            "{flag} does not apply to `bench {}`",
            bin.trim_end_matches("-bench")
        );
    }
    if what == What::Compare {
        // The lab's pod runs the release `lab-server`, next to the benchmark's binary.
        sh(Command::new("cargo").current_dir(workspace_root()).args([
            "build",
            "--release",
            "-p",
            "bench",
            "--bin",
            "lab-server",
        ]))?;
    }
    if what == What::Sync {
        // sync-bench measures sluice by running the release controller-bench beside it.
        sh(Command::new("cargo").current_dir(workspace_root()).args([
            "build",
            "--release",
            "-p",
            "bench",
            "--bin",
            "controller-bench",
        ]))?;
    }
    if matches!(what, What::Controller | What::Sync) {
        // The agent under test is the release `sluice` binary, next to the benchmark's.
        sh(Command::new("cargo").current_dir(workspace_root()).args([
            "build",
            "--release",
            "-p",
            "sluice",
            "-p",
            "bench",
            "--bin",
            "sluice",
            "--bin",
            bin,
        ]))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["run", "--release", "-p", "bench", "--bin", bin, "--"]);
    for (flag, value) in passed {
        if let Some(v) = value {
            cmd.arg(flag).arg(v.to_string());
        }
    }
    sh(&mut cmd)
}
