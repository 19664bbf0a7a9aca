//! Charts: from a recorded load report (`fixtures/load-report.json`, a 4 s open-loop run whose
//! server stopped after 2 s) to a PNG of the requested size and a data file holding exactly
//! the plotted series; and `sluice-load --chart` end to end against an in-process lab-server.

use std::io::Cursor;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bench::chart::{self, Axis, Chart, Event};
use bench::load::Report;
use bench::server::{Server, ServerConfig};

const RECORDED: &str = include_str!("fixtures/load-report.json");

/// A fresh directory for one test's files.
fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("chart")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Width and height of a PNG file, decoded.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    (info.width, info.height)
}

fn read_data(png: &Path) -> Chart {
    let text = std::fs::read_to_string(chart::data_path(png)).expect("the data file");
    serde_json::from_str(&text).expect("the data file is a chart")
}

fn series<'c>(chart: &'c Chart, name: &str) -> &'c [f64] {
    chart
        .values(name)
        .unwrap_or_else(|| panic!("no series {name}: {chart:?}"))
}

#[test]
fn a_recorded_timeline_is_drawn_with_its_data_beside_it() {
    let report: Report = serde_json::from_str(RECORDED).unwrap();
    let events = vec![
        Event {
            t: 0.0,
            label: "start".into(),
        },
        Event {
            t: 2.2,
            label: "server stopped".into(),
        },
    ];
    let drawn = chart::load_chart("recorded", &report.timeline, events.clone());

    // The series are the timeline's, second by second.
    let t = &report.timeline;
    let column = |f: &dyn Fn(&bench::load::Second) -> f64| t.iter().map(f).collect::<Vec<_>>();
    assert_eq!(series(&drawn, "sent/s"), column(&|s| s.sent as f64));
    assert_eq!(
        series(&drawn, "failures/s"),
        column(&|s| s.failures() as f64)
    );
    assert_eq!(
        series(&drawn, "p99 (ms)"),
        column(&|s| s.p99_us as f64 / 1000.0)
    );
    assert_eq!(series(&drawn, "sent/s"), [100.0; 4], "the recorded run");
    assert_eq!(series(&drawn, "failures/s"), [0.0, 19.0, 100.0, 100.0]);
    assert!(drawn.series.iter().any(|s| s.axis == Axis::Right));

    let dir = out_dir("recorded");
    let png = dir.join("load.png");
    let data = chart::write(&drawn, &png, (900, 500)).expect("the chart is drawn");
    assert_eq!(data, dir.join("load.json"));
    assert_eq!(png_size(&png), (900, 500));
    let back = read_data(&png);
    assert_eq!(back, drawn, "the data file holds exactly what was plotted");
    assert_eq!(back.events, events);
}

#[test]
fn events_files_are_json_lists() {
    let dir = out_dir("events");
    let path = dir.join("events.json");
    std::fs::write(
        &path,
        r#"[{"t": 3, "label": "scale to 4"}, {"t": 7.5, "label": "v2"}]"#,
    )
    .unwrap();
    let events = chart::read_events(&path).unwrap();
    assert_eq!(
        events,
        [
            Event {
                t: 3.0,
                label: "scale to 4".into()
            },
            Event {
                t: 7.5,
                label: "v2".into()
            }
        ]
    );
    std::fs::write(&path, r#"{"t": 3}"#).unwrap();
    let e = chart::read_events(&path).unwrap_err();
    assert!(e.to_string().contains("JSON list"), "{e}");
    assert!(chart::read_events(&dir.join("missing.json")).is_err());
}

/// Runs `sluice-load` against an in-process lab-server on 127.0.0.1 (port 0, kept bound).
fn sluice_load(args: &[&str], env: &[(&str, &str)]) -> Output {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, stop, task) = runtime.block_on(async {
        let mut cfg = ServerConfig::new("v1");
        cfg.bind = vec![Ipv4Addr::LOCALHOST.into()];
        cfg.http_ports = vec![0];
        let server = Server::bind(&cfg).await.expect("bind lab-server");
        let addr: SocketAddr = server.http_addrs().unwrap()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    });
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .arg(addr.to_string())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    drop(stop);
    runtime.block_on(task).unwrap();
    output
}

#[test]
fn sluice_load_draws_its_run_with_the_events_marked() {
    let dir = out_dir("cli");
    let events = dir.join("events.json");
    std::fs::write(&events, r#"[{"t": 0.5, "label": "halfway"}]"#).unwrap();
    let png = dir.join("run.png");
    let output = sluice_load(
        &[
            "-n",
            "40",
            "-c",
            "2",
            "--json",
            "--quiet",
            "--chart",
            png.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--size",
            "640x400",
            "--title",
            "forty",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(output.stderr.is_empty(), "--quiet: {output:?}");
    let report: Report = serde_json::from_slice(&output.stdout).expect("one JSON report");
    assert_eq!(report.outcomes.ok, 40, "{report}");
    assert_eq!(png_size(&png), (640, 400));
    let drawn = read_data(&png);
    assert_eq!(drawn.title, "forty");
    assert_eq!(
        drawn.events,
        [Event {
            t: 0.5,
            label: "halfway".into()
        }]
    );
    assert_eq!(
        drawn,
        chart::load_chart("forty", &report.timeline, drawn.events.clone())
    );
    assert_eq!(series(&drawn, "sent/s").iter().sum::<f64>(), 40.0);
}

#[test]
fn a_missing_font_names_the_package_to_install() {
    let dir = out_dir("font");
    let png = dir.join("run.png");
    let output = sluice_load(
        &["-n", "5", "-q", "--chart", png.to_str().unwrap()],
        &[("SLUICE_CHART_FONT", "/nonexistent/font.ttf")],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/font.ttf") && stderr.contains(chart::FONT_PACKAGE),
        "{stderr}"
    );
    assert!(!png.exists());
}
