//! The receive side of WebRTC media: RTP from a remote track -> complete frames -> decoded
//! pictures, with keyframe requests (PLI) when the decoder has no valid reference.
//!
//! Used by the relay's browser ingest and by the local Sora-compatible test endpoint.
//!
//! - [`depacketize`] and [`assembler`]: pure RTP -> frame logic (reordering, loss, keyframes).
//! - [`recovery`]: pure decisions: decode or skip, and PLI rate limiting.
//! - [`VideoReceiver`]: assembler + decoder + recovery, driven packet by packet (no I/O).
//! - [`run_video_track`] / [`run_audio_track`]: the async loops reading a webrtc-rs track.

pub mod assembler;
pub mod depacketize;
pub mod recovery;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use serde::Serialize;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::abs_capture::{self, CaptureClock};
use crate::codec::{self, CodecError, VideoCodec, VideoDecoder};
use crate::frame::I420Frame;

pub use assembler::{AssembledFrame, AssemblerConfig, AssemblerStats, FrameAssembler, RtpInput};
pub use depacketize::PayloadFormat;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoIngestConfig {
    /// At most one PLI per this interval.
    pub pli_interval: Duration,
    /// How long sequence gaps are waited for.
    pub assembler: AssemblerConfig,
    /// How often a stalled gap is re-checked when no packet arrives.
    pub flush_interval: Duration,
    /// The negotiated id of the `abs-capture-time` header extension, when there is one.
    pub abs_capture_time_id: Option<u8>,
}

