//! What the endpoint does with the media a client sends: RTP from a webrtc-rs remote track ->
//! frames (webrtc-rs's own depacketizers and `SampleBuilder`) -> pictures (libvpx / OpenH264 on
//! a decoder thread), with keyframe requests (PLI) while the decoder has no reference.
//!
//! None of this is the relay's code: the endpoint judges the relay's output, so a bug in the
//! relay's receive path must not be able to hide on both sides.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rtc::media::io::sample_builder::SampleBuilder;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;
use serde::Serialize;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::codec::VideoCodec;
use crate::decode::{self, DecodeError};
use crate::picture::Picture;

/// Packets a frame may wait for a missing one before it is given up.
const MAX_LATE_PACKETS: u16 = 512;
/// RTP time a frame may wait for a missing packet before it is given up.
const MAX_LATE_TIME: Duration = Duration::from_millis(500);
/// Complete frames that may wait for the decoder thread; more are dropped (and counted).
const DECODE_QUEUE: usize = 8;
/// At most one keyframe request per this interval.
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// First-packet arrival times remembered (frames in flight in the sample builder).
const ARRIVALS_KEPT: usize = 64;

/// Why a video track could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The track has no SSRC or no negotiated codec.
    #[error("remote track has no negotiated codec")]
    NoCodec,
    /// A codec the endpoint does not decode.
    #[error("unsupported video codec {0:?} (expected video/VP8 or video/H264)")]
    UnsupportedCodec(String),
    /// The decoder could not be created.
    #[error(transparent)]
    Decoder(#[from] DecodeError),
    /// The decoder thread could not be started.
    #[error("cannot start the decoder thread: {0}")]
    Thread(std::io::Error),
}

/// Live counters of one video track.
#[derive(Debug, Default)]
pub struct VideoStats {
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
    decoder_backlog: AtomicU64,
}

/// [`VideoStats`] at one moment, as the API shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VideoSnapshot {
    /// The track's codec, once known.
    pub codec: Option<VideoCodec>,
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Complete frames built from RTP.
    pub frames_assembled: u64,
    /// Pictures the decoder returned.
    pub frames_decoded: u64,
    /// Of those, keyframes.
    pub keyframes_decoded: u64,
    /// Frames not decoded while waiting for a keyframe.
    pub frames_skipped: u64,
    /// Frames the decoder refused.
    pub decode_errors: u64,
    /// Keyframe requests sent.
    pub plis_sent: u64,
    /// RTP packets given up as lost (padding not counted).
    pub lost_packets: u64,
    /// Frames dropped because the decoder thread was behind.
    pub decoder_backlog: u64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl VideoStats {
    /// A copy of the counters now.
    pub fn snapshot(&self) -> VideoSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VideoSnapshot {
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
            decoder_backlog: get(&self.decoder_backlog),
        }
    }
}

/// A counter of [`VideoStats`], named by its accessor.
pub(crate) type Counter = fn(&VideoStats) -> &AtomicU64;

/// Where one RTP stream's counts go: its own counters and, while its `feeding` flag is set,
/// the connection's too (a simulcast layer feeds the connection's counters while it is the
/// best layer being received).
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    own: Arc<VideoStats>,
    mirror: Option<(Arc<VideoStats>, Arc<AtomicBool>)>,
}

impl Tally {
    /// Counts into `stats` only.
    pub(crate) fn single(stats: Arc<VideoStats>) -> Self {
        Self {
            own: stats,
            mirror: None,
        }
    }

    /// Counts into `own`, and into `connection` while `feeding` is set.
    pub(crate) fn mirrored(own: Arc<VideoStats>, connection: Arc<VideoStats>, feeding: Arc<AtomicBool>) -> Self {
        Self {
            own,
            mirror: Some((connection, feeding)),
        }
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        bump(counter(&self.own), n);
        if let Some((connection, feeding)) = &self.mirror
            && feeding.load(Ordering::Acquire)
        {
            bump(counter(connection), n);
        }
    }

    fn set_codec(&self, codec: VideoCodec) {
        let _ = self.own.codec.set(codec);
        if let Some((connection, _)) = &self.mirror {
            let _ = connection.codec.set(codec);
        }
    }

    /// The stream's own counters now.
    pub(crate) fn snapshot(&self) -> VideoSnapshot {
        self.own.snapshot()
    }
}

/// Live counters of one audio track.
#[derive(Debug, Default)]
pub struct AudioStats {
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// [`AudioStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AudioSnapshot {
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
}

