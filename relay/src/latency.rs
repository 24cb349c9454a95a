//! Per-stage latency: Prometheus histograms for scraping, and a sliding window of recent
//! samples for the p50/p95/p99 that `/status` (and so the operator) reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, Registry};

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
