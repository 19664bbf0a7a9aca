//! Outcomes of requests and the report of a run.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.bad_response += other.bad_response;
        for (kind, n) in other.other {
            *self.other.entry(kind).or_default() += n;
        }
    }
}

/// Latency percentiles of the requests that ended [`Outcome::Ok`], in microseconds, from
/// the moment the request was sent (including connecting, and a retry if there was one) to
/// its complete reply. All zero when no request succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    fn of(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |permille: usize| {
            let n = samples.len();
            if n == 0 {
                return 0;
            }
            let rank = (permille * n).div_ceil(1000).clamp(1, n);
            u64::from(samples[rank - 1])
        };
        Self {
            p50: at(500),
            p90: at(900),
            p99: at(990),
            max: at(1000),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Requests started. Each ended as exactly one outcome, so `sent == outcomes.total()`;
    /// a retried request counts once.
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
                "; latency p50 {} us, p90 {} us, p99 {} us, max {} us",
                l.p50, l.p90, l.p99, l.max
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

/// What one worker (or the merge of several) observed.
#[derive(Debug, Default)]
pub(super) struct Tally {
    outcomes: Outcomes,
    retried: u64,
    latencies_us: Vec<u32>,
    responders: BTreeMap<String, u64>,
}

impl Tally {
    pub(super) fn record_ok(&mut self, latency: Duration, reply: &[u8], retried: bool) {
        self.outcomes.ok += 1;
        self.retried += u64::from(retried);
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        let text = String::from_utf8_lossy(reply);
        count_responder(&mut self.responders, responder_key(&text), 1);
    }

    pub(super) fn record_failure(&mut self, outcome: Outcome, retried: bool) {
        self.outcomes.record(outcome);
        self.retried += u64::from(retried);
    }

    pub(super) fn merge(&mut self, other: Self) {
        self.outcomes.merge(other.outcomes);
        self.retried += other.retried;
        self.latencies_us.extend_from_slice(&other.latencies_us);
        for (key, n) in other.responders {
            count_responder(&mut self.responders, &key, n);
        }
    }

    pub(super) fn into_report(mut self, duration: Duration) -> Report {
        let sent = self.outcomes.total();
        let secs = duration.as_secs_f64();
        Report {
            sent,
            retried: self.retried,
            duration,
            rate: if secs > 0.0 { sent as f64 / secs } else { 0.0 },
            latency_us: Latency::of(&mut self.latencies_us),
            responders: self.responders,
            outcomes: self.outcomes,
        }
    }
}

fn responder_key(reply: &str) -> &str {
    let key = reply.trim();
    &key[..key.floor_char_boundary(RESPONDER_KEY_MAX)]
}

fn count_responder(responders: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if let Some(count) = responders.get_mut(key) {
        *count += n;
    } else if responders.len() < RESPONDERS_CAP {
        responders.insert(key.to_owned(), n);
    } else {
        *responders.entry(OTHER_RESPONDERS.to_owned()).or_default() += n;
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50, 90, 99, 100));
        assert_eq!(
            Latency::of(&mut [7]),
            Latency {
                p50: 7,
                p90: 7,
                p99: 7,
                max: 7
            }
        );
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn responders_are_trimmed_and_capped() {
        let mut tally = Tally::default();
        tally.record_ok(Duration::from_micros(5), b"  pod-a\n", false);
        tally.record_ok(Duration::from_micros(5), b"pod-a", true);
        for i in 0..RESPONDERS_CAP + 10 {
            let mut other = Tally::default();
            other.record_ok(Duration::from_micros(1), format!("r{i}").as_bytes(), false);
            tally.merge(other);
        }
        let report = tally.into_report(Duration::from_secs(1));
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
            tally.record_ok(Duration::from_micros(100), b"v=2", false);
        }
        tally.record_failure(Outcome::Reset, true);
        tally.record_failure(Outcome::Other(io::ErrorKind::AddrNotAvailable), false);
        let report = tally.into_report(Duration::from_secs(2));
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
             p99 100 us, max 100 us; 1 responders: \"v=2\" 3."
        );
    }
}
