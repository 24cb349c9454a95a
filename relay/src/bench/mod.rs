//! Benchmarks. Without `--input`, `livefilter-relay bench` times one `encode` call per frame on
//! the test pattern and prints one [`EncodeBenchReport`] line per codec; with `--input clip.y4m
//! --filter NAME` it runs the whole per-frame path ([`pipeline`]). Run in release on the target
//! machine.

pub mod clip;
pub mod pipeline;

use std::fmt;
use std::time::{Duration, Instant};

use crate::codec::{CodecError, EncoderConfig, VideoCodec, new_encoder};
use crate::testpattern::{TestPattern, TestPatternError};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The encoder could not be created or failed on a frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The test pattern could not be made at the requested size.
    #[error("test pattern at the benchmark size: {0}")]
    Pattern(#[from] TestPatternError),
    /// Zero frames requested.
    #[error("benchmark needs at least one frame")]
    NoFrames,
}

/// Timings of one encoder run.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeBenchReport {
    /// The codec measured.
    pub codec: VideoCodec,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frames fed to the encoder.
    pub frames: u64,
    /// Frames for which the encoder produced output (the rest were skipped by rate control).
    pub encoded_frames: u64,
    /// Keyframes among the output.
    pub keyframes: u64,
    /// Median encode time in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile encode time in milliseconds.
    pub p99_ms: f64,
    /// Mean encode time in milliseconds.
    pub mean_ms: f64,
    /// Mean output bytes per input frame.
    pub mean_bytes: f64,
    /// Resulting bitrate in kbit/s at the configured frame rate.
    pub kbps: f64,
}

impl fmt::Display for EncodeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "encode {:<5}{:>10}  frames={:<5} p50={:.2}ms  p99={:.2}ms  mean={:.2}ms  bytes/frame={:.0}  kbps={:.0}  keyframes={}",
            self.codec.to_string(),
            format!("{}x{}", self.width, self.height),
            self.frames,
            self.p50_ms,
            self.p99_ms,
            self.mean_ms,
            self.mean_bytes,
            self.kbps,
            self.keyframes,
        )
    }
}

/// Encodes `frames` test-pattern frames at `width`x`height` with `codec` (overriding
/// `config.codec`) and times each `encode` call alone; pattern rendering is not timed.
pub fn encode_bench(
    codec: VideoCodec,
    width: u32,
    height: u32,
    frames: u64,
    config: &EncoderConfig,
    pattern: &TestPattern,
) -> Result<EncodeBenchReport, BenchError> {
    if frames == 0 {
        return Err(BenchError::NoFrames);
    }
    let resized;
    let pattern = if (pattern.width(), pattern.height()) == (width, height) {
        pattern
    } else {
        resized = pattern.with_size(width, height)?;
        &resized
    };
    let config = EncoderConfig {
        codec,
        ..config.clone()
    };
    let mut encoder = new_encoder(&config)?;

    let mut times = Vec::with_capacity(frames as usize);
    let mut bytes = 0u64;
    let mut encoded_frames = 0;
    let mut keyframes = 0;
    for i in 0..frames {
        let frame = pattern.frame(i);
        let start = Instant::now();
        let out = encoder.encode(&frame, Duration::from_secs(i) / config.fps.max(1), false)?;
        times.push(start.elapsed());
        if let Some(out) = out {
            bytes += out.data.len() as u64;
            encoded_frames += 1;
            keyframes += out.keyframe as u64;
        }
    }

    let mean_bytes = bytes as f64 / frames as f64;
    let report = EncodeBenchReport {
        codec,
        width,
        height,
        frames,
        encoded_frames,
        keyframes,
        p50_ms: percentile_ms(&mut times, 0.50),
        p99_ms: percentile_ms(&mut times, 0.99),
        mean_ms: ms(times.iter().sum::<Duration>()) / frames as f64,
        mean_bytes,
        kbps: mean_bytes * 8.0 * config.fps as f64 / 1000.0,
    };
    tracing::debug!(%report, "encode benchmark finished");
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `times` (sorted in place), in milliseconds.
fn percentile_ms(times: &mut [Duration], p: f64) -> f64 {
    times.sort_unstable();
    let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
    ms(times[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpattern::{DEFAULT_FONT_PATH, load_font};

    fn pattern(width: u32, height: u32) -> TestPattern {
        let font = load_font(DEFAULT_FONT_PATH).unwrap_or_else(|e| {
            panic!("test font unavailable: {e} (install Debian fonts-dejavu-core, scripts/setup.sh)")
        });
        TestPattern::new(width, height, 30, font).unwrap()
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut times: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut times, 0.50), 50.0);
        assert_eq!(percentile_ms(&mut times, 0.99), 99.0);
        assert_eq!(percentile_ms(&mut [Duration::from_millis(7)], 0.99), 7.0);
    }

    #[test]
    fn encode_bench_reports_every_frame_at_the_requested_size() {
        let config = EncoderConfig::default();

        let report = encode_bench(VideoCodec::Vp8, 160, 90, 5, &config, &pattern(320, 180)).unwrap();

        assert_eq!(
            (report.codec, report.width, report.height, report.frames),
            (VideoCodec::Vp8, 160, 90, 5)
        );
        assert_eq!(report.encoded_frames, 5);
        assert!(report.keyframes >= 1);
        assert!(report.p50_ms > 0.0 && report.p99_ms >= report.p50_ms && report.mean_bytes > 0.0);
        let line = report.to_string();
        assert!(
            line.starts_with("encode vp8") && line.contains("160x90") && line.contains("frames=5"),
            "{line}"
        );
    }

    #[test]
    fn encode_bench_rejects_zero_frames() {
        let result = encode_bench(
            VideoCodec::H264,
            160,
            90,
            0,
            &EncoderConfig::default(),
            &pattern(160, 90),
        );
        assert!(matches!(result, Err(BenchError::NoFrames)));
    }

    /// Release-mode figures: `cargo test --release -p livefilter-relay --lib bench::tests::encode_720p -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn encode_720p_figures() {
        let pattern = pattern(1280, 720);
        let start = Instant::now();
        for i in 0..300 {
            std::hint::black_box(pattern.frame(i));
        }
        println!("testpattern 1280x720 {:.3}ms/frame", ms(start.elapsed()) / 300.0);
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let config = EncoderConfig {
                codec,
                bitrate_kbps: 2500,
                ..EncoderConfig::default()
            };
            println!("{}", encode_bench(codec, 1280, 720, 300, &config, &pattern).unwrap());
        }
    }
}
