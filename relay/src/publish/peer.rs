//! A send-only WebRTC peer carrying the relay's encoded video, shared by the Sora publisher
//! (which answers the SFU's offer) and the WHIP publisher (which makes the offer).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{PayloadType, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder, configure_rtcp_reports,
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use webrtc::rtp_transceiver::RtpSender;

use super::congestion::{BitrateEstimate, BitrateLimits, remote_video_cap_bps, with_congestion_control};
use super::keyframe::{KEYFRAME_REQUEST_SLOT, KeyframeRequestInterceptor};
use super::retransmit::{BoundedNackResponder, RetransmitPolicy};
use super::rtp::{SequenceRebase, TimestampRebase};
use super::{AudioPacket, KeyframeRequest, OutgoingFrame};
use crate::abs_capture::{self, AbsCaptureTime};
use crate::codec::VideoCodec;
use crate::ice;
use bytes::Bytes;
use rtc::rtp::extension::HeaderExtension;
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::rtp::MediaTime;
use super::simulcast::SimulcastControl;

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
    /// How a lost path is noticed and how long it may take to come back.
    pub link: LinkTiming,
    /// The range congestion control keeps this peer's estimate within.
    pub bitrate: BitrateLimits,
    /// Where this peer publishes its estimate of the path (cleared when it closes).
    pub estimate: BitrateEstimate,
    /// The simulcast layers to send, by rid, as the remote offer asks (`a=rid:<id> recv`);
    /// empty for one stream.
    pub rids: Vec<String>,
    /// Where a keyframe request for one simulcast layer goes (only that layer makes one).
    pub layer_keyframes: SimulcastControl,
}

impl PeerOptions {
    /// A video-only peer on loopback (one ephemeral UDP port on 127.0.0.1, no STUN/TURN, the
    /// default link timing and bitrate range): what local tools and tests offer from.
    pub fn loopback(codec: VideoCodec) -> Self {
        Self {
            codec,
            ice_servers: Vec::new(),
            relay_only: false,
            udp_addrs: vec!["127.0.0.1:0".into()],
            public_ips: Vec::new(),
            audio: false,
            link: LinkTiming::default(),
            bitrate: BitrateLimits::default(),
            estimate: BitrateEstimate::default(),
            rids: Vec::new(),
            layer_keyframes: SimulcastControl::default(),
        }
    }
}

/// How the publisher's ICE notices a lost path, and how long the publisher waits for it to come
/// back before it gives the connection up and signals a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTiming {
    /// Silence after which ICE reports `disconnected`.
    pub ice_disconnected_timeout: Duration,
    /// Further silence after which ICE reports `failed`.
    pub ice_failed_timeout: Duration,
    /// Interval of the consent checks on the selected candidate pair.
    pub ice_keepalive_interval: Duration,
    /// How long a `disconnected` connection may take to come back to `connected` before the
    /// publisher drops it and signals a new one.
    pub disconnect_grace: Duration,
}

impl Default for LinkTiming {
    /// webrtc-rs's ICE timers (5 s, 25 s, 2 s) and a 5 s grace.
    fn default() -> Self {
        Self {
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(25),
            ice_keepalive_interval: Duration::from_secs(2),
            disconnect_grace: Duration::from_secs(5),
        }
    }
}

/// What the peer reports to its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the remote side.
    Candidate(RTCIceCandidateInit),
    /// ICE candidate gathering finished.
    GatheringComplete,
    /// ICE and DTLS are up: media can flow (again, after `Disconnected`).
    Connected,
    /// ICE lost contact; it may come back on its own (see [`LinkWatch`]).
    Disconnected,
    /// The connection failed or closed; the owner should tear down and reconnect.
    Down(RTCPeerConnectionState),
}

/// A change of a publisher's media path, as [`LinkWatch`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Up for the first time.
    Up,
    /// Back after being lost for this long.
    Recovered(Duration),
    /// Lost; the grace runs until the returned instant.
    Interrupted(tokio::time::Instant),
    /// Nothing a publisher acts on (a repeated event).
    Unchanged,
}

/// A publisher's view of its media path: a `disconnected` connection gets a grace period that
/// ends early when it comes back; only when the grace runs out is it given up. Pure: the caller
/// passes the time.
#[derive(Clone, Debug)]
pub struct LinkWatch {
    grace: Duration,
    ever_up: bool,
    lost_since: Option<tokio::time::Instant>,
}

