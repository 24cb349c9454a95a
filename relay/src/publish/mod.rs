//! Publishers: where encoded video goes. Each runs as its own task behind a small bounded
//! buffer, so a slow or dead SFU drops (and counts) frames instead of backing up the encoder.

pub mod backoff;
pub mod keyframe;
pub mod peer;
pub mod sora;
pub mod whip;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::codec::EncodedFrame;
use crate::metrics::{DropReason, Metrics};

/// Frames a publisher may hold while its network path is busy; more would only add latency.
pub const PUBLISHER_BUFFER_FRAMES: usize = 3;

/// The lifecycle of one publisher, as exported in metrics and `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherState {
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
    pub const ALL: [PublisherState; 4] = [
        PublisherState::Connecting,
        PublisherState::Connected,
        PublisherState::Backoff,
        PublisherState::Stopped,
    ];

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherState::Connecting => "connecting",
            PublisherState::Connected => "connected",
            PublisherState::Backoff => "backoff",
            PublisherState::Stopped => "stopped",
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
    /// When the picture was captured (generated, or received from the browser).
    pub captured: Instant,
    /// How long this picture is shown; advances the RTP timestamp.
    pub duration: Duration,
}

/// A flag any publisher raises when a viewer (or a fresh connection) needs a keyframe; the
/// encoder loop takes it before the next frame.
#[derive(Clone, Debug, Default)]
pub struct KeyframeRequest(Arc<AtomicBool>);

impl KeyframeRequest {
    /// Asks for a keyframe on the next encoded frame.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a keyframe was asked for since the last call; clears the request.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// The pipeline's side of a publisher: a non-blocking, bounded hand-off.
#[derive(Clone)]
pub struct PublisherHandle {
    name: String,
    tx: mpsc::Sender<OutgoingFrame>,
    metrics: Metrics,
}

impl PublisherHandle {
    /// Creates the handle and the receiving end the publisher task owns.
    pub fn new(name: impl Into<String>, metrics: Metrics) -> (Self, mpsc::Receiver<OutgoingFrame>) {
        let (tx, rx) = mpsc::channel(PUBLISHER_BUFFER_FRAMES);
        (Self { name: name.into(), tx, metrics }, rx)
    }

    /// The publisher's name (`sora`, `whip`, ...), used as a metric label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers a frame; never waits. A full buffer drops the frame and counts it.
    pub fn offer(&self, frame: OutgoingFrame) {
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.drop_frame(&self.name, DropReason::PublisherBacklog)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.drop_frame(&self.name, DropReason::PublisherDisconnected)
            }
        }
    }
}
