//! Exponential backoff with jitter, for reconnects.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: each delay is random in `[c/2, c]` with `c = min(max, base·2ⁿ)`
/// ("equal jitter": never zero, and replicas that lost the database together do not
/// return in lockstep).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First ceiling.
    base: Duration,
    /// Largest ceiling.
    max: Duration,
    /// Attempts since the last reset.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        // Never zero: a tight reconnect loop against a refusing server helps nobody.
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(
            delays[11] >= Duration::from_secs(1),
            "late delays reach half the cap at least"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