impl LinkWatch {
    /// Not yet up; `grace` for each loss.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            ever_up: false,
            lost_since: None,
        }
    }

    /// Whether media can flow now.
    pub fn is_up(&self) -> bool {
        self.ever_up && self.lost_since.is_none()
    }

    /// When the grace of the current loss runs out (none while up or not yet up).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.lost_since.map(|since| since + self.grace)
    }

    /// The peer said `connected` at `now`.
    pub fn connected(&mut self, now: tokio::time::Instant) -> LinkChange {
        if let Some(since) = self.lost_since.take() {
            return LinkChange::Recovered(now.saturating_duration_since(since));
        }
        if self.ever_up {
            return LinkChange::Unchanged;
        }
        self.ever_up = true;
        LinkChange::Up
    }

    /// The peer said `disconnected` at `now`.
    pub fn disconnected(&mut self, now: tokio::time::Instant) -> LinkChange {
        match self.lost_since {
            Some(_) => LinkChange::Unchanged,
            None => {
                self.lost_since = Some(now);
                LinkChange::Interrupted(now + self.grace)
            }
        }
    }
}

/// Logs a change of the media path; a recovered one gets a keyframe at once (what was sent
/// during the loss is gone).
pub(crate) fn on_link_change(change: LinkChange, keyframes: &KeyframeRequest) {
    match change {
        LinkChange::Up | LinkChange::Unchanged => {}
        LinkChange::Recovered(after) => {
            tracing::info!(after_ms = after.as_millis() as u64, "media connection recovered");
            keyframes.request();
        }
        LinkChange::Interrupted(until) => {
            let grace = until.saturating_duration_since(tokio::time::Instant::now());
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "media connection disconnected; waiting for it to come back"
            );
        }
    }
}

/// Sleeps until `deadline`, or forever without one (a disabled `select!` timer that is never
/// polled once finished).
pub async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
            RTCPeerConnectionState::Disconnected => self.emit(PeerEvent::Disconnected),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => self.emit(PeerEvent::Down(state)),
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
        data: &Bytes,
        media_time: MediaTime,
        ssrc: u32,
        payload_type: PayloadType,
    ) -> Result<Vec<rtc::rtp::Packet>, PeerError> {
        let timestamp = self.timestamps.map(media_time, Instant::now());
        let payloads = self
            .payloader
            .payload(RTP_PAYLOAD_MTU, data)
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
/// at sending. Video leaves after decode, filter and encode, so the publishers hold audio back
/// by the smoothed video latency before it gets here ([`super::lipsync`]).
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

/// One RTP video stream of the track: the only one, or one simulcast layer.
struct VideoStream {
    /// The layer's rid (`None`: not simulcast).
    rid: Option<Arc<str>>,
    /// The rid as the `rtp-stream-id` extension carries it, made once rather than per frame.
    rid_ext: Option<Bytes>,
    ssrc: u32,
    packetizer: Mutex<Packetizer>,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

/// What one video stream has sent (a `pong`'s outbound-rtp stats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStats {
    /// The simulcast layer's rid (`None`: not simulcast).
    pub rid: Option<Arc<str>>,
    /// The stream's SSRC.
    pub ssrc: u32,
    /// Frames sent.
    pub frames_sent: u64,
    /// Bitstream bytes sent.
    pub bytes_sent: u64,
}

/// An SDES text header extension value (`mid`, `rtp-stream-id`).
struct SdesText(Bytes);

impl MarshalSize for SdesText {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl Marshal for SdesText {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        buf.get_mut(..n)
            .ok_or(rtc::shared::error::Error::ErrBufferTooSmall)?
            .copy_from_slice(&self.0);
        Ok(n)
    }
}

/// The `a=mid` of the first video section of an SDP.
fn video_mid(sdp: &str) -> Option<String> {
    let mut in_video = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video ");
        } else if in_video && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.to_owned());
        }
    }
    None
}

