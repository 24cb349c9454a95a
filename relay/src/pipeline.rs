//! The pipelines: test pattern → encode → publishers, and browser frames → newest-frame slot →
//! filter → encode → publishers, each on a dedicated thread so CPU work never stalls the async
//! runtime. Frame i is due at start + i/fps (no drift); a
//! pipeline that falls behind skips frames (counted) rather than queueing them.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::codec::VideoEncoder;
use crate::filter::{Filter, FilterParams, Filtered};
use crate::frame::{FrameTimes, I420Frame};
use crate::health::{self, Health, Heartbeat};
use crate::latency::Stage;
use crate::layers::LayerEncoders;
use crate::media_clock::MediaClock;
use crate::metrics::{DropReason, Metrics};
use crate::publish::congestion::EncoderBitrate;
use crate::publish::keyframe::{DEFAULT_KEYFRAME_REQUEST_INTERVAL, KeyframeThrottle};
use crate::publish::rtp::MediaTime;
use crate::publish::{KeyframeRequest, OutgoingFrame, PublisherHandle};
use crate::rate::FpsMeter;
use crate::scale::Scaler;
use crate::slot::{NewestSlot, Take};
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
        Step::Produce {
            index: current,
            skipped: current - next,
        }
    } else {
        Step::Produce {
            index: next,
            skipped: 0,
        }
    }
}

/// The frame rate a new source's first frame is assumed to follow the last one at.
const REBASE_FPS: u32 = 30;

/// Encodes filtered frames and hands them to every publisher; shared by the test-pattern and
/// the browser pipelines. The encoder runs on the frames' media time; keyframe requests are
/// honoured at most once per interval of it.
pub struct EncodeStage {
    encoder: Box<dyn VideoEncoder>,
    codec_label: String,
    publishers: Vec<PublisherHandle>,
    keyframes: KeyframeRequest,
    throttle: KeyframeThrottle,
    clock: MediaClock,
    metrics: Metrics,
    output_fps: FpsMeter,
    heartbeat: Option<Heartbeat>,
    bitrate: Option<EncoderBitrate>,
    layers: Option<LayerEncoders>,
}

impl EncodeStage {
    /// A stage feeding `publishers`; `keyframes` is raised by them when a viewer needs one.
    pub fn new(
        encoder: Box<dyn VideoEncoder>,
        publishers: Vec<PublisherHandle>,
        keyframes: KeyframeRequest,
        metrics: Metrics,
    ) -> Self {
        let codec_label = encoder.codec().to_string();
        Self {
            encoder,
            codec_label,
            publishers,
            keyframes,
            throttle: KeyframeThrottle::new(DEFAULT_KEYFRAME_REQUEST_INTERVAL),
            clock: MediaClock::new(REBASE_FPS),
            metrics,
            output_fps: FpsMeter::default(),
            heartbeat: None,
            bitrate: None,
            layers: None,
        }
    }

    /// Encodes the simulcast layers a Sora session asks for through `layers` as well (see
    /// [`crate::layers`]).
    pub fn with_simulcast(mut self, layers: LayerEncoders) -> Self {
        self.layers = Some(layers.with_output_keyframes(self.keyframes.clone()));
        self
    }

    /// Follows the publishers' congestion-control estimates (see [`EncoderBitrate`]); without
    /// this the bitrate stays where the encoder was configured.
    pub fn with_bitrate_control(mut self, bitrate: EncoderBitrate) -> Self {
        self.metrics
            .encoder_target_bitrate
            .set(f64::from(bitrate.current_kbps()) * 1000.0);
        self.bitrate = Some(bitrate);
        self
    }

