//! The side-by-side report: per service count and way, the median over rounds of every
//! measurement; the ratios of sluice to the other ways; the targets, each said met or
//! MISSED; a markdown table, JSON and bar charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lab::{Result, error::Context as _};
use serde::Serialize;

use super::Way;
use crate::chart::{self, BarChart, BarSeries};

/// The measurements of one cell, one value per round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Samples {
    pub pps_new_flows: Vec<f64>,
    pub pps_established: Vec<f64>,
    pub rps_keep_alive: Vec<f64>,
    pub rps_new_connection: Vec<f64>,
    /// p50 / p99 latency of each round, µs.
    pub keep_alive_p50_us: Vec<u64>,
    pub keep_alive_p99_us: Vec<u64>,
    pub new_connection_p50_us: Vec<u64>,
    pub new_connection_p99_us: Vec<u64>,
    /// Seconds taken to program the services into the node (0 when untranslated).
    pub program_s: Vec<f64>,
}

/// Medians of a cell.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Medians {
    pub pps_new_flows: f64,
    pub pps_established: f64,
    pub rps_keep_alive: f64,
    pub rps_new_connection: f64,
    pub keep_alive_p50_us: u64,
    pub keep_alive_p99_us: u64,
    pub new_connection_p50_us: u64,
    pub new_connection_p99_us: u64,
    pub program_s: f64,
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median_u(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

impl Samples {
    pub fn medians(&self) -> Medians {
        Medians {
            pps_new_flows: median_f(&self.pps_new_flows).round(),
            pps_established: median_f(&self.pps_established).round(),
            rps_keep_alive: median_f(&self.rps_keep_alive).round(),
            rps_new_connection: median_f(&self.rps_new_connection).round(),
            keep_alive_p50_us: median_u(&self.keep_alive_p50_us),
            keep_alive_p99_us: median_u(&self.keep_alive_p99_us),
            new_connection_p50_us: median_u(&self.new_connection_p50_us),
            new_connection_p99_us: median_u(&self.new_connection_p99_us),
            program_s: (median_f(&self.program_s) * 1000.0).round() / 1000.0,
        }
    }
}

/// One row: a service count and a way.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub services: usize,
    pub way: Way,
    pub median: Medians,
    pub rounds: Samples,
}

/// sluice's medians over another way's, at one service count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    pub services: usize,
    pub against: Way,
    pub pps_new_flows: f64,
    pub pps_established: f64,
    pub rps_keep_alive: f64,
    pub rps_new_connection: f64,
    /// The other way's node cost per packet over sluice's ([`NodeCost`]): how many times
    /// more the node spends on a packet, the generator's and sink's share taken out.
    pub node_cost_new_flows: f64,
    pub node_cost_established: f64,
}

/// What the node itself spends on a packet, in ns: the time per packet of a way less the time
/// per packet of the generator and the sink alone (frames counted on the node's own link,
/// nothing forwarded), both medians of the same run. `NaN` when the difference is not
/// positive (noise larger than the node's share).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeCost {
    pub services: usize,
    pub way: Way,
    pub ns_new_flows: f64,
    pub ns_established: f64,
}

/// ns per packet at `pps` less that of the generator alone at `generator_pps`.
fn node_ns(pps: f64, generator_pps: f64) -> f64 {
    let ns = 1e9 / pps - 1e9 / generator_pps;
    if ns.is_finite() && ns > 0.0 {
        ns.round()
    } else {
        f64::NAN
    }
}

/// A target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub value: f64,
    pub at_least: f64,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub method: Vec<String>,
    /// Frames/s of the generator and the sink alone (no forwarding), each round, and the
    /// median.
    pub generator_only_pps: Vec<f64>,
    pub generator_only_pps_median: f64,
    pub rows: Vec<Row>,
    pub node_costs: Vec<NodeCost>,
    pub ratios: Vec<Ratios>,
    pub targets: Vec<Target>,
}

/// A bar chart: file name, title, value axis, and the plotted median.
type ChartSpec = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Medians) -> f64,
);

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        f64::NAN
    }
}

