//! The receive side of WebRTC media: RTP from a remote track -> complete frames -> decoded
//! pictures, with keyframe requests (PLI) when the decoder has no valid reference.
//!
//! Used by the relay's browser ingest and by the local Sora-compatible test endpoint.
//!
//! - [`depacketize`] and [`assembler`]: pure RTP -> frame logic (reordering, loss, keyframes),
//!   bounded in bytes and packets per frame.
//! - [`bitstream`] and [`limits`]: the picture size a frame declares, refused above the limit
//!   before anything decodes it; every refusal counted by reason.
//! - [`recovery`]: pure decisions: decode or skip, and PLI rate limiting.
//! - [`decode`]: the decoder thread behind a bounded queue.
//! - [`VideoReceiver`]: assembler + limits + recovery, driven packet by packet, feeding the
//!   decoder thread; it never waits on the codec.
//! - [`run_video_track`] / [`run_audio_track`]: the async loops reading a webrtc-rs track;
//!   [`forward_video_track`]: the same without decoding, frames passed on as they came.
//! - [`fuzz`]: byte-driven harnesses of the parsers, for property tests and cargo-fuzz.

pub mod assembler;
pub mod bitstream;
pub mod decode;
pub mod depacketize;
pub mod fuzz;
pub mod limits;
#[cfg(test)]
mod proptests;
pub mod recovery;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use serde::Serialize;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::abs_capture::{self, CaptureClock};
use crate::codec::{self, CodecError, VideoCodec, VideoDecoder};
use crate::frame::I420Frame;
use crate::health::Health;
use crate::metrics::{DropReason, Metrics};
use crate::publish::KeyframeRequest;

pub use assembler::{AssembledFrame, AssemblerConfig, AssemblerStats, FrameAssembler, RtpInput};
pub use decode::{DecodeJob, DecoderThread, SubmitError};
pub use depacketize::PayloadFormat;
pub use limits::{Refusal, RefusalReason, SizeLimit};
pub use recovery::{GateDecision, KeyframeGate, PliLimiter};

/// Errors of the receive side.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An RTP payload does not follow its payload format.
    #[error("malformed {format:?} RTP payload: {detail}")]
    MalformedPayload {
        /// The payload format.
        format: PayloadFormat,
        /// What was wrong.
        detail: String,
    },
    /// The track carries a codec this module cannot decode.
    #[error("unsupported video codec {0:?} (expected video/VP8 or video/H264)")]
    UnsupportedCodec(String),
    /// The track has no SSRC or codec yet.
    #[error("remote track has no negotiated codec")]
    NoCodec,
    /// The decoder could not be created.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The decoder thread could not start.
    #[error("cannot start the video decoder thread: {0}")]
    Thread(std::io::Error),
    /// The decoder thread ended while the track was still sending (it panicked; reported to
    /// the health registry).
    #[error("the video decoder thread stopped")]
    DecoderStopped,
}

impl PayloadFormat {
    /// The payload format that carries a codec.
    pub fn for_codec(codec: VideoCodec) -> Self {
        match codec {
            VideoCodec::Vp8 => PayloadFormat::Vp8,
            VideoCodec::H264 => PayloadFormat::H264,
        }
    }
}

/// Settings of a video receiver.
#[derive(Clone, Debug)]
pub struct VideoIngestConfig {
    /// At most one PLI per this interval.
    pub pli_interval: Duration,
    /// How long sequence gaps are waited for; bytes and packets per frame.
    pub assembler: AssemblerConfig,
    /// The largest picture decoded (default 1920x1080, either orientation).
    pub max_size: SizeLimit,
    /// Complete frames that may wait for the decoder thread; more are dropped.
    pub decode_queue_frames: usize,
    /// How often a stalled gap is re-checked when no packet arrives.
    pub flush_interval: Duration,
    /// The negotiated id of the `abs-capture-time` header extension, when there is one.
    pub abs_capture_time_id: Option<u8>,
    /// Where the decoder thread reports as the `decoder` stage (and its panic, if any).
    pub health: Option<Health>,
}

impl Default for VideoIngestConfig {
    fn default() -> Self {
        Self {
            pli_interval: Duration::from_millis(500),
            assembler: AssemblerConfig::default(),
            max_size: SizeLimit::default(),
            // Enough to ride out one slow key frame decode at 30 fps; more is only latency.
            decode_queue_frames: 8,
            flush_interval: Duration::from_millis(50),
            abs_capture_time_id: None,
            health: None,
        }
    }
}

/// One decoded picture and where it came from.
#[derive(Clone, Debug)]
pub struct DecodedFrame {
    /// The picture.
    pub frame: I420Frame,
    /// RTP timestamp of the frame (90 kHz).
    pub rtp_timestamp: u32,
    /// Whether it was a keyframe.
    pub keyframe: bool,
    /// Arrival of the frame's first RTP packet.
    pub arrival: Instant,
    /// When the decoder returned it.
    pub decoded_at: Instant,
    /// 0-based count of decoded frames on this track.
    pub index: u64,
    /// When the sender captured it (NTP), if the sender stamps `abs-capture-time`.
    pub capture_ntp: Option<u64>,
}

