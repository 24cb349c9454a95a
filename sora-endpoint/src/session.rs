//! One Sora signaling session over a WebSocket: `connect` -> `offer` -> `answer` + candidates
//! -> `notify` -> `ping`/`pong` ... -> `disconnect` (or a close from either side).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::Value;
use tokio::sync::mpsc;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCPeerConnectionState};

use crate::AppState;
use crate::bandwidth;
use crate::codec::VideoCodec;
use crate::dtls_setup::{self, DtlsRoleRefusal};
use crate::ids::new_id;
use crate::peer::{self, Peer, PeerEvent};
use crate::record::{CloseInfo, Closer, Connection, Control, Transport};
use crate::signaling::{
    self, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_INVALID_MESSAGE, CLOSE_TIMEOUT, CandidateMessage,
    ClientMessage, ConnectMessage, SessionIds,
};
use crate::simulcast::{self, Encodings};

/// How long a client may take to send `connect` after opening the WebSocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send `answer` after the `offer`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for the client's half of the closing handshake (and, after a
/// `redirect`, for the client to close).
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Close reasons longer than this are cut (a close frame holds at most 123 bytes).
const MAX_REASON_BYTES: usize = 123;
/// Reason of the close after a client's `disconnect`.
pub const REASON_TYPE_DISCONNECT: &str = "TYPE-DISCONNECT";

/// Serves one WebSocket until the session ends.
pub async fn run(mut socket: WebSocket, app: AppState) {
    let connect = match first_message(&mut socket).await {
        Ok(connect) => connect,
        Err((code, reason)) => {
            tracing::info!(code, %reason, "signaling refused before connect");
            close(&mut socket, code, &reason).await;
            return;
        }
    };
    let registry = app.registry.clone();
    if let Err(rejection) = signaling::validate_connect(&connect, app.config.access_token.as_deref()) {
        tracing::info!(code = rejection.code, reason = %rejection.reason, channel_id = %connect.channel_id, "connect refused");
        let record = new_record(&app, &connect, None);
        record.mark_closed(CloseInfo {
            code: Some(rejection.code),
            reason: rejection.reason.clone(),
            by: Closer::Server,
        });
        registry.add(record);
        close(&mut socket, rejection.code, &rejection.reason).await;
        return;
    }
    if let Some(location) = registry.redirect_to().filter(|_| !connect.redirect) {
        tracing::info!(channel_id = %connect.channel_id, %location, "redirecting");
        let record = new_record(&app, &connect, None);
        record.with_signaling(|s| s.redirected_to = Some(location.clone()));
        record.mark_closed(CloseInfo {
            code: None,
            reason: "REDIRECT".into(),
            by: Closer::Server,
        });
        registry.add(record);
        if send_json(&mut socket, &signaling::redirect_message(&location)).await {
            // The client closes after a redirect; give it the time to, then hang up.
            wait_for_close(&mut socket).await;
        }
        return;
    }

    let (control_tx, control_rx) = mpsc::channel(8);
    let record = new_record(&app, &connect, Some(control_tx));
    registry.add(record.clone());
    let span = tracing::info_span!("session", connection_id = %record.id, channel_id = %connect.channel_id);
    let outcome = {
        let encodings = signaling::wants_simulcast(&connect).then(|| {
            app.config.simulcast_encodings.clone().unwrap_or_else(|| {
                Encodings::sora_default(signaling::simulcast_bit_rate_kbps(
                    &connect,
                    app.config.max_video_bitrate_kbps,
                ))
            })
        });
        let session = Session {
            app: app.clone(),
            record: record.clone(),
            connect,
            encodings,
            socket,
        };
        tracing::Instrument::instrument(session.serve(control_rx), span).await
    };
    tracing::info!(connection_id = %record.id, code = ?outcome.code, reason = %outcome.reason, by = ?outcome.by, "session ended");
    record.mark_closed(outcome);
}

/// Reads the first text frame; it must be a `connect`.
async fn first_message(socket: &mut WebSocket) -> Result<ConnectMessage, (u16, String)> {
    let text = match tokio::time::timeout(CONNECT_TIMEOUT, next_text(socket)).await {
        Err(_) => return Err((CLOSE_TIMEOUT, "CONNECT-TIMEOUT".into())),
        Ok(None) => return Err((1000, "CLOSED-BEFORE-CONNECT".into())),
        Ok(Some(text)) => text,
    };
    match signaling::parse_client_message(&text) {
        Ok(ClientMessage::Connect(connect)) => Ok(*connect),
        Ok(other) => Err((
            CLOSE_INVALID_MESSAGE,
            format!("EXPECTED-CONNECT: got {}", message_name(&other)),
        )),
        Err(err) => Err((CLOSE_INVALID_MESSAGE, format!("INVALID-MESSAGE: {err}"))),
    }
}

