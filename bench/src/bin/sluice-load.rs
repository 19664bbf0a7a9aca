//! `sluice-load`: command line of [`bench::load`]. Shows progress on stderr while it runs,
//! then prints the report as a one-paragraph summary or, with `--json`, as one JSON line (with
//! its per-second timeline); `--chart` draws the timeline as a PNG. Exits 0 whatever the
//! results (the caller judges them); 1 if the chart cannot be made; 2 on invalid arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bench::chart;
use bench::load::{self, Config, ConnectionMode, Display, Live, LoadError, ProgressLine, Protocol};
use clap::{CommandFactory as _, Parser, ValueEnum};

/// Send HTTP, TCP or UDP requests to one address and report how each ended.
///
/// Closed loop by default: each of the CONCURRENCY workers sends its next request when the
/// previous one ended. With --rate, open loop: request i is scheduled at i/RATE seconds after
/// the start and its latency counts from then, so waiting for a busy server (or for one of the
/// CONCURRENCY workers to be free) is part of it. Latencies are HdrHistogram percentiles.
#[derive(Debug, Parser)]
#[command(name = "sluice-load", version)]
struct Args {
    /// Address to send to, IP:PORT (IPv6 as [ADDR]:PORT).
    target: SocketAddr,
    /// Request kind.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Http)]
    protocol: ProtocolArg,
    /// Connection reuse.
    #[arg(long, value_enum, default_value_t = ModeArg::KeepAlive)]
    mode: ModeArg,
    /// Requests in flight at once (and pooled connections with keep-alive).
    #[arg(short, long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many requests.
    #[arg(short = 'n', long, default_value_t = 1000)]
    requests: u64,
    /// Stop after this long (e.g. 500ms, 10s, 2m; a bare number is seconds).
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop at this many requests per second, latency from each request's scheduled
    /// time (default: closed loop, as fast as the workers go).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Per-request timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Source address to send from (repeatable or comma-separated; used round-robin).
    #[arg(long = "source", value_name = "IP", value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// HTTP: request path.
    #[arg(long)]
    path: Option<String>,
    /// HTTP: Host header (default: the target address).
    #[arg(long)]
    host: Option<String>,
    /// Count a reply as ok only if it contains this text (HTTP: in the body).
    #[arg(long)]
    expect: Option<String>,
    /// TCP/UDP: request payload [default: ping].
    #[arg(long)]
    payload: Option<String>,
    /// TCP: the reply is complete after this many bytes (default: read until EOF, one
    /// connection per request).
    #[arg(long, value_name = "BYTES")]
    reply_bytes: Option<usize>,
    /// TCP/UDP: requests may be sent twice (retry once on a dead reused connection). HTTP GET
    /// always may.
    #[arg(long)]
    idempotent: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress on stderr (by default: a bar on a terminal, else a line a second).
    #[arg(short, long)]
    quiet: bool,
    /// Draw sent/s, failures/s and the p99 of each second as a PNG at this path, with the
    /// plotted data beside it (same path, .json). Needs the font of the Debian package
    /// fonts-dejavu-core (or SLUICE_CHART_FONT).
    #[arg(long, value_name = "PNG")]
    chart: Option<PathBuf>,
    /// Mark these moments on the chart: a JSON list of {"t": SECONDS, "label": TEXT}, SECONDS
    /// since the start of the run, e.g. [{"t": 5, "label": "scale to 4"}].
    #[arg(long, value_name = "JSON", requires = "chart")]
    events: Option<PathBuf>,
    /// Chart title.
    #[arg(long, requires = "chart", default_value = "sluice-load")]
    title: String,
    /// Chart size in pixels, WIDTHxHEIGHT.
    #[arg(long, requires = "chart", default_value = "1280x720", value_parser = parse_size)]
    size: (u32, u32),
}

/// What to do besides the run itself.
#[derive(Debug)]
struct Output {
    json: bool,
    quiet: bool,
    chart: Option<ChartArgs>,
}

#[derive(Debug)]
struct ChartArgs {
    png: PathBuf,
    events: Vec<chart::Event>,
    title: String,
    size: (u32, u32),
}

/// Parses `WIDTHxHEIGHT`.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a size such as 1280x720");
    let (w, h) = text.split_once('x').ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Http,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Reuse each worker's connection.
    KeepAlive,
    /// A new connection (UDP: socket) for every request.
    NewConnection,
}

/// Parses `250ms`, `2s`, `1.5s`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

