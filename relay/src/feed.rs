//! Feeds a browser session's tracks into the media spine: video RTP → `ingest` (decode) → the
//! newest-frame slot, or, with passthrough in the output's own codec, the browser's frames
//! straight to the publishers (no decode, no encode); Opus audio → every publisher, untouched.
//! Knows nothing of HTTP or of the session's lifecycle: it runs until its track ends or the
//! session's token is cancelled.

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::abs_capture::{self, CaptureClock};
use crate::codec::{EncodedFrame, VideoCodec};
use crate::frame::FrameTimes;
use crate::ingest::{
    DecodedFrame, ForwardedFrame, IngestError, Upstream, VideoIngestConfig, VideoIngestStats, forward_video_track,
    run_video_track, track_codec,
};
use crate::latency::Stage;
use crate::metrics::{DropReason, Metrics};
use crate::pipeline::InputFrame;
use crate::publish::congestion::{BitrateEstimate, BitrateLimits};
use crate::publish::rtp::MediaTime;
use crate::publish::{AudioPacket, KeyframeRequest, OutgoingFrame, PublisherHandle};
use crate::rate::FpsMeter;
use crate::slot::NewestSlot;

/// The RTP clock of Opus (RFC 7587), whatever the sampling rate.
const OPUS_CLOCK_RATE: u32 = 48_000;

/// Passthrough without transcoding: when the browser sends the output's codec, its frames go
/// to the publishers as they are; the publishers' keyframe requests and bitrate go back to the
/// browser (PLI, REMB), whose encoder then serves the outputs directly.
#[derive(Clone)]
pub struct Forwarding {
    /// The output codec: only a browser sending it is forwarded (any other is transcoded).
    pub codec: VideoCodec,
    /// Raised by the publishers when a viewer needs a keyframe.
    pub keyframes: KeyframeRequest,
    /// The driving publishers' estimates (Sora, WHIP): the browser is held to the lowest.
    pub estimates: Vec<BitrateEstimate>,
    /// The configured range; its start applies while no publisher has an estimate.
    pub limits: BitrateLimits,
}

impl Forwarding {
    /// The most the browser should send now, in bit/s.
    pub fn max_bitrate(&self) -> f64 {
        self.estimates
            .iter()
            .filter_map(BitrateEstimate::get)
            .reduce(f64::min)
            .unwrap_or(self.limits.start_bps)
            .clamp(self.limits.min_bps, self.limits.max_bps)
    }
}

/// Where a session's media goes; shared by every session of the relay.
#[derive(Clone)]
pub struct MediaSinks {
    /// The filter's input: always the newest decoded frame.
    pub slot: Arc<NewestSlot<InputFrame>>,
    /// Publishers receiving the forwarded audio.
    pub publishers: Vec<PublisherHandle>,
    /// Counters.
    pub metrics: Metrics,
    /// The current (or last) video track's counters, for `/status`.
    pub video_stats: Arc<Mutex<Option<Arc<VideoIngestStats>>>>,
    /// Forward the browser's frames instead of decoding them, when it sends this codec.
    pub forwarding: Option<Forwarding>,
}

impl MediaSinks {
    /// Sinks for `slot` and `publishers`.
    pub fn new(slot: Arc<NewestSlot<InputFrame>>, publishers: Vec<PublisherHandle>, metrics: Metrics) -> Self {
        Self {
            slot,
            publishers,
            metrics,
            video_stats: Arc::new(Mutex::new(None)),
            forwarding: None,
        }
    }

