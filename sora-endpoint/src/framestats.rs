//! Per-frame summaries and frame-rate counting: pure computations on decoded pictures.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frameid;
use crate::picture::{Picture, yuv_to_rgb};
use serde::Serialize;

/// Side of the square patch whose mean colour is reported.
pub const PATCH_SIZE: u32 = 16;
/// Top-left corner of that patch (away from centred overlays such as a clock).
pub const PATCH_ORIGIN: (u32, u32) = (8, 8);

/// What is remembered of one decoded frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrameSummary {
    /// 0-based index among this connection's decoded frames.
    pub seq: u64,
    /// RTP timestamp (90 kHz).
    pub rtp_timestamp: u32,
    /// Arrival of the frame's first packet, milliseconds since the Unix epoch.
    pub arrival_ms: f64,
    /// Milliseconds from that arrival until the decoder returned the picture.
    pub decode_latency_ms: f64,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Whether it was a keyframe.
    pub keyframe: bool,
    /// Mean RGB of the 16x16 patch at (8,8), clipped to the picture.
    pub patch_rgb: [u8; 3],
    /// Mean luma of the centre region (the middle quarter in each dimension).
    pub center_luma: f64,
    /// FNV-1a hash of the centre region's coarsely quantised luma, hex (changes when content does).
    pub center_hash: String,
    /// The frame id a benchmark sender painted into the picture ([`crate::frameid`]), if any.
    pub frame_id: Option<u32>,
}

/// Mean RGB of the `PATCH_SIZE` square at `PATCH_ORIGIN`, clipped to the picture.
pub fn patch_mean_rgb(frame: &Picture) -> [u8; 3] {
    let (w, h) = (frame.width(), frame.height());
    let x0 = PATCH_ORIGIN.0.min(w - 1);
    let y0 = PATCH_ORIGIN.1.min(h - 1);
    let x1 = (x0 + PATCH_SIZE).min(w);
    let y1 = (y0 + PATCH_SIZE).min(h);
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            let (x, y) = (x as usize, y as usize);
            let rgb = yuv_to_rgb(frame.yuv_at(x, y));
            for c in 0..3 {
                sum[c] += u64::from(rgb[c]);
            }
            n += 1;
        }
    }
    let n = n.max(1);
    [(sum[0] / n) as u8, (sum[1] / n) as u8, (sum[2] / n) as u8]
}

/// Mean luma and a coarse FNV-1a hash of the centre region (x and y in [3/8, 5/8) of the size).
pub fn center_luma_and_hash(frame: &Picture) -> (f64, u64) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (x0, x1) = (w * 3 / 8, (w * 5 / 8).max(w * 3 / 8 + 1).min(w));
    let (y0, y1) = (h * 3 / 8, (h * 5 / 8).max(h * 3 / 8 + 1).min(h));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sum = 0u64;
    let mut n = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            let luma = frame.y()[y * w + x];
            sum += u64::from(luma);
            n += 1;
            if x % 4 == 0 && y % 4 == 0 {
                hash ^= u64::from(luma >> 5);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    (sum as f64 / n.max(1) as f64, hash)
}

/// Counts events over a sliding one-second window.
#[derive(Clone, Debug, Default)]
pub struct FpsCounter {
    times: VecDeque<Instant>,
}

impl FpsCounter {
    const WINDOW: Duration = Duration::from_secs(1);

    /// Records one event at `now`.
    pub fn record(&mut self, now: Instant) {
        self.times.push_back(now);
        self.prune(now);
    }

    /// Events within the last second before `now`.
    pub fn fps(&self, now: Instant) -> f64 {
        self.times
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < Self::WINDOW)
            .count() as f64
    }

    fn prune(&mut self, now: Instant) {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.times.pop_front();
        }
    }
}

/// The decoded frames of one connection: the newest picture and a bounded ring of summaries.
#[derive(Debug)]
pub struct FrameLog {
    capacity: usize,
    ring: VecDeque<FrameSummary>,
    latest: Option<Arc<Picture>>,
    fps: FpsCounter,
}