impl Report {
    /// The report of `rows`, with the generator's own rate of each round.
    pub fn new(method: Vec<String>, rows: Vec<Row>, generator_only_pps: Vec<f64>) -> Self {
        let gen_median = median_f(&generator_only_pps).round();
        let node_costs: Vec<NodeCost> = rows
            .iter()
            .map(|r| NodeCost {
                services: r.services,
                way: r.way,
                ns_new_flows: node_ns(r.median.pps_new_flows, gen_median),
                ns_established: node_ns(r.median.pps_established, gen_median),
            })
            .collect();
        let cost = |n: usize, way: Way| {
            node_costs
                .iter()
                .find(|c| c.services == n && c.way == way)
                .copied()
        };
        let find = |n: usize, way: Way| {
            rows.iter()
                .find(|r| r.services == n && r.way == way)
                .map(|r| r.median)
        };
        let mut sizes: Vec<usize> = rows.iter().map(|r| r.services).collect();
        sizes.dedup();
        let mut ratios = Vec::new();
        for &n in &sizes {
            let Some(s) = find(n, Way::Sluice) else {
                continue;
            };
            for against in [Way::Iptables, Way::Nftables, Way::Untranslated] {
                if let Some(o) = find(n, against) {
                    ratios.push(Ratios {
                        services: n,
                        against,
                        pps_new_flows: ratio(s.pps_new_flows, o.pps_new_flows),
                        pps_established: ratio(s.pps_established, o.pps_established),
                        rps_keep_alive: ratio(s.rps_keep_alive, o.rps_keep_alive),
                        rps_new_connection: ratio(s.rps_new_connection, o.rps_new_connection),
                        node_cost_new_flows: match (cost(n, against), cost(n, Way::Sluice)) {
                            (Some(o), Some(s)) => ratio(o.ns_new_flows, s.ns_new_flows),
                            _ => f64::NAN,
                        },
                        node_cost_established: match (cost(n, against), cost(n, Way::Sluice)) {
                            (Some(o), Some(s)) => ratio(o.ns_established, s.ns_established),
                            _ => f64::NAN,
                        },
                    });
                }
            }
        }
        let mut targets = Vec::new();
        let target = |what: String, value: f64, at_least: f64| Target {
            met: value >= at_least,
            what,
            value,
            at_least,
        };
        if let Some(&largest) = sizes.iter().max() {
            for r in ratios.iter().filter(|r| r.services == largest) {
                let at_least = match r.against {
                    Way::Iptables => 5.0,
                    Way::Nftables => 3.0,
                    _ => continue,
                };
                for (flows, value) in [
                    ("new flows", r.pps_new_flows),
                    ("established flows", r.pps_established),
                ] {
                    targets.push(target(
                        format!(
                            "packets/s at {largest} services, {flows}: sluice / {}",
                            r.against
                        ),
                        value,
                        at_least,
                    ));
                }
            }
        }
        for r in ratios.iter().filter(|r| r.against == Way::Untranslated) {
            targets.push(target(
                format!(
                    "HTTP req/s at {} services, new connections: sluice / untranslated",
                    r.services
                ),
                r.rps_new_connection,
                0.95,
            ));
            targets.push(target(
                format!(
                    "HTTP req/s at {} services, keep-alive: sluice / untranslated",
                    r.services
                ),
                r.rps_keep_alive,
                1.0,
            ));
        }
        Report {
            method,
            generator_only_pps,
            generator_only_pps_median: gen_median,
            rows,
            node_costs,
            ratios,
            targets,
        }
    }

    /// The tables and targets in markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "| services | way | packets/s, new flows | packets/s, established | HTTP req/s \
             keep-alive | p50 / p99 µs | HTTP req/s new connection | p50 / p99 µs | \
             programming s |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let m = &r.median;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} |",
                r.services,
                r.way,
                m.pps_new_flows,
                m.pps_established,
                m.rps_keep_alive,
                m.keep_alive_p50_us,
                m.keep_alive_p99_us,
                m.rps_new_connection,
                m.new_connection_p50_us,
                m.new_connection_p99_us,
                m.program_s
            );
        }
        let _ = write!(
            s,
            "\nThe generator and the sink alone (no forwarding): {} frames/s. What the node \
             spends per packet, that share taken out (ns):\n\n| services | way | new flows | \
             established |\n|---:|---|---:|---:|\n",
            self.generator_only_pps_median
        );
        for c in &self.node_costs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                c.services, c.way, c.ns_new_flows, c.ns_established
            );
        }
        s.push_str(
            "\n| services | sluice / | packets/s, new flows | packets/s, established | \
             req/s keep-alive | req/s new connection | node ns/packet, new flows (× of \
             sluice's) | node ns/packet, established (×) |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.services,
                r.against,
                r.pps_new_flows,
                r.pps_established,
                r.rps_keep_alive,
                r.rps_new_connection,
                r.node_cost_new_flows,
                r.node_cost_established
            );
        }
        s.push('\n');
        for t in &self.targets {
            let _ = writeln!(
                s,
                "- {}: {} (target >= {}): {}",
                t.what,
                t.value,
                t.at_least,
                if t.met { "met" } else { "MISSED" }
            );
        }
        s
    }

    /// Bar charts (one per measurement, grouped by service count) in `dir`; returns the
    /// PNG paths.
    pub fn write_charts(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut sizes: Vec<usize> = self.rows.iter().map(|r| r.services).collect();
        sizes.dedup();
        let ways: Vec<Way> = Way::ALL
            .into_iter()
            .filter(|w| self.rows.iter().any(|r| r.way == *w))
            .collect();
        let charts: [ChartSpec; 4] = [
            (
                "compare-pps-new-flows",
                "Packets/s through the node, a new flow per packet (one core)",
                "packets/s",
                |m| m.pps_new_flows,
            ),
            (
                "compare-pps-established",
                "Packets/s through the node, established flows (one core)",
                "packets/s",
                |m| m.pps_established,
            ),
            (
                "compare-http-keep-alive",
                "HTTP requests/s through the NodePort, keep-alive",
                "requests/s",
                |m| m.rps_keep_alive,
            ),
            (
                "compare-http-new-connection",
                "HTTP requests/s through the NodePort, a new connection per request",
                "requests/s",
                |m| m.rps_new_connection,
            ),
        ];
        let mut written = Vec::new();
        for (name, title, axis, value) in charts {
            let series = ways
                .iter()
                .enumerate()
                .map(|(i, &way)| BarSeries {
                    name: way.to_string(),
                    color: chart::colors::CYCLE[i % chart::colors::CYCLE.len()],
                    values: sizes
                        .iter()
                        .map(|&n| {
                            self.rows
                                .iter()
                                .find(|r| r.services == n && r.way == way)
                                .map_or(f64::NAN, |r| value(&r.median))
                        })
                        .collect(),
                })
                .collect();
            let bars = BarChart {
                title: title.into(),
                y_axis: axis.into(),
                groups: sizes
                    .iter()
                    .map(|&n| format!("{n} service{}", if n == 1 { "" } else { "s" }))
                    .collect(),
                series,
            };
            let png = dir.join(format!("{name}.png"));
            chart::write_bars(&bars, &png, chart::DEFAULT_SIZE)
                .with_context(|| format!("drawing {}", png.display()))?;
            written.push(png);
        }
        Ok(written)
    }
}