/// A browser frame passed on as it came (passthrough without transcoding): the bitstream the
/// assembler built, from a keyframe on, with the picture size its latest keyframe declared.
#[derive(Clone, Debug)]
pub struct ForwardedFrame {
    /// A VP8 frame, or an H.264 access unit in Annex-B form.
    pub data: Bytes,
    /// Whether it is a keyframe.
    pub keyframe: bool,
    /// Picture width (from the latest keyframe's header; 0 if it declared none).
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// RTP timestamp of the frame (90 kHz).
    pub rtp_timestamp: u32,
    /// Arrival of the frame's first RTP packet.
    pub arrival: Instant,
    /// When the sender captured it (NTP), if the sender stamps `abs-capture-time`.
    pub capture_ntp: Option<u64>,
}

/// What a forwarding receiver needs besides its sink: the outputs' keyframe requests, passed
/// on to the sender as PLI, and their bitrate, passed on as REMB.
pub struct Upstream {
    /// Raised by the publishers when a viewer needs a keyframe.
    pub keyframes: KeyframeRequest,
    /// The bitrate the outputs can carry now, in bit/s (`None`: no estimate yet).
    pub max_bitrate: Box<dyn Fn() -> Option<f64> + Send + Sync>,
}

/// How often the outputs' bitrate is sent to the browser (REMB).
pub const REMB_INTERVAL: Duration = Duration::from_secs(1);

/// Receives decoded frames. Implemented for any `FnMut(DecodedFrame) + Send`.
pub trait FrameSink: Send {
    /// Called once per decoded frame, on the decoder thread: keep it short (e.g. store the
    /// newest).
    fn on_frame(&mut self, frame: DecodedFrame);
}

impl<F: FnMut(DecodedFrame) + Send> FrameSink for F {
    fn on_frame(&mut self, frame: DecodedFrame) {
        self(frame)
    }
}

/// The process metrics a track's counters also feed, when it has them.
#[derive(Clone, Default)]
struct MetricsLink(Option<Metrics>);

impl fmt::Debug for MetricsLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "MetricsLink(linked)"
        } else {
            "MetricsLink(none)"
        })
    }
}

/// Live counters of one video track, shared with observers.
#[derive(Debug, Default)]
pub struct VideoIngestStats {
    metrics: MetricsLink,
    codec: OnceLock<VideoCodec>,
    packets: AtomicU64,
    bytes: AtomicU64,
    frames_assembled: AtomicU64,
    frames_decoded: AtomicU64,
    keyframes_decoded: AtomicU64,
    frames_skipped: AtomicU64,
    decode_errors: AtomicU64,
    plis_sent: AtomicU64,
    lost_packets: AtomicU64,
    dropped_frames: AtomicU64,
    decoder_backlog: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
}

/// A copy of [`VideoIngestStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VideoIngestSnapshot {
    /// The track's codec, once known.
    pub codec: Option<VideoCodec>,
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Complete frames assembled from RTP.
    pub frames_assembled: u64,
    /// Pictures the decoder returned.
    pub frames_decoded: u64,
    /// Of those, keyframes.
    pub keyframes_decoded: u64,
    /// Frames not decoded while waiting for a keyframe.
    pub frames_skipped: u64,
    /// Decoder failures.
    pub decode_errors: u64,
    /// Keyframe requests sent.
    pub plis_sent: u64,
    /// RTP packets declared lost.
    pub lost_packets: u64,
    /// Incomplete frames dropped by the assembler.
    pub dropped_frames: u64,
    /// Frames dropped because the decoder thread's queue was full.
    pub decoder_backlog: u64,
    /// Frames refused before (or right after) decoding, for any [`RefusalReason`].
    pub refused: u64,
}

impl VideoIngestStats {
    /// Counters that also feed `metrics` (`livefilter_ingest_refused_total`, and decoder
    /// backlog drops in `livefilter_frames_dropped_total`).
    pub fn with_metrics(metrics: Metrics) -> Self {
        Self {
            metrics: MetricsLink(Some(metrics)),
            ..Self::default()
        }
    }

    /// Frames refused for `reason` so far.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Counts one refused frame.
    pub fn record_refusal(&self, reason: RefusalReason) {
        Self::add(&self.refused[reason.index()], 1);
        if let Some(m) = &self.metrics.0 {
            m.ingest_refused.with_label_values(&[reason.as_str()]).inc();
        }
    }

    /// Counts one frame dropped because the decoder was behind.
    pub fn record_decoder_backlog(&self) {
        Self::add(&self.decoder_backlog, 1);
        if let Some(m) = &self.metrics.0 {
            m.drop_frame("pipeline", DropReason::DecoderBacklog);
        }
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> VideoIngestSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VideoIngestSnapshot {
            codec: self.codec.get().copied(),
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            frames_assembled: get(&self.frames_assembled),
            frames_decoded: get(&self.frames_decoded),
            keyframes_decoded: get(&self.keyframes_decoded),
            frames_skipped: get(&self.frames_skipped),
            decode_errors: get(&self.decode_errors),
            plis_sent: get(&self.plis_sent),
            lost_packets: get(&self.lost_packets),
            dropped_frames: get(&self.dropped_frames),
            decoder_backlog: get(&self.decoder_backlog),
            refused: self.refused.iter().map(get).sum(),
        }
    }