    /// Applies a changed congestion-control estimate before the next frame.
    fn follow_estimate(&mut self) {
        let Some(kbps) = self.bitrate.as_mut().and_then(|b| b.poll(Instant::now())) else {
            return;
        };
        match self.encoder.set_bitrate_kbps(kbps) {
            Ok(()) => {
                tracing::debug!(kbps, "encoder bitrate follows the publishers' estimate");
                self.metrics.encoder_target_bitrate.set(f64::from(kbps) * 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, kbps, "the encoder refused a bitrate change"),
        }
    }

    /// Honours keyframe requests at most once per `interval` of media time (default 500 ms).
    pub fn with_keyframe_request_interval(mut self, interval: Duration) -> Self {
        self.throttle = KeyframeThrottle::new(interval);
        self
    }

    /// Reports every encoded frame as the `encoder` stage's heartbeat. Call it on the thread
    /// that encodes, so a panic there is attributed to this stage.
    pub fn supervise(&mut self, health: &Health) {
        self.heartbeat = Some(health.register(health::ENCODER));
    }

    /// Asks for a keyframe on the next frame (a new input, a new viewer).
    pub fn request_keyframe(&self) {
        self.keyframes.request();
    }

    /// Encodes one picture (a keyframe when asked for) and offers it to every publisher.
    pub fn encode(
        &mut self,
        picture: &I420Frame,
        mut times: FrameTimes,
        media_time: MediaTime,
        capture_ntp: Option<u64>,
    ) {
        self.follow_estimate();
        let pts = self.clock.pts(media_time);
        let force = self.throttle.force(self.keyframes.take(), pts);
        let start = Instant::now();
        let encoded = self.encoder.encode(picture, pts, force);
        let done = Instant::now();
        self.metrics
            .encode_seconds
            .observe(done.duration_since(start).as_secs_f64());
        match encoded {
            Ok(Some(frame)) => {
                let answered = self.throttle.encoded(pts, frame.keyframe);
                let requests = &self.metrics.keyframe_requests_answered;
                requests.with_label_values(&["honoured"]).inc_by(answered.honoured);
                requests.with_label_values(&["coalesced"]).inc_by(answered.coalesced);
                if let Some(beat) = &self.heartbeat {
                    beat.beat_at(done);
                }
                let fps = self.output_fps.tick(done);
                let simulcast = self.layers.as_mut().and_then(|layers| layers.encode(picture, pts, fps));
                let done = if simulcast.is_some() { Instant::now() } else { done };
                times.encoded = Some(done);
                if let Some(captured) = capture_ntp {
                    self.metrics
                        .latency
                        .av
                        .observe_video(captured, crate::abs_capture::ntp_now());
                }
                if let Some(filter_end) = times.filter_end {
                    self.metrics
                        .latency
                        .observe(Stage::Encode, done.saturating_duration_since(filter_end));
                }
                self.metrics
                    .frames_encoded
                    .with_label_values(&[&self.codec_label])
                    .inc();
                self.metrics.set_video("output", frame.width, frame.height, fps);
                let out = OutgoingFrame {
                    frame,
                    times,
                    media_time,
                    capture_ntp,
                    simulcast,
                };
                for p in &self.publishers {
                    p.offer(out.clone());
                }
                self.metrics.frame_out(Instant::now());
            }
            Ok(None) => self.metrics.drop_frame("pipeline", DropReason::EncoderSkipped),
            Err(e) => {
                tracing::warn!(error = %e, "encode failed");
                self.metrics.drop_frame("pipeline", DropReason::EncodeError);
                self.keyframes.request();
            }
        }
    }
}

/// Everything the test-pattern thread needs.
pub struct TestPatternPipeline {
    /// The generator.
    pub pattern: TestPattern,
    /// Encoder and publishers.
    pub stage: EncodeStage,
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
        std::thread::Builder::new()
            .name("test-pattern".into())
            .spawn(move || self.run(stop_rx))
    }

    fn run(mut self, stop: std_mpsc::Receiver<()>) {
        let fps = self.pattern.fps();
        let start = Instant::now();
        let mut next = 0u64;
        self.stage.request_keyframe();
        tracing::info!(
            width = self.pattern.width(),
            height = self.pattern.height(),
            fps,
            "test pattern started"
        );
        loop {
            match schedule(next, start.elapsed(), fps) {
                Step::Wait(d) => match stop.recv_timeout(d) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                },
                Step::Produce { index, skipped } => {
                    if skipped > 0 {
                        tracing::debug!(skipped, "test pattern behind schedule");
                        self.stage
                            .metrics
                            .frames_dropped
                            .with_label_values(&["pipeline", DropReason::Late.as_str()])
                            .inc_by(skipped);
                    }
                    let times = FrameTimes::new(Instant::now());
                    let picture = self.pattern.frame(index);
                    self.stage.metrics.frames_generated.inc();
                    let mut times = times;
                    times.filter_end = Some(Instant::now());
                    // Frame i's media time is exactly i/fps: the clock on screen and the RTP
                    // timestamp agree, whatever the scheduling jitter.
                    let rtp_timestamp = ((index as f64) * 90_000.0 / f64::from(fps)).round() as u64 as u32;
                    self.stage.encode(
                        &picture,
                        times,
                        MediaTime {
                            epoch: 0,
                            rtp_timestamp,
                        },
                        // Generated now: a viewer can measure the relay's latency from it.
                        Some(crate::abs_capture::ntp_now()),
                    );
                    next = index + 1;
                }
            }
        }
        tracing::info!(frames = next, "test pattern stopped");
    }
}

