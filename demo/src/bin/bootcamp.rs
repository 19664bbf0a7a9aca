//! `bootcamp`: the pod server of the walkthrough (the tutorial's `kubernetes-bootcamp` image).
//! See [`demo::bootcamp`] for what it answers.
//!
//! It prints `listening on ADDR` on stdout once bound and a JSON line with its final counters
//! at exit. SIGTERM (or SIGINT) starts the graceful drain; it exits 0 when the drain is over.
//! A version whose image does not exist (anything but v1 and v2, e.g. the tutorial's v10)
//! cannot start: it exits 1 at once with an error message, like a container whose image
//! cannot be pulled.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use demo::bootcamp::{Config, Server, image_exists, parse_version};
use tokio::signal::unix::{SignalKind, signal};

/// The kubernetes-bootcamp pod server: `GET /` greets with the pod name and version,
/// `/ready` is the readiness probe, `/stats` the counters.
#[derive(Debug, Parser)]
#[command(name = "bootcamp")]
struct Args {
    /// The pod name put in every greeting.
    #[arg(long)]
    name: String,
    /// The image version, `vN` (v1 and v2 exist; others cannot start).
    #[arg(long = "version", value_name = "vN", value_parser = parse_version)]
    image: u32,
    /// Port to serve HTTP on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// `/ready` answers 503 for this long after the start (the app warming up).
    #[arg(long, value_name = "N", default_value_t = 0)]
    startup_delay_ms: u64,
    /// Longest wait for open connections after SIGTERM.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    drain_timeout_ms: u64,
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
    if !image_exists(args.image) {
        eprintln!(
            "bootcamp: cannot start {}: image gcr.io/google-samples/kubernetes-bootcamp:v{} not \
             found (manifest unknown); the images that exist are v1 and v2",
            args.name, args.image
        );
        return ExitCode::FAILURE;
    }
    let cfg = Config {
        name: args.name,
        version: args.image,
        listen: SocketAddr::new(args.bind, args.port),
        startup_delay: Duration::from_millis(args.startup_delay_ms),
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(cfg)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootcamp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Handlers first: a signal sent right after the listener is up must not kill us.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let server = Server::bind(&cfg)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    print_line(&format!("listening on {}", server.local_addr()?));
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let last = server.run(shutdown).await;
    print_line(&serde_json::to_string(&last)?);
    Ok(())
}

/// Prints one line on stdout and flushes it; a closed stdout is not worth dying for.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        super::Args::command().debug_assert();
    }
}
