//! The test-pattern pipeline: generate → encode → every publisher, on a dedicated thread so
//! CPU work never stalls the async runtime. Frame i is due at start + i/fps (no drift); a
//! pipeline that falls behind skips frames (counted) rather than queueing them.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::codec::{VideoEncoder, VideoCodec};
use crate::metrics::{DropReason, Metrics};
use crate::publish::{KeyframeRequest, OutgoingFrame, PublisherHandle};
use crate::testpattern::TestPattern;

/// What the scheduler decides for the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Too early: wait this long.
    Wait(Duration),
    /// Produce frame `index`, skipping `skipped` frames that are already too late.
    Produce { index: u64, skipped: u64 },
}

/// Decides about frame `next` at `elapsed` since start. A frame more than one interval late is
/// skipped so the output stays on the wall clock.
pub fn schedule(next: u64, elapsed: Duration, fps: u32) -> Step {
    let due = Duration::from_secs_f64(next as f64 / f64::from(fps));
    if elapsed < due {
        return Step::Wait(due - elapsed);
    }
    let current = (elapsed.as_secs_f64() * f64::from(fps)).floor() as u64;
    if current > next + 1 {
        Step::Produce { index: current, skipped: current - next }
    } else {
        Step::Produce { index: next, skipped: 0 }
    }
}

/// Everything the test-pattern thread needs.
pub struct TestPatternPipeline {
    /// The generator.
    pub pattern: TestPattern,
    /// The encoder.
    pub encoder: Box<dyn VideoEncoder>,
    /// Where encoded frames go.
    pub publishers: Vec<PublisherHandle>,
    /// Raised by publishers when a keyframe is needed.
    pub keyframes: KeyframeRequest,
    /// Counters and histograms.
    pub metrics: Metrics,
}

impl TestPatternPipeline {
    /// Starts the thread; it ends when `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> std::io::Result<JoinHandle<()>> {
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        // Dropping the sender wakes the thread's timed wait at once.
        tokio::spawn(async move {
            shutdown.cancelled().await;
            drop(stop_tx);
        });
        std::thread::Builder::new().name("test-pattern".into()).spawn(move || self.run(stop_rx))
    }

    fn run(mut self, stop: std_mpsc::Receiver<()>) {
        let fps = self.pattern.fps();
        let frame_duration = Duration::from_secs_f64(1.0 / f64::from(fps));
        let codec: VideoCodec = self.encoder.codec();
        let codec_label = codec.to_string();
        let start = Instant::now();
        let mut next = 0u64;
        tracing::info!(width = self.pattern.width(), height = self.pattern.height(), fps, %codec, "test pattern started");
        loop {
            match schedule(next, start.elapsed(), fps) {
                Step::Wait(d) => match stop.recv_timeout(d) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                },
                Step::Produce { index, skipped } => {
                    if skipped > 0 {
                        tracing::debug!(skipped, "test pattern behind schedule");
                        for _ in 0..skipped {
                            self.metrics.drop_frame("pipeline", DropReason::Late);
                        }
                    }
                    let captured = start + Duration::from_secs_f64(index as f64 / f64::from(fps));
                    let picture = self.pattern.frame(index);
                    self.metrics.frames_generated.inc();
                    let force = index == 0 || self.keyframes.take();
                    let encode_start = Instant::now();
                    let encoded = self.encoder.encode(&picture, force);
                    self.metrics.encode_seconds.observe(encode_start.elapsed().as_secs_f64());
                    match encoded {
                        Ok(Some(frame)) => {
                            self.metrics.frames_encoded.with_label_values(&[&codec_label]).inc();
                            let out = OutgoingFrame { frame, captured, duration: frame_duration * (skipped as u32 + 1) };
                            for p in &self.publishers {
                                p.offer(out.clone());
                            }
                        }
                        Ok(None) => self.metrics.drop_frame("pipeline", DropReason::EncoderSkipped),
                        Err(e) => {
                            tracing::warn!(error = %e, index, "encode failed");
                            self.metrics.drop_frame("pipeline", DropReason::EncodeError);
                            self.keyframes.request();
                        }
                    }
                    next = index + 1;
                }
            }
        }
        tracing::info!(frames = next, "test pattern stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_frames_wait_until_their_due_time() {
        assert_eq!(schedule(3, Duration::from_millis(90), 30), Step::Wait(Duration::from_millis(10)));
    }

    #[test]
    fn a_frame_due_now_is_produced_without_skipping() {
        assert_eq!(schedule(3, Duration::from_millis(101), 30), Step::Produce { index: 3, skipped: 0 });
    }

    #[test]
    fn falling_more_than_a_frame_behind_skips_to_the_current_frame() {
        // At 250 ms, frame 7 (233 ms) is current; 3..6 are stale.
        assert_eq!(schedule(3, Duration::from_millis(250), 30), Step::Produce { index: 7, skipped: 4 });
    }

    #[test]
    fn due_times_do_not_drift_over_an_hour() {
        let index = 30 * 3600;
        assert_eq!(schedule(index, Duration::from_secs(3600), 30), Step::Produce { index, skipped: 0 });
    }
}
