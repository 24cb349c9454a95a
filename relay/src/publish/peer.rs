//! A send-only WebRTC peer carrying the relay's encoded video, shared by the Sora publisher
//! (which answers the SFU's offer) and the WHIP publisher (which makes the offer).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{PayloadType, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Mutex, mpsc};
use tracing::Instrument;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use super::keyframe::{KEYFRAME_REQUEST_SLOT, KeyframeRequestInterceptor};
use super::rtp::{SequenceRebase, TimestampRebase};
use super::{AudioPacket, KeyframeRequest, OutgoingFrame};
use crate::abs_capture::{self, AbsCaptureTime};
use crate::codec::VideoCodec;
use crate::ice;
use rtc::rtp::extension::HeaderExtension;

/// The H.264 format the relay sends: constrained baseline 3.1, packetization-mode 1.
pub const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// Errors of the send-only peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// webrtc-rs refused an operation.
    #[error("WebRTC {op} failed: {source}")]
    WebRtc {
        op: &'static str,
        #[source]
        source: webrtc::error::Error,
    },
    /// The remote description did not negotiate the relay's codec.
    #[error("the remote peer did not accept {0} for video")]
    CodecNotNegotiated(VideoCodec),
    /// ICE gathering did not finish in time (non-trickle offers need it).
    #[error("ICE candidate gathering did not complete within {0:?}")]
    GatheringTimeout(std::time::Duration),
}

fn webrtc_err(op: &'static str) -> impl FnOnce(webrtc::error::Error) -> PeerError {
    move |source| PeerError::WebRtc { op, source }
}

/// How to build the peer.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// The video codec to negotiate (only this one is offered/accepted).
    pub codec: VideoCodec,
    /// STUN/TURN servers (from the SFU's offer, or configuration).
    pub ice_servers: Vec<RTCIceServer>,
    /// Use only TURN relay candidates.
    pub relay_only: bool,
    /// Local UDP sockets to bind (`0.0.0.0:0`: every interface, ephemeral ports).
    pub udp_addrs: Vec<String>,
    /// Public addresses to advertise instead of the bound ones (1:1 NAT, Kubernetes node IP).
    pub public_ips: Vec<String>,
    /// Whether an Opus audio track is sent (the browser's audio, forwarded).
    pub audio: bool,
}

/// What the peer reports to its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the remote side.
    Candidate(RTCIceCandidateInit),
    /// ICE candidate gathering finished.
    GatheringComplete,
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// The connection failed or closed; the owner should tear down and reconnect.
    Down(RTCPeerConnectionState),
}

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    public_ips: Vec<IpAddr>,
}

impl Handler {
    fn emit(&self, event: PeerEvent) {
        // The owner drains promptly; if it is gone or stuck, dropping events is the right
        // thing (it will notice the connection state on its own).
        if let Err(e) = self.events.try_send(event) {
            tracing::debug!(error = %e, "peer event dropped");
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(mut init) => {
                init.candidate = ice::rewrite_candidate(&init.candidate, &self.public_ips);
                self.emit(PeerEvent::Candidate(init))
            }
            Err(e) => tracing::warn!(error = %e, "local ICE candidate could not be serialised"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.emit(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        match state {
            RTCPeerConnectionState::Connected => self.emit(PeerEvent::Connected),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected => {
                self.emit(PeerEvent::Down(state))
            }
            _ => {}
        }
    }
}

/// The video codec parameters the relay registers and sends.
pub fn video_codec_parameters(codec: VideoCodec) -> RTCRtpCodecParameters {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: codec.mime_type().to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: match codec {
                VideoCodec::Vp8 => String::new(),
                VideoCodec::H264 => H264_FMTP.to_owned(),
            },
            rtcp_feedback: vec![feedback("nack", ""), feedback("nack", "pli"), feedback("ccm", "fir")],
        },
        payload_type: match codec {
            VideoCodec::Vp8 => 96,
            VideoCodec::H264 => 102,
        },
    }
}

/// The RTP video clock.
const VIDEO_CLOCK_HZ: u32 = 90_000;
/// The Opus RTP clock.
const AUDIO_CLOCK_HZ: u32 = 48_000;
/// Payload size per RTP packet: a 1200-byte packet minus the fixed RTP header.
const RTP_PAYLOAD_MTU: usize = 1200 - 12;

/// Turns encoded frames into RTP packets. Timestamps come from the source's media time
/// (capture spacing is kept exactly), so skipped frames show up as timestamp gaps rather than
/// as packet loss.
struct Packetizer {
    payloader: Box<dyn Payloader + Send + Sync>,
    sequence: u16,
    timestamps: TimestampRebase,
}

impl Packetizer {
    fn packetize(
        &mut self,
        frame: &OutgoingFrame,
        ssrc: u32,
        payload_type: PayloadType,
    ) -> Result<Vec<rtc::rtp::Packet>, PeerError> {
        let timestamp = self.timestamps.map(frame.media_time, Instant::now());
        let payloads = self
            .payloader
            .payload(RTP_PAYLOAD_MTU, &frame.frame.data)
            .map_err(webrtc_err("packetizing a video frame"))?;
        let last = payloads.len().saturating_sub(1);
        Ok(payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                self.sequence = self.sequence.wrapping_add(1);
                rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        marker: i == last,
                        payload_type,
                        sequence_number: self.sequence,
                        timestamp,
                        ssrc,
                        ..Default::default()
                    },
                    payload,
                }
            })
            .collect())
    }
}

