//! The endpoint's WebRTC side: a receive-only webrtc-rs peer connection per client, whose tracks
//! feed [`crate::receive`] and the connection's record.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use tracing::Instrument;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use crate::IceMode;
use crate::codec::VideoCodec;
use crate::layers;
use crate::receive;
use crate::record::Connection;

/// Failures setting up or negotiating a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// webrtc-rs refused an operation.
    #[error("{what}: {source}")]
    WebRtc {
        /// What was being done.
        what: &'static str,
        /// The library's error.
        source: webrtc::error::Error,
    },
    /// ICE gathering did not finish in time.
    #[error("ICE gathering did not complete within {0:?}")]
    GatheringTimeout(Duration),
    /// The peer connection has no local description after negotiation.
    #[error("no local description")]
    NoLocalDescription,
    /// The offer could not be made to ask for simulcast.
    #[error("simulcast offer: {0}")]
    Simulcast(#[from] crate::simulcast::OfferError),
}

fn webrtc_err(what: &'static str) -> impl FnOnce(webrtc::error::Error) -> PeerError {
    move |source| PeerError::WebRtc { what, source }
}

/// What the peer connection reports to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// Local ICE gathering finished: the local description carries the candidates.
    GatheringComplete,
    /// The peer connection state changed.
    State(RTCPeerConnectionState),
}

/// A shareable peer connection.
pub type Peer = Arc<dyn PeerConnection>;

/// How long to wait for the (local, host-only) ICE gathering.
const GATHERING_TIMEOUT: Duration = Duration::from_secs(5);

/// Payload types: Opus 111; VP8 96 (+ RTX 97); H.264 42e01f packetization-mode 1: 102 (+ RTX 103).
fn register_codecs(engine: &mut MediaEngine, video: &[VideoCodec]) -> Result<(), PeerError> {
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: "audio/opus".to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .map_err(webrtc_err("register opus"))?;
    let feedback = ["nack:", "nack:pli", "ccm:fir"]
        .iter()
        .map(|f| {
            let (typ, parameter) = f.split_once(':').unwrap_or((f, ""));
            RTCPFeedback {
                typ: typ.to_owned(),
                parameter: parameter.to_owned(),
            }
        })
        .collect::<Vec<_>>();
    let video_codec = |mime: &str, fmtp: &str, pt: u8| RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: feedback.clone(),
        },
        payload_type: pt,
    };
    let rtx = |apt: u8, pt: u8| RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/rtx".to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: format!("apt={apt}"),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    };
    for codec in video {
        let (primary, retransmission) = match codec {
            VideoCodec::Vp8 => (video_codec("video/VP8", "", 96), rtx(96, 97)),
            VideoCodec::H264 => (
                video_codec(
                    "video/H264",
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                    102,
                ),
                rtx(102, 103),
            ),
        };
        engine
            .register_codec(primary, RtpCodecKind::Video)
            .map_err(webrtc_err("register video codec"))?;
        engine
            .register_codec(retransmission, RtpCodecKind::Video)
            .map_err(webrtc_err("register rtx"))?;
    }
    Ok(())
}

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    connection: Arc<Connection>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.try_send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::info!(connection_id = %self.connection.id, %state, "peer connection state");
        self.connection.set_peer_state(&state.to_string());
        if self.events.try_send(PeerEvent::State(state)).is_err() {
            tracing::debug!(connection_id = %self.connection.id, %state, "peer event not delivered");
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = track.kind().await;
        let connection = self.connection.clone();
        let span = tracing::info_span!("receive", connection_id = %connection.id, %kind);
        match kind {
            RtpCodecKind::Video => {
                tokio::spawn(
                    async move {
                        let stats = connection.video.clone();
                        let result = match connection.simulcast_layers() {
                            Some(simulcast) => {
                                let sink: layers::PictureSink = {
                                    let connection = connection.clone();
                                    Arc::new(move |frame| connection.record_frame(frame))
                                };
                                layers::run_simulcast_video_track(track, simulcast, stats, sink).await
                            }
                            None => {
                                let sink = {
                                    let connection = connection.clone();
                                    move |frame| connection.record_frame(frame)
                                };
                                receive::run_video_track(track, stats, sink).await
                            }
                        };
                        if let Err(err) = result {
                            tracing::warn!(%err, "video receive stopped");
                            connection.note_ingest_error(err.to_string());
                        }
                    }
                    .instrument(span),
                );
            }
            RtpCodecKind::Audio => {
                tokio::spawn(receive::run_audio_track(track, connection.audio.clone()).instrument(span));
            }
            _ => tracing::debug!("ignoring track of unknown kind"),
        }
    }
}

