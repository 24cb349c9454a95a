//! Per-stage latency: Prometheus histograms for scraping, and a sliding window of recent
//! samples for the p50/p95/p99 that `/status` (and so the operator) reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};

/// Samples kept per stage (10 s at 30 fps).
pub const WINDOW: usize = 300;

/// A stage of the per-frame path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// First RTP packet -> decoded picture.
    Decode,
    /// Decoded -> taken from the newest-frame slot by the filter thread.
    Queue,
    /// The filter itself (the three parts below, for model-based filters).
    Filter,
    /// Frame -> model input.
    Preprocess,
    /// The model.
    Infer,
    /// Model output -> frame.
    Postprocess,
    /// Scaling and encoding.
    Encode,
    /// Encoded -> written to a publisher's track.
    Send,
    /// Received (or generated) -> written to a publisher's track: what the relay adds.
    Total,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Stage; 9] = [
        Stage::Decode,
        Stage::Queue,
        Stage::Filter,
        Stage::Preprocess,
        Stage::Infer,
        Stage::Postprocess,
        Stage::Encode,
        Stage::Send,
        Stage::Total,
    ];

    /// The `stage` label and `/status` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Queue => "queue",
            Stage::Filter => "filter",
            Stage::Preprocess => "preprocess",
            Stage::Infer => "infer",
            Stage::Postprocess => "postprocess",
            Stage::Encode => "encode",
            Stage::Send => "send",
            Stage::Total => "total",
        }
    }
}

/// How long audio and video take from their capture in the browser to the relay's output:
/// video from capture to leaving the encoder, audio from capture to arriving (it is forwarded
/// untouched). Each is smoothed; both carry the same unknown offset between the browser's clock
/// and the relay's, so their difference is exact: how long audio must wait to leave with the
/// video of the same instant (lip sync).
#[derive(Debug)]
pub struct AvLag {
    video_us: AtomicI64,
    audio_us: AtomicI64,
    /// `livefilter_capture_lag_seconds{track}`, where registered.
    gauges: Option<GaugeVec>,
}

/// No sample yet.
const NO_LAG: i64 = i64::MIN;

impl Default for AvLag {
    fn default() -> Self {
        Self {
            video_us: AtomicI64::new(NO_LAG),
            audio_us: AtomicI64::new(NO_LAG),
            gauges: None,
        }
    }
}

