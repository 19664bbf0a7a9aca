//! Outcomes of requests and the report of a run.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::timeline::Second;

/// Most distinct responder identities a report keeps; further ones are counted under
/// [`OTHER_RESPONDERS`].
pub const RESPONDERS_CAP: usize = 256;

/// Key under which replies from responders beyond [`RESPONDERS_CAP`] are counted.
pub const OTHER_RESPONDERS: &str = "<other>";

/// Longest responder identity kept, in bytes; longer replies are cut (at a character
/// boundary) before counting.
const RESPONDER_KEY_MAX: usize = 256;

/// How one request ended. Every request started ends as exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete, acceptable reply arrived within the timeout: for HTTP a 2xx response with
    /// its whole body; for TCP the expected number of bytes, or a non-empty reply up to EOF;
    /// for UDP one datagram. If an expected substring is configured, the reply contains it.
    Ok,
    /// The connection was refused (`ECONNREFUSED`): a TCP RST answered the SYN, or for UDP an
    /// ICMP port (or protocol) unreachable came back. Nothing listens at the target, or a
    /// filter rejects the traffic.
    Refused,
    /// The connection broke before the reply was complete: `ECONNRESET`, `ECONNABORTED`,
    /// `EPIPE`, or an EOF before the reply was complete (a server closing without replying
    /// counts here too).
    Reset,
    /// No complete reply within the per-request timeout (connecting included).
    Timeout,
    /// A reply arrived but is not acceptable: HTTP status outside 2xx, a reply that does not
    /// parse (or exceeds the size limits), or one that lacks the expected substring.
    BadResponse,
    /// Any other I/O error, by kind: for example `AddrNotAvailable` when local ports run out,
    /// `HostUnreachable` or `NetworkUnreachable` when routing fails.
    Other(io::ErrorKind),
}

impl Outcome {
    /// The outcome an I/O error stands for.
    pub fn from_io_error(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Self::Reset,
            io::ErrorKind::TimedOut => Self::Timeout,
            kind => Self::Other(kind),
        }
    }
}

/// Count of requests per outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// See [`Outcome::Ok`].
    pub ok: u64,
    /// See [`Outcome::Refused`].
    pub refused: u64,
    /// See [`Outcome::Reset`].
    pub reset: u64,
    /// See [`Outcome::Timeout`].
    pub timeout: u64,
    /// See [`Outcome::BadResponse`].
    pub bad_response: u64,
    /// See [`Outcome::Other`]; keyed by the `Debug` name of the error kind.
    pub other: BTreeMap<String, u64>,
}

impl Outcomes {
    /// Counts one request.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::BadResponse => self.bad_response += 1,
            Outcome::Other(kind) => *self.other.entry(format!("{kind:?}")).or_default() += 1,
        }
    }

    /// Requests that did not end [`Outcome::Ok`].
    pub fn failures(&self) -> u64 {
        self.refused
            + self.reset
            + self.timeout
            + self.bad_response
            + self.other.values().sum::<u64>()
    }

    /// All requests counted.
    pub fn total(&self) -> u64 {
        self.ok + self.failures()
    }

    pub(super) fn merge(&mut self, other: &Self) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.bad_response += other.bad_response;
        for (kind, n) in &other.other {
            *self.other.entry(kind.clone()).or_default() += n;
        }
    }
}

/// Latency percentiles of the requests that ended [`Outcome::Ok`], in microseconds, to 3
/// significant digits (an HdrHistogram; values below 2048 us are exact). A request's latency
/// runs to its complete reply (connecting included, and a retry if there was one) from the
/// moment it was sent, or, in a paced run, from the moment it was *scheduled*: a request that
/// had to wait for a free worker counts its wait (no coordinated omission). Percentiles are
/// nearest-rank. All zero when no request succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    /// The 99.9th percentile (absent from reports written before it existed: 0).
    #[serde(default)]
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub(super) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let at = |q: f64| histogram.value_at_quantile(q);
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max(),
        }
    }
}

