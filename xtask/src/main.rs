//! `cargo xtask <command>`: everything a fresh machine needs, in one place.
//!
//! - `setup`: installs (idempotently) what building and testing need;
//! - `build`: builds the workspace (the eBPF object is built by lb-userspace/build.rs);
//! - `test`: setup, build, then every test tier in order (unit, packet, netns);
//! - `bench <what>`: setup, then a benchmark (`datapath`: per-packet cost of the XDP paths;
//!   `controller`: the agent at 1, 1 000 and 10 000 services, fed by a mock API server);
//! - `demo [--keep]`: setup, build, then the tutorial walkthrough in a local lab, under load.

mod bench;
mod demo;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "sluice project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install toolchain pieces and Debian packages (idempotent), mount bpffs.
    Setup,
    /// Setup, then build every crate and test target.
    Build,
    /// Setup, build, then run every test tier (needs root).
    Test {
        /// Run only these tiers (unit, packet, netns); default: all.
        #[arg(long, value_delimiter = ',')]
        tiers: Vec<test::Tier>,
    },
    /// Setup, then run a benchmark in release mode (needs root).
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        what: bench::What,
        #[command(flatten)]
        options: bench::Options,
    },
    /// Setup, build, then the tutorial walkthrough in a local lab under load (needs root);
    /// writes target/demo/report.json.
    Demo {
        /// Leave the lab running afterwards (until Ctrl-C) and print how to reach it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            test::build()
        }
        Command::Test { tiers } => {
            setup::run()?;
            test::build()?;
            test::run(&tiers)
        }
        Command::Bench { what, options } => {
            setup::run()?;
            bench::run(what, &options)
        }
        Command::Demo { keep } => {
            setup::run()?;
            demo::run(keep)
        }
    }
}