/// The next text frame, skipping WebSocket pings; `None` when the socket closed.
async fn next_text(socket: &mut WebSocket) -> Option<String> {
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(text) => return Some(text.to_string()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

fn message_name(message: &ClientMessage) -> &str {
    match message {
        ClientMessage::Connect(_) => "connect",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::ReAnswer { .. } => "re-answer",
        ClientMessage::Candidate(_) => "candidate",
        ClientMessage::Pong { .. } => "pong",
        ClientMessage::Disconnect { .. } => "disconnect",
        ClientMessage::Other { message_type } => message_type,
    }
}

fn new_record(app: &AppState, connect: &ConnectMessage, control: Option<mpsc::Sender<Control>>) -> Arc<Connection> {
    let record = Arc::new(Connection::new(
        new_id(),
        Transport::Sora,
        connect.channel_id.clone(),
        app.config.frame_ring,
        control,
    ));
    record.with_signaling(|s| {
        s.role = Some(connect.role.clone());
        s.connect = Some(connect.raw.clone());
    });
    record
}

/// Sends a close frame, waits (bounded) for the client's close, and returns; dropping the
/// socket afterwards closes the TCP connection, which the official Python SDK waits for.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: truncate(reason, MAX_REASON_BYTES).into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        wait_for_close(socket).await;
    }
}

