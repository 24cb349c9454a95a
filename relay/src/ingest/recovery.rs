//! When to decode, and when to ask the sender for a keyframe (PLI), rate-limited.

use std::time::{Duration, Instant};

/// What to do with an assembled frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// Hand it to the decoder.
    Decode,
    /// Drop it: the decoder has no valid reference; a keyframe is needed.
    SkipUntilKeyframe,
}

/// Keeps the decoder fed only with frames it can decode: from a keyframe on, until a loss or a
/// decode error breaks the reference chain.
#[derive(Clone, Debug)]
pub struct KeyframeGate {
    waiting: bool,
}

impl Default for KeyframeGate {
    fn default() -> Self {
        Self { waiting: true }
    }
}

impl KeyframeGate {
    /// A gate that waits for the first keyframe.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether frames are being skipped until a keyframe arrives.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting
    }

    /// Decides about one frame; `discontinuity` means something was lost before it.
    pub fn on_frame(&mut self, keyframe: bool, discontinuity: bool) -> GateDecision {
        if keyframe {
            self.waiting = false;
            return GateDecision::Decode;
        }
        if discontinuity {
            self.waiting = true;
        }
        if self.waiting {
            GateDecision::SkipUntilKeyframe
        } else {
            GateDecision::Decode
        }
    }

    /// The decoder failed: skip until the next keyframe.
    pub fn on_decode_error(&mut self) {
        self.waiting = true;
    }
}

/// Allows at most one keyframe request per interval.
#[derive(Clone, Debug)]
pub struct PliLimiter {
    interval: Duration,
    last: Option<Instant>,
}

impl PliLimiter {
    /// A limiter allowing one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: None }
    }

    /// Whether a request may go out now; if so, records it as sent.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_waits_for_the_first_keyframe() {
        let mut gate = KeyframeGate::new();
        assert_eq!(gate.on_frame(false, false), GateDecision::SkipUntilKeyframe);
        assert_eq!(gate.on_frame(true, false), GateDecision::Decode);
        assert_eq!(gate.on_frame(false, false), GateDecision::Decode);
    }

    #[test]
    fn gate_skips_after_loss_or_error_until_a_keyframe() {
        let mut gate = KeyframeGate::new();
        gate.on_frame(true, false);
        assert_eq!(gate.on_frame(false, true), GateDecision::SkipUntilKeyframe);
        assert_eq!(gate.on_frame(false, false), GateDecision::SkipUntilKeyframe);
        assert_eq!(gate.on_frame(true, true), GateDecision::Decode);
        gate.on_decode_error();
        assert!(gate.waiting_for_keyframe());
        assert_eq!(gate.on_frame(false, false), GateDecision::SkipUntilKeyframe);
    }

    #[test]
    fn limiter_allows_one_request_per_interval() {
        let t0 = Instant::now();
        let mut limiter = PliLimiter::new(Duration::from_millis(500));
        assert!(limiter.try_acquire(t0));
        assert!(!limiter.try_acquire(t0 + Duration::from_millis(499)));
        assert!(limiter.try_acquire(t0 + Duration::from_millis(500)));
        assert!(!limiter.try_acquire(t0 + Duration::from_millis(600)));
    }
}