impl AudioStats {
    /// A copy of the counters now.
    pub fn snapshot(&self) -> AudioSnapshot {
        AudioSnapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// One decoded picture and where it came from.
#[derive(Clone, Debug)]
pub struct DecodedPicture {
    /// The picture.
    pub picture: Picture,
    /// RTP timestamp of its frame (90 kHz).
    pub rtp_timestamp: u32,
    /// Whether its frame was a keyframe.
    pub keyframe: bool,
    /// Arrival of the frame's first RTP packet.
    pub arrival: Instant,
    /// When the decoder returned it.
    pub decoded_at: Instant,
    /// 0-based index among this track's decoded pictures.
    pub index: u64,
}

/// Whether a complete frame (depacketized) is a keyframe.
pub fn is_keyframe(codec: VideoCodec, frame: &[u8]) -> bool {
    match codec {
        // RFC 6386 §9.1: bit 0 of the frame tag is 0 for a key frame.
        VideoCodec::Vp8 => frame.first().is_some_and(|b| b & 0x01 == 0),
        // An IDR slice (NAL type 5) anywhere in the Annex-B access unit.
        VideoCodec::H264 => annexb_nal_types(frame).any(|t| t == 5),
    }
}

/// NAL unit types of an Annex-B stream (after each 00 00 01 start code).
fn annexb_nal_types(data: &[u8]) -> impl Iterator<Item = u8> + '_ {
    data.windows(4)
        .filter(|w| w[0] == 0 && w[1] == 0 && w[2] == 1)
        .map(|w| w[3] & 0x1f)
}

/// Decides, frame by frame, whether to decode or to wait for a keyframe, and when to ask for
/// one. Pure: the caller passes the time.
#[derive(Debug)]
pub struct KeyframeGate {
    waiting: bool,
    last_request: Option<Instant>,
}

impl Default for KeyframeGate {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyframeGate {
    /// Waiting for the first keyframe.
    pub fn new() -> Self {
        Self {
            waiting: true,
            last_request: None,
        }
    }

    /// The decoder lost its reference (decode error, lost packets): wait for a keyframe again.
    pub fn lose_reference(&mut self) {
        self.waiting = true;
    }

    /// Whether a frame is to be decoded.
    pub fn admit(&mut self, keyframe: bool) -> bool {
        if keyframe {
            self.waiting = false;
        }
        !self.waiting
    }

    /// Whether to send a keyframe request now (while waiting, at most once per interval).
    pub fn request_due(&mut self, now: Instant) -> bool {
        let due = self.waiting
            && self
                .last_request
                .is_none_or(|last| now.saturating_duration_since(last) >= PLI_INTERVAL);
        if due {
            self.last_request = Some(now);
        }
        due
    }
}

/// A frame on its way to the decoder thread.
struct Job {
    data: bytes::Bytes,
    rtp_timestamp: u32,
    keyframe: bool,
    arrival: Instant,
}

/// The decoder on its own thread behind a bounded queue: the RTP reader never waits on it.
struct DecoderThread {
    jobs: mpsc::SyncSender<Job>,
    lost_reference: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl DecoderThread {
    fn spawn(
        codec: VideoCodec,
        tally: Tally,
        mut sink: impl FnMut(DecodedPicture) + Send + 'static,
    ) -> Result<Self, ReceiveError> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(DECODE_QUEUE);
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), DecodeError>>(1);
        let lost_reference = Arc::new(AtomicBool::new(false));
        let lost = Arc::clone(&lost_reference);
        let handle = std::thread::Builder::new()
            .name(format!("endpoint-{codec}-decoder"))
            .spawn(move || {
                // The codec libraries' contexts are not `Send`: the decoder is born and dies
                // on this thread, which reports whether it could be created.
                let mut decoder = match decode::new_decoder(codec) {
                    Ok(decoder) => {
                        let _ = ready_tx.send(Ok(()));
                        decoder
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let mut index = 0;
                for job in queue {
                    match decoder.decode(&job.data) {
                        Ok(Some(picture)) => {
                            // The sink first: a simulcast layer's sink decides whether the
                            // layer feeds the connection, which the counts below follow.
                            sink(DecodedPicture {
                                picture,
                                rtp_timestamp: job.rtp_timestamp,
                                keyframe: job.keyframe,
                                arrival: job.arrival,
                                decoded_at: Instant::now(),
                                index,
                            });
                            index += 1;
                            tally.add(|s| &s.frames_decoded, 1);
                            if job.keyframe {
                                tally.add(|s| &s.keyframes_decoded, 1);
                            }
                        }
                        Ok(None) => {}
                        Err(err) => {
                            tracing::warn!(%err, rtp_timestamp = job.rtp_timestamp, "frame did not decode");
                            tally.add(|s| &s.decode_errors, 1);
                            lost.store(true, Ordering::Release);
                        }
                    }
                }
            })
            .map_err(ReceiveError::Thread)?;
        // A blocking wait, but a short one: creating a decoder context takes about a millisecond,
        // once per track.
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(ReceiveError::Thread(std::io::Error::other(
                    "decoder thread ended at start",
                )));
            }
        }
        Ok(Self {
            jobs,
            lost_reference,
            handle,
        })
    }

