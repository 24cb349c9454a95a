//! Reconnection delays: exponential with full jitter, capped.

use std::time::Duration;

/// Exponential backoff with jitter, reset after a successful connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, doubling per failure up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay for a uniform random `jitter` in `[0, 1)`: between half and all of the
    /// exponential step, so that many relays restarting together spread out.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.initial.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures (after a connection succeeded).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let full: Vec<_> = (0..5).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(full, [100, 200, 400, 500, 500].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn jitter_keeps_at_least_half_the_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        b.next_delay(1.0);
        b.next_delay(1.0);
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.attempts(), 1);
    }
}
