//! Jittered exponential backoff, for reconnecting to a runtime.
//!
//! A small type of its own so that retry loops stay readable: ask for the
//! next delay, sleep it, and reset after a success. Delays grow by `factor`
//! from `min` up to `max`; each is then spread by up to ±`jitter` (a fraction)
//! so that many agents restarted together do not hammer a runtime in step.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    /// The next delay before jitter.
    current: Duration,
    /// Failures since the last reset.
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays from `min` to `max`, doubling, with ±20 % jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            factor: 2.0,
            jitter: 0.2,
            current: min,
            failures: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The growth factor between two delays (at least 1).
    #[must_use]
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// The jitter as a fraction of the delay, from 0 (none) to 1.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The delay to wait before the next attempt; grows the one after it.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = self.current;
        self.current = base.mul_f64(self.factor).min(self.max);
        if self.jitter == 0.0 {
            return base;
        }
        // A uniform number in [-1, 1).
        let unit = self.rng.f64() * 2.0 - 1.0;
        base.mul_f64(1.0 + unit * self.jitter).min(self.max)
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.min;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_without_jitter() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter(0.0);
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for expected in [100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0] {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            assert!(
                d >= expected * 0.8 - 1e-6 && d <= expected * 1.2 + 1e-6,
                "{d} ms outside ±20 % of {expected} ms"
            );
        }
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
    }
}