/// An empty auto-resizing histogram of microseconds with `digits` significant digits.
pub(super) fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new(digits).expect("1 to 5 significant digits make a valid histogram")
}

/// A latency in whole microseconds.
pub(super) fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Requests sent, counted as each goes out (a retried request counts once). Every request
    /// sent ends as exactly one outcome, so `sent == outcomes.total()` when the run completed;
    /// a run cut short (its runtime shut down) may have sent more than it counted.
    pub sent: u64,
    /// Requests per outcome (flattened into the report in JSON).
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// Requests that failed on a reused keep-alive connection before any reply byte and were
    /// sent again on a new connection; the retry's result is in `outcomes`.
    pub retried: u64,
    /// Wall time from the start until the last request ended.
    #[serde(with = "crate::secs")]
    pub duration: Duration,
    /// Achieved rate: `sent` per second of `duration`.
    pub rate: f64,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Latency,
    /// Successful replies per responder identity: the HTTP body, or the TCP/UDP reply,
    /// trimmed of surrounding whitespace (at most [`RESPONDERS_CAP`] keys plus
    /// [`OTHER_RESPONDERS`]). The counts add up to `outcomes.ok`.
    pub responders: BTreeMap<String, u64>,
    /// Every second of the run, from second 0 to the last one a request was sent in (empty
    /// seconds included): its requests, by the second they were sent in. The seconds' counts
    /// add up to the report's.
    #[serde(default)]
    pub timeline: Vec<Second>,
}

impl Report {
    /// Requests that did not end [`Outcome::Ok`].
    pub fn failures(&self) -> u64 {
        self.outcomes.failures()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outcomes;
        write!(
            f,
            "{} requests in {:.3} s ({:.1}/s): {} ok, {} failed",
            self.sent,
            self.duration.as_secs_f64(),
            self.rate,
            o.ok,
            self.failures()
        )?;
        if self.failures() > 0 {
            write!(
                f,
                " ({} refused, {} reset, {} timeout, {} bad response",
                o.refused, o.reset, o.timeout, o.bad_response
            )?;
            for (kind, n) in &o.other {
                write!(f, ", {n} {kind}")?;
            }
            f.write_str(")")?;
        }
        write!(f, ", {} retried", self.retried)?;
        if o.ok > 0 {
            let l = &self.latency_us;
            write!(
                f,
                "; latency p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
                l.p50, l.p90, l.p99, l.p999, l.max
            )?;
        }
        if !self.responders.is_empty() {
            const SHOWN: usize = 8;
            let mut by_count: Vec<_> = self.responders.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            write!(f, "; {} responders: ", by_count.len())?;
            for (i, (name, n)) in by_count.iter().take(SHOWN).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name:?} {n}")?;
            }
            if by_count.len() > SHOWN {
                f.write_str(", ...")?;
            }
        }
        f.write_str(".")
    }
}

/// What one worker (or the merge of several) observed over the whole run.
#[derive(Debug)]
pub(super) struct Tally {
    sent: u64,
    outcomes: Outcomes,
    retried: u64,
    latencies_us: Histogram<u64>,
    responders: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            outcomes: Outcomes::default(),
            retried: 0,
            latencies_us: histogram(3),
            responders: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Counts a request as it goes out.
    pub(super) fn record_sent(&mut self) {
        self.sent += 1;
    }

    /// Counts a successful request; `responder` is its [`responder_key`].
    pub(super) fn record_ok(&mut self, latency: Duration, responder: &str, retried: bool) {
        self.outcomes.ok += 1;
        self.retried += u64::from(retried);
        record(&mut self.latencies_us, micros(latency));
        count_responder(&mut self.responders, responder, 1, RESPONDERS_CAP);
    }

    pub(super) fn record_failure(&mut self, outcome: Outcome, retried: bool) {
        self.outcomes.record(outcome);
        self.retried += u64::from(retried);
    }

