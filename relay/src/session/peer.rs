//! The browser's WebRTC peer: built for one session, its callbacks turned into events for the
//! session actor (tagged with the session's epoch, so a late event of an ended session is
//! recognised and ignored), its tracks handed to the media feed.

use std::sync::{Arc, Mutex, PoisonError};

use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use super::{AcceptError, EndReason, Event};
use crate::abs_capture;
use crate::codec::VideoCodec;
use crate::feed::MediaSinks;
use crate::ice;
use crate::ingest::VideoIngestConfig;
use crate::offer::OfferError;
use crate::publish::KeyframeRequest;
use crate::publish::peer::{H264_FMTP, opus_codec_parameters};

fn webrtc_err(op: &'static str) -> impl FnOnce(webrtc::error::Error) -> AcceptError {
    move |e| AcceptError::WebRtc {
        op,
        detail: e.to_string(),
    }
}

/// What one session's peer needs besides its own settings.
pub(super) struct PeerContext {
    pub epoch: u64,
    pub events: mpsc::Sender<Event>,
    pub cancel: CancellationToken,
    pub sinks: MediaSinks,
    pub keyframes: KeyframeRequest,
    pub video: VideoIngestConfig,
}

/// A built peer and what tells its negotiations apart; clones share the one peer.
#[derive(Clone)]
pub(super) struct BrowserPeer {
    pub pc: Arc<dyn PeerConnection>,
    /// Counts completed ICE gatherings: an answer (first or after an ICE restart) waits for
    /// the count to move past what it was before the description was applied.
    pub gathered: watch::Receiver<u64>,
    capture_time_ids: Arc<Mutex<CaptureTimeIds>>,
}

/// The ids the answer agreed for `abs-capture-time`, per media kind (none: not offered).
#[derive(Clone, Copy, Debug, Default)]
struct CaptureTimeIds {
    video: Option<u8>,
    audio: Option<u8>,
}

/// Where a session's peer takes ICE.
pub(super) struct Binds {
    /// UDP sockets.
    pub udp: Vec<String>,
    /// TCP listeners (ICE-TCP, passive candidates).
    pub tcp: Vec<String>,
}

/// Builds the peer for one session, bound to `binds`.
pub(super) async fn build(codecs: &[VideoCodec], binds: Binds, ctx: PeerContext) -> Result<BrowserPeer, AcceptError> {
    let mut media_engine = MediaEngine::default();
    for codec in codecs {
        for params in receive_codec_parameters(*codec) {
            media_engine
                .register_codec(params, RtpCodecKind::Video)
                .map_err(webrtc_err("registering a video codec"))?;
        }
    }
    media_engine
        .register_codec(opus_codec_parameters(), RtpCodecKind::Audio)
        .map_err(webrtc_err("registering Opus"))?;
    media_engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: abs_capture::URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )
        .map_err(webrtc_err("registering abs-capture-time"))?;
    // On audio too: with capture times on both tracks, publishers align audio on the video
    // (lip sync, `publish::lipsync`).
    media_engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: abs_capture::URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(webrtc_err("registering abs-capture-time for audio"))?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .map_err(webrtc_err("registering interceptors"))?;
    let loopback = ice::binds_loopback(&binds.udp) || ice::binds_loopback(&binds.tcp);
    let settings = SettingEngineBuilder::new().with_include_loopback_candidate(loopback);
    let (gathered_tx, gathered) = watch::channel(0u64);
    let capture_time_ids = Arc::new(Mutex::new(CaptureTimeIds::default()));
    let handler = Arc::new(Handler {
        ctx,
        gathered: gathered_tx,
        capture_time_ids: Arc::clone(&capture_time_ids),
    });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_setting_engine(settings.build())
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(binds.udp)
        .with_tcp_addrs(binds.tcp)
        .build()
        .await
        .map_err(webrtc_err("creating the peer connection"))?;
    Ok(BrowserPeer {
        pc: Arc::new(pc),
        gathered,
        capture_time_ids,
    })
}

impl BrowserPeer {
    /// Applies the browser's offer (the first, or an ICE restart) and returns the complete
    /// answer: non-trickle, as the original sample, so it waits (bounded) for gathering.
    pub(super) async fn answer(
        &self,
        offer_sdp: String,
        gather_timeout: std::time::Duration,
    ) -> Result<String, AcceptError> {
        let mut gathered = self.gathered.clone();
        let before = *gathered.borrow_and_update();
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(|e| OfferError::Malformed(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| OfferError::Malformed(e.to_string()))?;
        // Past this point only the offer's content can make webrtc-rs fail: refused as the
        // browser's mistake (4xx), never as the relay's.
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|e| OfferError::Unanswerable(e.to_string()))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|e| OfferError::Unanswerable(e.to_string()))?;
        // The id the answer agreed for abs-capture-time (only when the browser offered it); set
        // before any media can arrive, as the ICE connection needs the answer first.
        let local = self.pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
        *self.capture_time_ids.lock().unwrap_or_else(PoisonError::into_inner) = CaptureTimeIds {
            video: abs_capture::extmap_id_in(&local, "video"),
            audio: abs_capture::extmap_id_in(&local, "audio"),
        };
        // The watch's guard must not live across the next await (it is not Send).
        let complete = tokio::time::timeout(gather_timeout, gathered.wait_for(|n| *n > before))
            .await
            .is_ok_and(|r| r.is_ok());
        if !complete {
            tracing::warn!(
                ?gather_timeout,
                "ICE gathering incomplete; answering with the candidates so far"
            );
        }
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or(AcceptError::WebRtc {
                op: "reading the answer",
                detail: "no local description".into(),
            })
    }
}

