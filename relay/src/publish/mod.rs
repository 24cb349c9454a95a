//! Publishers: where encoded video goes. Each runs as its own task behind a small bounded
//! buffer, so a slow or dead SFU drops (and counts) frames instead of backing up the encoder.

pub mod backoff;
pub mod congestion;
pub mod keyframe;
pub mod lipsync;
pub mod peer;
pub mod preview;
pub mod retransmit;
pub mod rtp;
pub mod simulcast;
pub mod sora;
pub mod whip;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::codec::EncodedFrame;
use crate::frame::FrameTimes;
use crate::latency::Stage;
use crate::metrics::{DropReason, Metrics};
use rtp::MediaTime;

/// Frames a publisher may hold while its network path is busy; more would only add latency.
pub const PUBLISHER_BUFFER_FRAMES: usize = 3;
/// Audio packets a publisher may hold (0.5 s of 20 ms Opus frames).
pub const PUBLISHER_BUFFER_AUDIO: usize = 25;

/// The lifecycle of one publisher, as exported in metrics and `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherState {
    /// Nothing to publish to right now (the preview without viewers).
    Idle,
    /// Signaling or ICE/DTLS in progress.
    Connecting,
    /// Media is flowing to the SFU.
    Connected,
    /// Waiting to retry after an error.
    Backoff,
    /// Ended (shutdown, or the server ended the session normally).
    Stopped,
}

impl PublisherState {
    /// Every state, for gauges.
    pub const ALL: [PublisherState; 5] = [
        PublisherState::Idle,
        PublisherState::Connecting,
        PublisherState::Connected,
        PublisherState::Backoff,
        PublisherState::Stopped,
    ];

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherState::Idle => "idle",
            PublisherState::Connecting => "connecting",
            PublisherState::Connected => "connected",
            PublisherState::Backoff => "backoff",
            PublisherState::Stopped => "stopped",
        }
    }
}

impl From<PublisherState> for livefilter_contract::status::PublisherState {
    fn from(s: PublisherState) -> Self {
        match s {
            PublisherState::Idle => Self::Idle,
            PublisherState::Connecting => Self::Connecting,
            PublisherState::Connected => Self::Connected,
            PublisherState::Backoff => Self::Backoff,
            PublisherState::Stopped => Self::Stopped,
        }
    }
}

impl fmt::Display for PublisherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An encoded frame on its way to the network, with the times the pipeline recorded.
#[derive(Clone, Debug)]
pub struct OutgoingFrame {
    /// The bitstream and its properties.
    pub frame: EncodedFrame,
    /// When the frame passed each stage.
    pub times: FrameTimes,
    /// The source's media time (90 kHz), rebased per publisher onto its output stream.
    pub media_time: MediaTime,
    /// When the source captured it (NTP), sent as `abs-capture-time` where negotiated.
    pub capture_ntp: Option<u64>,
    /// The simulcast layers encoded from the same picture, while a Sora session asks for them
    /// (other publishers send only `frame`).
    pub simulcast: Option<Arc<Vec<simulcast::LayerFrame>>>,
}

/// One Opus packet from the browser, forwarded without transcoding.
#[derive(Clone, Debug)]
pub struct AudioPacket {
    /// The Opus payload.
    pub payload: Bytes,
    /// The source's media time (48 kHz).
    pub media_time: MediaTime,
    /// The source's sequence number (gaps are kept).
    pub sequence: u16,
    /// The RTP marker bit.
    pub marker: bool,
}

/// The receiving ends a publisher task owns.
pub struct PublisherInputs {
    /// Encoded video.
    pub video: mpsc::Receiver<OutgoingFrame>,
    /// Forwarded audio.
    pub audio: mpsc::Receiver<AudioPacket>,
}

impl PublisherInputs {
    /// Stops accepting input; later offers are counted as dropped by the handles.
    pub fn close(&mut self) {
        self.video.close();
        self.audio.close();
    }
}