    pub(super) fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.outcomes.merge(&other.outcomes);
        self.retried += other.retried;
        self.latencies_us
            .add(&other.latencies_us)
            .expect("auto-resizing histograms of the same precision always add up");
        for (key, n) in &other.responders {
            count_responder(&mut self.responders, key, *n, RESPONDERS_CAP);
        }
    }

    pub(super) fn into_report(self, duration: Duration, timeline: Vec<Second>) -> Report {
        let secs = duration.as_secs_f64();
        Report {
            sent: self.sent,
            retried: self.retried,
            duration,
            rate: if secs > 0.0 {
                self.sent as f64 / secs
            } else {
                0.0
            },
            latency_us: Latency::of(&self.latencies_us),
            responders: self.responders,
            outcomes: self.outcomes,
            timeline,
        }
    }
}

/// The identity a reply is counted under: trimmed, cut to [`RESPONDER_KEY_MAX`] bytes.
pub(super) fn responder_key(reply: &str) -> &str {
    let key = reply.trim();
    &key[..key.floor_char_boundary(RESPONDER_KEY_MAX)]
}

/// Adds `n` to `key`, or to [`OTHER_RESPONDERS`] once `cap` other keys are taken (merging
/// counts that already hold [`OTHER_RESPONDERS`] adds to it without taking a key).
pub(super) fn count_responder(
    responders: &mut BTreeMap<String, u64>,
    key: &str,
    n: u64,
    cap: usize,
) {
    if let Some(count) = responders.get_mut(key) {
        *count += n;
        return;
    }
    let taken = responders.len() - usize::from(responders.contains_key(OTHER_RESPONDERS));
    if key != OTHER_RESPONDERS && taken < cap {
        responders.insert(key.to_owned(), n);
    } else {
        *responders.entry(OTHER_RESPONDERS.to_owned()).or_default() += n;
    }
}