async fn wait_for_close(socket: &mut WebSocket) {
    let drain = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn send_json(socket: &mut WebSocket, value: &Value) -> bool {
    socket.send(Message::Text(value.to_string().into())).await.is_ok()
}

/// Whether a remote candidate can be reached from the endpoint's ICE address (same family, UDP).
fn candidate_usable(candidate: &str, ice_ip: IpAddr) -> bool {
    let fields: Vec<&str> = candidate.trim_start_matches("candidate:").split_whitespace().collect();
    let (Some(protocol), Some(address)) = (fields.get(2), fields.get(4)) else {
        return false;
    };
    if !protocol.eq_ignore_ascii_case("udp") {
        return false;
    }
    match address.parse::<IpAddr>() {
        Ok(ip) => ip.is_ipv4() == ice_ip.is_ipv4(),
        Err(_) => false, // mDNS (.local) names: mDNS is off here
    }
}

async fn add_candidate(record: &Connection, pc: &Peer, candidate: RTCIceCandidateInit) {
    if let Err(err) = pc.add_ice_candidate(candidate).await {
        tracing::warn!(%err, "remote candidate refused");
        record.with_signaling(|s| s.candidate_errors += 1);
    }
}

/// Applies a `re-answer`. For a simulcast connection the re-offer is rolled back instead:
/// applying a re-answer makes webrtc-rs forget which SSRC carries which rid, and it can only
/// learn them again from the rid header extension, which libwebrtc stops sending once its
/// SSRCs are acknowledged, so every layer would go dark. A receive-only endpoint's re-offer
/// changes nothing, so keeping the state negotiated before loses nothing.
async fn apply_re_answer(
    record: &Connection,
    encodings: Option<&Encodings>,
    pc: &Peer,
    sdp: &str,
) -> Result<(), peer::PeerError> {
    let Some(layers) = record.simulcast_layers() else {
        return peer::apply_answer(pc, sdp.to_owned()).await;
    };
    let offered = encodings.map(Encodings::rids).unwrap_or_default();
    let rids = simulcast::negotiated_rids(&offered, sdp);
    let kept: Vec<&str> = layers.layers().iter().map(|l| l.rid.as_str()).collect();
    if rids != kept {
        tracing::warn!(
            ?rids,
            ?kept,
            "the re-answer sends other simulcast layers; the endpoint keeps receiving the first answer's"
        );
    }
    peer::roll_back_offer(pc).await?;
    tracing::info!("simulcast re-answer recorded; the re-offer rolled back to keep the layers bound");
    Ok(())
}

struct Session {
    app: AppState,
    record: Arc<Connection>,
    connect: ConnectMessage,
    /// The simulcast encodings offered, for a simulcast connection.
    encodings: Option<Encodings>,
    socket: WebSocket,
}

impl Session {
    async fn serve(mut self, mut control: mpsc::Receiver<Control>) -> CloseInfo {
        let server = |code: u16, reason: String| CloseInfo {
            code: Some(code),
            reason,
            by: Closer::Server,
        };
        let ids = SessionIds {
            connection_id: self.record.id.clone(),
            session_id: new_id(),
            client_id: self.connect.client_id.clone().unwrap_or_else(|| self.record.id.clone()),
            bundle_id: self
                .connect
                .bundle_id
                .clone()
                .or_else(|| self.connect.client_id.clone())
                .unwrap_or_else(|| self.record.id.clone()),
        };
        self.record.with_signaling(|s| {
            s.client_id = Some(ids.client_id.clone());
            s.bundle_id = Some(ids.bundle_id.clone());
            s.session_id = Some(ids.session_id.clone());
        });
        let codec = VideoCodec::from_codec_type(self.connect.video_codec_type.as_deref());
        let (peer_tx, mut peer_rx) = mpsc::channel(32);
        let rids = self.encodings.as_ref().map(Encodings::rids);
        let setup = async {
            let pc = peer::new_peer(
                self.app.config.ice_ip,
                self.app.config.ice_mode,
                &[codec],
                self.record.clone(),
                peer_tx,
            )
            .await?;
            peer::add_recvonly_transceivers(&pc, self.connect.audio, self.connect.video).await?;
            let sdp = peer::create_offer(&pc, &mut peer_rx).await?;
            let sdp = peer::offer_as_sent(sdp, rids.as_deref())?;
            Ok::<_, peer::PeerError>((pc, sdp))
        };
        let (pc, sdp) = match setup.await {
            Ok((pc, sdp)) => (pc, bandwidth::apply(sdp, self.app.config.max_video_bitrate_kbps)),
            Err(err) => {
                tracing::error!(%err, "peer connection setup failed");
                let reason = format!("INTERNAL-ERROR: {err}");
                close(&mut self.socket, CLOSE_INTERNAL_ERROR, &reason).await;
                return server(CLOSE_INTERNAL_ERROR, reason);
            }
        };
        let mids = signaling::mids_from_sdp(&sdp);
        self.record.with_signaling(|s| {
            s.local_sdp = Some(sdp.clone());
            s.encodings = self.encodings.as_ref().map(Encodings::to_json);
        });
        let offer = signaling::offer_message(&self.connect, &ids, &sdp, &mids, self.encodings.as_ref());
        if !send_json(&mut self.socket, &offer).await {
            let _ = pc.close().await;
            return CloseInfo {
                code: None,
                reason: "WEBSOCKET-CLOSED".into(),
                by: Closer::Client,
            };
        }
        tracing::info!(role = %self.connect.role, ?codec, simulcast = self.encodings.is_some(), "offer sent");
        let outcome = self.event_loop(&pc, &ids, &mut control, &mut peer_rx).await;
        if let Err(err) = pc.close().await {
            tracing::debug!(%err, "peer connection close");
        }
        outcome
    }

    async fn event_loop(
        &mut self,
        pc: &Peer,
        ids: &SessionIds,
        control: &mut mpsc::Receiver<Control>,
        peer_rx: &mut mpsc::Receiver<PeerEvent>,
    ) -> CloseInfo {
        let server = |code: u16, reason: String| CloseInfo {
            code: Some(code),
            reason,
            by: Closer::Server,
        };
        let ping_period = self.app.config.ping_interval;
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + ping_period.max(Duration::from_millis(100)),
            ping_period.max(Duration::from_millis(100)),
        );
        let answer_deadline = tokio::time::sleep(ANSWER_TIMEOUT);
        tokio::pin!(answer_deadline);
        let mut answered = false;
        let mut early_candidates: Vec<RTCIceCandidateInit> = Vec::new();
        let shutdown = self.app.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    close(&mut self.socket, CLOSE_GOING_AWAY, "SERVER-SHUTDOWN").await;
                    return server(CLOSE_GOING_AWAY, "SERVER-SHUTDOWN".into());
                }
                _ = &mut answer_deadline, if !answered => {
                    close(&mut self.socket, CLOSE_TIMEOUT, "ANSWER-TIMEOUT").await;
                    return server(CLOSE_TIMEOUT, "ANSWER-TIMEOUT".into());
                }
                Some(command) = control.recv() => match command {
                    Control::Close { code, reason } => {
                        tracing::info!(code, %reason, "closing on request");
                        close(&mut self.socket, code, &reason).await;
                        return server(code, truncate(&reason, MAX_REASON_BYTES).to_owned());
                    }
                    Control::ReOffer => self.re_offer(pc).await,
                },
                Some(event) = peer_rx.recv() => match event {
                    PeerEvent::State(RTCPeerConnectionState::Connected) => {
                        self.record.mark_connected();
                        let sent = self.record.with_signaling(|s| std::mem::replace(&mut s.connection_created_sent, true));
                        if !sent {
                            let notify = signaling::connection_created_message(&self.connect, ids);
                            send_json(&mut self.socket, &notify).await;
                            tracing::info!("connected; connection.created sent");
                        }
                    }
                    PeerEvent::State(RTCPeerConnectionState::Failed) => {
                        close(&mut self.socket, CLOSE_INTERNAL_ERROR, "PEER-CONNECTION-FAILED").await;
                        return server(CLOSE_INTERNAL_ERROR, "PEER-CONNECTION-FAILED".into());
                    }
                    _ => {}
                },
                _ = ping.tick(), if !ping_period.is_zero() => {
                    let ping = signaling::ping_message(self.app.config.ping_stats);
                    if send_json(&mut self.socket, &ping).await {
                        self.record.with_signaling(|s| s.pings_sent += 1);
                    }
                }
                message = self.socket.recv() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map(|f| (Some(f.code), f.reason.to_string())).unwrap_or((None, String::new()));
                            return CloseInfo { code, reason, by: Closer::Client };
                        }
                        Some(Ok(Message::Binary(_))) => {
                            tracing::debug!("binary frame ignored");
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return CloseInfo { code: None, reason: format!("WEBSOCKET-ERROR: {err}"), by: Closer::Client },
                        None => return CloseInfo { code: None, reason: "WEBSOCKET-CLOSED".into(), by: Closer::Client },
                    };
                    let message = match signaling::parse_client_message(&text) {
                        Ok(message) => message,
                        Err(err) => {
                            tracing::warn!(%err, "malformed signaling message");
                            let reason = format!("INVALID-MESSAGE: {err}");
                            close(&mut self.socket, CLOSE_INVALID_MESSAGE, &reason).await;
                            return server(CLOSE_INVALID_MESSAGE, truncate(&reason, MAX_REASON_BYTES).to_owned());
                        }
                    };
                    match message {
                        ClientMessage::Answer { sdp } if !answered => {
                            self.record.with_signaling(|s| s.remote_sdp = Some(sdp.clone()));
                            if let Err(refusal) = dtls_setup::vet_answer(&sdp) {
                                return self.refuse_dtls_role(&refusal).await;
                            }
                            self.declare_simulcast_layers(&sdp);
                            if let Err(err) = peer::apply_answer(pc, sdp).await {
                                tracing::warn!(%err, "answer refused");
                                let reason = format!("INVALID-ANSWER: {err}");
                                close(&mut self.socket, CLOSE_INVALID_MESSAGE, &reason).await;
                                return server(CLOSE_INVALID_MESSAGE, truncate(&reason, MAX_REASON_BYTES).to_owned());
                            }
                            answered = true;
                            tracing::info!("answer applied");
                            for candidate in early_candidates.drain(..) {
                                add_candidate(&self.record, pc, candidate).await;
                            }
                        }
                        ClientMessage::Answer { .. } => tracing::warn!("second answer ignored"),
                        ClientMessage::ReAnswer { sdp } => {
                            if let Err(refusal) = dtls_setup::vet_answer(&sdp) {
                                return self.refuse_dtls_role(&refusal).await;
                            }
                            match apply_re_answer(&self.record, self.encodings.as_ref(), pc, &sdp).await {
                            Ok(()) => self.record.with_signaling(|s| {
                                s.re_answers += 1;
                                s.remote_sdp = Some(sdp);
                            }),
                            Err(err) => tracing::warn!(%err, "re-answer refused"),
                            }
                        }
                        ClientMessage::Candidate(candidate) => {
                            if let Some(init) = self.accept_candidate(candidate) {
                                if answered {
                                    add_candidate(&self.record, pc, init).await;
                                } else {
                                    early_candidates.push(init);
                                }
                            }
                        }
                        ClientMessage::Pong { stats } => self.record.with_signaling(|s| {
                            s.pongs += 1;
                            if stats.is_some() {
                                s.pongs_with_stats += 1;
                            }
                        }),
                        ClientMessage::Disconnect { reason } => {
                            tracing::info!(?reason, "client disconnect");
                            close(&mut self.socket, 1000, REASON_TYPE_DISCONNECT).await;
                            return CloseInfo { code: Some(1000), reason: REASON_TYPE_DISCONNECT.into(), by: Closer::Client };
                        }
                        ClientMessage::Connect(_) => {
                            let reason = "UNEXPECTED-CONNECT";
                            close(&mut self.socket, CLOSE_INVALID_MESSAGE, reason).await;
                            return server(CLOSE_INVALID_MESSAGE, reason.into());
                        }
                        ClientMessage::Other { message_type } => {
                            tracing::info!(%message_type, "unknown signaling message ignored");
                            self.record.with_signaling(|s| {
                                if s.ignored_message_types.len() < 32 {
                                    s.ignored_message_types.push(message_type);
                                }
                            });
                        }
                    }
                }
            }
        }
    }

    /// Refuses an answer that would make the endpoint the DTLS client: Sora only ever is the
    /// DTLS server, so a client answering `a=setup:passive` would wait for a ClientHello that
    /// never comes. Logged, counted, and the session closed with the reason.
    async fn refuse_dtls_role(&mut self, refusal: &DtlsRoleRefusal) -> CloseInfo {
        tracing::warn!(%refusal, "answer refused: the endpoint is the DTLS server");
        self.record.with_signaling(|s| s.dtls_role_refusals += 1);
        let reason = format!("INVALID-ANSWER: {refusal}");
        let reason = truncate(&reason, MAX_REASON_BYTES).to_owned();
        close(&mut self.socket, CLOSE_INVALID_MESSAGE, &reason).await;
        CloseInfo {
            code: Some(CLOSE_INVALID_MESSAGE),
            reason,
            by: Closer::Server,
        }
    }

    /// For a simulcast connection, declares the layers the answer sends (`a=rid:<rid> send` for
    /// an offered rid) before the answer is applied, so that the video track is received layer
    /// by layer. An answer sending none (the client declined simulcast) leaves one plain stream.
    fn declare_simulcast_layers(&self, answer: &str) {
        let Some(encodings) = &self.encodings else {
            return;
        };
        let offered = encodings.rids();
        let rids = simulcast::negotiated_rids(&offered, answer);
        if rids.is_empty() {
            tracing::warn!(
                ?offered,
                "the answer sends no offered simulcast rid: one plain video stream"
            );
        } else if self.record.set_simulcast_layers(&rids) {
            tracing::info!(?rids, ?offered, "simulcast layers negotiated");
        }
    }

    /// Counts a candidate by format; returns it when it is worth adding.
    fn accept_candidate(&self, candidate: CandidateMessage) -> Option<RTCIceCandidateInit> {
        let browser = candidate.is_browser_format();
        self.record.with_signaling(|s| {
            if browser {
                s.candidates_browser += 1
            } else {
                s.candidates_plain += 1
            }
        });
        if !candidate_usable(&candidate.candidate, self.app.config.ice_ip) {
            tracing::debug!(candidate = %candidate.candidate, "remote candidate skipped (other family, TCP or mDNS)");
            return None;
        }
        Some(RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        })
    }

    async fn re_offer(&mut self, pc: &Peer) {
        let rids = self.encodings.as_ref().map(Encodings::rids);
        let sdp = peer::create_re_offer(pc)
            .await
            .and_then(|sdp| peer::offer_as_sent(sdp, rids.as_deref()));
        match sdp {
            Ok(sdp) => {
                let sdp = bandwidth::apply(sdp, self.app.config.max_video_bitrate_kbps);
                let message = signaling::re_offer_message(&sdp, self.encodings.as_ref());
                if send_json(&mut self.socket, &message).await {
                    self.record.with_signaling(|s| {
                        s.re_offers_sent += 1;
                        s.local_sdp = Some(sdp);
                    });
                    tracing::info!("re-offer sent");
                }
            }
            Err(err) => tracing::warn!(%err, "re-offer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_of_other_families_tcp_and_mdns_are_skipped() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(candidate_usable(
            "candidate:1 1 udp 2122194687 192.0.2.2 34240 typ host",
            v4
        ));
        assert!(candidate_usable(
            "candidate:1 1 UDP 2122194687 127.0.0.1 34240 typ host generation 0",
            v4
        ));
        assert!(!candidate_usable(
            "candidate:1 1 udp 2122194687 fd00::2 34240 typ host",
            v4
        ));
        assert!(!candidate_usable(
            "candidate:1 1 tcp 2122194687 127.0.0.1 9 typ host tcptype active",
            v4
        ));
        assert!(!candidate_usable(
            "candidate:1 1 udp 2122194687 abcd.local 34240 typ host",
            v4
        ));
        assert!(!candidate_usable("garbage", v4));
        assert!(!candidate_usable("", v4));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ああ", 4), "あ");
    }
}