    /// Passes frames of `forwarding.codec` on without transcoding (see [`Forwarding`]).
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding = Some(forwarding);
        self
    }

    /// Frames assembled from the browser's RTP in the current (or last) session.
    pub fn frames_received(&self) -> u64 {
        self.video_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |s| s.snapshot().frames_assembled)
    }

    /// The negotiated input codec of the current (or last) video track.
    pub fn input_codec(&self) -> Option<String> {
        self.video_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|s| s.snapshot().codec)
            .map(|c| c.to_string())
    }

    /// Forgets what the ended session left behind: its unread frame and its latency window.
    pub fn reset(&self) {
        self.slot.clear();
        self.metrics.latency.reset_windows();
    }

    /// Receives the session `epoch`'s camera until the track ends or `cancel`; decoded frames
    /// replace the slot's unread one.
    pub async fn run_video(
        &self,
        track: Arc<dyn TrackRemote>,
        epoch: u64,
        config: VideoIngestConfig,
        cancel: CancellationToken,
    ) -> Result<(), IngestError> {
        let stats = Arc::new(VideoIngestStats::with_metrics(self.metrics.clone()));
        *self.video_stats.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&stats));
        if let Some(forwarding) = &self.forwarding {
            match track_codec(&*track).await {
                Ok((_, codec)) if codec == forwarding.codec => {
                    return self
                        .forward_video(track, epoch, config, cancel, stats, forwarding.clone())
                        .await;
                }
                Ok((_, codec)) => {
                    tracing::info!(input = %codec, output = %forwarding.codec, "the browser sends another codec than the output's: transcoding")
                }
                Err(e) => return Err(e),
            }
        }
        let sink = self.session_sink(&stats, &cancel, move |sinks, decoded: DecodedFrame, fps| {
            sinks.on_decoded(epoch, decoded, fps)
        });
        tokio::select! {
            result = run_video_track(track, config, stats, sink) => result,
            _ = cancel.cancelled() => Ok(()),
        }
    }

    /// Wraps `deliver` for the ingest: nothing that comes after the session's end reaches the
    /// outputs, and every frame the ingest assembled counts as received.
    fn session_sink<T>(
        &self,
        stats: &Arc<VideoIngestStats>,
        cancel: &CancellationToken,
        mut deliver: impl FnMut(&MediaSinks, T, &mut FpsMeter) + Send + 'static,
    ) -> impl FnMut(T) + Send + 'static {
        let (stats, sinks, cancel) = (Arc::clone(stats), self.clone(), cancel.clone());
        let mut fps = FpsMeter::default();
        let mut seen = 0u64;
        move |item: T| {
            // A frame that comes after its session ended must not reach the next session's output.
            if cancel.is_cancelled() {
                return;
            }
            let assembled = stats.snapshot().frames_assembled;
            sinks.metrics.frames_received.inc_by(assembled.saturating_sub(seen));
            seen = assembled;
            deliver(&sinks, item, &mut fps);
        }
    }

    async fn forward_video(
        &self,
        track: Arc<dyn TrackRemote>,
        epoch: u64,
        config: VideoIngestConfig,
        cancel: CancellationToken,
        stats: Arc<VideoIngestStats>,
        forwarding: Forwarding,
    ) -> Result<(), IngestError> {
        let encoded = self
            .metrics
            .frames_encoded
            .with_label_values(&[&forwarding.codec.to_string()]);
        let sink = self.session_sink(&stats, &cancel, move |sinks, frame: ForwardedFrame, fps| {
            encoded.inc();
            sinks.on_forwarded(epoch, frame, fps)
        });
        let upstream = Upstream {
            keyframes: forwarding.keyframes.clone(),
            max_bitrate: Box::new(move || Some(forwarding.max_bitrate())),
        };
        tokio::select! {
            result = forward_video_track(track, config, stats, sink, upstream) => result,
            _ = cancel.cancelled() => Ok(()),
        }
    }

    fn on_forwarded(&self, epoch: u64, frame: ForwardedFrame, fps: &mut FpsMeter) {
        let m = &self.metrics;
        let now = std::time::Instant::now();
        m.frames_forwarded.inc();
        let rate = fps.tick(now);
        m.set_video("input", frame.width, frame.height, rate);
        m.set_video("output", frame.width, frame.height, rate);
        // No decode, filter or encode: the frame is "encoded" when it is whole.
        let mut times = FrameTimes::new(frame.arrival);
        times.encoded = Some(now);
        let out = OutgoingFrame {
            frame: EncodedFrame {
                data: frame.data,
                keyframe: frame.keyframe,
                width: frame.width,
                height: frame.height,
            },
            times,
            media_time: MediaTime {
                epoch,
                rtp_timestamp: frame.rtp_timestamp,
            },
            capture_ntp: frame.capture_ntp,
            simulcast: None,
        };
        for p in &self.publishers {
            p.offer(out.clone());
        }
        m.frame_out(now);
    }

    fn on_decoded(&self, epoch: u64, decoded: DecodedFrame, fps: &mut FpsMeter) {
        let m = &self.metrics;
        m.frames_decoded.inc();
        m.latency.observe(
            Stage::Decode,
            decoded.decoded_at.saturating_duration_since(decoded.arrival),
        );
        let rate = fps.tick(decoded.decoded_at);
        m.set_video("input", decoded.frame.width(), decoded.frame.height(), rate);
        let mut times = FrameTimes::new(decoded.arrival);
        times.decoded = Some(decoded.decoded_at);
        let input = InputFrame {
            picture: decoded.frame,
            times,
            media_time: MediaTime {
                epoch,
                rtp_timestamp: decoded.rtp_timestamp,
            },
            capture_ntp: decoded.capture_ntp,
        };
        if self.slot.put(input).is_some() {
            m.drop_frame("pipeline", DropReason::Stale);
        }
    }

    /// Forwards the session `epoch`'s Opus packets, untouched, to every publisher until the
    /// track ends or `cancel`. With `abs-capture-time` (extension `capture_time_id`), each
    /// packet's capture-to-arrival lag feeds the publishers' lip sync.
    pub async fn run_audio(
        &self,
        track: Arc<dyn TrackRemote>,
        epoch: u64,
        capture_time_id: Option<u8>,
        cancel: CancellationToken,
    ) {
        let mut capture_clock = CaptureClock::new(OPUS_CLOCK_RATE);
        loop {
            let event = tokio::select! {
                e = track.poll() => e,
                _ = cancel.cancelled() => break,
            };
            match event {
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                    if let Some(id) = capture_time_id {
                        let timestamp = packet.header.timestamp;
                        if let Some(ntp) = packet.header.get_extension(id).as_deref().and_then(abs_capture::parse) {
                            capture_clock.observe(timestamp, ntp);
                        }
                        if let Some(captured) = capture_clock.estimate(timestamp) {
                            self.metrics.latency.av.observe_audio(captured, abs_capture::ntp_now());
                        }
                    }
                    let audio = AudioPacket {
                        payload: packet.payload.clone(),
                        media_time: MediaTime {
                            epoch,
                            rtp_timestamp: packet.header.timestamp,
                        },
                        sequence: packet.header.sequence_number,
                        marker: packet.header.marker,
                    };
                    for p in &self.publishers {
                        p.offer_audio(audio.clone());
                    }
                    self.metrics.audio_packets_forwarded.inc();
                }
                Some(TrackRemoteEvent::OnEnded) | None => break,
                Some(_) => {}
            }
        }
        tracing::info!("browser audio ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding(estimates: Vec<BitrateEstimate>) -> Forwarding {
        Forwarding {
            codec: VideoCodec::Vp8,
            keyframes: KeyframeRequest::default(),
            estimates,
            limits: BitrateLimits::from_kbps(150, 1000, 1500),
        }
    }

    #[test]
    fn the_browser_is_held_to_the_lowest_publishers_estimate_within_the_configured_range() {
        let (sora, whip) = (BitrateEstimate::default(), BitrateEstimate::default());
        let f = forwarding(vec![sora.clone(), whip.clone()]);

        let before_any = f.max_bitrate();
        sora.set(900_000.0);
        whip.set(600_000.0);
        let lowest = f.max_bitrate();
        whip.set(20_000.0);
        let floored = f.max_bitrate();
        whip.clear();
        sora.set(9_000_000.0);
        let capped = f.max_bitrate();

        assert_eq!(before_any, 1_000_000.0, "the configured start before any estimate");
        assert_eq!(lowest, 600_000.0);
        assert_eq!(floored, 150_000.0);
        assert_eq!(capped, 1_500_000.0);
    }
}
