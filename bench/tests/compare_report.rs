//! The side-by-side report of `compare-bench` from known samples: medians over rounds,
//! sluice's ratios to each other way, every target said met or MISSED, the markdown table,
//! and one bar chart per measurement with exactly the plotted medians beside it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bench::chart::{self, BarChart};
use bench::compare::Way;
use bench::compare::report::{Report, Row, Samples};

fn samples(pps_new: [f64; 3], pps_est: [f64; 3], ka: [f64; 3], nc: [f64; 3]) -> Samples {
    Samples {
        pps_new_flows: pps_new.to_vec(),
        pps_established: pps_est.to_vec(),
        rps_keep_alive: ka.to_vec(),
        rps_new_connection: nc.to_vec(),
        keep_alive_p50_us: vec![300, 100, 200],
        keep_alive_p99_us: vec![3000, 1000, 2000],
        new_connection_p50_us: vec![30, 10, 20],
        new_connection_p99_us: vec![90, 70, 80],
        program_s: vec![0.3, 0.1, 0.2],
    }
}

fn row(services: usize, way: Way, rounds: Samples) -> Row {
    Row {
        services,
        way,
        median: rounds.medians(),
        rounds,
    }
}

/// At 10 000 services: sluice 1 M pps (new flows) against iptables 100 k (10x, target 5x met)
/// and nftables 400 k (2.5x, target 3x MISSED); HTTP beside untranslated 0.9 (new
/// connections, MISSED) and 1.0 (keep-alive, met).
fn report() -> Report {
    let rows = vec![
        row(
            10_000,
            Way::Sluice,
            samples(
                [2e6, 1e6, 0.5e6],
                [3e6, 2e6, 1e6],
                [100.0, 300.0, 200.0],
                [90.0, 80.0, 95.0],
            ),
        ),
        row(
            10_000,
            Way::Iptables,
            samples(
                [1e5, 2e5, 0.5e5],
                [1e6, 1e6, 1e6],
                [1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0],
            ),
        ),
        row(
            10_000,
            Way::Nftables,
            samples(
                [4e5, 4e5, 4e5],
                [4e5, 4e5, 4e5],
                [1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0],
            ),
        ),
        row(
            10_000,
            Way::Untranslated,
            samples(
                [5e5, 5e5, 5e5],
                [5e5, 5e5, 5e5],
                [200.0, 200.0, 200.0],
                [100.0, 100.0, 100.0],
            ),
        ),
    ];
    Report::new(vec!["test".into()], rows, vec![2e6, 3e6, 1e6])
}

#[test]
fn medians_ratios_and_targets() {
    let r = report();
    let sluice = &r.rows[0].median;
    assert_eq!(
        (
            sluice.pps_new_flows,
            sluice.rps_keep_alive,
            sluice.keep_alive_p99_us,
            sluice.program_s
        ),
        (1e6, 200.0, 2000, 0.2)
    );
    let against = |way: Way| {
        r.ratios
            .iter()
            .find(|x| x.services == 10_000 && x.against == way)
            .copied()
            .unwrap_or_else(|| panic!("no ratio to {way}: {:?}", r.ratios))
    };
    assert_eq!(against(Way::Iptables).pps_new_flows, 10.0);
    assert_eq!(against(Way::Iptables).pps_established, 2.0);
    assert_eq!(against(Way::Nftables).pps_new_flows, 2.5);
    assert_eq!(against(Way::Untranslated).rps_new_connection, 0.9);
    assert_eq!(against(Way::Untranslated).rps_keep_alive, 1.0);
    // The generator alone: 500 ns a frame. sluice 1000 - 500, iptables 10 000 - 500,
    // nftables 2 500 - 500 ns of node time a packet.
    assert_eq!(r.generator_only_pps_median, 2e6);
    assert_eq!(r.node_costs[0].ns_new_flows, 500.0);
    assert_eq!(against(Way::Iptables).node_cost_new_flows, 19.0);
    assert_eq!(against(Way::Nftables).node_cost_new_flows, 4.0);
    // Untranslated established: 2000 - 500; sluice established: 500 - 500 = 0, not positive.
    assert!(r.node_costs[0].ns_established.is_nan());
    assert!(against(Way::Untranslated).node_cost_established.is_nan());

    let verdicts: Vec<(String, f64, bool)> = r
        .targets
        .iter()
        .map(|t| (t.what.clone(), t.at_least, t.met))
        .collect();
    let expected = [
        (
            "packets/s at 10000 services, new flows: sluice / iptables",
            5.0,
            true,
        ),
        (
            "packets/s at 10000 services, established flows: sluice / iptables",
            5.0,
            false,
        ),
        (
            "packets/s at 10000 services, new flows: sluice / nftables",
            3.0,
            false,
        ),
        (
            "packets/s at 10000 services, established flows: sluice / nftables",
            3.0,
            true,
        ),
        (
            "HTTP req/s at 10000 services, new connections: sluice / untranslated",
            0.95,
            false,
        ),
        (
            "HTTP req/s at 10000 services, keep-alive: sluice / untranslated",
            1.0,
            true,
        ),
    ];
    let expected: Vec<(String, f64, bool)> = expected
        .iter()
        .map(|&(w, a, m)| (w.to_owned(), a, m))
        .collect();
    assert_eq!(verdicts, expected);

    let md = r.markdown();
    assert!(
        md.contains(
            "| 10000 | sluice | 1000000 | 2000000 | 200 | 200 / 2000 | 90 | 20 / 80 | 0.2 |"
        ),
        "{md}"
    );
    assert!(md.contains("| 10000 | iptables | 10 | 2 |"), "{md}");
    assert!(
        md.contains(
            "- packets/s at 10000 services, new flows: sluice / nftables: 2.5 (target >= 3): \
             MISSED"
        ),
        "{md}"
    );
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare-report");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn one_bar_chart_per_measurement_with_its_data() {
    let dir = out_dir();
    let pngs = report().write_charts(&dir).expect("charts");
    let names: Vec<String> = pngs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "compare-pps-new-flows.png",
            "compare-pps-established.png",
            "compare-http-keep-alive.png",
            "compare-http-new-connection.png"
        ]
    );
    for png in &pngs {
        let bytes = std::fs::read(png).unwrap();
        let reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        assert_eq!(
            (reader.info().width, reader.info().height),
            chart::DEFAULT_SIZE
        );
    }
    let data: BarChart =
        serde_json::from_str(&std::fs::read_to_string(chart::data_path(&pngs[0])).unwrap())
            .unwrap();
    assert_eq!(data.groups, ["10000 services"]);
    let bars: Vec<(&str, &[f64])> = data
        .series
        .iter()
        .map(|s| (s.name.as_str(), &s.values[..]))
        .collect();
    assert_eq!(
        bars,
        [
            ("sluice", &[1e6][..]),
            ("iptables", &[1e5][..]),
            ("nftables", &[4e5][..]),
            ("untranslated", &[5e5][..])
        ]
    );
}