/// After a failed connection attempt: counts the error, then waits out the backoff delay while
/// dropping (and counting) what the pipeline offers. False when shutdown came first.
pub(crate) async fn retry_after_error(
    publisher: &'static str,
    error: &(dyn std::error::Error + Send + Sync),
    kind: &str,
    backoff: &mut backoff::Backoff,
    inputs: &mut PublisherInputs,
    metrics: &Metrics,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    metrics.publisher_errors.with_label_values(&[publisher, kind]).inc();
    let delay = backoff.next_delay(rand::random::<f64>());
    tracing::warn!(publisher, error = %error, retry_in_ms = delay.as_millis() as u64, attempt = backoff.attempts(), "publisher failed; reconnecting");
    wait_to_reconnect(publisher, delay, inputs, metrics, shutdown).await
}

/// Waits `delay` before a reconnection (state `backoff`) while dropping (and counting) what the
/// pipeline offers, then counts the reconnection. False when shutdown came first.
pub(crate) async fn wait_to_reconnect(
    publisher: &'static str,
    delay: std::time::Duration,
    inputs: &mut PublisherInputs,
    metrics: &Metrics,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    metrics.set_publisher_state(publisher, PublisherState::Backoff);
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = &mut deadline => break,
            f = inputs.video.recv() => match f {
                Some(_) => metrics.drop_frame(publisher, DropReason::PublisherDisconnected),
                None => return false,
            },
            _ = inputs.audio.recv() => {}
        }
    }
    metrics.publisher_reconnects.with_label_values(&[publisher]).inc();
    true
}

/// Records the send and total latency of a frame just written to the network.
pub fn observe_sent(metrics: &Metrics, publisher: &str, frame: &OutgoingFrame) {
    let now = std::time::Instant::now();
    if let Some(encoded) = frame.times.encoded {
        metrics
            .latency
            .observe(Stage::Send, now.saturating_duration_since(encoded));
    }
    metrics
        .latency
        .observe(Stage::Total, now.saturating_duration_since(frame.times.received));
    metrics.frames_sent.with_label_values(&[publisher]).inc();
}

/// Keyframe requests any publisher raises when a viewer (or a fresh connection) needs a
/// keyframe. The encoder takes them before each frame and honours them at most once per
/// interval ([`keyframe::KeyframeThrottle`]), so no viewer can force I-frames on everyone.
#[derive(Clone, Debug, Default)]
pub struct KeyframeRequest(Arc<AtomicU64>);

impl KeyframeRequest {
    /// Asks for a keyframe.
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// How many requests arrived since the last call; clears them.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::AcqRel)
    }
}

/// The pipeline's side of a publisher: non-blocking, bounded hand-offs.
#[derive(Clone)]
pub struct PublisherHandle {
    name: String,
    video: mpsc::Sender<OutgoingFrame>,
    audio: mpsc::Sender<AudioPacket>,
    metrics: Metrics,
}

impl PublisherHandle {
    /// Creates the handle and the receiving ends the publisher task owns.
    pub fn new(name: impl Into<String>, metrics: Metrics) -> (Self, PublisherInputs) {
        let (video, video_rx) = mpsc::channel(PUBLISHER_BUFFER_FRAMES);
        let (audio, audio_rx) = mpsc::channel(PUBLISHER_BUFFER_AUDIO);
        (
            Self {
                name: name.into(),
                video,
                audio,
                metrics,
            },
            PublisherInputs {
                video: video_rx,
                audio: audio_rx,
            },
        )
    }

    /// The publisher's name (`sora`, `whip`, `preview`), used as a metric label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers a frame; never waits. A full buffer drops the frame and counts it.
    pub fn offer(&self, frame: OutgoingFrame) {
        match self.video.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.drop_frame(&self.name, DropReason::PublisherBacklog)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.drop_frame(&self.name, DropReason::PublisherDisconnected)
            }
        }
    }

    /// Offers an audio packet; never waits. Audio that cannot be taken is dropped (a gap the
    /// receiver's jitter buffer conceals).
    pub fn offer_audio(&self, packet: AudioPacket) {
        let _ = self.audio.try_send(packet);
    }
}
