//! The watches' retry policy: exponential from 0.5 s, doubling, at most 10 s, with jitter,
//! reset once a watch has gone 30 s without an error. kube-runtime's default (client-go's
//! reflector: up to 30 s, reset after 120 s) resets only on a delivered event, so a quiet
//! watch that came back after an outage kept its raised delay and a later `410` relisted up to
//! half a minute late; a node agent must follow its API server within seconds.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

use kube::runtime::utils::{Backoff, ResetTimerBackoff};

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(10);
const RESET_AFTER: Duration = Duration::from_secs(30);

/// Exponential delays with "equal jitter": each delay is between half and all of its step.
#[derive(Debug)]
pub struct Exponential {
    step: Duration,
    jitter: RandomState,
    n: u64,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential {
            step: FIRST,
            jitter: RandomState::new(),
            n: 0,
        }
    }
}

impl Iterator for Exponential {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.n += 1;
        // A uniform fraction in [0, 1) from a randomly keyed hash of the attempt number.
        let r = (self.jitter.hash_one(self.n) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.step.mul_f64(0.5 + 0.5 * r);
        self.step = (self.step * 2).min(MAX);
        Some(delay)
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.step = FIRST;
    }
}

/// The policy every watch uses.
pub fn policy() -> ResetTimerBackoff<Exponential> {
    ResetTimerBackoff::new(Exponential::default(), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut b = Exponential::default();
        let d: Vec<Duration> = (&mut b).take(8).collect();
        for (i, x) in d.iter().enumerate() {
            let step = (FIRST * 2u32.pow(i as u32)).min(MAX);
            assert!(
                *x >= step / 2 && *x <= step,
                "{i}: {x:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
        assert!(d[7] >= MAX / 2);
        b.reset();
        assert!(b.next().unwrap() <= FIRST);
    }
}
