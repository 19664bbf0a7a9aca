//! `sluice-demo`: the tutorial walkthrough in a local lab, under load (see the `demo` crate).
//! Run as root after building the workspace; `cargo xtask demo` does both.
//!
//! Exit status: 0 when every step held, 1 when one failed (or the lab could not be set up),
//! 130 when interrupted (Ctrl-C; everything is cleaned up first).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use demo::{Options, interrupt};

/// The kubernetes-basics walkthrough against sluice in a local lab: deploy, expose, scale,
/// roll out, roll back under load, and prove zero failed requests.
#[derive(Debug, Parser)]
#[command(name = "sluice-demo", version)]
struct Args {
    /// Leave the lab running after the walkthrough (with the Deployment and Service
    /// recreated) until Ctrl-C, to explore it with curl, sluice and bpftool.
    #[arg(long)]
    keep: bool,
    /// A shorter run (the test's): lower rates, shorter loads.
    #[arg(long)]
    quick: bool,
    /// Where the report and logs go (default: `<target>/demo`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Where `sluice` and `bootcamp` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds of load during the rolling update to v2.
    #[arg(long)]
    rolling_update_secs: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = interrupt::install() {
        eprintln!("sluice-demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut opts = if args.quick {
        Options::quick()
    } else {
        Options::default()
    };
    if let Some(dir) = args.bin_dir {
        opts.bin_dir = dir;
    }
    if let Some(dir) = args.out_dir {
        opts.out_dir = dir;
    }
    if let Some(secs) = args.rolling_update_secs {
        opts.load.rolling_update_secs = secs;
    }
    opts.keep = args.keep;
    match demo::run(&opts) {
        Ok(report) if report.ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) if e.interrupted() => {
            eprintln!("sluice-demo: interrupted; everything was cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("sluice-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        super::Args::command().debug_assert();
    }
}