/// Forwards the browser's Opus packets onto this peer's audio stream.
///
/// Lip sync: video and audio output timestamps are both the browser's own (each rebased by a
/// constant offset), and webrtc-rs's sender reports tie each stream's RTP clock to wall time
/// at sending. Audio leaves at once while video leaves after decode, filter and encode, so a
/// viewer sees video behind audio by the relay's processing latency (`/status` total, tens of
/// milliseconds), which is inside the range viewers do not notice.
struct AudioForwarder {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: Option<PayloadType>,
    timestamps: TimestampRebase,
    sequence: SequenceRebase,
}

/// The Opus parameters the relay forwards with (as browsers send them).
pub fn opus_codec_parameters() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "audio/opus".to_owned(),
            clock_rate: AUDIO_CLOCK_HZ,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

/// A send-only peer connection with one video track.
pub struct SendPeer {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    packetizer: Mutex<Packetizer>,
    audio: Option<Mutex<AudioForwarder>>,
    audio_sender: Mutex<Option<Arc<dyn RtpSender>>>,
    sender: Mutex<Option<Arc<dyn RtpSender>>>,
    codec: VideoCodec,
    ssrc: u32,
    payload_type: Mutex<Option<PayloadType>>,
    public_ips: Vec<IpAddr>,
    capture_time_negotiated: AtomicBool,
}

