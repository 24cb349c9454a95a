//! The browser's session: one WebRTC peer receiving the camera (and microphone), decoding video
//! into the newest-frame slot, forwarding Opus to the publishers, and echoing DataChannel pings.
//! One session at a time; when it ends (ICE failed, track ended, page closed) the relay is idle
//! and accepts a new offer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use crate::abs_capture;
use crate::codec::VideoCodec;
use crate::frame::FrameTimes;
use crate::ice;
use crate::ingest::{DecodedFrame, VideoIngestConfig, VideoIngestStats, run_video_track};
use crate::latency::Stage;
use crate::metrics::{DropReason, Metrics};
use crate::offer::{OfferError, check_offer};
use crate::pipeline::InputFrame;
use crate::publish::peer::{H264_FMTP, opus_codec_parameters};
use crate::publish::rtp::MediaTime;
use crate::publish::{AudioPacket, KeyframeRequest, PublisherHandle};
use crate::rate::FpsMeter;
use crate::slot::NewestSlot;

/// How long the answer may wait for ICE gathering (the answer carries every candidate).
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the browser has to connect after the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an ICE `disconnected` may last before the session is given up.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(2);

/// Why an offer was not answered.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// A browser is already streaming.
    #[error("a stream is already live (started {0:.0} s ago); stop it first")]
    Busy(f64),
    /// The offer itself is unusable.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// webrtc-rs failed.
    #[error("WebRTC {op} failed: {detail}")]
    WebRtc { op: &'static str, detail: String },
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// Every port of the configured UDP range is taken.
    #[error("{0}")]
    NoUdpPort(String),
    /// The address to advertise is not known yet.
    #[error("the relay does not know its public address yet: {0}")]
    NoPublicAddress(String),
}

fn webrtc_err(op: &'static str) -> impl FnOnce(webrtc::error::Error) -> AcceptError {
    move |e| AcceptError::WebRtc {
        op,
        detail: e.to_string(),
    }
}

/// Settings of the browser ingest.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Video codecs accepted from the browser, in preference order.
    pub codecs: Vec<VideoCodec>,
    /// Local UDP sockets.
    pub udp_addrs: Vec<String>,
    /// Addresses to advertise.
    pub public_ips: Vec<String>,
    /// Bind the first free port of this range instead of the `udp_addrs` ports.
    pub udp_port_range: Option<ice::PortRange>,
    /// A file with more addresses to advertise, read for every offer.
    pub public_ips_file: Option<std::path::PathBuf>,
    /// The bitrate the browser starts sending at (kbit/s), so it reaches full resolution
    /// sooner than its cautious default allows.
    pub start_bitrate_kbps: u32,
}

/// What `/status` shows of the session.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionView {
    /// `idle`, `connecting` or `receiving`.
    pub state: &'static str,
    /// Seconds since the offer was answered.
    pub age_secs: Option<f64>,
    /// The negotiated input codec.
    pub codec: Option<String>,
}

enum State {
    Idle,
    Live {
        id: String,
        started: Instant,
        cancel: CancellationToken,
        connected: bool,
    },
}

/// The single browser session slot and everything a session feeds.
pub struct SessionManager {
    config: IngestConfig,
    slot: Arc<NewestSlot<InputFrame>>,
    publishers: Vec<PublisherHandle>,
    metrics: Metrics,
    keyframes: KeyframeRequest,
    state: Mutex<State>,
    epoch: AtomicU64,
    video_stats: Mutex<Option<Arc<VideoIngestStats>>>,
    shutdown: CancellationToken,
}