impl Default for VideoIngestConfig {
    fn default() -> Self {
        Self {
            pli_interval: Duration::from_millis(500),
            assembler: AssemblerConfig::default(),
            flush_interval: Duration::from_millis(50),
            abs_capture_time_id: None,
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

/// Receives decoded frames. Implemented for any `FnMut(DecodedFrame) + Send`.
pub trait FrameSink: Send {
    /// Called once per decoded frame, on the ingest task: keep it short (e.g. store the newest).
    fn on_frame(&mut self, frame: DecodedFrame);
}

impl<F: FnMut(DecodedFrame) + Send> FrameSink for F {
    fn on_frame(&mut self, frame: DecodedFrame) {
        self(frame)
    }
}

/// Live counters of one video track, shared with observers.
#[derive(Debug, Default)]
pub struct VideoIngestStats {
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
}

impl VideoIngestStats {
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

/// Assembler + keyframe gate + decoder for one video stream, without I/O.
pub struct VideoReceiver {
    assembler: FrameAssembler,
    gate: KeyframeGate,
    limiter: PliLimiter,
    decoder: Box<dyn VideoDecoder>,
    stats: Arc<VideoIngestStats>,
    assembler_seen: AssemblerStats,
    decoded: u64,
    capture_clock: CaptureClock,
}

impl VideoReceiver {
    /// A receiver decoding with `decoder`, counting into `stats`.
    pub fn new(decoder: Box<dyn VideoDecoder>, config: VideoIngestConfig, stats: Arc<VideoIngestStats>) -> Self {
        let codec = decoder.codec();
        let _ = stats.codec.set(codec);
        Self {
            assembler: FrameAssembler::new(PayloadFormat::for_codec(codec), config.assembler),
            gate: KeyframeGate::new(),
            limiter: PliLimiter::new(config.pli_interval),
            decoder,
            stats,
            assembler_seen: AssemblerStats::default(),
            decoded: 0,
            capture_clock: CaptureClock::new(90_000),
        }
    }

    /// Records a packet's `abs-capture-time`; later frames' capture times extrapolate from it.
    pub fn observe_capture_time(&mut self, rtp_timestamp: u32, capture_ntp: u64) {
        self.capture_clock.observe(rtp_timestamp, capture_ntp);
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<VideoIngestStats> {
        &self.stats
    }

    /// Feeds one RTP packet; decoded frames go to `sink`. Returns true when a PLI should be
    /// sent now (already rate-limited).
    pub fn push(&mut self, packet: RtpInput, sink: &mut dyn FrameSink) -> bool {
        let now = packet.arrival;
        VideoIngestStats::add(&self.stats.packets, 1);
        VideoIngestStats::add(&self.stats.bytes, packet.payload.len() as u64);
        let frames = self.assembler.push(packet);
        self.handle(frames, now, sink)
    }

    /// Re-checks stalled sequence gaps; same return value as [`VideoReceiver::push`].
    pub fn flush(&mut self, now: Instant, sink: &mut dyn FrameSink) -> bool {
        let frames = self.assembler.flush(now);
        self.handle(frames, now, sink)
    }

    fn handle(&mut self, frames: Vec<AssembledFrame>, now: Instant, sink: &mut dyn FrameSink) -> bool {
        self.sync_assembler_stats();
        let mut want_keyframe = false;
        for frame in frames {
            VideoIngestStats::add(&self.stats.frames_assembled, 1);
            if self.gate.on_frame(frame.keyframe, frame.discontinuity) == GateDecision::SkipUntilKeyframe {
                VideoIngestStats::add(&self.stats.frames_skipped, 1);
                want_keyframe = true;
                continue;
            }
            match self.decoder.decode(&frame.data) {
                Ok(Some(picture)) => {
                    VideoIngestStats::add(&self.stats.frames_decoded, 1);
                    if frame.keyframe {
                        VideoIngestStats::add(&self.stats.keyframes_decoded, 1);
                    }
                    let index = self.decoded;
                    self.decoded += 1;
                    sink.on_frame(DecodedFrame {
                        frame: picture,
                        rtp_timestamp: frame.rtp_timestamp,
                        keyframe: frame.keyframe,
                        arrival: frame.first_arrival,
                        decoded_at: Instant::now(),
                        index,
                        capture_ntp: self.capture_clock.estimate(frame.rtp_timestamp),
                    });
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, rtp_timestamp = frame.rtp_timestamp, "video decode failed; waiting for a keyframe");
                    VideoIngestStats::add(&self.stats.decode_errors, 1);
                    self.gate.on_decode_error();
                    want_keyframe = true;
                }
            }
        }
        // While waiting, every skipped frame asks again (at the limiter's pace), so a lost PLI
        // or keyframe is retried.
        want_keyframe && self.limiter.try_acquire(now)
    }

    fn sync_assembler_stats(&mut self) {
        let now = self.assembler.stats();
        VideoIngestStats::add(
            &self.stats.lost_packets,
            now.lost_packets - self.assembler_seen.lost_packets,
        );
        VideoIngestStats::add(
            &self.stats.dropped_frames,
            now.dropped_frames - self.assembler_seen.dropped_frames,
        );
        self.assembler_seen = now;
    }
}

/// Reads a remote video track until it ends (the peer connection closed or the sender stopped),
/// decoding every frame into `sink` and sending PLIs when the decoder needs a keyframe.
pub async fn run_video_track(
    track: Arc<dyn TrackRemote>,
    config: VideoIngestConfig,
    stats: Arc<VideoIngestStats>,
    mut sink: impl FrameSink,
) -> Result<(), IngestError> {
    let ssrc = track.ssrcs().await.first().copied().ok_or(IngestError::NoCodec)?;
    let mime = track
        .codec(ssrc)
        .await
        .map(|c| c.mime_type)
        .ok_or(IngestError::NoCodec)?;
    let codec: VideoCodec = mime.parse().map_err(|_| IngestError::UnsupportedCodec(mime.clone()))?;
    let decoder = codec::new_decoder(codec)?;
    tracing::info!(ssrc, %codec, "video ingest started");
    let mut receiver = VideoReceiver::new(decoder, config, stats);
    loop {
        let event = match tokio::time::timeout(config.flush_interval, track.poll()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_elapsed) => {
                if receiver.flush(Instant::now(), &mut sink) {
                    send_pli(&*track, ssrc, receiver.stats()).await;
                }
                continue;
            }
        };
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                if let Some(id) = config.abs_capture_time_id
                    && let Some(ntp) = packet.header.get_extension(id).as_deref().and_then(abs_capture::parse)
                {
                    receiver.observe_capture_time(packet.header.timestamp, ntp);
                }
                let input = RtpInput::from_packet(&packet, Instant::now());
                if receiver.push(input, &mut sink) {
                    send_pli(&*track, packet.header.ssrc, receiver.stats()).await;
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::info!(ssrc, stats = ?receiver.stats().snapshot(), "video ingest ended");
    Ok(())
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

    /// A decoder that "decodes" any non-empty input to a 2x2 frame, failing on 0xff.
    struct FakeDecoder;

    impl VideoDecoder for FakeDecoder {
        fn codec(&self) -> VideoCodec {
            VideoCodec::Vp8
        }
        fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
            if data.contains(&0xff) {
                return Err(CodecError::Decode {
                    codec: VideoCodec::Vp8,
                    bytes: data.len(),
                    detail: "corrupt".into(),
                });
            }
            Ok(Some(I420Frame::filled(2, 2, [16, 128, 128]).map_err(|e| {
                CodecError::Decode {
                    codec: VideoCodec::Vp8,
                    bytes: data.len(),
                    detail: e.to_string(),
                }
            })?))
        }
    }

    fn vp8(seq: u16, ts: u32, key: bool, body: u8, at: Instant) -> RtpInput {
        RtpInput {
            sequence_number: seq,
            timestamp: ts,
            marker: true,
            payload: Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, body]),
            arrival: at,
        }
    }

    fn receiver() -> VideoReceiver {
        VideoReceiver::new(
            Box::new(FakeDecoder),
            VideoIngestConfig::default(),
            Arc::new(VideoIngestStats::default()),
        )
    }

    #[test]
    fn decodes_from_the_first_keyframe_and_asks_for_one_before() {
        let t0 = Instant::now();
        let mut rx = receiver();
        let mut frames = Vec::new();
        let mut sink = |f: DecodedFrame| frames.push((f.rtp_timestamp, f.keyframe, f.index));
        assert!(rx.push(vp8(1, 100, false, 0, t0), &mut sink), "delta frame first: PLI");
        assert!(
            !rx.push(vp8(2, 200, false, 0, t0 + Duration::from_millis(100)), &mut sink),
            "rate-limited"
        );
        assert!(!rx.push(vp8(3, 300, true, 0, t0 + Duration::from_millis(600)), &mut sink));
        assert!(!rx.push(vp8(4, 400, false, 0, t0 + Duration::from_millis(700)), &mut sink));
        assert_eq!(frames, [(300, true, 0), (400, false, 1)]);
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
        let mut rx = receiver();
        let mut count = 0;
        let mut sink = |_f: DecodedFrame| count += 1;
        rx.push(vp8(1, 100, true, 0, t0), &mut sink);
        assert!(rx.push(vp8(2, 200, false, 0xff, t0), &mut sink), "error: PLI");
        assert!(!rx.push(vp8(3, 300, false, 0, t0), &mut sink));
        rx.push(vp8(4, 400, true, 0, t0 + Duration::from_secs(1)), &mut sink);
        assert_eq!(count, 2);
        assert_eq!(rx.stats().snapshot().decode_errors, 1);
    }

    #[test]
    fn decoded_frames_carry_capture_times_extrapolated_from_the_last_stamp() {
        let t0 = Instant::now();
        let mut rx = receiver();
        let mut captures = Vec::new();
        let mut sink = |f: DecodedFrame| captures.push(f.capture_ntp);
        rx.push(vp8(1, 100, true, 0, t0), &mut sink);
        rx.observe_capture_time(3100, 1 << 40);
        rx.push(vp8(2, 3100, false, 0, t0), &mut sink);
        rx.push(vp8(3, 93_100, false, 0, t0), &mut sink);
        assert_eq!(captures, [None, Some(1 << 40), Some((1 << 40) + (1 << 32))]);
    }

    #[test]
    fn packet_loss_triggers_a_keyframe_request() {
        let t0 = Instant::now();
        let mut rx = receiver();
        let mut sink = |_f: DecodedFrame| {};
        rx.push(vp8(1, 100, true, 0, t0), &mut sink);
        // seq 2 lost; seq 3 waits, then is released after the reorder delay.
        assert!(!rx.push(vp8(3, 300, false, 0, t0 + Duration::from_millis(10)), &mut sink));
        assert!(rx.flush(t0 + Duration::from_millis(200), &mut sink));
        let s = rx.stats().snapshot();
        assert_eq!((s.lost_packets, s.frames_skipped, s.frames_decoded), (1, 1, 1));
    }
}