/// A decoded browser frame waiting in the newest-frame slot.
#[derive(Debug)]
pub struct InputFrame {
    /// The picture.
    pub picture: I420Frame,
    /// Stage times so far (received, decoded).
    pub times: FrameTimes,
    /// The browser's media time (90 kHz) and session epoch.
    pub media_time: MediaTime,
    /// When the browser captured it (NTP), if it said so (`abs-capture-time`).
    pub capture_ntp: Option<u64>,
}

/// The browser pipeline's filter thread: newest-frame slot -> filter -> scale -> encode.
pub struct FilterPipeline {
    /// Fed by the ingest; holds at most one frame.
    pub slot: Arc<NewestSlot<InputFrame>>,
    /// The filter.
    pub filter: Box<dyn Filter>,
    /// Live parameter changes (`PATCH /filter`), applied between frames.
    pub params: Option<tokio::sync::watch::Receiver<FilterParams>>,
    /// Scale every frame to this size, or follow the input's size (`None`).
    pub output_size: Option<(u32, u32)>,
    /// Encoder and publishers.
    pub stage: EncodeStage,
    /// Where the `filter` and `encoder` stages report; a panic on the thread is reported too.
    pub health: Health,
}

impl FilterPipeline {
    /// Starts the thread; it ends when the slot is closed.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let health = self.health.clone();
        health.spawn_thread("filter", move || self.run())
    }

    fn run(mut self) {
        let heartbeat = self.health.register(health::FILTER);
        self.stage.supervise(&self.health);
        let mut scaler = Scaler::default();
        tracing::info!(filter = self.filter.name(), output_size = ?self.output_size, "filter thread started");
        loop {
            let input = match self.slot.take(Duration::from_millis(200)) {
                Take::Frame(f) => f,
                Take::Timeout => continue,
                Take::Closed => break,
            };
            self.take_params();
            let InputFrame {
                picture,
                mut times,
                media_time,
                capture_ntp,
            } = input;
            let start = Instant::now();
            times.filter_start = Some(start);
            if let Some(decoded) = times.decoded {
                self.stage
                    .metrics
                    .latency
                    .observe(Stage::Queue, start.saturating_duration_since(decoded));
            }
            let Filtered {
                frame: filtered,
                times: parts,
            } = match self.filter.apply(picture) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "filter failed; frame dropped");
                    self.stage.metrics.drop_frame("pipeline", DropReason::FilterError);
                    continue;
                }
            };
            let end = Instant::now();
            heartbeat.beat_at(end);
            times.filter_end = Some(end);
            self.stage
                .metrics
                .latency
                .observe(Stage::Filter, end.duration_since(start));
            if let Some(parts) = parts {
                let latency = &self.stage.metrics.latency;
                latency.observe(Stage::Preprocess, parts.preprocess);
                latency.observe(Stage::Infer, parts.infer);
                latency.observe(Stage::Postprocess, parts.postprocess);
            }
            self.stage.metrics.frames_filtered.inc();
            let scaled = match self.output_size {
                Some((w, h)) => match scaler.scale(filtered, w, h) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "scaling failed; frame dropped");
                        self.stage.metrics.drop_frame("pipeline", DropReason::FilterError);
                        continue;
                    }
                },
                None => filtered,
            };
            self.stage.encode(&scaled, times, media_time, capture_ntp);
        }
        tracing::info!("filter thread stopped");
    }

    fn take_params(&mut self) {
        let Some(rx) = self.params.as_mut() else { return };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let params = rx.borrow_and_update().clone();
        match self.filter.set_params(&params) {
            Ok(()) => tracing::info!(filter = self.filter.name(), ?params, "filter parameters changed"),
            Err(e) => tracing::warn!(error = %e, "filter refused new parameters; keeping the old ones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_frames_wait_until_their_due_time() {
        assert_eq!(
            schedule(3, Duration::from_millis(90), 30),
            Step::Wait(Duration::from_millis(10))
        );
    }

    #[test]
    fn a_frame_due_now_is_produced_without_skipping() {
        assert_eq!(
            schedule(3, Duration::from_millis(101), 30),
            Step::Produce { index: 3, skipped: 0 }
        );
    }

    #[test]
    fn falling_more_than_a_frame_behind_skips_to_the_current_frame() {
        // At 250 ms, frame 7 (233 ms) is current; 3..6 are stale.
        assert_eq!(
            schedule(3, Duration::from_millis(250), 30),
            Step::Produce { index: 7, skipped: 4 }
        );
    }

    #[test]
    fn due_times_do_not_drift_over_an_hour() {
        let index = 30 * 3600;
        assert_eq!(
            schedule(index, Duration::from_secs(3600), 30),
            Step::Produce { index, skipped: 0 }
        );
    }
}

#[cfg(test)]
mod filter_pipeline_tests {
    use super::*;
    use crate::codec::{EncoderConfig, VideoCodec, new_decoder, new_encoder};
    use crate::filter::Passthrough;
    use crate::publish::PublisherInputs;

    fn pipeline(
        output_size: Option<(u32, u32)>,
    ) -> (Arc<NewestSlot<InputFrame>>, PublisherInputs, Metrics, JoinHandle<()>) {
        let metrics = Metrics::new();
        let (handle, inputs) = PublisherHandle::new("test", metrics.clone());
        let encoder = new_encoder(&EncoderConfig {
            codec: VideoCodec::Vp8,
            ..Default::default()
        })
        .unwrap();
        let stage = EncodeStage::new(encoder, vec![handle], KeyframeRequest::default(), metrics.clone());
        let slot = Arc::new(NewestSlot::new());
        let thread = FilterPipeline {
            slot: Arc::clone(&slot),
            filter: Box::new(Passthrough),
            params: None,
            output_size,
            stage,
            health: Health::default(),
        }
        .spawn()
        .unwrap();
        (slot, inputs, metrics, thread)
    }

    fn input(yuv: [u8; 3], w: u32, h: u32, ts: u32) -> InputFrame {
        let now = Instant::now();
        let mut times = FrameTimes::new(now);
        times.decoded = Some(now);
        InputFrame {
            picture: I420Frame::filled(w, h, yuv).unwrap(),
            times,
            media_time: MediaTime {
                epoch: 1,
                rtp_timestamp: ts,
            },
            capture_ntp: Some(u64::from(ts) << 32),
        }
    }

    #[test]
    fn passthrough_frames_come_out_encoded_with_their_pixels_and_media_time() {
        let (slot, mut inputs, metrics, thread) = pipeline(None);

        slot.put(input([120, 60, 200], 320, 180, 9000));
        let out = inputs.video.blocking_recv().unwrap();
        slot.close();
        thread.join().unwrap();

        assert_eq!(
            out.media_time,
            MediaTime {
                epoch: 1,
                rtp_timestamp: 9000
            }
        );
        assert_eq!(
            out.capture_ntp,
            Some(9000 << 32),
            "the capture time travels with the frame"
        );
        assert!(out.frame.keyframe);
        let decoded = new_decoder(VideoCodec::Vp8)
            .unwrap()
            .decode(&out.frame.data)
            .unwrap()
            .unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 180));
        let mean_y = decoded.y().iter().map(|&p| f64::from(p)).sum::<f64>() / decoded.y().len() as f64;
        assert!((mean_y - 120.0).abs() < 3.0, "mean luma {mean_y}");
        assert_eq!(metrics.frames_filtered.get(), 1);
        assert!(out.times.filter_start.is_some() && out.times.encoded.is_some());
    }

    #[test]
    fn a_slow_consumer_sees_only_the_newest_frame_and_stale_ones_are_counted() {
        let slot: NewestSlot<InputFrame> = NewestSlot::new();
        let metrics = Metrics::new();
        for ts in [1, 2, 3] {
            if slot.put(input([16, 128, 128], 16, 16, ts)).is_some() {
                metrics.drop_frame("pipeline", DropReason::Stale);
            }
        }
        let Take::Frame(newest) = slot.take(Duration::ZERO) else {
            panic!("no frame")
        };
        assert_eq!(newest.media_time.rtp_timestamp, 3);
        assert_eq!(
            metrics.frames_dropped.with_label_values(&["pipeline", "stale"]).get(),
            2
        );
    }

    #[test]
    fn with_an_output_size_every_input_size_is_scaled_to_it() {
        let (slot, mut inputs, _metrics, thread) = pipeline(Some((640, 360)));

        slot.put(input([90, 128, 128], 320, 180, 1));
        let first = inputs.video.blocking_recv().unwrap();
        slot.put(input([90, 128, 128], 1280, 720, 2));
        let second = inputs.video.blocking_recv().unwrap();
        slot.close();
        thread.join().unwrap();

        assert_eq!((first.frame.width, first.frame.height), (640, 360));
        assert_eq!((second.frame.width, second.frame.height), (640, 360));
    }

    #[test]
    fn following_the_input_size_re_encodes_at_the_new_size() {
        let (slot, mut inputs, metrics, thread) = pipeline(None);

        slot.put(input([90, 128, 128], 640, 360, 1));
        let first = inputs.video.blocking_recv().unwrap();
        slot.put(input([90, 128, 128], 960, 540, 2));
        let second = inputs.video.blocking_recv().unwrap();
        slot.close();
        thread.join().unwrap();

        assert_eq!((first.frame.width, second.frame.width), (640, 960));
        assert!(second.frame.keyframe, "a new size starts with a keyframe");
        assert_eq!(metrics.video_of("output").0, 960);
    }

    /// A filter whose model "crashes" on the first frame.
    struct PanickingFilter;

    impl Filter for PanickingFilter {
        fn name(&self) -> &'static str {
            "panicking"
        }
        fn apply(&mut self, _frame: I420Frame) -> Result<Filtered, crate::filter::FilterError> {
            panic!("segmentation model crashed");
        }
        fn set_params(&mut self, _params: &FilterParams) -> Result<(), crate::filter::FilterError> {
            Ok(())
        }
    }

    #[test]
    fn a_filter_thread_panic_is_reported_by_the_health_registry_with_the_stage_name() {
        let metrics = Metrics::new();
        let (handle, _inputs) = PublisherHandle::new("test", metrics.clone());
        let encoder = new_encoder(&EncoderConfig::default()).unwrap();
        let health = Health::default();
        let slot = Arc::new(NewestSlot::new());
        let thread = FilterPipeline {
            slot: Arc::clone(&slot),
            filter: Box::new(PanickingFilter),
            params: None,
            output_size: None,
            stage: EncodeStage::new(encoder, vec![handle], KeyframeRequest::default(), metrics),
            health: health.clone(),
        }
        .spawn()
        .unwrap();

        slot.put(input([16, 128, 128], 64, 64, 1));
        thread.join().expect("the panic is caught and reported, not propagated");

        let unhealthy = health.check(Instant::now(), false).unwrap_err();
        assert_eq!(unhealthy.stage, "filter");
        assert_eq!(unhealthy.why, "thread 'filter' panicked: segmentation model crashed");
        let died = futures_util::FutureExt::now_or_never(health.died()).expect("death announced");
        assert_eq!(died, unhealthy);
    }

    #[test]
    fn a_hundred_keyframe_requests_a_second_give_at_most_two_keyframes_a_second() {
        let metrics = Metrics::new();
        let (handle, mut inputs) = PublisherHandle::new("test", metrics.clone());
        let encoder = new_encoder(&EncoderConfig {
            keyframe_interval: Duration::ZERO,
            ..EncoderConfig::default()
        })
        .unwrap();
        let requests = KeyframeRequest::default();
        let mut stage = EncodeStage::new(encoder, vec![handle], requests.clone(), metrics.clone());
        let picture = I420Frame::filled(64, 64, [90, 128, 128]).unwrap();

        // 4 s of media time at 30 fps; 100 requests per second arrive between the frames.
        let mut keyframes_per_second = [0u32; 4];
        let mut sent = 0u64;
        for i in 0..120u32 {
            let due = u64::from(i + 1) * 100 / 30;
            while sent < due {
                requests.request();
                sent += 1;
            }
            let media_time = MediaTime {
                epoch: 1,
                rtp_timestamp: 7_000 + i * 3000,
            };
            stage.encode(&picture, FrameTimes::new(Instant::now()), media_time, None);
            let out = inputs.video.try_recv().expect("every frame is encoded");
            if out.frame.keyframe {
                keyframes_per_second[(i / 30) as usize] += 1;
            }
        }

        assert!(
            keyframes_per_second.iter().all(|&n| (1..=2).contains(&n)),
            "{keyframes_per_second:?}"
        );
        let answered = |r| metrics.keyframe_requests_answered.with_label_values(&[r]).get();
        let total: u32 = keyframes_per_second.iter().sum();
        assert_eq!(answered("honoured"), u64::from(total));
        assert!(
            answered("honoured") + answered("coalesced") <= sent && answered("coalesced") > 300,
            "{} honoured, {} coalesced of {sent}",
            answered("honoured"),
            answered("coalesced")
        );
    }
}