    /// Queues a frame; false when the queue is full (the frame is dropped).
    fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// Whether the decoder failed since the last call.
    fn take_lost_reference(&self) -> bool {
        self.lost_reference.swap(false, Ordering::AcqRel)
    }

    /// Lets the thread finish the queue and end. Blocks: call it off the runtime.
    fn finish(self) {
        drop(self.jobs);
        if self.handle.join().is_err() {
            tracing::warn!("the decoder thread panicked");
        }
    }
}

/// First-packet arrival per RTP timestamp, for the frames still being built.
#[derive(Debug, Default)]
struct Arrivals(VecDeque<(u32, Instant)>);

impl Arrivals {
    fn note(&mut self, rtp_timestamp: u32, now: Instant) {
        if self.0.iter().any(|(ts, _)| *ts == rtp_timestamp) {
            return;
        }
        if self.0.len() == ARRIVALS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back((rtp_timestamp, now));
    }

    fn take(&mut self, rtp_timestamp: u32, fallback: Instant) -> Instant {
        match self.0.iter().position(|(ts, _)| *ts == rtp_timestamp) {
            Some(i) => self.0.remove(i).map_or(fallback, |(_, at)| at),
            None => fallback,
        }
    }
}

/// The codec of a remote track's stream `ssrc`, as negotiated.
pub(crate) async fn track_codec(track: &dyn TrackRemote, ssrc: u32) -> Result<VideoCodec, ReceiveError> {
    let mime = track
        .codec(ssrc)
        .await
        .map(|c| c.mime_type)
        .ok_or(ReceiveError::NoCodec)?;
    VideoCodec::from_mime(&mime).ok_or(ReceiveError::UnsupportedCodec(mime))
}

/// Reads a remote video track until it ends, decoding every frame into `sink` (called on the
/// decoder thread: keep it short) and asking for keyframes while the decoder has none.
pub async fn run_video_track(
    track: Arc<dyn TrackRemote>,
    stats: Arc<VideoStats>,
    sink: impl FnMut(DecodedPicture) + Send + 'static,
) -> Result<(), ReceiveError> {
    let ssrc = track.ssrcs().await.first().copied().ok_or(ReceiveError::NoCodec)?;
    let codec = track_codec(&*track, ssrc).await?;
    tracing::info!(ssrc, %codec, "video track started");
    let tally = Tally::single(stats);
    match codec {
        VideoCodec::Vp8 => receive(track, StreamReceiver::<Vp8Packet>::new(codec, tally, sink)?).await,
        VideoCodec::H264 => receive(track, StreamReceiver::<H264Packet>::new(codec, tally, sink)?).await,
    }
    Ok(())
}

async fn receive<T: Depacketizer + Default + Send + 'static>(
    track: Arc<dyn TrackRemote>,
    mut stream: StreamReceiver<T>,
) {
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let media_ssrc = packet.header.ssrc;
        if stream.push(packet, Instant::now()) {
            send_pli(&*track, media_ssrc, &stream.tally).await;
        }
    }
    let summary = stream.tally.snapshot();
    stream.finish().await;
    tracing::info!(?summary, "video track ended");
}

/// One RTP stream (a track, or one simulcast layer) on its way to pictures: its own sample
/// builder, keyframe gate and decoder thread.
pub(crate) struct StreamReceiver<T: Depacketizer> {
    codec: VideoCodec,
    builder: SampleBuilder<T>,
    decoder: DecoderThread,
    gate: KeyframeGate,
    arrivals: Arrivals,
    tally: Tally,
}

