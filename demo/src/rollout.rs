//! The walkthrough's traffic over time, drawn as `rollout.png`: ok requests per second by
//! the version that answered, and failures per second, across every load the story ran (the
//! samples of the scale steps, the background loads of the rollout to v2, of v10 and of the
//! undo), with the start of each step marked.
//!
//! The story records every load run with the moment it started ([`Recording::load`]) and
//! the start of every step ([`Recording::step`]); [`chart()`] lays the runs' per-second
//! timelines on the story's clock. Single probes (the transcript's `curl`s) are not load runs
//! and are not drawn.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bench::chart::{self, Axis, Chart, Event, Series, colors};
use bench::load::{Report as LoadReport, Second};

use crate::bootcamp::parse_greeting;

/// The picture's size, in pixels.
pub const SIZE: (u32, u32) = (1600, 800);

/// One load run, on the story's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Seconds from the start of the story to the start of the run.
    pub offset: f64,
    pub timeline: Vec<Second>,
    /// Refusals were the point of this run (no Service): drawn apart from the failures.
    pub refusals_expected: bool,
}

/// What the story recorded for the chart.
#[derive(Debug)]
pub struct Recording {
    origin: Instant,
    events: Vec<Event>,
    runs: Vec<Run>,
}

impl Default for Recording {
    fn default() -> Self {
        Self::new()
    }
}

impl Recording {
    /// A recording whose clock starts now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            events: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn since_origin(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Marks the start of step `name` now.
    pub fn step(&mut self, name: &str) {
        let t = self.since_origin(Instant::now());
        self.events.push(Event {
            t,
            label: name.to_owned(),
        });
    }

    /// Adds a load run that started at `started`.
    pub fn load(&mut self, started: Instant, report: &LoadReport, refusals_expected: bool) {
        let offset = self.since_origin(started);
        self.runs.push(Run {
            offset,
            timeline: report.timeline.clone(),
            refusals_expected,
        });
    }

    /// Draws `rollout.png` (and its data file) at `png`; returns the data file's path.
    pub fn write(&self, png: &Path) -> Result<PathBuf, chart::ChartError> {
        chart::write(&chart(&self.runs, &self.events), png, SIZE)
    }
}

/// What one second of the story holds, summed over the runs.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok_by_version: BTreeMap<Option<u32>, u64>,
    failures: u64,
    expected_refusals: u64,
}