fn config(args: Args) -> Result<(Config, Output), String> {
    let only = |given: bool, flag: &str, protocols: &str| {
        if given {
            Err(format!("{flag} applies to {protocols} only"))
        } else {
            Ok(())
        }
    };
    let payload = || {
        args.payload
            .clone()
            .unwrap_or_else(|| "ping".to_owned())
            .into_bytes()
    };
    let protocol = match args.protocol {
        ProtocolArg::Http => {
            only(args.payload.is_some(), "--payload", "tcp and udp")?;
            only(args.reply_bytes.is_some(), "--reply-bytes", "tcp")?;
            only(args.idempotent, "--idempotent", "tcp and udp")?;
            Protocol::Http {
                path: args.path.clone().unwrap_or_else(|| "/".to_owned()),
                host: args.host.clone(),
            }
        }
        ProtocolArg::Tcp => {
            only(args.path.is_some(), "--path", "http")?;
            only(args.host.is_some(), "--host", "http")?;
            Protocol::Tcp {
                payload: payload(),
                reply_bytes: args.reply_bytes,
                idempotent: args.idempotent,
            }
        }
        ProtocolArg::Udp => {
            only(args.path.is_some(), "--path", "http")?;
            only(args.host.is_some(), "--host", "http")?;
            only(args.reply_bytes.is_some(), "--reply-bytes", "tcp")?;
            Protocol::Udp {
                payload: payload(),
                idempotent: args.idempotent,
            }
        }
    };
    let mut cfg = Config::new(args.target, protocol);
    cfg.mode = match args.mode {
        ModeArg::KeepAlive => ConnectionMode::KeepAlive,
        ModeArg::NewConnection => ConnectionMode::NewConnectionPerRequest,
    };
    cfg.concurrency = args.concurrency;
    cfg.max_requests = args.requests;
    cfg.max_duration = args.duration;
    cfg.rate = args.rate;
    cfg.timeout = args.timeout;
    cfg.source_ips = args.sources;
    cfg.expect = args.expect;
    cfg.validate().map_err(|e| e.to_string())?;
    let chart = match args.chart {
        Some(png) => Some(ChartArgs {
            png,
            events: match &args.events {
                Some(path) => chart::read_events(path).map_err(|e| e.to_string())?,
                None => Vec::new(),
            },
            title: args.title,
            size: args.size,
        }),
        None => None,
    };
    let output = Output {
        json: args.json,
        quiet: args.quiet,
        chart,
    };
    Ok((cfg, output))
}

fn main() -> ExitCode {
    let (cfg, output) = match config(Args::parse()) {
        Ok(parsed) => parsed,
        Err(message) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit(),
    };
    let live = Arc::new(Live::default());
    let progress = (!output.quiet)
        .then(|| ProgressLine::start(Arc::clone(&live), cfg.max_duration, Display::Auto));
    let result = load::run_blocking_with(cfg, live);
    if let Some(progress) = progress {
        progress.finish();
    }
    let report = match result {
        Ok(report) => report,
        Err(e @ LoadError::Runtime(_)) => {
            eprintln!("sluice-load: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    if output.json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("sluice-load: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{report}");
    }
    if let Some(c) = output.chart {
        let drawn = chart::load_chart(c.title, &report.timeline, c.events);
        match chart::write(&drawn, &c.png, c.size) {
            Ok(data) if !output.quiet => {
                eprintln!("chart: {} (data: {})", c.png.display(), data.display());
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("sluice-load: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn arguments_build_the_config() {
        let args = Args::parse_from([
            "sluice-load",
            "127.0.0.1:9",
            "--protocol",
            "tcp",
            "--mode",
            "new-connection",
            "-c",
            "4",
            "-n",
            "10",
            "-d",
            "500ms",
            "--payload",
            "hi",
            "--reply-bytes",
            "5",
            "--idempotent",
            "--source",
            "127.0.0.1",
            "--json",
        ]);
        let (cfg, output) = config(args).unwrap();
        assert!(output.json && !output.quiet && output.chart.is_none());
        assert_eq!(cfg.mode, ConnectionMode::NewConnectionPerRequest);
        assert_eq!((cfg.concurrency, cfg.max_requests), (4, 10));
        assert_eq!(cfg.max_duration, Duration::from_millis(500));
        assert_eq!(
            cfg.protocol,
            Protocol::Tcp {
                payload: b"hi".to_vec(),
                reply_bytes: Some(5),
                idempotent: true
            }
        );
    }

    #[test]
    fn chart_arguments_read_the_events_file() {
        let dir = std::env::temp_dir().join(format!("sluice-load-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("events.json");
        let (png, events_arg) = (dir.join("c.png"), events.to_str().unwrap().to_owned());
        let with_chart = |extra: &[&str]| {
            let mut argv = vec!["sluice-load", "127.0.0.1:9", "--chart"];
            argv.extend([png.to_str().unwrap(), "--events", &events_arg]);
            argv.extend(extra);
            Args::parse_from(argv)
        };
        std::fs::write(&events, r#"[{"t": 1.5, "label": "scale"}]"#).unwrap();
        let (_, output) = config(with_chart(&["--size", "800x600", "-q"])).unwrap();
        let c = output.chart.unwrap();
        assert!(output.quiet);
        assert_eq!(
            (c.size, c.events.len(), c.events[0].t),
            ((800, 600), 1, 1.5)
        );

        std::fs::write(&events, "not json").unwrap();
        let args = with_chart(&[]);
        assert!(config(args).unwrap_err().contains("JSON list"));
        assert!(
            Args::try_parse_from(["sluice-load", "127.0.0.1:9", "--events", "e.json"]).is_err()
        );
        assert!(parse_size("800").is_err() && parse_size("8x6") == Ok((8, 6)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_of_another_protocol_are_rejected() {
        let args = Args::parse_from(["sluice-load", "127.0.0.1:9", "--payload", "x"]);
        assert!(config(args).is_err());
        let args = Args::parse_from([
            "sluice-load",
            "127.0.0.1:9",
            "--protocol",
            "udp",
            "--path",
            "/",
        ]);
        assert!(config(args).is_err());
        let args = Args::parse_from(["sluice-load", "127.0.0.1:9", "-c", "0"]);
        assert!(config(args).is_err());
    }
}