impl FrameLog {
    /// A log keeping the last `capacity` summaries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ring: VecDeque::new(),
            latest: None,
            fps: FpsCounter::default(),
        }
    }

    /// Adds one decoded frame (`summary` computed by [`summarize`]), received at `now`.
    pub fn push(&mut self, frame: Arc<Picture>, summary: FrameSummary, now: Instant) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(summary);
        self.latest = Some(frame);
        self.fps.record(now);
    }

    /// The newest picture.
    pub fn latest(&self) -> Option<Arc<Picture>> {
        self.latest.clone()
    }

    /// The newest summary.
    pub fn last(&self) -> Option<&FrameSummary> {
        self.ring.back()
    }

    /// Up to `limit` of the newest summaries, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<FrameSummary> {
        let skip = self.ring.len().saturating_sub(limit);
        self.ring.iter().skip(skip).cloned().collect()
    }

    /// Decoded frames over the last second.
    pub fn fps(&self, now: Instant) -> f64 {
        self.fps.fps(now)
    }
}

/// Computes the summary of one decoded frame.
pub fn summarize(
    frame: &Picture,
    seq: u64,
    rtp_timestamp: u32,
    keyframe: bool,
    arrival_ms: f64,
    decode_latency_ms: f64,
) -> FrameSummary {
    let (center_luma, hash) = center_luma_and_hash(frame);
    FrameSummary {
        seq,
        rtp_timestamp,
        arrival_ms,
        decode_latency_ms,
        width: frame.width(),
        height: frame.height(),
        keyframe,
        patch_rgb: patch_mean_rgb(frame),
        center_luma,
        center_hash: format!("{hash:016x}"),
        frame_id: frameid::read(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::rgb_to_yuv;

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> Picture {
        Picture::filled(w, h, rgb_to_yuv(rgb)).unwrap()
    }

    #[test]
    fn patch_colour_of_a_solid_frame() {
        let rgb = patch_mean_rgb(&solid(64, 48, [200, 40, 90]));
        for (got, want) in rgb.iter().zip([200u8, 40, 90]) {
            assert!((*got as i32 - want as i32).abs() <= 2, "{rgb:?}");
        }
    }

    #[test]
    fn patch_reads_the_top_left_corner_not_the_centre() {
        let mut frame = solid(64, 64, [0, 0, 0]);
        // Paint the centre white: the patch at (8,8)..(24,24) must stay black.
        let y = frame.y_mut();
        for row in 24..40 {
            for col in 24..40 {
                y[row * 64 + col] = 235;
            }
        }
        assert!(patch_mean_rgb(&frame)[0] < 5);
        let (luma, _) = center_luma_and_hash(&frame);
        assert!(luma > 230.0, "{luma}");
    }

    #[test]
    fn tiny_frames_do_not_panic() {
        let f = solid(1, 1, [10, 20, 30]);
        patch_mean_rgb(&f);
        center_luma_and_hash(&f);
        let f = solid(3, 7, [10, 20, 30]);
        summarize(&f, 0, 0, true, 0.0, 0.0);
    }

    #[test]
    fn summary_carries_the_painted_frame_id() {
        let mut frame = solid(320, 180, [90, 90, 90]);
        assert_eq!(summarize(&frame, 0, 0, true, 0.0, 0.0).frame_id, None);
        crate::frameid::paint(&mut frame, 321);
        assert_eq!(summarize(&frame, 1, 0, false, 0.0, 0.0).frame_id, Some(321));
    }

    #[test]
    fn centre_hash_changes_with_centre_content() {
        let a = solid(64, 64, [0, 0, 0]);
        let b = solid(64, 64, [255, 255, 255]);
        assert_ne!(center_luma_and_hash(&a).1, center_luma_and_hash(&b).1);
        assert_eq!(center_luma_and_hash(&a).1, center_luma_and_hash(&a.clone()).1);
    }

    #[test]
    fn fps_counts_the_last_second() {
        let t0 = Instant::now();
        let mut c = FpsCounter::default();
        for i in 0..60 {
            c.record(t0 + Duration::from_millis(i * 50));
        }
        let now = t0 + Duration::from_millis(59 * 50);
        assert_eq!(c.fps(now), 20.0);
        assert_eq!(c.fps(now + Duration::from_secs(2)), 0.0);
    }

    #[test]
    fn frame_log_is_bounded() {
        let t0 = Instant::now();
        let mut log = FrameLog::new(3);
        let frame = Arc::new(solid(16, 16, [1, 2, 3]));
        for seq in 0..5 {
            log.push(frame.clone(), summarize(&frame, seq, 0, false, 0.0, 0.0), t0);
        }
        let seqs: Vec<u64> = log.recent(10).iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(log.recent(1)[0].seq, 4);
        assert_eq!(log.last().map(|s| s.seq), Some(4));
        assert!(log.latest().is_some());
    }
}