impl SendPeer {
    /// Builds the peer; `events` receives candidates and state changes, `keyframes` is raised
    /// whenever the remote side sends a PLI or FIR.
    pub async fn new(
        options: &PeerOptions,
        events: mpsc::Sender<PeerEvent>,
        keyframes: KeyframeRequest,
        on_keyframe_request: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, PeerError> {
        let codec_params = video_codec_parameters(options.codec);
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(codec_params.clone(), RtpCodecKind::Video)
            .map_err(webrtc_err("registering the video codec"))?;
        media_engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: abs_capture::URI.to_owned(),
                },
                RtpCodecKind::Video,
                None,
            )
            .map_err(webrtc_err("registering abs-capture-time"))?;
        if options.audio {
            media_engine
                .register_codec(opus_codec_parameters(), RtpCodecKind::Audio)
                .map_err(webrtc_err("registering the audio codec"))?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(webrtc_err("registering interceptors"))?
            .with(Slot::from(KEYFRAME_REQUEST_SLOT), KeyframeRequestInterceptor::default());

        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(options.ice_servers.clone())
            .with_ice_transport_policy(if options.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();

        let settings =
            SettingEngineBuilder::new().with_include_loopback_candidate(ice::binds_loopback(&options.udp_addrs));
        let public_ips: Vec<IpAddr> = options.public_ips.iter().filter_map(|ip| ip.parse().ok()).collect();

        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                events,
                public_ips: public_ips.clone(),
            }))
            .with_udp_addrs(options.udp_addrs.clone())
            .build()
            .await
            .map_err(webrtc_err("creating the peer connection"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "livefilter".to_owned(),
            "livefilter-video".to_owned(),
            "livefilter video".to_owned(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec_params.rtp_codec.clone(),
                ..Default::default()
            }],
        )));
        let packetizer = Mutex::new(Packetizer {
            payloader: codec_params
                .rtp_codec
                .payloader()
                .map_err(webrtc_err("creating the RTP payloader"))?,
            sequence: rand::random(),
            timestamps: TimestampRebase::new(VIDEO_CLOCK_HZ, rand::random()),
        });
        let audio = options.audio.then(|| {
            let ssrc = rand::random::<u32>();
            Mutex::new(AudioForwarder {
                track: Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "livefilter".to_owned(),
                    "livefilter-audio".to_owned(),
                    "livefilter audio".to_owned(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: opus_codec_parameters().rtp_codec,
                        ..Default::default()
                    }],
                ))),
                ssrc,
                payload_type: None,
                timestamps: TimestampRebase::new(AUDIO_CLOCK_HZ, rand::random()),
                sequence: SequenceRebase::new(rand::random()),
            })
        });

        let rtcp_track = Arc::clone(&track);
        tokio::spawn(
            async move {
                // Ends when the track is unbound, i.e. when the peer connection closes.
                while let Some(event) = rtcp_track.poll().await {
                    let TrackLocalEvent::OnRtcpPacket(_) = event else {
                        continue;
                    };
                    keyframes.request();
                    on_keyframe_request();
                }
            }
            .instrument(tracing::debug_span!("publisher-rtcp", ssrc)),
        );

        Ok(Self {
            pc,
            track,
            packetizer,
            audio,
            audio_sender: Mutex::new(None),
            sender: Mutex::new(None),
            codec: options.codec,
            ssrc,
            payload_type: Mutex::new(None),
            public_ips,
            capture_time_negotiated: AtomicBool::new(false),
        })
    }

    /// Answers a remote offer (Sora): attaches the track to the offered video transceiver.
    pub async fn answer(&self, offer_sdp: String) -> Result<String, PeerError> {
        self.capture_time_negotiated
            .store(abs_capture::extmap_id(&offer_sdp).is_some(), Ordering::Release);
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(webrtc_err("parsing the offer"))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(webrtc_err("applying the remote offer"))?;
        {
            let mut sender = self.sender.lock().await;
            if sender.is_none() {
                let s = self
                    .pc
                    .add_track(Arc::clone(&self.track) as Arc<dyn TrackLocal>)
                    .await
                    .map_err(webrtc_err("attaching the video track"))?;
                *sender = Some(s);
            }
        }
        if let Some(audio) = &self.audio {
            let mut sender = self.audio_sender.lock().await;
            if sender.is_none() {
                let track = Arc::clone(&audio.lock().await.track);
                let s = self
                    .pc
                    .add_track(track as Arc<dyn TrackLocal>)
                    .await
                    .map_err(webrtc_err("attaching the audio track"))?;
                *sender = Some(s);
            }
        }
        self.create_and_set_answer().await
    }

    /// Answers a renegotiation offer on the same connection (Sora `re-offer`).
    pub async fn reanswer(&self, offer_sdp: String) -> Result<String, PeerError> {
        self.capture_time_negotiated
            .store(abs_capture::extmap_id(&offer_sdp).is_some(), Ordering::Release);
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(webrtc_err("parsing the re-offer"))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(webrtc_err("applying the re-offer"))?;
        *self.payload_type.lock().await = None;
        if let Some(audio) = &self.audio {
            audio.lock().await.payload_type = None;
        }
        self.create_and_set_answer().await
    }

    async fn create_and_set_answer(&self) -> Result<String, PeerError> {
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(webrtc_err("creating the answer"))?;
        let sdp = ice::rewrite_sdp(&answer.sdp, &self.public_ips);
        self.pc
            .set_local_description(answer)
            .await
            .map_err(webrtc_err("applying the local answer"))?;
        Ok(sdp)
    }

    /// Makes a send-only offer (WHIP). Call [`SendPeer::local_sdp`] after gathering completes.
    pub async fn offer(&self) -> Result<(), PeerError> {
        let transceiver = self
            .pc
            .add_transceiver_from_track(
                Arc::clone(&self.track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(webrtc_err("adding the video transceiver"))?;
        let sender = transceiver
            .sender()
            .await
            .map_err(webrtc_err("getting the video sender"))?;
        *self.sender.lock().await = sender;
        if let Some(audio) = &self.audio {
            let track = Arc::clone(&audio.lock().await.track);
            let transceiver = self
                .pc
                .add_transceiver_from_track(
                    track as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(webrtc_err("adding the audio transceiver"))?;
            *self.audio_sender.lock().await = transceiver
                .sender()
                .await
                .map_err(webrtc_err("getting the audio sender"))?;
        }
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(webrtc_err("creating the offer"))?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(webrtc_err("applying the local offer"))
    }

    /// The current local description's SDP (with the candidates gathered so far).
    pub async fn local_sdp(&self) -> Option<String> {
        self.pc
            .local_description()
            .await
            .map(|d| ice::rewrite_sdp(&d.sdp, &self.public_ips))
    }

    /// Applies the remote answer (WHIP).
    pub async fn set_answer(&self, answer_sdp: String) -> Result<(), PeerError> {
        self.capture_time_negotiated
            .store(abs_capture::extmap_id(&answer_sdp).is_some(), Ordering::Release);
        let answer = RTCSessionDescription::answer(answer_sdp).map_err(webrtc_err("parsing the answer"))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(webrtc_err("applying the remote answer"))
    }

    /// Adds a remote trickled ICE candidate.
    pub async fn add_remote_candidate(&self, candidate: RTCIceCandidateInit) -> Result<(), PeerError> {
        self.pc
            .add_ice_candidate(candidate)
            .await
            .map_err(webrtc_err("adding a remote ICE candidate"))
    }

    /// The SSRC of the video stream.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packetizes and sends one encoded frame.
    pub async fn write_frame(&self, frame: &OutgoingFrame) -> Result<(), PeerError> {
        let payload_type = self.negotiated_payload_type().await?;
        let packets = self.packetizer.lock().await.packetize(frame, self.ssrc, payload_type)?;
        for (i, packet) in packets.into_iter().enumerate() {
            // The capture time rides on each frame's first packet, only when the remote side's
            // description accepted the extension (webrtc-rs would otherwise send it anyway).
            let written = match frame.capture_ntp {
                Some(ntp) if i == 0 && self.capture_time_negotiated.load(Ordering::Acquire) => {
                    let ext = HeaderExtension::Custom {
                        uri: abs_capture::URI.into(),
                        extension: Box::new(AbsCaptureTime(ntp)),
                    };
                    self.track.write_rtp_with_extensions(packet, &[ext]).await
                }
                _ => self.track.write_rtp(packet).await,
            };
            written.map_err(webrtc_err("writing a video packet"))?;
        }
        Ok(())
    }

    /// Forwards one browser Opus packet (no-op when this peer has no audio track or the remote
    /// side did not accept audio).
    pub async fn write_audio(&self, packet: &AudioPacket) -> Result<(), PeerError> {
        let Some(audio) = &self.audio else { return Ok(()) };
        let mut audio = audio.lock().await;
        let payload_type = match audio.payload_type {
            Some(pt) => pt,
            None => {
                let Some(sender) = self.audio_sender.lock().await.clone() else {
                    return Ok(());
                };
                let params = sender
                    .get_parameters()
                    .await
                    .map_err(webrtc_err("reading audio sender parameters"))?;
                let Some(pt) = params.rtp_parameters.codecs.first().map(|c| c.payload_type) else {
                    return Ok(());
                };
                // Negotiated once per (re)negotiation: not looked up again per packet.
                audio.payload_type = Some(pt);
                pt
            }
        };
        let header = rtc::rtp::header::Header {
            version: 2,
            marker: packet.marker,
            payload_type,
            sequence_number: audio.sequence.map(packet.media_time.epoch, packet.sequence),
            timestamp: audio.timestamps.map(packet.media_time, Instant::now()),
            ssrc: audio.ssrc,
            ..Default::default()
        };
        audio
            .track
            .write_rtp(rtc::rtp::Packet {
                header,
                payload: packet.payload.clone(),
            })
            .await
            .map_err(webrtc_err("writing an audio packet"))
    }

    async fn negotiated_payload_type(&self) -> Result<PayloadType, PeerError> {
        let mut cached = self.payload_type.lock().await;
        if let Some(pt) = *cached {
            return Ok(pt);
        }
        let sender = self
            .sender
            .lock()
            .await
            .clone()
            .ok_or(PeerError::CodecNotNegotiated(self.codec))?;
        let params = sender
            .get_parameters()
            .await
            .map_err(webrtc_err("reading sender parameters"))?;
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(self.codec.mime_type()))
            .map(|c| c.payload_type)
            .ok_or(PeerError::CodecNotNegotiated(self.codec))?;
        *cached = Some(pt);
        Ok(pt)
    }

    /// Closes the connection (idempotent).
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing the peer connection");
        }
    }
}