/// The codec parameters the relay receives with: VP8, and H.264 constrained baseline and
/// baseline (the formats OpenH264 decodes), both packetization-mode 1.
fn receive_codec_parameters(codec: VideoCodec) -> Vec<RTCRtpCodecParameters> {
    let feedback = vec![
        RTCPFeedback {
            typ: "goog-remb".into(),
            parameter: String::new(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: String::new(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "pli".into(),
        },
        RTCPFeedback {
            typ: "ccm".into(),
            parameter: "fir".into(),
        },
    ];
    let params = |mime: &str, fmtp: &str, pt: u8| RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: feedback.clone(),
        },
        payload_type: pt,
    };
    match codec {
        VideoCodec::Vp8 => vec![params("video/VP8", "", 96)],
        VideoCodec::H264 => vec![
            params("video/H264", H264_FMTP, 102),
            params(
                "video/H264",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
                104,
            ),
        ],
    }
}

struct Handler {
    ctx: PeerContext,
    gathered: watch::Sender<u64>,
    capture_time_ids: Arc<Mutex<CaptureTimeIds>>,
}

impl Handler {
    async fn tell(&self, event: Event) {
        // The actor outlives every session; a send fails only at shutdown.
        let _ = self.ctx.events.send(event).await;
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::info!(epoch = self.ctx.epoch, %state, "browser peer connection");
        if state == RTCPeerConnectionState::Connected {
            self.ctx.keyframes.request();
        }
        self.tell(Event::Peer {
            epoch: self.ctx.epoch,
            state,
        })
        .await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = track.kind().await;
        let sinks = self.ctx.sinks.clone();
        let cancel = self.ctx.cancel.clone();
        let events = self.ctx.events.clone();
        let epoch = self.ctx.epoch;
        match kind {
            RtpCodecKind::Video => {
                let config = VideoIngestConfig {
                    abs_capture_time_id: self
                        .capture_time_ids
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .video,
                    ..self.ctx.video.clone()
                };
                tokio::spawn(
                    async move {
                        if let Err(e) = sinks.run_video(track, epoch, config, cancel).await {
                            tracing::warn!(error = %e, "browser video could not be received");
                        }
                        let _ = events
                            .send(Event::Ended {
                                epoch,
                                reason: EndReason::TrackEnded,
                            })
                            .await;
                    }
                    .instrument(tracing::info_span!("browser-video", epoch)),
                );
            }
            RtpCodecKind::Audio => {
                let capture_time_id = self
                    .capture_time_ids
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .audio;
                tokio::spawn(
                    async move { sinks.run_audio(track, epoch, capture_time_id, cancel).await }
                        .instrument(tracing::info_span!("browser-audio", epoch)),
                );
            }
            _ => tracing::info!(?kind, "ignoring a track of unknown kind"),
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let cancel = self.ctx.cancel.clone();
        let events = self.ctx.events.clone();
        let epoch = self.ctx.epoch;
        tokio::spawn(
            async move {
                let closed = tokio::select! {
                    _ = echo_pings(dc) => true,
                    _ = cancel.cancelled() => false,
                };
                // The page closes its channel only when it goes away: end at once rather than
                // after ICE notices.
                if closed {
                    let _ = events
                        .send(Event::Ended {
                            epoch,
                            reason: EndReason::PageClosed,
                        })
                        .await;
                }
            }
            .instrument(tracing::info_span!("browser-datachannel", epoch)),
        );
    }
}

/// The original sample's keep-alive: `ping <x>` is answered `pong <x>`.
pub fn pong_for(message: &str) -> Option<String> {
    message.strip_prefix("ping").map(|rest| format!("pong{rest}"))
}

async fn echo_pings(dc: Arc<dyn DataChannel>) {
    while let Some(event) = dc.poll().await {
        match event {
            DataChannelEvent::OnMessage(msg) if msg.is_string => {
                let text = String::from_utf8_lossy(&msg.data);
                if let Some(pong) = pong_for(&text)
                    && let Err(e) = dc.send_text(&pong).await
                {
                    tracing::debug!(error = %e, "pong not sent");
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_messages_are_echoed_as_pong_with_the_same_payload() {
        assert_eq!(pong_for("ping 1234.5").as_deref(), Some("pong 1234.5"));
        assert_eq!(pong_for("hello"), None);
    }
}
