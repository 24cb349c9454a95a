//! The built-in local preview: viewers pull the processed stream over WebRTC (WHEP-style: the
//! viewer POSTs a recvonly offer, the relay answers). One encoded stream fans out to every
//! viewer, each behind its own small buffer, so a slow viewer only loses its own frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::congestion::{BitrateEstimate, BitrateLimits};
use super::lipsync::{AudioDelay, audio_delay};
use super::peer::{PeerError, PeerEvent, PeerOptions, SendPeer, sleep_until_some};
use super::{
    AudioPacket, KeyframeRequest, OutgoingFrame, PUBLISHER_BUFFER_AUDIO, PUBLISHER_BUFFER_FRAMES, PublisherInputs,
    PublisherState, observe_sent,
};
use crate::codec::VideoCodec;
use crate::metrics::{DropReason, Metrics};

/// The metric label of this publisher.
pub const PUBLISHER: &str = "preview";

/// How long a viewer's offer may take to get a complete answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a viewer may take to connect after its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a viewer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The viewer limit is reached.
    #[error("the preview is full: {0} of {0} viewers are watching; try again when one leaves")]
    Full(usize),
    /// The offer could not be answered.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// ICE gathering did not finish.
    #[error("ICE gathering did not complete within {0:?}")]
    Gathering(Duration),
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
}

/// Settings of the preview.
#[derive(Clone, Debug)]
pub struct PreviewConfig {
    /// The codec the relay encodes with.
    pub codec: VideoCodec,
    /// At most this many viewers at once.
    pub max_viewers: usize,
    /// Local UDP sockets for viewer peers.
    pub udp_addrs: Vec<String>,
    /// Addresses to advertise.
    pub public_ips: Vec<String>,
    /// The range each viewer's congestion control keeps its estimate within (viewers never
    /// change the encoder's bitrate: see [`super::congestion`]).
    pub bitrate: BitrateLimits,
}

struct Viewer {
    video: mpsc::Sender<OutgoingFrame>,
    audio: mpsc::Sender<AudioPacket>,
    cancel: CancellationToken,
}

/// The preview publisher: a set of viewers fed from one encoded stream.
pub struct PreviewHub {
    config: PreviewConfig,
    metrics: Metrics,
    keyframes: KeyframeRequest,
    viewers: Mutex<HashMap<String, Viewer>>,
    shutdown: CancellationToken,
}

impl PreviewHub {
    /// An empty hub.
    pub fn new(
        config: PreviewConfig,
        metrics: Metrics,
        keyframes: KeyframeRequest,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        metrics.set_publisher_state(PUBLISHER, PublisherState::Idle);
        Arc::new(Self {
            config,
            metrics,
            keyframes,
            viewers: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Viewers connected or connecting.
    pub fn viewer_count(&self) -> usize {
        self.viewers.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The configured maximum.
    pub fn max_viewers(&self) -> usize {
        self.config.max_viewers
    }

    fn update_state(&self) {
        let state = if self.viewer_count() > 0 {
            PublisherState::Connected
        } else {
            PublisherState::Idle
        };
        self.metrics.set_publisher_state(PUBLISHER, state);
    }

    /// Answers a viewer's recvonly offer; returns the viewer id and the answer SDP (with every
    /// candidate: no trickle). The viewer's own task owns its peer from creation to close, so a
    /// refused offer or a request dropped half-way leaves no slot, socket or task behind.
    pub async fn add_viewer(self: &Arc<Self>, offer_sdp: String) -> Result<(String, String), PreviewError> {
        let (video_tx, video_rx) = mpsc::channel(PUBLISHER_BUFFER_FRAMES);
        let (audio_tx, audio_rx) = mpsc::channel(PUBLISHER_BUFFER_AUDIO);
        let cancel = self.shutdown.child_token();
        let id = format!("{:016x}", rand::random::<u64>());
        {
            let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
            if viewers.len() >= self.config.max_viewers {
                return Err(PreviewError::Full(self.config.max_viewers));
            }
            // Reserved before the (slow) answer so concurrent offers respect the limit.
            viewers.insert(
                id.clone(),
                Viewer {
                    video: video_tx,
                    audio: audio_tx,
                    cancel: cancel.clone(),
                },
            );
        }
        let slot = Reservation {
            hub: Arc::clone(self),
            id: id.clone(),
        };
        let (reply, answer) = oneshot::channel();
        let viewer = ViewerTask {
            slot,
            video: video_rx,
            audio: audio_rx,
            cancel,
        };
        tokio::spawn(
            viewer
                .run(offer_sdp, reply)
                .instrument(tracing::info_span!("preview-viewer", id)),
        );
        let answer = answer.await.unwrap_or(Err(PreviewError::ShuttingDown))?;
        Ok((id, answer))
    }

    /// Ends a viewer; false when there is no such viewer.
    pub fn remove_viewer(&self, id: &str) -> bool {
        let removed = self.viewers.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        if let Some(v) = &removed {
            v.cancel.cancel();
        }
        self.update_state();
        removed.is_some()
    }

    /// Fans the encoded stream out to the viewers until shutdown.
    pub async fn run(self: Arc<Self>, mut inputs: PublisherInputs) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                f = inputs.video.recv() => {
                    let Some(frame) = f else { break };
                    let viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
                    if viewers.is_empty() {
                        continue;
                    }
                    for v in viewers.values() {
                        if v.video.try_send(frame.clone()).is_err() {
                            self.metrics.drop_frame(PUBLISHER, DropReason::PublisherBacklog);
                        }
                    }
                }
                a = inputs.audio.recv() => {
                    let Some(packet) = a else { break };
                    for v in self.viewers.lock().unwrap_or_else(PoisonError::into_inner).values() {
                        let _ = v.audio.try_send(packet.clone());
                    }
                }
            }
        }
        let ids: Vec<String> = self
            .viewers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remove_viewer(&id);
        }
        self.metrics.set_publisher_state(PUBLISHER, PublisherState::Stopped);
        inputs.close();
    }
}

