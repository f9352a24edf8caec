//! Reconnect delays: 1 s doubling to 30 s, each jittered to between half and all of
//! the step, so a fleet that lost its controller does not reconnect in lockstep.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(30);

/// The delay sequence of one outage; [`Backoff::reset`] after a good session.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    random: RandomState,
    n: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step: FIRST,
            random: RandomState::new(),
            n: 0,
        }
    }
}

impl Backoff {
    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(MAX);
        self.n += 1;
        // A random fraction in [0.5, 1) from the std's per-process random hash keys.
        let r = self.random.hash_one(self.n) as f64 / u64::MAX as f64;
        step.mul_f64(0.5 + r / 2.0)
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let steps = [1, 2, 4, 8, 16, 30, 30, 30];
        for (d, s) in delays.iter().zip(steps) {
            let s = Duration::from_secs(s);
            assert!(*d >= s / 2 && *d <= s, "{d:?} not within half of {s:?}");
        }
        let distinct: std::collections::BTreeSet<_> = delays[5..].iter().collect();
        assert!(distinct.len() > 1, "no jitter: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }
}