impl<T: Depacketizer + Default + Send + 'static> StreamReceiver<T> {
    /// Starts the stream's decoder thread; decoded pictures go to `sink` (on that thread).
    pub(crate) fn new(
        codec: VideoCodec,
        tally: Tally,
        sink: impl FnMut(DecodedPicture) + Send + 'static,
    ) -> Result<Self, ReceiveError> {
        tally.set_codec(codec);
        let builder = SampleBuilder::new(MAX_LATE_PACKETS, T::default(), 90_000).with_max_time_delay(MAX_LATE_TIME);
        let decoder = DecoderThread::spawn(codec, tally.clone(), sink)?;
        Ok(Self {
            codec,
            builder,
            decoder,
            gate: KeyframeGate::new(),
            arrivals: Arrivals::default(),
            tally,
        })
    }

    /// Takes one RTP packet of the stream; true when a keyframe request is due.
    pub(crate) fn push(&mut self, packet: rtc::rtp::Packet, now: Instant) -> bool {
        self.tally.add(|s| &s.packets, 1);
        self.tally.add(|s| &s.bytes, packet.payload.len() as u64);
        self.arrivals.note(packet.header.timestamp, now);
        self.builder.push(now, packet);
        let mut request = false;
        while let Some(sample) = self.builder.pop(now) {
            self.tally.add(|s| &s.frames_assembled, 1);
            let lost = sample.prev_dropped_packets.saturating_sub(sample.prev_padding_packets);
            let keyframe = is_keyframe(self.codec, &sample.data);
            if lost > 0 {
                self.tally.add(|s| &s.lost_packets, u64::from(lost));
                self.gate.lose_reference();
            }
            if self.decoder.take_lost_reference() {
                self.gate.lose_reference();
            }
            let arrival = self.arrivals.take(sample.packet_timestamp, now);
            if !self.gate.admit(keyframe) {
                self.tally.add(|s| &s.frames_skipped, 1);
            } else if !self.decoder.submit(Job {
                data: sample.data,
                rtp_timestamp: sample.packet_timestamp,
                keyframe,
                arrival,
            }) {
                tracing::debug!("decoder behind; frame dropped, waiting for a keyframe");
                self.tally.add(|s| &s.decoder_backlog, 1);
                self.gate.lose_reference();
            }
            request |= self.gate.request_due(now);
        }
        request
    }

    /// The stream's counters.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Lets the decoder finish its queue and stop (off the runtime's threads).
    pub(crate) async fn finish(self) {
        let decoder = self.decoder;
        if tokio::task::spawn_blocking(move || decoder.finish()).await.is_err() {
            tracing::warn!("the decoder thread did not stop cleanly");
        }
    }
}

/// Asks the sender of `media_ssrc` for a keyframe (PLI), counted in `tally`.
pub(crate) async fn send_pli(track: &dyn TrackRemote, media_ssrc: u32, tally: &Tally) {
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    };
    match track.write_rtcp(vec![Box::new(pli)]).await {
        Ok(()) => {
            tally.add(|s| &s.plis_sent, 1);
            tracing::debug!(media_ssrc, "PLI sent");
        }
        Err(err) => tracing::debug!(%err, media_ssrc, "PLI not sent"),
    }
}

/// Counts the packets of a remote audio track until it ends.
pub async fn run_audio_track(track: Arc<dyn TrackRemote>, stats: Arc<AudioStats>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                bump(&stats.packets, 1);
                bump(&stats.bytes, packet.payload.len() as u64);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::info!(stats = ?stats.snapshot(), "audio track ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_are_told_from_the_bitstream() {
        assert!(is_keyframe(VideoCodec::Vp8, &[0x10, 0x02, 0x00]));
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x11, 0x02, 0x00]));
        assert!(!is_keyframe(VideoCodec::Vp8, &[]));
        let idr = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88];
        assert!(is_keyframe(VideoCodec::H264, &idr));
        assert!(!is_keyframe(VideoCodec::H264, &[0, 0, 0, 1, 0x41, 0x9a]));
    }

    #[test]
    fn frames_wait_for_a_keyframe_and_requests_are_rate_limited() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::new();
        assert!(!gate.admit(false), "a delta frame first is skipped");
        assert!(gate.request_due(t0));
        assert!(!gate.request_due(t0 + Duration::from_millis(100)), "rate-limited");
        assert!(gate.admit(true));
        assert!(
            !gate.request_due(t0 + Duration::from_secs(1)),
            "no request once decoding"
        );
        assert!(gate.admit(false));

        gate.lose_reference();
        assert!(!gate.admit(false));
        assert!(gate.request_due(t0 + Duration::from_secs(2)));
        assert!(gate.admit(true));
    }

    #[test]
    fn arrivals_are_remembered_per_frame_and_bounded() {
        let t0 = Instant::now();
        let mut a = Arrivals::default();
        a.note(100, t0);
        a.note(100, t0 + Duration::from_millis(5));
        assert_eq!(a.take(100, t0 + Duration::from_secs(1)), t0, "first packet's arrival");
        let late = t0 + Duration::from_secs(9);
        assert_eq!(a.take(100, late), late, "taken once");
        for ts in 0..1000 {
            a.note(ts, t0);
        }
        assert_eq!(a.0.len(), ARRIVALS_KEPT);
    }
}