impl SessionManager {
    /// A manager feeding `slot` (video) and `publishers` (audio).
    pub fn new(
        config: IngestConfig,
        slot: Arc<NewestSlot<InputFrame>>,
        publishers: Vec<PublisherHandle>,
        metrics: Metrics,
        keyframes: KeyframeRequest,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            slot,
            publishers,
            metrics,
            keyframes,
            state: Mutex::new(State::Idle),
            epoch: AtomicU64::new(0),
            video_stats: Mutex::new(None),
            shutdown,
        })
    }

    /// The session as `/status` shows it.
    pub fn view(&self) -> SessionView {
        let codec = self
            .video_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|s| s.snapshot().codec)
            .map(|c| c.to_string());
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Idle => SessionView {
                state: "idle",
                age_secs: None,
                codec: None,
            },
            State::Live { started, connected, .. } => SessionView {
                state: if *connected { "receiving" } else { "connecting" },
                age_secs: Some(started.elapsed().as_secs_f64()),
                codec,
            },
        }
    }

    /// Frames assembled from the browser's RTP in the current (or last) session.
    pub fn frames_received(&self) -> u64 {
        self.video_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |s| s.snapshot().frames_assembled)
    }

    /// The addresses to advertise now: the configured ones plus the file's.
    pub fn public_ips(&self) -> Result<Vec<IpAddr>, AcceptError> {
        let mut ips = ice::parse_public_ips(&self.config.public_ips).map_err(AcceptError::NoPublicAddress)?;
        if let Some(path) = &self.config.public_ips_file {
            let from_file = ice::read_public_ips_file(path).map_err(AcceptError::NoPublicAddress)?;
            if from_file.is_empty() {
                return Err(AcceptError::NoPublicAddress(format!("{} is empty", path.display())));
            }
            ips.extend(from_file);
        }
        Ok(ips)
    }

    /// Ends the current session, if any (shutdown).
    pub fn stop(&self) {
        if let State::Live { cancel, .. } = &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            cancel.cancel();
        }
    }

    /// Ends the session `id` (its sender pressed Stop); false when that is not the live one.
    pub fn stop_session(&self, id: &str) -> bool {
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Live { id: live, cancel, .. } if live == id => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Answers a browser's offer and starts the session; returns the session id (for its
    /// sender's Stop) and the answer, which carries every candidate.
    pub async fn accept(self: &Arc<Self>, kind: &str, offer_sdp: String) -> Result<(String, String), AcceptError> {
        if self.shutdown.is_cancelled() {
            return Err(AcceptError::ShuttingDown);
        }
        let summary = check_offer(kind, &offer_sdp, &self.config.codecs)?;
        let cancel = self.shutdown.child_token();
        let id = format!("{:016x}", rand::random::<u64>());
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let State::Live { started, .. } = &*state {
                return Err(AcceptError::Busy(started.elapsed().as_secs_f64()));
            }
            *state = State::Live {
                id: id.clone(),
                started: Instant::now(),
                cancel: cancel.clone(),
                connected: false,
            };
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(epoch, codecs = ?summary.video_codecs, opus = summary.opus, "browser offer accepted");
        match self.start(epoch, offer_sdp, cancel.clone()).await {
            Ok(answer) => Ok((id, with_start_bitrate(&answer, self.config.start_bitrate_kbps))),
            Err(e) => {
                cancel.cancel();
                *self.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Idle;
                Err(e)
            }
        }
    }

    fn mark_connected(&self) {
        if let State::Live { connected, .. } = &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            *connected = true;
        }
    }

    async fn start(
        self: &Arc<Self>,
        epoch: u64,
        offer_sdp: String,
        cancel: CancellationToken,
    ) -> Result<String, AcceptError> {
        let mut media_engine = MediaEngine::default();
        for codec in &self.config.codecs {
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
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(webrtc_err("registering interceptors"))?;
        let settings =
            SettingEngineBuilder::new().with_include_loopback_candidate(ice::binds_loopback(&self.config.udp_addrs));
        let public_ips = self.public_ips()?;
        let udp_addrs = match self.config.udp_port_range {
            Some(range) => ice::pick_udp_port(&self.config.udp_addrs, range).map_err(AcceptError::NoUdpPort)?,
            None => self.config.udp_addrs.clone(),
        };
        let gathered = Arc::new(Notify::new());
        let abs_capture_time_id = Arc::new(Mutex::new(None));
        let handler = Arc::new(SessionHandler {
            manager: Arc::clone(self),
            epoch,
            cancel: cancel.clone(),
            gathered: Arc::clone(&gathered),
            abs_capture_time_id: Arc::clone(&abs_capture_time_id),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs)
            .build()
            .await
            .map_err(webrtc_err("creating the peer connection"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let result = async {
            let offer = RTCSessionDescription::offer(offer_sdp)
                .map_err(|e| AcceptError::Offer(OfferError::Malformed(e.to_string())))?;
            pc.set_remote_description(offer)
                .await
                .map_err(|e| AcceptError::Offer(OfferError::Malformed(e.to_string())))?;
            let answer = pc
                .create_answer(None)
                .await
                .map_err(webrtc_err("creating the answer"))?;
            pc.set_local_description(answer)
                .await
                .map_err(webrtc_err("applying the answer"))?;
            // The id the answer agreed for abs-capture-time (only when the browser offered it).
            let local = pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
            *abs_capture_time_id.lock().unwrap_or_else(PoisonError::into_inner) = abs_capture::extmap_id(&local);
            // Non-trickle, as the original sample: the answer waits for every local candidate.
            if tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await.is_err() {
                tracing::warn!(
                    ?GATHER_TIMEOUT,
                    "ICE gathering incomplete; answering with the candidates so far"
                );
            }
            pc.local_description()
                .await
                .map(|d| ice::rewrite_sdp(&d.sdp, &public_ips))
                .ok_or(AcceptError::WebRtc {
                    op: "reading the answer",
                    detail: "no local description".into(),
                })
        }
        .await;
        let manager = Arc::clone(self);
        let supervised = Arc::clone(&pc);
        tokio::spawn(
            async move {
                let connect_deadline = tokio::time::sleep(CONNECT_TIMEOUT);
                tokio::pin!(connect_deadline);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = &mut connect_deadline => {
                            if !matches!(manager.view().state, "receiving") {
                                tracing::warn!(?CONNECT_TIMEOUT, "browser did not connect in time");
                                break;
                            }
                        }
                    }
                }
                if let Err(e) = supervised.close().await {
                    tracing::debug!(error = %e, "closing the browser peer");
                }
                manager.slot.clear();
                manager.metrics.latency.reset_windows();
                *manager.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Idle;
                tracing::info!(epoch, "browser session ended; relay idle");
            }
            .instrument(tracing::info_span!("browser-session", epoch)),
        );
        result
    }

    fn on_decoded(&self, epoch: u64, decoded: DecodedFrame, fps: &mut FpsMeter) {
        let m = &self.metrics;
        m.frames_decoded.inc();
        m.latency.observe(
            Stage::Decode,
            decoded.decoded_at.saturating_duration_since(decoded.arrival),
        );
        let rate = fps.tick(decoded.decoded_at);
        m.set_video("input", decoded.frame.width(), decoded.frame.height(), rate);
        let mut times = FrameTimes::new(decoded.arrival);
        times.decoded = Some(decoded.decoded_at);
        let input = InputFrame {
            picture: decoded.frame,
            times,
            media_time: MediaTime {
                epoch,
                rtp_timestamp: decoded.rtp_timestamp,
            },
            capture_ntp: decoded.capture_ntp,
        };
        if self.slot.put(input).is_some() {
            m.drop_frame("pipeline", DropReason::Stale);
        }
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

struct SessionHandler {
    manager: Arc<SessionManager>,
    epoch: u64,
    cancel: CancellationToken,
    gathered: Arc<Notify>,
    /// Set from the answer before any media can arrive.
    abs_capture_time_id: Arc<Mutex<Option<u8>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for SessionHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::info!(epoch = self.epoch, %state, "browser peer connection");
        match state {
            RTCPeerConnectionState::Connected => {
                self.manager.mark_connected();
                self.manager.keyframes.request();
            }
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => self.cancel.cancel(),
            RTCPeerConnectionState::Disconnected => {
                let cancel = self.cancel.clone();
                let manager = Arc::clone(&self.manager);
                let epoch = self.epoch;
                tokio::spawn(async move {
                    tokio::time::sleep(DISCONNECTED_GRACE).await;
                    if manager.epoch.load(Ordering::Acquire) == epoch && !cancel.is_cancelled() {
                        tracing::warn!(epoch, "browser stayed disconnected; ending the session");
                        cancel.cancel();
                    }
                });
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = track.kind().await;
        let manager = Arc::clone(&self.manager);
        let cancel = self.cancel.clone();
        let epoch = self.epoch;
        match kind {
            RtpCodecKind::Video => {
                let ingest_config = VideoIngestConfig {
                    abs_capture_time_id: *self.abs_capture_time_id.lock().unwrap_or_else(PoisonError::into_inner),
                    ..VideoIngestConfig::default()
                };
                let stats = Arc::new(VideoIngestStats::default());
                *manager.video_stats.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&stats));
                tokio::spawn(
                    async move {
                        let mut fps = FpsMeter::default();
                        let mut seen = 0u64;
                        let sink_manager = Arc::clone(&manager);
                        let sink_stats = Arc::clone(&stats);
                        let sink = move |decoded: DecodedFrame| {
                            let assembled = sink_stats.snapshot().frames_assembled;
                            sink_manager
                                .metrics
                                .frames_received
                                .inc_by(assembled.saturating_sub(seen));
                            seen = assembled;
                            sink_manager.on_decoded(epoch, decoded, &mut fps);
                        };
                        if let Err(e) = run_video_track(track, ingest_config, stats, sink).await {
                            tracing::warn!(error = %e, "browser video could not be received");
                        }
                        // The camera track ended: the stream is over.
                        cancel.cancel();
                    }
                    .instrument(tracing::info_span!("browser-video", epoch)),
                );
            }
            RtpCodecKind::Audio => {
                tokio::spawn(
                    forward_audio(track, manager, epoch).instrument(tracing::info_span!("browser-audio", epoch)),
                );
            }
            _ => tracing::info!(?kind, "ignoring a track of unknown kind"),
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let cancel = self.cancel.clone();
        tokio::spawn(
            async move {
                echo_pings(dc).await;
                // The page closes its channel only when it goes away: end at once rather than
                // after ICE notices.
                tracing::info!("browser DataChannel closed; ending the session");
                cancel.cancel();
            }
            .instrument(tracing::info_span!("browser-datachannel", epoch = self.epoch)),
        );
    }
}

/// Forwards the browser's Opus packets, untouched, to every publisher.
async fn forward_audio(track: Arc<dyn TrackRemote>, manager: Arc<SessionManager>, epoch: u64) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let audio = AudioPacket {
                    payload: packet.payload.clone(),
                    media_time: MediaTime {
                        epoch,
                        rtp_timestamp: packet.header.timestamp,
                    },
                    sequence: packet.header.sequence_number,
                    marker: packet.header.marker,
                };
                for p in &manager.publishers {
                    p.offer_audio(audio.clone());
                }
                manager.metrics.audio_packets_forwarded.inc();
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::info!("browser audio ended");
}

/// Adds `x-google-start-bitrate` to every video format of an answer: Chromium reads it from the
/// remote description and starts its send-side estimate there instead of at ~300 kbit/s.
pub fn with_start_bitrate(answer: &str, kbps: u32) -> String {
    if kbps == 0 {
        return answer.to_owned();
    }
    let ending = if answer.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = answer.split(ending).collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    let mut in_video = false;
    let mut section_fmtp: Vec<String> = Vec::new();
    let mut pending_rtpmaps: Vec<String> = Vec::new();
    let flush = |out: &mut Vec<String>, pending: &mut Vec<String>, fmtp: &[String]| {
        for pt in pending.drain(..) {
            if !fmtp.contains(&pt) {
                out.push(format!("a=fmtp:{pt} x-google-start-bitrate={kbps}"));
            }
        }
    };
    for line in lines {
        if line.starts_with("m=") {
            flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
            section_fmtp.clear();
            in_video = line.starts_with("m=video");
        }
        if in_video && let Some(rest) = line.strip_prefix("a=fmtp:") {
            let pt = rest.split(' ').next().unwrap_or_default().to_owned();
            section_fmtp.push(pt);
            out.push(format!("{line};x-google-start-bitrate={kbps}"));
            continue;
        }
        if in_video && let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let (pt, codec) = rest.split_once(' ').unwrap_or((rest, ""));
            // Retransmission formats carry no media bitrate.
            if !codec.to_ascii_lowercase().starts_with("rtx/") {
                pending_rtpmaps.push(pt.to_owned());
            }
        }
        if line.is_empty() {
            flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
        }
        out.push(line.to_owned());
    }
    flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
    out.join(ending)
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
    fn video_formats_of_the_answer_get_a_start_bitrate_and_audio_does_not() {
        let answer = "v=0\r\nm=audio 9 UDP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\nm=video 9 UDP 96 102\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1\r\na=rtpmap:97 rtx/90000\r\n";
        let out = with_start_bitrate(answer, 1500);
        assert!(out.contains("a=fmtp:111 minptime=10\r\n"), "{out}");
        assert!(
            out.contains("a=fmtp:102 packetization-mode=1;x-google-start-bitrate=1500\r\n"),
            "{out}"
        );
        assert!(out.contains("a=fmtp:96 x-google-start-bitrate=1500"), "{out}");
        assert!(!out.contains("a=fmtp:97"), "{out}");
        assert_eq!(with_start_bitrate(answer, 0), answer);
    }

    #[test]
    fn ping_messages_are_echoed_as_pong_with_the_same_payload() {
        assert_eq!(pong_for("ping 1234.5").as_deref(), Some("pong 1234.5"));
        assert_eq!(pong_for("hello"), None);
    }
}