/// The chart of the story: one ok/s series per version that answered (in version order,
/// `other` for answers that name none), failures/s (unexpected ones), and expected
/// refusals/s if there were any; `events` marked. A run's second `i` covers
/// `[offset + i, offset + i + 1)` of the story and is counted in the story's second holding
/// its middle.
pub fn chart(runs: &[Run], events: &[Event]) -> Chart {
    let mut seconds: Vec<Tally> = Vec::new();
    for run in runs {
        for s in &run.timeline {
            let at = (run.offset + s.second as f64 + 0.5).floor().max(0.0) as usize;
            if seconds.len() <= at {
                seconds.resize(at + 1, Tally::default());
            }
            let tally = &mut seconds[at];
            for (body, n) in &s.responders {
                let version = parse_greeting(body).map(|(_, v)| v);
                *tally.ok_by_version.entry(version).or_default() += n;
            }
            let refused = if run.refusals_expected {
                s.outcomes.refused
            } else {
                0
            };
            tally.expected_refusals += refused;
            tally.failures += s.failures() - refused;
        }
    }
    let mut versions: Vec<Option<u32>> = seconds
        .iter()
        .flat_map(|t| t.ok_by_version.keys().copied())
        .collect();
    versions.sort_unstable_by_key(|v| (v.is_none(), *v));
    versions.dedup();

    let column = |f: &dyn Fn(&Tally) -> u64| seconds.iter().map(|t| f(t) as f64).collect();
    let mut series: Vec<Series> = versions
        .iter()
        .zip(colors::CYCLE.iter().cycle())
        .map(|(&version, &color)| Series {
            name: version.map_or_else(|| "other ok/s".to_owned(), |v| format!("v{v} ok/s")),
            axis: Axis::Left,
            color,
            values: column(&|t| t.ok_by_version.get(&version).copied().unwrap_or(0)),
        })
        .collect();
    series.push(Series {
        name: "failures/s".into(),
        axis: Axis::Left,
        color: colors::RED,
        values: column(&|t| t.failures),
    });
    if seconds.iter().any(|t| t.expected_refusals > 0) {
        series.push(Series {
            name: "expected refusals/s (no Service)".into(),
            axis: Axis::Left,
            color: colors::GREY,
            values: column(&|t| t.expected_refusals),
        });
    }
    Chart {
        title: "sluice demo: requests answered per second by version, and failures, step by step"
            .into(),
        left_axis: "requests/s".into(),
        right_axis: String::new(),
        series,
        events: events.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootcamp::greeting;

    fn second(second: u64, answers: &[(&str, u32, u64)], refused: u64, reset: u64) -> Second {
        let mut s = Second {
            second,
            ..Second::default()
        };
        for &(pod, version, n) in answers {
            s.responders
                .insert(greeting(pod, version).trim().to_owned(), n);
            s.outcomes.ok += n;
        }
        s.outcomes.refused = refused;
        s.outcomes.reset = reset;
        s.sent = s.outcomes.total();
        s
    }

    fn values<'c>(chart: &'c Chart, name: &str) -> &'c [f64] {
        chart
            .values(name)
            .unwrap_or_else(|| panic!("no {name}: {chart:?}"))
    }

    fn run(offset: f64, timeline: Vec<Second>, refusals_expected: bool) -> Run {
        Run {
            offset,
            timeline,
            refusals_expected,
        }
    }

    #[test]
    fn runs_are_laid_on_the_story_clock_by_version() {
        let runs = [
            // Seconds 0.2 to 2.2 of the story: v1 from two pods, then a reset.
            run(
                0.2,
                vec![
                    second(0, &[("a", 1, 5), ("b", 1, 5)], 0, 0),
                    second(1, &[("a", 1, 3)], 0, 1),
                ],
                false,
            ),
            // Second 3.7: refusals, expected.
            run(3.7, vec![second(0, &[], 4, 0)], true),
            // Second 4.9 onwards (counted in 5 and 6): v1 then v2, an unexpected refusal.
            run(
                4.9,
                vec![
                    second(0, &[("a", 1, 2), ("c", 2, 8)], 1, 0),
                    second(1, &[("c", 2, 9)], 0, 0),
                ],
                false,
            ),
        ];
        let events = [Event {
            t: 4.9,
            label: "rolling-update-v2".into(),
        }];
        let c = chart(&runs, &events);
        let names: Vec<&str> = c.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "v1 ok/s",
                "v2 ok/s",
                "failures/s",
                "expected refusals/s (no Service)"
            ]
        );
        assert_eq!(values(&c, "v1 ok/s"), [10.0, 3.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        assert_eq!(values(&c, "v2 ok/s"), [0.0, 0.0, 0.0, 0.0, 0.0, 8.0, 9.0]);
        assert_eq!(
            values(&c, "failures/s"),
            [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(
            values(&c, "expected refusals/s (no Service)"),
            [0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0]
        );
        assert_eq!(c.events, events);
    }

    #[test]
    fn answers_that_name_no_version_are_other() {
        let mut s = second(0, &[], 0, 0);
        s.responders.insert("<other>".into(), 3);
        s.outcomes.ok = 3;
        let c = chart(&[run(0.0, vec![s], false)], &[]);
        assert_eq!(values(&c, "other ok/s"), [3.0]);
        assert_eq!(c.series.len(), 2, "no refusals series without refusals");
    }

    #[test]
    fn the_recording_marks_steps_and_draws() {
        let mut r = Recording::new();
        r.step("create-deployment");
        let mut report: LoadReport = serde_json::from_value(serde_json::json!({
            "sent": 1, "ok": 1, "refused": 0, "reset": 0, "timeout": 0, "bad_response": 0,
            "other": {}, "retried": 0, "duration": 1.0, "rate": 1.0,
            "latency_us": {"p50": 1, "p90": 1, "p99": 1, "max": 1}, "responders": {}
        }))
        .unwrap();
        report.timeline = vec![second(0, &[("a", 1, 1)], 0, 0)];
        r.load(Instant::now(), &report, false);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.runs.len(), 1);
        let dir = std::env::temp_dir().join(format!("demo-rollout-{}", std::process::id()));
        let png = dir.join("rollout.png");
        let data = r.write(&png).expect("drawn");
        assert!(png.exists() && data.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
