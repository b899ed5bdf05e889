//! [`Backoff`]: capped exponential delays with jitter between attempts to reach the
//! control plane, so agents that lost it together do not return in lockstep.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `max`, each with "equal jitter" (half fixed,
/// half random).
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next try, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = exp / 2;
        let spread = exp.saturating_sub(half).as_micros() as u64;
        half + Duration::from_micros(rand::rng().random_range(0..=spread))
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let bounds = [(50, 100), (100, 200), (200, 400), (400, 800), (500, 1000)];
        for (low, high) in bounds {
            let d = backoff.next_delay();
            assert!(
                d >= ms(low) && d <= ms(high),
                "{d:?} not in {low}..={high} ms"
            );
        }
        for _ in 0..40 {
            assert!(backoff.next_delay() <= ms(1000));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }
}