/// A viewer's place in the hub; leaving it (however the viewer's task ends) frees the place.
struct Reservation {
    hub: Arc<PreviewHub>,
    id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.hub.remove_viewer(&self.id);
    }
}

/// One viewer, from its offer to its close.
struct ViewerTask {
    slot: Reservation,
    video: mpsc::Receiver<OutgoingFrame>,
    audio: mpsc::Receiver<AudioPacket>,
    cancel: CancellationToken,
}

impl ViewerTask {
    async fn run(mut self, offer_sdp: String, mut reply: oneshot::Sender<Result<String, PreviewError>>) {
        let hub = Arc::clone(&self.slot.hub);
        let (events_tx, mut events) = mpsc::channel(64);
        let metrics = hub.metrics.clone();
        let options = PeerOptions {
            codec: hub.config.codec,
            ice_servers: Vec::new(),
            relay_only: false,
            udp_addrs: hub.config.udp_addrs.clone(),
            public_ips: hub.config.public_ips.clone(),
            audio: true,
            link: Default::default(),
            bitrate: hub.config.bitrate,
            // Each viewer's own: it paces that viewer, and drives nothing else.
            estimate: BitrateEstimate::default(),
            rids: Vec::new(),
            layer_keyframes: Default::default(),
        };
        let peer = match SendPeer::new(&options, events_tx, hub.keyframes.clone(), move || {
            metrics.keyframe_requests.with_label_values(&[PUBLISHER]).inc()
        })
        .await
        {
            Ok(peer) => peer,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let negotiated = tokio::select! {
            r = answer(&peer, offer_sdp, &mut events) => Some(r),
            _ = reply.closed() => None,
            _ = self.cancel.cancelled() => Some(Err(PreviewError::ShuttingDown)),
        };
        let end = match negotiated {
            None => "the request was abandoned before its answer",
            Some(Err(e)) => {
                let _ = reply.send(Err(e));
                "its offer was refused"
            }
            Some(Ok(answer)) => {
                if reply.send(Ok(answer)).is_err() {
                    "the request was abandoned before its answer"
                } else {
                    hub.update_state();
                    self.stream(&peer, &mut events).await
                }
            }
        };
        tracing::info!(reason = end, "preview viewer ended");
        peer.close().await;
    }

    async fn stream(&mut self, peer: &SendPeer, events: &mut mpsc::Receiver<PeerEvent>) -> &'static str {
        let hub = Arc::clone(&self.slot.hub);
        let mut live = false;
        let timeout = tokio::time::sleep(CONNECT_TIMEOUT);
        tokio::pin!(timeout);
        // Audio is held back by the video's latency so both reach the viewer together.
        let mut held_audio = AudioDelay::default();
        loop {
            let audio_due = held_audio.next_due();
            tokio::select! {
                _ = self.cancel.cancelled() => return "removed",
                _ = sleep_until_some(audio_due), if audio_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(packet) = held_audio.pop_due(now) {
                        if let Err(e) = peer.write_audio(&packet).await {
                            tracing::debug!(error = %e, "preview audio not written");
                        }
                    }
                }
                _ = &mut timeout, if !live => return "did not connect in time",
                e = events.recv() => match e {
                    Some(PeerEvent::Connected) => {
                        live = true;
                        hub.keyframes.request();
                        tracing::info!("preview viewer connected");
                    }
                    Some(PeerEvent::Disconnected) => {}
                    Some(PeerEvent::Down(_)) | None => return "connection closed",
                    Some(_) => {}
                },
                f = self.video.recv() => {
                    let Some(frame) = f else { return "stopped" };
                    if !live {
                        continue;
                    }
                    match peer.write_frame(&frame).await {
                        Ok(_) => observe_sent(&hub.metrics, PUBLISHER, &frame),
                        Err(e) => tracing::debug!(error = %e, "preview frame not written"),
                    }
                }
                a = self.audio.recv() => {
                    if let Some(packet) = a && live
                        && let Some(early) = held_audio.push(packet, tokio::time::Instant::now(), audio_delay(&hub.metrics.latency))
                        && let Err(e) = peer.write_audio(&early).await
                    {
                        tracing::debug!(error = %e, "preview audio not written");
                    }
                }
            }
        }
    }
}

/// Applies the viewer's offer and waits (bounded) for every local candidate.
async fn answer(
    peer: &SendPeer,
    offer_sdp: String,
    events: &mut mpsc::Receiver<PeerEvent>,
) -> Result<String, PreviewError> {
    peer.answer(offer_sdp).await?;
    let gathered = tokio::time::timeout(GATHER_TIMEOUT, async {
        while let Some(e) = events.recv().await {
            if matches!(e, PeerEvent::GatheringComplete) {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(gathered, Ok(true)) {
        return Err(PreviewError::Gathering(GATHER_TIMEOUT));
    }
    Ok(peer.local_sdp().await.unwrap_or_default())
}
