//! Lip sync: the browser's audio is forwarded as it arrives, while its video leaves only after
//! decoding, filtering and encoding, and it already arrives later than the audio of the same
//! instant (the browser's encoder and pacer). Viewers synchronise on the relay's send times, so
//! without help they hear speech before the lips move. Each publisher holds audio back, bounded,
//! in a small delay line, by how much longer video takes from capture to leaving the relay than
//! audio from capture to arriving ([`AvLag`], from `abs-capture-time` on both tracks); without
//! capture times, by the relay's own smoothed video latency ([`Stage::Total`]). So audio and
//! video of one instant leave together (ITU-R BT.1359: audio at most 45 ms early, 125 ms late).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::AudioPacket;
#[cfg(doc)]
use crate::latency::AvLag;
use crate::latency::{Latency, Stage};

/// Audio is aimed this much after its video. Viewers' own synchronisation and frame timing
/// scatter the offset by a few tens of ms either way, and early audio is noticed much sooner
/// (45 ms) than late audio (125 ms, ITU-R BT.1359): aiming inside the window keeps the scatter
/// in it (also within EBU R37's 40 ms early / 60 ms late).
pub const AUDIO_AFTER_VIDEO: Duration = Duration::from_millis(20);
/// The longest audio is held back: beyond that, late video is a problem of its own.
pub const MAX_AUDIO_DELAY: Duration = Duration::from_millis(500);
/// Packets held at most: 500 ms of 10 ms Opus frames, with room to spare. When full, the oldest
/// leaves early rather than being dropped.
pub const MAX_HELD_PACKETS: usize = 64;

/// How long audio is held now: how far video is behind audio from capture to the relay's
/// output (else the relay's smoothed video latency), plus [`AUDIO_AFTER_VIDEO`]; at most
/// [`MAX_AUDIO_DELAY`].
pub fn audio_delay(latency: &Latency) -> Duration {
    let behind = latency
        .av
        .video_behind_audio()
        .or_else(|| latency.smoothed(Stage::Total))
        .unwrap_or(Duration::ZERO);
    (behind + AUDIO_AFTER_VIDEO).min(MAX_AUDIO_DELAY)
}

/// A bounded, order-keeping delay line for audio packets; the caller owns the clock.
#[derive(Debug, Default)]
pub struct AudioDelay {
    held: VecDeque<(Instant, AudioPacket)>,
}

impl AudioDelay {
    /// Holds `packet`, arrived at `now`, for `delay` (no sooner than the packet before it: order
    /// is kept when the delay shrinks). Returns the packet that must leave at once because the
    /// line is full.
    pub fn push(&mut self, packet: AudioPacket, now: Instant, delay: Duration) -> Option<AudioPacket> {
        let due = now + delay.min(MAX_AUDIO_DELAY);
        let due = self.held.back().map_or(due, |(last, _)| due.max(*last));
        let overflow = if self.held.len() >= MAX_HELD_PACKETS {
            self.held.pop_front().map(|(_, p)| p)
        } else {
            None
        };
        self.held.push_back((due, packet));
        overflow
    }

