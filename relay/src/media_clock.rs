//! The encoder's clock: a source's 90 kHz RTP media time mapped onto a monotonic presentation
//! time, so rate control and the keyframe interval follow the frames' real spacing (when the
//! slot drops frames, the encoder sees the gap) rather than an assumed frame rate.
//!
//! RTP timestamps wrap every 13 h and restart anywhere with a new browser session (a new
//! epoch); both are rebased so the presentation time only ever moves forward.

use std::time::Duration;

use crate::publish::rtp::MediaTime;

/// Clock rate of video RTP timestamps.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
/// A forward step larger than this within one epoch is a restarted source, not elapsed time.
const MAX_STEP: Duration = Duration::from_secs(10);

/// Maps media times onto a presentation time that starts at zero and never goes back.
#[derive(Clone, Debug)]
pub struct MediaClock {
    nominal_step: Duration,
    last: Option<(MediaTime, Duration)>,
}

impl MediaClock {
    /// A clock whose rebases (new epoch, wrap-around jumps, time going backwards) advance by
    /// one frame at `nominal_fps`.
    pub fn new(nominal_fps: u32) -> Self {
        Self {
            nominal_step: Duration::from_secs(1) / nominal_fps.max(1),
            last: None,
        }
    }

    /// The presentation time of a frame with media time `time`.
    pub fn pts(&mut self, time: MediaTime) -> Duration {
        let pts = match self.last {
            None => Duration::ZERO,
            Some((last, last_pts)) => {
                // Wrap-around: the difference of two u32 timestamps, read as signed.
                let ticks = time.rtp_timestamp.wrapping_sub(last.rtp_timestamp) as i32;
                let step = ticks_to_duration(ticks);
                match step {
                    Some(step) if time.epoch == last.epoch && !step.is_zero() && step <= MAX_STEP => last_pts + step,
                    Some(step) if time.epoch == last.epoch && step.is_zero() => {
                        // A repeated timestamp: keep the pts strictly increasing by the least step.
                        last_pts + Duration::from_micros(1)
                    }
                    _ => {
                        if time.epoch == last.epoch {
                            tracing::debug!(ticks, "media time jumped; rebasing the encoder clock");
                        }
                        last_pts + self.nominal_step
                    }
                }
            }
        };
        self.last = Some((time, pts));
        pts
    }
}

/// A forward tick count as a duration; `None` when it goes backwards.
fn ticks_to_duration(ticks: i32) -> Option<Duration> {
    let ticks = u64::try_from(ticks).ok()?;
    Some(Duration::from_nanos(
        ticks * 1_000_000_000 / u64::from(VIDEO_CLOCK_RATE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, rtp_timestamp: u32) -> MediaTime {
        MediaTime { epoch, rtp_timestamp }
    }

    #[test]
    fn pts_follows_the_real_spacing_of_frames() {
        let mut clock = MediaClock::new(30);
        assert_eq!(clock.pts(at(1, 1000)), Duration::ZERO);
        assert_eq!(clock.pts(at(1, 1000 + 4500)), Duration::from_millis(50));
        assert_eq!(clock.pts(at(1, 1000 + 13_500)), Duration::from_millis(150));
    }

    #[test]
    fn rtp_wrap_around_continues_forward() {
        let mut clock = MediaClock::new(30);
        clock.pts(at(1, u32::MAX - 1499));
        assert_eq!(clock.pts(at(1, 3000)), Duration::from_millis(50));
    }

    #[test]
    fn a_new_epoch_continues_one_nominal_frame_later() {
        let mut clock = MediaClock::new(20);
        clock.pts(at(1, 0));
        clock.pts(at(1, 9000));
        assert_eq!(clock.pts(at(2, 123_456_789)), Duration::from_millis(150));
        assert_eq!(clock.pts(at(2, 123_456_789 + 9000)), Duration::from_millis(250));
    }

    #[test]
    fn time_going_backwards_or_jumping_far_is_rebased_forward() {
        let mut clock = MediaClock::new(10);
        clock.pts(at(1, 90_000));
        assert_eq!(clock.pts(at(1, 0)), Duration::from_millis(100), "backwards");
        assert_eq!(
            clock.pts(at(1, 90_000 * 3600)),
            Duration::from_millis(200),
            "an hour ahead"
        );
        let repeated = clock.pts(at(1, 90_000 * 3600));
        assert!(repeated > Duration::from_millis(200), "a repeat still moves forward");
    }
}
