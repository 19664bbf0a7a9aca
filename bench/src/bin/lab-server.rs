//! `lab-server`: the backend that lab pods run. See [`bench::server`] for what it answers.
//!
//! It prints `ready` on stdout once every listener is bound, followed by the bound addresses
//! as JSON (`ready {"http": ["127.0.0.1:41234"], "tcp": [...], "udp": [...]}`: port 0 binds
//! a port of the kernel's choice), a JSON line with its counters on SIGUSR1, and a final JSON
//! line at exit. SIGTERM (or SIGINT) starts the drain; it exits 0
//! when the drain is over.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bench::server::{Server, ServerConfig, ServerCounters};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Lab backend: answers HTTP, raw TCP and UDP with its name and counts what it served.
#[derive(Debug, Parser)]
#[command(name = "lab-server", version)]
struct Args {
    /// Name to answer with: HTTP body `NAME\n`, TCP and UDP replies prefixed with `NAME:`.
    #[arg(long)]
    name: String,
    /// Serve HTTP/1.1 on this port (repeatable).
    #[arg(long = "http", value_name = "PORT")]
    http: Vec<u16>,
    /// Serve raw TCP on this port (repeatable).
    #[arg(long = "tcp", value_name = "PORT")]
    tcp: Vec<u16>,
    /// Serve UDP on this port (repeatable).
    #[arg(long = "udp", value_name = "PORT")]
    udp: Vec<u16>,
    /// Address to listen on (repeatable).
    #[arg(long = "bind", value_name = "ADDR", default_values_t = [IpAddr::V4(Ipv4Addr::UNSPECIFIED)])]
    bind: Vec<IpAddr>,
    /// Longest wait, in seconds, for open connections after SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_secs)]
    drain_timeout: f64,
}

fn parse_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs)
        .map(|_| secs)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.http.is_empty() && args.tcp.is_empty() && args.udp.is_empty() {
        use clap::CommandFactory as _;
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give at least one --http, --tcp or --udp port",
            )
            .exit();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = ServerConfig {
        name: args.name,
        bind: args.bind,
        http_ports: args.http,
        tcp_ports: args.tcp,
        udp_ports: args.udp,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(cfg)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    // Handlers first: a signal sent right after `ready` must not kill the process.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;

    let server = Server::bind(&cfg).await?;
    let (http, tcp, udp) = (
        server.http_addrs()?,
        server.tcp_addrs()?,
        server.udp_addrs()?,
    );
    tracing::info!(name = %cfg.name, ?http, ?tcp, ?udp, "listening");
    let counters = server.counters();
    let bound = serde_json::json!({ "http": http, "tcp": tcp, "udp": udp });
    print_line(&format!("ready {bound}"));

    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("draining");
    };
    let run = server.run(shutdown);
    tokio::pin!(run);
    let last = loop {
        tokio::select! {
            last = &mut run => break last,
            _ = usr1.recv() => print_counters(&counters.snapshot()),
        }
    };
    print_counters(&last);
    Ok(())
}

fn print_counters(counters: &ServerCounters) {
    match serde_json::to_string(counters) {
        Ok(line) => print_line(&line),
        Err(e) => tracing::error!(error = %e, "cannot encode the counters"),
    }
}

/// Prints one line on stdout and flushes it; a closed stdout is not an error worth dying for.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
