//! Watching a run while it goes: counters the workers bump (one relaxed atomic add per request
//! and outcome) and a display that reads them from a thread of its own, so showing progress
//! costs the request path nothing more.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counters of a run in progress; pass one to [`super::run_with`] and read it from anywhere.
#[derive(Debug, Default)]
pub struct Live {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests sent so far.
    pub sent: u64,
    /// Requests that ended ok so far.
    pub ok: u64,
    /// Requests that ended otherwise so far.
    pub failures: u64,
}

impl Live {
    pub(super) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn ended(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a request may show as sent and not yet ended).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failures: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A bar redrawn in place (indicatif) if stderr is a terminal, else one plain line a
    /// second.
    Auto,
    /// One plain line a second.
    Lines,
}

/// A thread that shows a run's progress until [`ProgressLine::finish`].
#[derive(Debug)]
pub struct ProgressLine {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl ProgressLine {
    /// Starts showing `live`; `duration` is the run's time bound (the bar's length).
    pub fn start(live: Arc<Live>, duration: Duration, display: Display) -> Self {
        let (stop, stopped) = mpsc::channel();
        let bar = (display == Display::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(duration.as_millis().try_into().unwrap_or(u64::MAX)),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar
        });
        let thread = std::thread::Builder::new()
            .name("sluice-load-progress".into())
            .spawn(move || show(&live, bar, &stopped))
            .expect("spawn the progress thread");
        Self { stop, thread }
    }

    /// Stops showing progress (clearing the bar).
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn show(live: &Live, bar: Option<ProgressBar>, stopped: &mpsc::Receiver<()>) {
    let start = Instant::now();
    let tick = if bar.is_some() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    // Recent snapshots, for the rate over the last second.
    let mut recent: VecDeque<(Instant, u64)> = VecDeque::from([(start, 0)]);
    // Until told to stop (or the sender is gone).
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
        let now = Instant::now();
        let s = live.snapshot();
        while recent.len() > 1 && now.duration_since(recent[0].0) > Duration::from_secs(1) {
            recent.pop_front();
        }
        let (then, sent_then) = recent[0];
        let window = now.duration_since(then).as_secs_f64();
        let rate = if window > 0.0 {
            (s.sent - sent_then) as f64 / window
        } else {
            0.0
        };
        recent.push_back((now, s.sent));
        let text = line(s, rate);
        match &bar {
            Some(bar) => {
                bar.set_position(
                    now.duration_since(start)
                        .as_millis()
                        .try_into()
                        .unwrap_or(0),
                );
                bar.set_message(text);
            }
            None => eprintln!(
                "[{:>5.1} s] {text}",
                now.duration_since(start).as_secs_f64()
            ),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn line(s: Snapshot, rate: f64) -> String {
    format!(
        "{} sent ({rate:.0}/s), {} ok, {} failed",
        s.sent, s.ok, s.failures
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_line() {
        let live = Live::default();
        for ok in [true, true, false] {
            live.sent();
            live.ended(ok);
        }
        live.sent();
        let s = live.snapshot();
        assert_eq!(
            s,
            Snapshot {
                sent: 4,
                ok: 2,
                failures: 1
            }
        );
        assert_eq!(line(s, 12.4), "4 sent (12/s), 2 ok, 1 failed");
    }

    #[test]
    fn the_display_stops_when_told() {
        let live = Arc::new(Live::default());
        let progress = ProgressLine::start(live, Duration::from_secs(1), Display::Lines);
        progress.finish();
    }
}