impl AvLag {
    /// Lags exported as `livefilter_capture_lag_seconds{track="video"|"audio"}` in `registry`.
    pub fn registered(registry: &Registry) -> Self {
        let gauges = GaugeVec::new(
            Opts::new(
                "livefilter_capture_lag_seconds",
                "Smoothed time from the browser's capture to the relay's output (video) or to its arrival (audio); the same clock offset is in both, their difference is what lip sync holds audio back by",
            ),
            &["track"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(gauges.clone()))
            .expect("metric names are unique");
        Self {
            gauges: Some(gauges),
            ..Self::default()
        }
    }

    /// A video frame captured at `capture_ntp` leaves the encoder at `now_ntp`.
    pub fn observe_video(&self, capture_ntp: u64, now_ntp: u64) {
        let lag = Self::smooth(
            &self.video_us,
            crate::abs_capture::ntp_diff_micros(now_ntp, capture_ntp),
        );
        self.export("video", lag);
    }

    /// An audio packet captured at `capture_ntp` arrives at `now_ntp`.
    pub fn observe_audio(&self, capture_ntp: u64, now_ntp: u64) {
        let lag = Self::smooth(
            &self.audio_us,
            crate::abs_capture::ntp_diff_micros(now_ntp, capture_ntp),
        );
        self.export("audio", lag);
    }

    fn export(&self, track: &str, lag_us: i64) {
        if let Some(g) = &self.gauges {
            g.with_label_values(&[track]).set(lag_us as f64 / 1e6);
        }
    }

    /// How much longer video takes than audio (zero when audio is the slower), once both are
    /// known.
    pub fn video_behind_audio(&self) -> Option<Duration> {
        let (v, a) = (
            self.video_us.load(Ordering::Relaxed),
            self.audio_us.load(Ordering::Relaxed),
        );
        (v != NO_LAG && a != NO_LAG).then(|| Duration::from_micros(v.saturating_sub(a).max(0) as u64))
    }

    /// Forgets both (a new session, perhaps from another sender's clock).
    pub fn reset(&self) {
        self.video_us.store(NO_LAG, Ordering::Relaxed);
        self.audio_us.store(NO_LAG, Ordering::Relaxed);
    }

    fn smooth(cell: &AtomicI64, sample: i64) -> i64 {
        let old = cell.load(Ordering::Relaxed);
        let new = if old == NO_LAG {
            sample
        } else {
            old + ((sample - old) as f64 * SMOOTHING) as i64
        };
        cell.store(new, Ordering::Relaxed);
        new
    }
}

/// Percentiles of a window, in milliseconds (the `/status` contract's type).
pub use livefilter_contract::status::Percentiles;

/// Nearest-rank percentiles of `samples` (ms); all zero when empty.
pub fn percentiles(samples: &[f64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        samples: sorted.len() as u64,
    }
}

/// Weight of a new sample in the smoothed latency (about the last 16 frames count).
const SMOOTHING: f64 = 1.0 / 8.0;
/// No sample yet.
const NO_SAMPLE: u64 = u64::MAX;

/// An exponentially smoothed figure, in microseconds (`NO_SAMPLE` before the first).
fn smooth(previous: u64, sample_us: u64) -> u64 {
    if previous == NO_SAMPLE {
        return sample_us;
    }
    let next = previous as f64 + (sample_us as f64 - previous as f64) * SMOOTHING;
    next.round().max(0.0) as u64
}

/// Latency recorder shared by every stage.
#[derive(Clone)]
pub struct Latency {
    histogram: HistogramVec,
    windows: Arc<Mutex<Vec<VecDeque<f64>>>>,
    smoothed: Arc<Vec<AtomicU64>>,
    /// Capture-to-output lags of the browser's audio and video (lip sync).
    pub av: Arc<AvLag>,
}

impl Latency {
    /// Creates the histogram and registers it.
    pub fn new(registry: &Registry) -> Self {
        let histogram = HistogramVec::new(
            HistogramOpts::new(
                "livefilter_stage_latency_seconds",
                "Per-frame latency by stage (total = relay-added)",
            )
            .buckets(vec![
                0.001, 0.002, 0.004, 0.008, 0.012, 0.016, 0.020, 0.025, 0.033, 0.050, 0.066, 0.100, 0.200, 0.500,
            ]),
            &["stage"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(histogram.clone()))
            .expect("metric names are unique");
        Self {
            histogram,
            windows: Arc::new(Mutex::new(vec![VecDeque::with_capacity(WINDOW); Stage::ALL.len()])),
            smoothed: Arc::new(Stage::ALL.iter().map(|_| AtomicU64::new(NO_SAMPLE)).collect()),
            av: Arc::new(AvLag::registered(registry)),
        }
    }

    /// Records one sample.
    pub fn observe(&self, stage: Stage, d: Duration) {
        self.histogram
            .with_label_values(&[stage.as_str()])
            .observe(d.as_secs_f64());
        let index = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        let sample_us = u64::try_from(d.as_micros()).unwrap_or(NO_SAMPLE - 1);
        // One writer per stage in practice; a lost update under a race only skips a sample.
        let previous = self.smoothed[index].load(Ordering::Relaxed);
        self.smoothed[index].store(smooth(previous, sample_us), Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut windows[index];
        if w.len() == WINDOW {
            w.pop_front();
        }
        w.push_back(d.as_secs_f64() * 1000.0);
    }

    /// Percentiles of the recent window of `stage`.
    pub fn window(&self, stage: Stage) -> Percentiles {
        let index = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        let samples: Vec<f64> = self.windows.lock().unwrap_or_else(PoisonError::into_inner)[index]
            .iter()
            .copied()
            .collect();
        percentiles(&samples)
    }

    /// The exponentially smoothed latency of `stage` (none before its first sample): cheap to
    /// read per packet, e.g. to delay audio by what video spends in the relay.
    pub fn smoothed(&self, stage: Stage) -> Option<Duration> {
        let index = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        match self.smoothed[index].load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Forgets the windows and smoothed figures (a new input session starts).
    pub fn reset_windows(&self) {
        for w in self.windows.lock().unwrap_or_else(PoisonError::into_inner).iter_mut() {
            w.clear();
        }
        for s in self.smoothed.iter() {
            s.store(NO_SAMPLE, Ordering::Relaxed);
        }
        self.av.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_hundred() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            percentiles(&samples),
            Percentiles {
                p50: 50.0,
                p95: 95.0,
                p99: 99.0,
                samples: 100
            }
        );
    }

    #[test]
    fn the_smoothed_latency_follows_a_step_within_a_few_dozen_frames() {
        let latency = Latency::new(&Registry::new());
        assert_eq!(latency.smoothed(Stage::Total), None);

        latency.observe(Stage::Total, Duration::from_millis(40));
        let first = latency.smoothed(Stage::Total);
        for _ in 0..40 {
            latency.observe(Stage::Total, Duration::from_millis(120));
        }
        let after = latency.smoothed(Stage::Total).unwrap();

        assert_eq!(first, Some(Duration::from_millis(40)));
        assert!(
            after > Duration::from_millis(119) && after <= Duration::from_millis(120),
            "{after:?}"
        );
        latency.reset_windows();
        assert_eq!(latency.smoothed(Stage::Total), None);
    }

    #[test]
    fn one_outlier_moves_the_smoothed_latency_by_an_eighth() {
        let latency = Latency::new(&Registry::new());
        latency.observe(Stage::Total, Duration::from_millis(40));

        latency.observe(Stage::Total, Duration::from_millis(840));

        assert_eq!(latency.smoothed(Stage::Total), Some(Duration::from_millis(140)));
    }

    #[test]
    fn the_window_keeps_only_the_newest_samples() {
        let latency = Latency::new(&Registry::new());
        for ms in 0..(WINDOW as u64 + 100) {
            latency.observe(Stage::Filter, Duration::from_millis(if ms < 100 { 1000 } else { 5 }));
        }
        let p = latency.window(Stage::Filter);
        assert_eq!((p.p99, p.samples), (5.0, WINDOW as u64));
        assert_eq!(latency.window(Stage::Encode).samples, 0);
    }
}