/// A send-only peer connection with one video track (of one stream, or one per simulcast
/// layer).
pub struct SendPeer {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    streams: Vec<VideoStream>,
    video_mid: std::sync::Mutex<Option<Bytes>>,
    audio: Option<Mutex<AudioForwarder>>,
    audio_sender: Mutex<Option<Arc<dyn RtpSender>>>,
    sender: Mutex<Option<Arc<dyn RtpSender>>>,
    codec: VideoCodec,
    payload_type: Mutex<Option<PayloadType>>,
    public_ips: Vec<IpAddr>,
    capture_time_negotiated: AtomicBool,
    estimate: BitrateEstimate,
    /// Ends the task reading the remote side's keyframe requests (on close or drop).
    rtcp_stop: CancellationToken,
}

impl Drop for SendPeer {
    fn drop(&mut self) {
        self.rtcp_stop.cancel();
    }
}

/// How soon the keyframe-request reader looks again after its feedback channel ended.
const REBIND_POLL: Duration = Duration::from_millis(20);

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
        // webrtc-rs's defaults (`register_default_interceptors`) but for NACK: the relay only
        // sends, so it generates none, and it answers them with the bounded responder (see
        // `super::retransmit`) instead of one that resends without limit.
        configure_simulcast_extension_headers(&mut media_engine).map_err(webrtc_err("registering interceptors"))?;
        let registry = configure_twcc_receiver_only(Registry::new(), &mut media_engine)
            .map_err(webrtc_err("registering interceptors"))?;
        let registry = configure_rtcp_reports(registry).with(
            Slot::NackResponder,
            BoundedNackResponder::new(RetransmitPolicy::default(), options.estimate.clone()),
        );
        let registry = with_congestion_control(registry, options.bitrate, options.estimate.clone())
            .with(Slot::from(KEYFRAME_REQUEST_SLOT), KeyframeRequestInterceptor::default());

        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(options.ice_servers.clone())
            .with_ice_transport_policy(if options.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();

        // Answer like libwebrtc (every official Sora SDK): `a=setup:active`, the relay being the
        // DTLS client, whether or not the offer is ICE-lite. webrtc-rs would otherwise answer an
        // ICE-lite offer with `a=setup:passive`, and an SFU that is only ever the DTLS server
        // (Sora) then waits forever for a ClientHello. Only used when answering (Sora): the WHIP
        // offer stays `a=setup:actpass`.
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_include_loopback_candidate(ice::binds_loopback(&options.udp_addrs))
            .with_ice_timeouts(
                Some(options.link.ice_disconnected_timeout),
                Some(options.link.ice_failed_timeout),
                Some(options.link.ice_keepalive_interval),
            );
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

        let rids: Vec<Option<Arc<str>>> = if options.rids.is_empty() {
            vec![None]
        } else {
            options.rids.iter().map(|r| Some(Arc::from(r.as_str()))).collect()
        };
        // Every layer's RTP timestamps follow the same media clock (one random base), as
        // libwebrtc's do, so an SFU switching layers keeps the timeline.
        let timestamp_base = rand::random();
        let mut streams = Vec::with_capacity(rids.len());
        let mut codings = Vec::with_capacity(rids.len());
        for rid in rids {
            let ssrc = rand::random::<u32>();
            codings.push(RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: rid.as_deref().unwrap_or_default().to_owned(),
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec_params.rtp_codec.clone(),
                ..Default::default()
            });
            streams.push(VideoStream {
                rid_ext: rid.as_deref().map(|r| Bytes::copy_from_slice(r.as_bytes())),
                rid,
                ssrc,
                packetizer: Mutex::new(Packetizer {
                    payloader: codec_params
                        .rtp_codec
                        .payloader()
                        .map_err(webrtc_err("creating the RTP payloader"))?,
                    sequence: rand::random(),
                    timestamps: TimestampRebase::new(VIDEO_CLOCK_HZ, timestamp_base),
                }),
                frames_sent: AtomicU64::new(0),
                bytes_sent: AtomicU64::new(0),
            });
        }
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "livefilter".to_owned(),
            "livefilter-video".to_owned(),
            "livefilter video".to_owned(),
            RtpCodecKind::Video,
            codings,
        )));
        let ssrc = streams[0].ssrc;
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
        let layer_ssrcs: Vec<(u32, Arc<str>)> = streams
            .iter()
            .filter_map(|s| s.rid.clone().map(|rid| (s.ssrc, rid)))
            .collect();
        let layer_keyframes = options.layer_keyframes.clone();
        let rtcp_stop = CancellationToken::new();
        let stopped = rtcp_stop.clone();
        tokio::spawn(
            async move {
                loop {
                    let event = tokio::select! {
                        _ = stopped.cancelled() => break,
                        event = rtcp_track.poll() => event,
                    };
                    // No event: the track is (re)bound to a new feedback channel. webrtc-rs
                    // binds a simulcast sender again during negotiation, which ended the old
                    // channel under a waiting poll and, with it, every later keyframe request
                    // (seen: a whole session's PLIs lost). Poll the new channel instead.
                    let Some(event) = event else {
                        tracing::trace!("keyframe-request channel ended; polling the track again");
                        tokio::time::sleep(REBIND_POLL).await;
                        continue;
                    };
                    let TrackLocalEvent::OnRtcpPacket(requests) = event else {
                        continue;
                    };
                    // A request names the SSRC it wants a keyframe on: with simulcast that is
                    // one layer; otherwise (or an SSRC it does not name) the output stream.
                    let layers: Vec<&Arc<str>> = requests
                        .iter()
                        .flat_map(|r| r.destination_ssrc())
                        .filter_map(|ssrc| layer_ssrcs.iter().find(|(s, _)| *s == ssrc).map(|(_, rid)| rid))
                        .collect();
                    if layers.is_empty() {
                        keyframes.request();
                    }
                    for rid in layers {
                        layer_keyframes.request_keyframe(rid);
                    }
                    on_keyframe_request();
                }
            }
            .instrument(tracing::debug_span!("publisher-rtcp", ssrc)),
        );

        Ok(Self {
            pc,
            track,
            streams,
            video_mid: std::sync::Mutex::new(None),
            audio,
            audio_sender: Mutex::new(None),
            sender: Mutex::new(None),
            codec: options.codec,
            payload_type: Mutex::new(None),
            public_ips,
            capture_time_negotiated: AtomicBool::new(false),
            estimate: options.estimate.clone(),
            rtcp_stop,
        })
    }

    /// Answers a remote offer (Sora): attaches the track to the offered video transceiver.
    pub async fn answer(&self, offer_sdp: String) -> Result<String, PeerError> {
        self.capture_time_negotiated
            .store(abs_capture::extmap_id(&offer_sdp).is_some(), Ordering::Release);
        self.estimate.set_cap(remote_video_cap_bps(&offer_sdp));
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
        self.estimate.set_cap(remote_video_cap_bps(&offer_sdp));
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
        *self.video_mid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            video_mid(&answer.sdp).map(Bytes::from);
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
        self.estimate.set_cap(remote_video_cap_bps(&answer_sdp));
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

    /// The SSRC of the (first) video stream.
    pub fn ssrc(&self) -> u32 {
        self.streams[0].ssrc
    }

    /// Each video stream's rid (`None` without simulcast), SSRC and what it sent.
    pub fn streams(&self) -> Vec<StreamStats> {
        self.streams
            .iter()
            .map(|s| StreamStats {
                rid: s.rid.clone(),
                ssrc: s.ssrc,
                frames_sent: s.frames_sent.load(Ordering::Relaxed),
                bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether this peer sends simulcast layers.
    pub fn is_simulcast(&self) -> bool {
        self.streams[0].rid.is_some()
    }

    /// Packetizes and sends one encoded frame: the frame itself, or with simulcast each of its
    /// layers on its own stream. Returns the bitstream bytes sent (0: no layer of this peer's).
    pub async fn write_frame(&self, frame: &OutgoingFrame) -> Result<usize, PeerError> {
        let payload_type = self.negotiated_payload_type().await?;
        if !self.is_simulcast() {
            self.write_stream(&self.streams[0], &frame.frame.data, frame, payload_type)
                .await?;
            return Ok(frame.frame.data.len());
        }
        let Some(layers) = &frame.simulcast else {
            // No layers were encoded for this frame (forwarded without transcoding, or the
            // layers have not started yet): it goes out as the last rid, the largest layer in
            // Sora's order (smallest first), which an output-sized frame stands for; the smaller
            // ones wait.
            let top = &self.streams[self.streams.len() - 1];
            self.write_stream(top, &frame.frame.data, frame, payload_type).await?;
            return Ok(frame.frame.data.len());
        };
        let mut sent = 0;
        for layer in layers.iter() {
            let Some(stream) = self.streams.iter().find(|s| s.rid.as_deref() == Some(&*layer.rid)) else {
                continue;
            };
            let data = &layer.frame.as_ref().unwrap_or(&frame.frame).data;
            self.write_stream(stream, data, frame, payload_type).await?;
            sent += data.len();
        }
        Ok(sent)
    }

    async fn write_stream(
        &self,
        stream: &VideoStream,
        data: &Bytes,
        frame: &OutgoingFrame,
        payload_type: PayloadType,
    ) -> Result<(), PeerError> {
        let packets = stream
            .packetizer
            .lock()
            .await
            .packetize(data, frame.media_time, stream.ssrc, payload_type)?;
        // A layer's packets say which layer they are (rid) and which section (mid), as
        // libwebrtc's do: the SFU has no SSRCs in the SDP to go by.
        let layer_ids = stream.rid_ext.as_ref().map(|rid| {
            let mid = self
                .video_mid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            (rid.clone(), mid)
        });
        for (i, packet) in packets.into_iter().enumerate() {
            let mut extensions = Vec::new();
            // The capture time rides on each frame's first packet, only when the remote side's
            // description accepted the extension (webrtc-rs would otherwise send it anyway).
            if let Some(ntp) = frame.capture_ntp
                && i == 0
                && self.capture_time_negotiated.load(Ordering::Acquire)
            {
                extensions.push(HeaderExtension::Custom {
                    uri: abs_capture::URI.into(),
                    extension: Box::new(AbsCaptureTime(ntp)),
                });
            }
            if let Some((rid, mid)) = &layer_ids {
                extensions.push(HeaderExtension::Custom {
                    uri: rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI.into(),
                    extension: Box::new(SdesText(rid.clone())),
                });
                if let Some(mid) = mid {
                    extensions.push(HeaderExtension::Custom {
                        uri: rtc::sdp::extmap::SDES_MID_URI.into(),
                        extension: Box::new(SdesText(mid.clone())),
                    });
                }
            }
            let written = if extensions.is_empty() {
                self.track.write_rtp(packet).await
            } else {
                self.track.write_rtp_with_extensions(packet, &extensions).await
            };
            written.map_err(webrtc_err("writing a video packet"))?;
        }
        stream.frames_sent.fetch_add(1, Ordering::Relaxed);
        stream.bytes_sent.fetch_add(data.len() as u64, Ordering::Relaxed);
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

    /// Closes the connection (idempotent); its estimate no longer counts.
    pub async fn close(&self) {
        self.estimate.clear();
        self.rtcp_stop.cancel();
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing the peer connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const GRACE: Duration = Duration::from_secs(5);

    /// A Sora-style offer: ICE-lite, `a=setup:actpass`, one host candidate, recvonly VP8.
    const ICE_LITE_OFFER: &str = "v=0\r\n\
o=- 1 1 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=ice-lite\r\n\
a=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:sorasora\r\n\
a=ice-pwd:sorasorasorasorasorasora\r\n\
a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
a=end-of-candidates\r\n";

    #[tokio::test]
    async fn an_ice_lite_offer_is_answered_setup_active_and_sendonly() {
        let (events, _rx) = mpsc::channel(64);
        let options = PeerOptions::loopback(VideoCodec::Vp8);
        let peer = SendPeer::new(&options, events, KeyframeRequest::default(), || {})
            .await
            .unwrap();

        let answer = peer.answer(ICE_LITE_OFFER.to_owned()).await.unwrap();
        peer.close().await;

        let setups: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=setup:")).collect();
        assert_eq!(setups, ["a=setup:active"], "{answer}");
        assert!(answer.lines().any(|l| l == "a=sendonly"), "{answer}");
        assert!(
            !answer.contains("a=ice-lite"),
            "the relay itself does full ICE: {answer}"
        );
    }

    #[tokio::test]
    async fn a_simulcast_offer_is_answered_with_its_rids_as_send_layers_and_their_header_extensions() {
        let offer = ICE_LITE_OFFER.replace(
            "a=rtcp-fb:96 nack pli\r\n",
            "a=rtcp-fb:96 nack pli\r\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
             a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
             a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
             a=rid:r0 recv\r\na=rid:r1 recv\r\na=rid:r2 recv\r\na=simulcast:recv r0;r1;r2\r\n",
        );
        let (events, _rx) = mpsc::channel(64);
        let options = PeerOptions {
            rids: vec!["r0".into(), "r1".into(), "r2".into()],
            ..PeerOptions::loopback(VideoCodec::Vp8)
        };
        let peer = SendPeer::new(&options, events, KeyframeRequest::default(), || {})
            .await
            .unwrap();

        let answer = peer.answer(offer).await.unwrap();
        let streams = peer.streams();
        peer.close().await;

        let lines: Vec<&str> = answer.lines().collect();
        for want in [
            "a=rid:r0 send",
            "a=rid:r1 send",
            "a=rid:r2 send",
            "a=simulcast:send r0;r1;r2",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        ] {
            assert!(lines.contains(&want), "{want} missing from {answer}");
        }
        assert_eq!(lines.iter().filter(|l| l.starts_with("a=simulcast:")).count(), 1);
        let rids: Vec<_> = streams.iter().map(|s| s.rid.as_deref().unwrap().to_owned()).collect();
        assert_eq!(rids, ["r0", "r1", "r2"]);
        let mut ssrcs: Vec<u32> = streams.iter().map(|s| s.ssrc).collect();
        ssrcs.dedup();
        assert_eq!(ssrcs.len(), 3, "one SSRC per layer");
    }

    #[test]
    fn sdes_text_extensions_marshal_as_their_bare_bytes() {
        let mut buf = [0u8; 4];
        assert_eq!(SdesText(Bytes::from_static(b"r1")).marshal_to(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"r1");
        assert!(SdesText(Bytes::from_static(b"toolong")).marshal_to(&mut buf).is_err());
    }

    #[test]
    fn a_disconnected_link_that_comes_back_within_the_grace_is_recovered() {
        let t0 = Instant::now();
        let mut link = LinkWatch::new(GRACE);
        assert_eq!(link.connected(t0), LinkChange::Up);

        let lost = link.disconnected(t0 + Duration::from_secs(10));
        let back = link.connected(t0 + Duration::from_secs(13));

        assert_eq!(lost, LinkChange::Interrupted(t0 + Duration::from_secs(15)));
        assert_eq!(back, LinkChange::Recovered(Duration::from_secs(3)));
        assert!(link.is_up());
        assert_eq!(link.deadline(), None);
    }

    #[test]
    fn while_disconnected_the_link_is_down_until_the_grace_deadline() {
        let t0 = Instant::now();
        let mut link = LinkWatch::new(GRACE);
        link.connected(t0);

        link.disconnected(t0 + Duration::from_secs(1));
        // A repeated report does not restart the grace.
        let again = link.disconnected(t0 + Duration::from_secs(4));

        assert_eq!(again, LinkChange::Unchanged);
        assert!(!link.is_up());
        assert_eq!(link.deadline(), Some(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn each_loss_gets_a_full_grace_of_its_own() {
        let t0 = Instant::now();
        let mut link = LinkWatch::new(GRACE);
        link.connected(t0);
        link.disconnected(t0 + Duration::from_secs(1));
        link.connected(t0 + Duration::from_secs(5));

        link.disconnected(t0 + Duration::from_secs(20));

        assert_eq!(link.deadline(), Some(t0 + Duration::from_secs(25)));
    }

    #[test]
    fn not_yet_connected_is_not_up_and_has_no_grace_running() {
        let link = LinkWatch::new(GRACE);
        assert!(!link.is_up());
        assert_eq!(link.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_timer_fires_at_its_deadline_in_virtual_time() {
        let mut link = LinkWatch::new(GRACE);
        let start = Instant::now();
        link.connected(start);
        link.disconnected(start);

        sleep_until_some(link.deadline()).await;

        assert_eq!(Instant::now() - start, GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_never_fires() {
        let fired = tokio::time::timeout(Duration::from_secs(3600), sleep_until_some(None)).await;
        assert!(fired.is_err());
    }
}