    /// Records that a PLI went out.
    pub fn record_pli_sent(&self) {
        self.plis_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Live counters of one audio track.
#[derive(Debug, Default)]
pub struct AudioIngestStats {
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// A copy of [`AudioIngestStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AudioIngestSnapshot {
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
}

impl AudioIngestStats {
    /// Counts one received packet.
    pub fn record_packet(&self, payload_bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(payload_bytes as u64, Ordering::Relaxed);
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> AudioIngestSnapshot {
        AudioIngestSnapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Assembler + size limits + keyframe gate for one video stream, feeding a decoder thread
/// through a bounded queue; driven packet by packet, it never waits on the codec.
pub struct VideoReceiver {
    format: PayloadFormat,
    assembler: FrameAssembler,
    gate: KeyframeGate,
    limiter: PliLimiter,
    max_size: SizeLimit,
    output: FrameOutput,
    stats: Arc<VideoIngestStats>,
    assembler_seen: AssemblerStats,
    capture_clock: CaptureClock,
    upstream_wants_keyframe: bool,
}

/// Where a receiver's complete frames go.
enum FrameOutput {
    /// To the decoder thread.
    Decode(DecoderThread),
    /// As they are, to a sink; `size` is the latest keyframe's picture size.
    Forward {
        sink: Box<dyn FnMut(ForwardedFrame) + Send>,
        size: (u32, u32),
    },
}

impl VideoReceiver {
    /// A receiver decoding with `decoder` on its own thread into `sink`, counting into
    /// `stats`.
    pub fn new(
        decoder: Box<dyn VideoDecoder>,
        config: VideoIngestConfig,
        stats: Arc<VideoIngestStats>,
        sink: impl FrameSink + 'static,
    ) -> Result<Self, IngestError> {
        let codec = decoder.codec();
        let _ = stats.codec.set(codec);
        let health = config.health.clone().unwrap_or_default();
        let decoder = DecoderThread::spawn(
            decoder,
            sink,
            Arc::clone(&stats),
            config.max_size,
            config.decode_queue_frames,
            &health,
        )?;
        Ok(Self::with_output(codec, &config, stats, FrameOutput::Decode(decoder)))
    }

    /// A receiver passing `codec` frames on as they are, from a keyframe on, into `sink`.
    pub fn forwarding(
        codec: VideoCodec,
        config: &VideoIngestConfig,
        stats: Arc<VideoIngestStats>,
        sink: impl FnMut(ForwardedFrame) + Send + 'static,
    ) -> Self {
        let _ = stats.codec.set(codec);
        let output = FrameOutput::Forward {
            sink: Box::new(sink),
            size: (0, 0),
        };
        Self::with_output(codec, config, stats, output)
    }

    fn with_output(
        codec: VideoCodec,
        config: &VideoIngestConfig,
        stats: Arc<VideoIngestStats>,
        output: FrameOutput,
    ) -> Self {
        let format = PayloadFormat::for_codec(codec);
        Self {
            format,
            assembler: FrameAssembler::new(format, config.assembler),
            gate: KeyframeGate::new(),
            limiter: PliLimiter::new(config.pli_interval),
            max_size: config.max_size,
            output,
            stats,
            assembler_seen: AssemblerStats::default(),
            capture_clock: CaptureClock::new(90_000),
            upstream_wants_keyframe: false,
        }
    }

    /// An output needs a keyframe (forwarding): the next packet's return value asks for a PLI,
    /// at the limiter's pace.
    pub fn request_keyframe(&mut self) {
        self.upstream_wants_keyframe = true;
    }

    /// Records a packet's `abs-capture-time`; later frames' capture times extrapolate from it.
    pub fn observe_capture_time(&mut self, rtp_timestamp: u32, capture_ntp: u64) {
        self.capture_clock.observe(rtp_timestamp, capture_ntp);
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<VideoIngestStats> {
        &self.stats
    }

    /// Feeds one RTP packet. Returns `Ok(true)` when a PLI should be sent now (already
    /// rate-limited); an error when the decoder thread is gone.
    pub fn push(&mut self, packet: RtpInput) -> Result<bool, IngestError> {
        let now = packet.arrival;
        VideoIngestStats::add(&self.stats.packets, 1);
        VideoIngestStats::add(&self.stats.bytes, packet.payload.len() as u64);
        let frames = self.assembler.push(packet);
        self.handle(frames, now)
    }

    /// Re-checks stalled sequence gaps; same return value as [`VideoReceiver::push`].
    pub fn flush(&mut self, now: Instant) -> Result<bool, IngestError> {
        let frames = self.assembler.flush(now);
        self.handle(frames, now)
    }

    /// Lets the decoder thread finish what is queued and end. Blocks: call it off the runtime.
    pub fn finish(self) {
        if let FrameOutput::Decode(decoder) = self.output {
            decoder.finish();
        }
    }

    fn handle(&mut self, frames: Vec<AssembledFrame>, now: Instant) -> Result<bool, IngestError> {
        self.sync_assembler_stats();
        let mut want_keyframe = self.upstream_wants_keyframe;
        if let FrameOutput::Decode(decoder) = &self.output
            && decoder.take_keyframe_need()
        {
            self.gate.on_decode_error();
            want_keyframe = true;
        }
        for frame in frames {
            VideoIngestStats::add(&self.stats.frames_assembled, 1);
            if self.gate.on_frame(frame.keyframe, frame.discontinuity) == GateDecision::SkipUntilKeyframe {
                VideoIngestStats::add(&self.stats.frames_skipped, 1);
                want_keyframe = true;
                continue;
            }
            if let Err(refusal) = self.max_size.check_frame(self.format, &frame) {
                tracing::warn!(%refusal, rtp_timestamp = frame.rtp_timestamp, "video frame refused");
                self.stats.record_refusal(refusal.reason);
                self.gate.on_decode_error();
                want_keyframe = true;
                continue;
            }
            let capture_ntp = self.capture_clock.estimate(frame.rtp_timestamp);
            match &mut self.output {
                FrameOutput::Decode(decoder) => match decoder.try_submit(DecodeJob { frame, capture_ntp }) {
                    Ok(()) => {}
                    Err(SubmitError::Backlog) => {
                        tracing::debug!("decoder behind; frame dropped, waiting for a keyframe");
                        self.stats.record_decoder_backlog();
                        self.gate.on_decode_error();
                        want_keyframe = true;
                    }
                    Err(SubmitError::Stopped) => return Err(IngestError::DecoderStopped),
                },
                FrameOutput::Forward { sink, size } => {
                    if frame.keyframe
                        && let Some(declared) = keyframe_size(self.format, &frame.data)
                    {
                        *size = declared;
                    }
                    sink(ForwardedFrame {
                        data: Bytes::from(frame.data),
                        keyframe: frame.keyframe,
                        width: size.0,
                        height: size.1,
                        rtp_timestamp: frame.rtp_timestamp,
                        arrival: frame.first_arrival,
                        capture_ntp,
                    });
                }
            }
        }
        // While waiting, every skipped frame asks again (at the limiter's pace), so a lost PLI
        // or keyframe is retried.
        let send = want_keyframe && self.limiter.try_acquire(now);
        if send {
            self.upstream_wants_keyframe = false;
        }
        Ok(send)
    }

    fn sync_assembler_stats(&mut self) {
        let now = self.assembler.stats();
        let seen = self.assembler_seen;
        VideoIngestStats::add(&self.stats.lost_packets, now.lost_packets - seen.lost_packets);
        VideoIngestStats::add(&self.stats.dropped_frames, now.dropped_frames - seen.dropped_frames);
        for _ in seen.oversized_bytes..now.oversized_bytes {
            self.stats.record_refusal(RefusalReason::FrameBytes);
        }
        for _ in seen.oversized_packets..now.oversized_packets {
            self.stats.record_refusal(RefusalReason::FramePackets);
        }
        self.assembler_seen = now;
    }
}

/// The picture size a keyframe declares (VP8 frame header, H.264 SPS), if it parses.
fn keyframe_size(format: PayloadFormat, data: &[u8]) -> Option<(u32, u32)> {
    match format {
        PayloadFormat::Vp8 => bitstream::vp8_keyframe_size(data).ok().flatten(),
        PayloadFormat::H264 => bitstream::h264_largest_sps_size(data).ok().flatten(),
    }
}

/// The SSRC and codec a remote video track was negotiated with.
pub async fn track_codec(track: &dyn TrackRemote) -> Result<(u32, VideoCodec), IngestError> {
    let ssrc = track.ssrcs().await.first().copied().ok_or(IngestError::NoCodec)?;
    let mime = track
        .codec(ssrc)
        .await
        .map(|c| c.mime_type)
        .ok_or(IngestError::NoCodec)?;
    let codec: VideoCodec = mime.parse().map_err(|_| IngestError::UnsupportedCodec(mime.clone()))?;
    Ok((ssrc, codec))
}

/// Reads a remote video track until it ends (the peer connection closed or the sender stopped),
/// decoding every frame on a decoder thread into `sink` and sending PLIs when the decoder needs
/// a keyframe. The decoder thread ends with the track.
pub async fn run_video_track(
    track: Arc<dyn TrackRemote>,
    config: VideoIngestConfig,
    stats: Arc<VideoIngestStats>,
    sink: impl FrameSink + 'static,
) -> Result<(), IngestError> {
    let (ssrc, codec) = track_codec(&*track).await?;
    let decoder = codec::new_decoder(codec)?;
    tracing::info!(ssrc, %codec, "video ingest started");
    let (flush_interval, abs_capture_time_id) = (config.flush_interval, config.abs_capture_time_id);
    let receiver = VideoReceiver::new(decoder, config, stats, sink)?;
    drive(track, ssrc, receiver, flush_interval, abs_capture_time_id, None).await
}

/// Reads a remote video track until it ends, passing its frames on as they came (from a
/// keyframe on, as the decode path does) into `sink`; the outputs' keyframe requests go to the
/// sender as PLI and their bitrate as REMB, so the sender's encoder serves them directly.
pub async fn forward_video_track(
    track: Arc<dyn TrackRemote>,
    config: VideoIngestConfig,
    stats: Arc<VideoIngestStats>,
    sink: impl FnMut(ForwardedFrame) + Send + 'static,
    upstream: Upstream,
) -> Result<(), IngestError> {
    let (ssrc, codec) = track_codec(&*track).await?;
    tracing::info!(ssrc, %codec, "video ingest started, forwarding without transcoding");
    let receiver = VideoReceiver::forwarding(codec, &config, stats, sink);
    drive(
        track,
        ssrc,
        receiver,
        config.flush_interval,
        config.abs_capture_time_id,
        Some(upstream),
    )
    .await
}

async fn drive(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    mut receiver: VideoReceiver,
    flush_interval: Duration,
    abs_capture_time_id: Option<u8>,
    upstream: Option<Upstream>,
) -> Result<(), IngestError> {
    let mut last_remb: Option<Instant> = None;
    let result = loop {
        if let Some(up) = &upstream {
            if up.keyframes.take() > 0 {
                receiver.request_keyframe();
            }
            if last_remb.is_none_or(|at| at.elapsed() >= REMB_INTERVAL) {
                last_remb = Some(Instant::now());
                if let Some(bps) = (up.max_bitrate)() {
                    send_remb(&*track, ssrc, bps).await;
                }
            }
        }
        let event = match tokio::time::timeout(flush_interval, track.poll()).await {
            Ok(Some(event)) => event,
            Ok(None) => break Ok(()),
            Err(_elapsed) => {
                match receiver.flush(Instant::now()) {
                    Ok(true) => send_pli(&*track, ssrc, receiver.stats()).await,
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
                continue;
            }
        };
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                if let Some(id) = abs_capture_time_id
                    && let Some(ntp) = packet.header.get_extension(id).as_deref().and_then(abs_capture::parse)
                {
                    receiver.observe_capture_time(packet.header.timestamp, ntp);
                }
                let input = RtpInput::from_packet(&packet, Instant::now());
                match receiver.push(input) {
                    Ok(true) => send_pli(&*track, packet.header.ssrc, receiver.stats()).await,
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
            TrackRemoteEvent::OnEnded => break Ok(()),
            _ => {}
        }
    };
    let stats = Arc::clone(receiver.stats());
    if tokio::task::spawn_blocking(move || receiver.finish()).await.is_err() {
        tracing::warn!("the video decoder thread did not stop cleanly");
    }
    tracing::info!(ssrc, stats = ?stats.snapshot(), "video ingest ended");
    result
}

/// Tells the sender the most it should send (REMB), so that its encoder follows the outputs'
/// paths when its frames are forwarded.
async fn send_remb(track: &dyn TrackRemote, media_ssrc: u32, bps: f64) {
    let remb = ReceiverEstimatedMaximumBitrate {
        sender_ssrc: 0,
        bitrate: bps as f32,
        ssrcs: vec![media_ssrc],
    };
    if let Err(err) = track.write_rtcp(vec![Box::new(remb)]).await {
        tracing::debug!(%err, media_ssrc, "REMB not sent");
    }
}

async fn send_pli(track: &dyn TrackRemote, media_ssrc: u32, stats: &VideoIngestStats) {
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    };
    match track.write_rtcp(vec![Box::new(pli)]).await {
        Ok(()) => {
            stats.record_pli_sent();
            tracing::debug!(media_ssrc, "PLI sent");
        }
        Err(err) => tracing::debug!(%err, media_ssrc, "PLI not sent"),
    }
}

/// Counts the packets of a remote audio track until it ends.
pub async fn run_audio_track(track: Arc<dyn TrackRemote>, stats: Arc<AudioIngestStats>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => stats.record_packet(packet.payload.len()),
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::info!(stats = ?stats.snapshot(), "audio ingest ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    use bitstream::build;

    /// A decoder that "decodes" any non-empty input to a 2x2 frame, failing on 0xff.
    struct FakeDecoder {
        codec: VideoCodec,
        calls: Arc<AtomicUsize>,
    }

    impl FakeDecoder {
        fn new(codec: VideoCodec) -> (Box<Self>, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let decoder = Box::new(Self {
                codec,
                calls: Arc::clone(&calls),
            });
            (decoder, calls)
        }
    }

    fn two_by_two() -> I420Frame {
        I420Frame::filled(2, 2, [16, 128, 128]).unwrap()
    }

    impl VideoDecoder for FakeDecoder {
        fn codec(&self) -> VideoCodec {
            self.codec
        }
        fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if data.contains(&0xff) {
                return Err(CodecError::Decode {
                    codec: self.codec,
                    bytes: data.len(),
                    detail: "corrupt".into(),
                });
            }
            Ok(Some(two_by_two()))
        }
    }

    /// One-packet VP8 frame: a 640x360 key frame header, or an inter frame.
    fn vp8(seq: u16, ts: u32, key: bool, body: u8, at: Instant) -> RtpInput {
        let frame = if key {
            build::vp8_keyframe(640, 360, &[body])
        } else {
            vec![0x01, body]
        };
        packet(seq, ts, true, [&[0x10][..], &frame].concat(), at)
    }

    fn packet(seq: u16, ts: u32, marker: bool, payload: Vec<u8>, at: Instant) -> RtpInput {
        RtpInput {
            sequence_number: seq,
            timestamp: ts,
            marker,
            payload: Bytes::from(payload),
            arrival: at,
        }
    }

    /// A receiver whose decoded frames come out of the returned channel.
    fn receiver_with(
        decoder: Box<dyn VideoDecoder>,
        config: VideoIngestConfig,
        stats: Arc<VideoIngestStats>,
    ) -> (VideoReceiver, mpsc::Receiver<DecodedFrame>) {
        let (tx, rx) = mpsc::channel();
        let sink = move |f: DecodedFrame| {
            let _ = tx.send(f);
        };
        (VideoReceiver::new(decoder, config, stats, sink).unwrap(), rx)
    }

    fn receiver() -> (VideoReceiver, mpsc::Receiver<DecodedFrame>) {
        let (decoder, _) = FakeDecoder::new(VideoCodec::Vp8);
        receiver_with(decoder, VideoIngestConfig::default(), Arc::default())
    }

    impl VideoReceiver {
        /// Waits for the decoder thread (if any) to catch up.
        fn settle(&self) {
            if let FrameOutput::Decode(decoder) = &self.output {
                decoder.settle();
            }
        }
    }

    /// A forwarding receiver whose frames come out of the returned list.
    fn forwarder() -> (VideoReceiver, Arc<Mutex<Vec<ForwardedFrame>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let rx = VideoReceiver::forwarding(
            VideoCodec::Vp8,
            &VideoIngestConfig::default(),
            Arc::default(),
            move |f: ForwardedFrame| into.lock().unwrap().push(f),
        );
        (rx, seen)
    }

    #[test]
    fn forwarding_passes_frames_on_unchanged_from_the_first_keyframe_with_its_declared_size() {
        let t0 = Instant::now();
        let (mut rx, seen) = forwarder();

        let asked_before_keyframe = rx.push(vp8(1, 100, false, 7, t0)).unwrap();
        rx.push(vp8(2, 200, true, 8, t0 + Duration::from_millis(33))).unwrap();
        rx.push(vp8(3, 300, false, 9, t0 + Duration::from_millis(66))).unwrap();

        assert!(asked_before_keyframe, "a delta frame first: PLI");
        let seen = seen.lock().unwrap();
        let got: Vec<_> = seen
            .iter()
            .map(|f| (f.rtp_timestamp, f.keyframe, f.width, f.height))
            .collect();
        assert_eq!(got, [(200, true, 640, 360), (300, false, 640, 360)]);
        assert_eq!(
            &seen[0].data[..],
            &build::vp8_keyframe(640, 360, &[8])[..],
            "bitstream unchanged"
        );
        assert_eq!(&seen[1].data[..], &[0x01, 9]);
        assert_eq!(rx.stats().snapshot().frames_skipped, 1);
    }

    #[test]
    fn an_outputs_keyframe_request_asks_the_sender_for_one_at_the_limiters_pace() {
        let t0 = Instant::now();
        let (mut rx, _seen) = forwarder();
        rx.push(vp8(1, 100, true, 0, t0)).unwrap();

        rx.request_keyframe();
        let first = rx.push(vp8(2, 200, false, 0, t0 + Duration::from_millis(10))).unwrap();
        rx.request_keyframe();
        let too_soon = rx.push(vp8(3, 300, false, 0, t0 + Duration::from_millis(20))).unwrap();
        let held_until_due = rx.push(vp8(4, 400, false, 0, t0 + Duration::from_millis(600))).unwrap();
        let nothing_pending = rx
            .push(vp8(5, 500, false, 0, t0 + Duration::from_millis(1200)))
            .unwrap();

        assert_eq!(
            (first, too_soon, held_until_due, nothing_pending),
            (true, false, true, false)
        );
    }

    /// Every frame decoded so far (waits for the decoder thread to catch up).
    fn decoded(rx: &VideoReceiver, frames: &mpsc::Receiver<DecodedFrame>) -> Vec<DecodedFrame> {
        rx.settle();
        frames.try_iter().collect()
    }

    #[test]
    fn decodes_from_the_first_keyframe_and_asks_for_one_before() {
        let t0 = Instant::now();
        let (mut rx, frames) = receiver();
        assert!(rx.push(vp8(1, 100, false, 0, t0)).unwrap(), "delta frame first: PLI");
        assert!(
            !rx.push(vp8(2, 200, false, 0, t0 + Duration::from_millis(100))).unwrap(),
            "rate-limited"
        );
        assert!(!rx.push(vp8(3, 300, true, 0, t0 + Duration::from_millis(600))).unwrap());
        assert!(!rx.push(vp8(4, 400, false, 0, t0 + Duration::from_millis(700))).unwrap());
        let got: Vec<_> = decoded(&rx, &frames)
            .iter()
            .map(|f| (f.rtp_timestamp, f.keyframe, f.index))
            .collect();
        assert_eq!(got, [(300, true, 0), (400, false, 1)]);
        let s = rx.stats().snapshot();
        assert_eq!(
            (s.frames_decoded, s.keyframes_decoded, s.frames_skipped, s.packets),
            (2, 1, 2, 4)
        );
        assert_eq!(s.codec, Some(VideoCodec::Vp8));
    }

    #[test]
    fn a_decode_error_skips_until_the_next_keyframe() {
        let t0 = Instant::now();
        let (mut rx, frames) = receiver();
        rx.push(vp8(1, 100, true, 0, t0)).unwrap();
        rx.push(vp8(2, 200, false, 0xff, t0)).unwrap();
        rx.settle();
        assert!(rx.push(vp8(3, 300, false, 0, t0)).unwrap(), "the error is seen: PLI");
        rx.push(vp8(4, 400, true, 0, t0 + Duration::from_secs(1))).unwrap();
        assert_eq!(decoded(&rx, &frames).len(), 2);
        let s = rx.stats().snapshot();
        assert_eq!((s.decode_errors, s.frames_skipped), (1, 1));
    }

    #[test]
    fn decoded_frames_carry_capture_times_extrapolated_from_the_last_stamp() {
        let t0 = Instant::now();
        let (mut rx, frames) = receiver();
        rx.push(vp8(1, 100, true, 0, t0)).unwrap();
        rx.observe_capture_time(3100, 1 << 40);
        rx.push(vp8(2, 3100, false, 0, t0)).unwrap();
        rx.push(vp8(3, 93_100, false, 0, t0)).unwrap();
        let captures: Vec<_> = decoded(&rx, &frames).iter().map(|f| f.capture_ntp).collect();
        assert_eq!(captures, [None, Some(1 << 40), Some((1 << 40) + (1 << 32))]);
    }

    #[test]
    fn packet_loss_triggers_a_keyframe_request() {
        let t0 = Instant::now();
        let (mut rx, frames) = receiver();
        rx.push(vp8(1, 100, true, 0, t0)).unwrap();
        // seq 2 lost; seq 3 waits, then is released after the reorder delay.
        assert!(!rx.push(vp8(3, 300, false, 0, t0 + Duration::from_millis(10))).unwrap());
        assert!(rx.flush(t0 + Duration::from_millis(200)).unwrap());
        assert_eq!(decoded(&rx, &frames).len(), 1);
        let s = rx.stats().snapshot();
        assert_eq!((s.lost_packets, s.frames_skipped, s.frames_decoded), (1, 1, 1));
    }

    #[test]
    fn a_16383_square_vp8_keyframe_is_refused_counted_and_never_decoded() {
        let t0 = Instant::now();
        let metrics = Metrics::new();
        let stats = Arc::new(VideoIngestStats::with_metrics(metrics.clone()));
        let (decoder, calls) = FakeDecoder::new(VideoCodec::Vp8);
        let (mut rx, frames) = receiver_with(decoder, VideoIngestConfig::default(), Arc::clone(&stats));

        let huge = build::vp8_keyframe(16383, 16383, &[0x42; 64]);
        let pli = rx
            .push(packet(1, 100, true, [&[0x10][..], &huge].concat(), t0))
            .unwrap();

        assert!(pli, "a refused keyframe asks for another");
        assert!(decoded(&rx, &frames).is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the decoder never saw it");
        assert_eq!(stats.refused(RefusalReason::FrameTooLarge), 1);
        assert_eq!(metrics.ingest_refused.with_label_values(&["frame_too_large"]).get(), 1);
        // The stream recovers with the next keyframe of a sane size.
        rx.push(vp8(2, 200, true, 0, t0)).unwrap();
        assert_eq!(decoded(&rx, &frames).len(), 1);
    }

    #[test]
    fn a_refused_keyframe_never_reaches_a_real_decoder_or_the_encoder() {
        use crate::codec::{EncoderConfig, new_encoder};
        let t0 = Instant::now();
        let stats = Arc::new(VideoIngestStats::default());
        let decoder = codec::new_decoder(VideoCodec::Vp8).unwrap();
        let (mut rx, frames) = receiver_with(decoder, VideoIngestConfig::default(), Arc::clone(&stats));
        let mut encoder = new_encoder(&EncoderConfig::default()).unwrap();
        let real = encoder
            .encode(
                &I420Frame::filled(320, 180, [80, 128, 128]).unwrap(),
                Duration::ZERO,
                false,
            )
            .unwrap()
            .unwrap();

        let huge = build::vp8_keyframe(16383, 16383, &real.data[10..]);
        rx.push(packet(1, 100, true, [&[0x10][..], &huge].concat(), t0))
            .unwrap();
        rx.push(packet(2, 3100, true, [&[0x10][..], &real.data[..]].concat(), t0))
            .unwrap();

        // Only the sane frame comes out: nothing downstream (slot, encoder) ever sees 16383².
        let sizes: Vec<_> = decoded(&rx, &frames)
            .iter()
            .map(|f| (f.frame.width(), f.frame.height()))
            .collect();
        assert_eq!(sizes, [(320, 180)]);
        assert_eq!(stats.refused(RefusalReason::FrameTooLarge), 1);
    }

    #[test]
    fn an_h264_sps_declaring_16368_square_is_refused_before_decoding() {
        let t0 = Instant::now();
        let stats = Arc::new(VideoIngestStats::default());
        let (decoder, calls) = FakeDecoder::new(VideoCodec::H264);
        let (mut rx, frames) = receiver_with(decoder, VideoIngestConfig::default(), Arc::clone(&stats));

        rx.push(packet(1, 100, false, build::h264_sps(16368, 16368), t0))
            .unwrap();
        rx.push(packet(2, 100, false, vec![0x68, 0xce, 0x38, 0x80], t0))
            .unwrap();
        rx.push(packet(3, 100, true, vec![0x65, 0x88, 0x84, 0x00], t0)).unwrap();

        assert!(decoded(&rx, &frames).is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(stats.refused(RefusalReason::FrameTooLarge), 1);

        rx.push(packet(4, 200, false, build::h264_sps(640, 360), t0)).unwrap();
        rx.push(packet(5, 200, true, vec![0x65, 0x88, 0x84, 0x00], t0)).unwrap();
        assert_eq!(decoded(&rx, &frames).len(), 1, "a sane SPS decodes");
    }

    #[test]
    fn a_frame_over_the_byte_or_packet_limit_is_dropped_and_counted() {
        let t0 = Instant::now();
        let metrics = Metrics::new();
        let stats = Arc::new(VideoIngestStats::with_metrics(metrics.clone()));
        let config = VideoIngestConfig {
            assembler: AssemblerConfig {
                max_frame_bytes: 1000,
                max_frame_packets: 8,
                ..AssemblerConfig::default()
            },
            ..VideoIngestConfig::default()
        };
        let (decoder, calls) = FakeDecoder::new(VideoCodec::Vp8);
        let (mut rx, frames) = receiver_with(decoder, config, Arc::clone(&stats));

        // 3 packets of 600 bytes: over 1000 bytes.
        let key = build::vp8_keyframe(64, 64, &[7; 590]);
        rx.push(packet(1, 100, false, [&[0x10][..], &key].concat(), t0))
            .unwrap();
        for seq in 2..=3 {
            rx.push(packet(seq, 100, seq == 3, [&[0x00][..], &[7; 600][..]].concat(), t0))
                .unwrap();
        }
        // 12 small packets: over 8 packets.
        rx.push(packet(
            4,
            200,
            false,
            [&[0x10][..], &build::vp8_keyframe(64, 64, &[])].concat(),
            t0,
        ))
        .unwrap();
        for seq in 5..=15 {
            rx.push(packet(seq, 200, seq == 15, vec![0x00, 1], t0)).unwrap();
        }

        assert!(decoded(&rx, &frames).is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(stats.refused(RefusalReason::FrameBytes), 1);
        assert_eq!(stats.refused(RefusalReason::FramePackets), 1);
        let refused = |r| metrics.ingest_refused.with_label_values(&[r]).get();
        assert_eq!((refused("frame_bytes"), refused("frame_packets")), (1, 1));
    }

    /// A decoder that blocks inside `decode` until released, announcing each call.
    struct BlockingDecoder {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl VideoDecoder for BlockingDecoder {
        fn codec(&self) -> VideoCodec {
            VideoCodec::Vp8
        }
        fn decode(&mut self, _data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
            let _ = self.entered.send(());
            // Released by a message or by the test dropping the sender.
            let _ = self.release.lock().unwrap().recv();
            Ok(Some(two_by_two()))
        }
    }

    #[test]
    fn a_slow_decoder_never_blocks_the_rtp_reader() {
        let t0 = Instant::now();
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let decoder = Box::new(BlockingDecoder {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
        });
        let metrics = Metrics::new();
        let stats = Arc::new(VideoIngestStats::with_metrics(metrics.clone()));
        let config = VideoIngestConfig {
            decode_queue_frames: 4,
            ..VideoIngestConfig::default()
        };
        let (mut rx, frames) = receiver_with(decoder, config, Arc::clone(&stats));
        rx.push(vp8(1, 0, true, 0, t0)).unwrap();
        entered.recv().unwrap();

        // The decoder is stuck in frame 1. The reader goes on through 99 more key frames on
        // another thread; a watchdog turns a blocked reader into a failure instead of a hang.
        let (done_tx, done) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut plis = 0;
            for seq in 2..=100u16 {
                let at = t0 + Duration::from_millis(u64::from(seq) * 33);
                plis += usize::from(rx.push(vp8(seq, u32::from(seq) * 3000, true, 0, at)).unwrap());
            }
            let _ = done_tx.send(());
            (rx, plis)
        });
        assert!(
            done.recv_timeout(Duration::from_secs(60)).is_ok(),
            "the RTP reader blocked on the decoder"
        );
        let (rx, plis) = reader.join().unwrap();

        let s = stats.snapshot();
        assert_eq!(s.packets, 100, "every packet was read");
        assert_eq!(s.decoder_backlog, 95, "4 queued behind the stuck one, the rest dropped");
        assert_eq!(
            metrics
                .frames_dropped
                .with_label_values(&["pipeline", "decoder_backlog"])
                .get(),
            95
        );
        assert_eq!(
            plis, 6,
            "keyframes asked for at most every 500 ms, from the first drop at 198 ms"
        );
        drop(release);
        rx.finish();
        assert_eq!(frames.try_iter().count(), 5);
    }
}