/// Records a latency in microseconds, growing the histogram as needed.
pub(super) fn record(histogram: &mut Histogram<u64>, us: u64) {
    if histogram.record(us).is_err() {
        histogram.saturating_record(us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_outcomes() {
        let outcome = |kind| Outcome::from_io_error(&io::Error::from(kind));
        assert_eq!(outcome(io::ErrorKind::ConnectionRefused), Outcome::Refused);
        assert_eq!(outcome(io::ErrorKind::ConnectionReset), Outcome::Reset);
        assert_eq!(outcome(io::ErrorKind::BrokenPipe), Outcome::Reset);
        assert_eq!(outcome(io::ErrorKind::UnexpectedEof), Outcome::Reset);
        assert_eq!(outcome(io::ErrorKind::TimedOut), Outcome::Timeout);
        assert_eq!(
            outcome(io::ErrorKind::AddrNotAvailable),
            Outcome::Other(io::ErrorKind::AddrNotAvailable)
        );
    }

    fn sent_ok(tally: &mut Tally, latency_us: u64, responder: &str) {
        tally.record_sent();
        tally.record_ok(Duration::from_micros(latency_us), responder, false);
    }

    #[test]
    fn percentiles_are_nearest_rank_of_known_latencies() {
        let mut tally = Tally::default();
        for us in (1..=1000).rev() {
            sent_ok(&mut tally, us, "a");
        }
        let l = tally
            .into_report(Duration::from_secs(1), Vec::new())
            .latency_us;
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p999, l.max),
            (500, 900, 990, 999, 1000)
        );

        let mut tally = Tally::default();
        sent_ok(&mut tally, 7, "a");
        let l = tally
            .into_report(Duration::from_secs(1), Vec::new())
            .latency_us;
        assert_eq!(
            l,
            Latency {
                p50: 7,
                p90: 7,
                p99: 7,
                p999: 7,
                max: 7
            }
        );
        let empty = Tally::default().into_report(Duration::from_secs(1), Vec::new());
        assert_eq!(empty.latency_us, Latency::default());
    }

    #[test]
    fn large_latencies_keep_three_significant_digits_and_merge() {
        // 99 requests of 10 ms and one of 2 s, split over two workers.
        let (mut a, mut b) = (Tally::default(), Tally::default());
        for i in 0..99 {
            sent_ok(if i % 2 == 0 { &mut a } else { &mut b }, 10_000, "a");
        }
        sent_ok(&mut b, 2_000_000, "a");
        a.merge(&b);
        let l = a.into_report(Duration::from_secs(1), Vec::new()).latency_us;
        let near = |value: u64, want: u64| value.abs_diff(want) * 1000 <= want;
        assert!(near(l.p50, 10_000) && near(l.p99, 10_000), "{l:?}");
        assert!(near(l.p999, 2_000_000) && near(l.max, 2_000_000), "{l:?}");
    }

    #[test]
    fn responders_are_trimmed_and_capped() {
        let mut tally = Tally::default();
        tally.record_ok(Duration::from_micros(5), responder_key("  pod-a\n"), false);
        tally.record_ok(Duration::from_micros(5), "pod-a", true);
        for i in 0..RESPONDERS_CAP + 10 {
            let mut other = Tally::default();
            other.record_ok(Duration::from_micros(1), &format!("r{i}"), false);
            tally.merge(&other);
        }
        let report = tally.into_report(Duration::from_secs(1), Vec::new());
        assert_eq!(report.responders["pod-a"], 2);
        assert_eq!(report.responders.len(), RESPONDERS_CAP + 1);
        assert_eq!(report.responders[OTHER_RESPONDERS], 11);
        assert_eq!(report.responders.values().sum::<u64>(), report.outcomes.ok);
        assert_eq!(report.retried, 1);
    }

    #[test]
    fn long_responder_keys_are_cut_at_a_char_boundary() {
        let long = "é".repeat(RESPONDER_KEY_MAX);
        let key = responder_key(&long);
        assert!(key.len() <= RESPONDER_KEY_MAX && key.chars().all(|c| c == 'é'));
    }

    #[test]
    fn report_counts_serializes_and_displays() {
        let mut tally = Tally::default();
        for _ in 0..3 {
            sent_ok(&mut tally, 100, "v=2");
        }
        for _ in 0..2 {
            tally.record_sent();
        }
        tally.record_failure(Outcome::Reset, true);
        tally.record_failure(Outcome::Other(io::ErrorKind::AddrNotAvailable), false);
        let report = tally.into_report(Duration::from_secs(2), Vec::new());
        assert_eq!(report.sent, 5);
        assert_eq!(report.failures(), 2);
        assert_eq!(report.sent, report.outcomes.ok + report.failures());
        assert!((report.rate - 2.5).abs() < 1e-9);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], 3, "outcomes are flattened: {json}");
        assert_eq!(json["other"]["AddrNotAvailable"], 1);
        assert_eq!(json["duration"], 2.0);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);

        let text = report.to_string();
        assert_eq!(
            text,
            "5 requests in 2.000 s (2.5/s): 3 ok, 2 failed (0 refused, 1 reset, 0 timeout, \
             0 bad response, 1 AddrNotAvailable), 1 retried; latency p50 100 us, p90 100 us, \
             p99 100 us, p99.9 100 us, max 100 us; 1 responders: \"v=2\" 3."
        );
    }

    #[test]
    fn sent_is_counted_apart_from_outcomes() {
        // A request that went out but never ended (its run was cut short) breaks the
        // invariant rather than being hidden by it.
        let mut tally = Tally::default();
        sent_ok(&mut tally, 100, "a");
        tally.record_sent();
        let report = tally.into_report(Duration::from_secs(1), Vec::new());
        assert_eq!((report.sent, report.outcomes.total()), (2, 1));
    }

    #[test]
    fn reports_without_the_newer_fields_still_parse() {
        let json = r#"{"sent":1,"ok":1,"refused":0,"reset":0,"timeout":0,"bad_response":0,
            "other":{},"retried":0,"duration":1.0,"rate":1.0,
            "latency_us":{"p50":5,"p90":5,"p99":5,"max":5},"responders":{"a":1}}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        assert_eq!((report.latency_us.p999, report.timeline.len()), (0, 0));
    }
}
