//! Frame rate over the last second, from event times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counts events in a sliding one-second window.
#[derive(Debug, Default)]
pub struct FpsMeter {
    events: VecDeque<Instant>,
}

impl FpsMeter {
    /// Records an event at `now` and returns the rate over the last second.
    pub fn tick(&mut self, now: Instant) -> f64 {
        self.events.push_back(now);
        while self
            .events
            .front()
            .is_some_and(|&t| now.duration_since(t) > Duration::from_secs(1))
        {
            self.events.pop_front();
        }
        self.events.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_events_a_second_read_as_thirty_fps() {
        let mut meter = FpsMeter::default();
        let t0 = Instant::now();
        let mut fps = 0.0;
        for i in 0..90u32 {
            fps = meter.tick(t0 + Duration::from_millis(u64::from(i) * 1000 / 30));
        }
        assert!((30.0..=31.0).contains(&fps), "{fps}");
    }
}
