//! Reconnect delays: 1 s doubling to 30 s, each jittered to between half and all of
//! the step, so a fleet that lost its controller does not reconnect in lockstep. Only
//! a session that stayed up for a while starts the sequence again, so a link the
//! controller keeps closing at once (a second machine using the same node name, a
//! controller that crashes on each connect) is retried ever more slowly, not every
//! second.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(30);
/// A session up at least this long was a good one: the next outage starts afresh.
pub const STABLE: Duration = Duration::from_secs(30);

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

    /// A session that was up for `lasted` has ended: back to the first step if it
    /// was a stable one, else the delays keep growing.
    pub fn session_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE {
            self.reset();
        }
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

    #[test]
    fn only_a_stable_session_starts_the_delays_afresh() {
        let mut b = Backoff::default();
        b.next_delay();
        b.next_delay();
        // Closed right after it came up: the next delay is the third step (4 s).
        b.session_ended(Duration::from_secs(1));
        let d = b.next_delay();
        assert!(d >= Duration::from_secs(2), "{d:?}");
        // Up for a good while: the next outage starts at the first step.
        b.session_ended(STABLE);
        assert!(b.next_delay() <= FIRST);
    }
}
