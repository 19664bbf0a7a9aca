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
}

/// Options passed on to the benchmark binary (its defaults apply when absent).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Options {
    /// BPF_PROG_TEST_RUN repeats per run (at least 10 000).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Rounds (at least 5); each figure is the median over rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// The large service count (the small one is 1).
    #[arg(long)]
    pub services: Option<u32>,
}

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
    match what {
        What::Datapath => {
            let mut cmd = Command::new("cargo");
            cmd.current_dir(workspace_root()).args([
                "run",
                "--release",
                "-p",
                "bench",
                "--bin",
                "datapath-bench",
                "--",
            ]);
            for (flag, value) in [
                ("--repeat", opts.repeat),
                ("--rounds", opts.rounds),
                ("--services", opts.services),
            ] {
                if let Some(v) = value {
                    cmd.arg(flag).arg(v.to_string());
                }
            }
            sh(&mut cmd)
        }
    }
}