/// Builds a receive-only peer connection bound to `ice_ip`, reporting to `events` and recording
/// its media into `connection`. It is always the DTLS server, as Sora is: it offers
/// `a=setup:actpass` and answers (WHIP) `a=setup:passive`.
pub async fn new_peer(
    ice_ip: IpAddr,
    ice_mode: IceMode,
    video: &[VideoCodec],
    connection: Arc<Connection>,
    events: mpsc::Sender<PeerEvent>,
) -> Result<Peer, PeerError> {
    let mut engine = MediaEngine::default();
    register_codecs(&mut engine, video)?;
    let registry =
        register_default_interceptors(Registry::new(), &mut engine).map_err(webrtc_err("register interceptors"))?;
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .with_lite(ice_mode.is_lite())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build();
    let handler = Arc::new(Handler { events, connection });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec![SocketAddr::new(ice_ip, 0)])
        .build()
        .await
        .map_err(webrtc_err("build peer connection"))?;
    Ok(Arc::new(pc))
}

/// Adds the receive-only transceivers a Sora offer carries (audio first, then video).
pub async fn add_recvonly_transceivers(pc: &Peer, audio: bool, video: bool) -> Result<(), PeerError> {
    for (wanted, kind) in [(audio, RtpCodecKind::Audio), (video, RtpCodecKind::Video)] {
        if wanted {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            };
            pc.add_transceiver_from_kind(kind, Some(init))
                .await
                .map_err(webrtc_err("add transceiver"))?;
        }
    }
    Ok(())
}

/// Creates and applies an offer, waits for gathering, and returns the offer SDP with candidates.
pub async fn create_offer(pc: &Peer, events: &mut mpsc::Receiver<PeerEvent>) -> Result<String, PeerError> {
    apply_new_offer(pc).await?;
    wait_for_gathering(events).await?;
    Ok(pc.local_description().await.ok_or(PeerError::NoLocalDescription)?.sdp)
}

/// Creates and applies an offer for a renegotiation (the candidates are already gathered);
/// returns its SDP.
pub async fn create_re_offer(pc: &Peer) -> Result<String, PeerError> {
    apply_new_offer(pc).await?;
    Ok(pc.local_description().await.ok_or(PeerError::NoLocalDescription)?.sdp)
}

async fn apply_new_offer(pc: &Peer) -> Result<(), PeerError> {
    let offer = pc.create_offer(None).await.map_err(webrtc_err("create offer"))?;
    pc.set_local_description(offer)
        .await
        .map_err(webrtc_err("set local offer"))
}

/// The SDP of an offer the peer connection applied, as sent to a client: for a simulcast
/// connection (`simulcast_rids`), its video m-section asks to receive those layers. webrtc-rs
/// cannot offer receive rids and applies only offers it wrote, so the rids are added to the
/// text sent (as the bitrate cap is); the answer's send rids then bind the layers, since the
/// receiver takes them from the remote description.
pub fn offer_as_sent(sdp: String, simulcast_rids: Option<&[&str]>) -> Result<String, PeerError> {
    match simulcast_rids {
        Some(rids) => Ok(crate::simulcast::offer_to_receive(&sdp, rids)?),
        None => Ok(sdp),
    }
}

/// Applies a remote offer, creates the answer, waits for gathering and returns the answer SDP.
pub async fn answer_offer(pc: &Peer, sdp: String, events: &mut mpsc::Receiver<PeerEvent>) -> Result<String, PeerError> {
    let offer = RTCSessionDescription::offer(sdp).map_err(webrtc_err("parse offer"))?;
    pc.set_remote_description(offer)
        .await
        .map_err(webrtc_err("set remote offer"))?;
    let answer = pc.create_answer(None).await.map_err(webrtc_err("create answer"))?;
    pc.set_local_description(answer)
        .await
        .map_err(webrtc_err("set local answer"))?;
    wait_for_gathering(events).await?;
    Ok(pc.local_description().await.ok_or(PeerError::NoLocalDescription)?.sdp)
}

/// Abandons the offer applied last, back to the state negotiated before it.
pub async fn roll_back_offer(pc: &Peer) -> Result<(), PeerError> {
    let rollback = RTCSessionDescription::rollback(None).map_err(webrtc_err("rollback"))?;
    pc.set_local_description(rollback)
        .await
        .map_err(webrtc_err("roll back the offer"))
}

/// Applies the client's answer (or re-answer).
pub async fn apply_answer(pc: &Peer, sdp: String) -> Result<(), PeerError> {
    let answer = RTCSessionDescription::answer(sdp).map_err(webrtc_err("parse answer"))?;
    pc.set_remote_description(answer)
        .await
        .map_err(webrtc_err("set remote answer"))
}

async fn wait_for_gathering(events: &mut mpsc::Receiver<PeerEvent>) -> Result<(), PeerError> {
    let wait = async {
        while let Some(event) = events.recv().await {
            if event == PeerEvent::GatheringComplete {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(GATHERING_TIMEOUT, wait).await {
        Ok(true) => Ok(()),
        _ => Err(PeerError::GatheringTimeout(GATHERING_TIMEOUT)),
    }
}