    /// When the oldest held packet is due (none when empty).
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    /// The oldest packet if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<AudioPacket> {
        match self.held.front() {
            Some((due, _)) if *due <= now => self.held.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Forgets what is held (the connection it was for is gone).
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prometheus::Registry;

    use super::*;
    use crate::publish::rtp::MediaTime;

    fn packet(sequence: u16) -> AudioPacket {
        AudioPacket {
            payload: Bytes::from_static(&[0xfc]),
            media_time: MediaTime {
                epoch: 1,
                rtp_timestamp: u32::from(sequence) * 960,
            },
            sequence,
            marker: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds one 20 ms packet per step with `delay`, drains what is due, and returns when each
    /// packet left relative to its arrival.
    fn run(delays: impl Fn(u16) -> Duration, packets: u16) -> Vec<Duration> {
        let start = Instant::now();
        let mut line = AudioDelay::default();
        let mut left = Vec::new();
        let mut arrived = std::collections::HashMap::new();
        for step in 0..packets + 40 {
            let now = start + ms(20) * u32::from(step);
            if step < packets {
                arrived.insert(step, now);
                assert!(line.push(packet(step), now, delays(step)).is_none());
            }
            while let Some(p) = line.pop_due(now) {
                left.push(now - arrived[&p.sequence]);
            }
        }
        assert!(line.is_empty());
        left
    }

    #[test]
    fn audio_leaves_after_the_video_latency_in_its_order() {
        let left = run(|_| ms(80), 50);

        assert_eq!(left.len(), 50);
        assert!(left.iter().all(|&d| d == ms(80)), "{left:?}");
    }

    #[test]
    fn a_shrinking_delay_keeps_the_order_and_never_sends_early() {
        let start = Instant::now();
        let mut line = AudioDelay::default();
        line.push(packet(1), start, ms(200));

        line.push(packet(2), start + ms(20), ms(40));

        assert_eq!(line.pop_due(start + ms(60)).map(|p| p.sequence), None);
        assert_eq!(line.pop_due(start + ms(200)).map(|p| p.sequence), Some(1));
        assert_eq!(line.pop_due(start + ms(200)).map(|p| p.sequence), Some(2));
    }

    #[test]
    fn the_delay_is_capped_at_half_a_second() {
        let left = run(|_| Duration::from_secs(3), 10);
        assert!(left.iter().all(|&d| d == MAX_AUDIO_DELAY), "{left:?}");
    }

    #[test]
    fn a_full_line_lets_its_oldest_packet_go_early_instead_of_growing() {
        let start = Instant::now();
        let mut line = AudioDelay::default();
        for i in 0..MAX_HELD_PACKETS as u16 {
            assert!(line.push(packet(i), start, MAX_AUDIO_DELAY).is_none());
        }

        let early = line.push(packet(999), start, MAX_AUDIO_DELAY);

        assert_eq!(early.map(|p| p.sequence), Some(0));
        assert_eq!(line.len(), MAX_HELD_PACKETS);
    }

    #[test]
    fn a_changing_video_latency_keeps_audio_within_the_bt1359_window() {
        // Video latency ramps 40 -> 160 ms; audio follows the smoothed figure.
        let latency = Latency::new(&Registry::new());
        let start = Instant::now();
        let mut line = AudioDelay::default();
        let mut arrived = std::collections::HashMap::new();
        let mut worst_early = Duration::ZERO;
        let mut worst_late = Duration::ZERO;
        for step in 0u16..300 {
            let now = start + ms(20) * u32::from(step);
            let video = ms(40 + u64::from(step.min(120)));
            latency.observe(Stage::Total, video);
            arrived.insert(step, (now, video));
            line.push(packet(step), now, audio_delay(&latency));
            while let Some(p) = line.pop_due(now) {
                let (at, video_then) = arrived[&p.sequence];
                let audio = now - at;
                worst_early = worst_early.max(video_then.saturating_sub(audio));
                worst_late = worst_late.max(audio.saturating_sub(video_then));
            }
        }
        assert!(worst_early <= ms(45), "audio up to {worst_early:?} early");
        assert!(worst_late <= ms(125), "audio up to {worst_late:?} late");
    }

    #[test]
    fn without_a_video_latency_audio_is_held_only_by_its_aim_after_video() {
        assert_eq!(audio_delay(&Latency::new(&Registry::new())), AUDIO_AFTER_VIDEO);
    }

    /// NTP of `ms` milliseconds after an arbitrary instant (the browser's or the relay's clock).
    fn ntp_ms(ms: u64) -> u64 {
        (3_900_000_000u64 << 32) + (ms << 32) / 1000
    }

    #[test]
    fn capture_times_on_both_tracks_hold_audio_by_how_much_later_video_leaves() {
        // Arrange: video leaves 130 ms after capture, audio arrives 30 ms after; the browser's
        // clock runs 5 s behind the relay's, which must not matter.
        let latency = Latency::new(&Registry::new());
        let skew = 5_000;
        // Act
        latency.av.observe_video(ntp_ms(1_000), ntp_ms(1_000 + skew + 130));
        latency.av.observe_audio(ntp_ms(1_000), ntp_ms(1_000 + skew + 30));
        latency.observe(Stage::Total, ms(60));
        // Assert: capture times win over the relay's own latency.
        assert_eq!(audio_delay(&latency), ms(100) + AUDIO_AFTER_VIDEO);
    }

    #[test]
    fn audio_slower_than_video_is_not_held_beyond_its_aim() {
        let latency = Latency::new(&Registry::new());
        latency.av.observe_video(ntp_ms(0), ntp_ms(20));
        latency.av.observe_audio(ntp_ms(0), ntp_ms(80));
        assert_eq!(audio_delay(&latency), AUDIO_AFTER_VIDEO);
    }
}
