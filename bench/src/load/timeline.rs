//! The run second by second: what was sent in each second and how it ended.
//!
//! Each worker fills the bucket of the second it is sending in and hands it to the shared
//! [`Sink`] when it moves on to a later second (a worker's requests go out one after the
//! other, so its seconds only grow), and once more when it stops. The sink therefore takes
//! its lock about once per worker per second, never per request, and holds one bucket per
//! second of the run: counts, up to [`TIMELINE_RESPONDERS_CAP`] responder keys and a
//! 2-significant-digit latency histogram (a few KiB at most).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::report::{Outcome, Outcomes, count_responder, histogram, micros, record};

/// Most distinct responder identities one second keeps; further ones are counted under
/// [`super::OTHER_RESPONDERS`].
pub const TIMELINE_RESPONDERS_CAP: usize = 32;

/// One second of a run: the requests *sent* during it, however long they took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Whole seconds since the start of the run: this bucket holds the requests sent in
    /// `[second, second + 1)`.
    pub second: u64,
    /// Requests sent.
    pub sent: u64,
    /// How they ended (flattened into the second in JSON).
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// 99th percentile of the latency of those that ended ok, in microseconds (2 significant
    /// digits); 0 if none did.
    pub p99_us: u64,
    /// Ok replies per responder identity (as in [`super::Report::responders`], at most
    /// [`TIMELINE_RESPONDERS_CAP`] keys plus [`super::OTHER_RESPONDERS`]).
    pub responders: BTreeMap<String, u64>,
}

impl Second {
    /// Requests of this second that did not end ok.
    pub fn failures(&self) -> u64 {
        self.outcomes.failures()
    }
}

/// One second being filled.
#[derive(Debug)]
struct Bucket {
    sent: u64,
    outcomes: Outcomes,
    latencies_us: Histogram<u64>,
    responders: BTreeMap<String, u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            sent: 0,
            outcomes: Outcomes::default(),
            latencies_us: histogram(2),
            responders: BTreeMap::new(),
        }
    }
}

impl Bucket {
    fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.outcomes.merge(&other.outcomes);
        self.latencies_us
            .add(&other.latencies_us)
            .expect("auto-resizing histograms of the same precision always add up");
        for (key, n) in &other.responders {
            count_responder(&mut self.responders, key, *n, TIMELINE_RESPONDERS_CAP);
        }
    }
}

/// The seconds of a run, filled by the workers' [`Recorder`]s.
#[derive(Debug, Default)]
pub(super) struct Sink {
    seconds: Mutex<Vec<Option<Bucket>>>,
}

impl Sink {
    fn add(&self, second: u64, bucket: Bucket) {
        let index = usize::try_from(second).unwrap_or(usize::MAX);
        let mut seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        if seconds.len() <= index {
            seconds.resize_with(index + 1, || None);
        }
        match &mut seconds[index] {
            Some(existing) => existing.merge(&bucket),
            slot @ None => *slot = Some(bucket),
        }
    }

    /// The timeline: every second from 0 to the last one anything was sent in.
    pub(super) fn timeline(&self) -> Vec<Second> {
        let seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        seconds
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                let second = i as u64;
                match bucket {
                    None => Second {
                        second,
                        ..Second::default()
                    },
                    Some(b) => Second {
                        second,
                        sent: b.sent,
                        outcomes: b.outcomes.clone(),
                        p99_us: if b.latencies_us.is_empty() {
                            0
                        } else {
                            b.latencies_us.value_at_quantile(0.99)
                        },
                        responders: b.responders.clone(),
                    },
                }
            })
            .collect()
    }
}

/// One worker's view of the timeline: the bucket of the second it sends in. Hands its bucket
/// to the sink when a later second starts and when dropped.
#[derive(Debug)]
pub(super) struct Recorder {
    sink: Arc<Sink>,
    current: Option<(u64, Bucket)>,
}

impl Recorder {
    pub(super) fn new(sink: Arc<Sink>) -> Self {
        Self {
            sink,
            current: None,
        }
    }

    /// Counts a request sent `since_start` after the start of the run; its outcome goes to
    /// the same second.
    pub(super) fn sent(&mut self, since_start: Duration) {
        let second = since_start.as_secs();
        match &mut self.current {
            Some((current, bucket)) if *current == second => bucket.sent += 1,
            _ => {
                self.flush();
                let bucket = Bucket {
                    sent: 1,
                    ..Bucket::default()
                };
                self.current = Some((second, bucket));
            }
        }
    }

    pub(super) fn ok(&mut self, latency: Duration, responder: &str) {
        if let Some((_, bucket)) = &mut self.current {
            bucket.outcomes.ok += 1;
            record(&mut bucket.latencies_us, micros(latency));
            count_responder(
                &mut bucket.responders,
                responder,
                1,
                TIMELINE_RESPONDERS_CAP,
            );
        }
    }

    pub(super) fn failure(&mut self, outcome: Outcome) {
        if let Some((_, bucket)) = &mut self.current {
            bucket.outcomes.record(outcome);
        }
    }

    fn flush(&mut self) {
        if let Some((second, bucket)) = self.current.take() {
            self.sink.add(second, bucket);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::OTHER_RESPONDERS;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn workers_fill_their_seconds_and_gaps_stay_empty() {
        let sink = Arc::new(Sink::default());
        let mut a = Recorder::new(Arc::clone(&sink));
        let mut b = Recorder::new(Arc::clone(&sink));
        a.sent(ms(100));
        a.ok(ms(3), "v1");
        b.sent(ms(900));
        b.failure(Outcome::Timeout);
        a.sent(ms(2500));
        a.ok(ms(5), "v2");
        b.sent(ms(2999));
        b.ok(ms(7), "v2");
        drop((a, b));
        let timeline = sink.timeline();
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].sent, 2);
        assert_eq!(
            (timeline[0].outcomes.ok, timeline[0].outcomes.timeout),
            (1, 1)
        );
        // Two significant digits: within 1%.
        let near = |value: u64, want: u64| value.abs_diff(want) * 100 <= want;
        assert!(near(timeline[0].p99_us, 3000), "{:?}", timeline[0]);
        assert_eq!(
            timeline[1],
            Second {
                second: 1,
                ..Second::default()
            }
        );
        assert_eq!((timeline[2].sent, timeline[2].outcomes.ok), (2, 2));
        assert_eq!(timeline[2].responders["v2"], 2);
        assert!(near(timeline[2].p99_us, 7000), "{:?}", timeline[2]);
    }

    #[test]
    fn responders_per_second_are_capped() {
        let sink = Arc::new(Sink::default());
        let mut r = Recorder::new(Arc::clone(&sink));
        for i in 0..TIMELINE_RESPONDERS_CAP + 5 {
            r.sent(ms(10));
            r.ok(ms(1), &format!("r{i}"));
        }
        drop(r);
        let second = &sink.timeline()[0];
        assert_eq!(second.responders.len(), TIMELINE_RESPONDERS_CAP + 1);
        assert_eq!(second.responders[OTHER_RESPONDERS], 5);
    }
}
