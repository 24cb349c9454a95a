//! What the endpoint remembers about each connection, and the registry of connections
//! (closed ones stay listed, bounded) that the HTTP API reads.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::framestats::{FrameLog, FrameSummary, summarize};
use crate::layers::{LayerView, SimulcastLayers};
use crate::picture::Picture;
use crate::receive::{AudioSnapshot, AudioStats, DecodedPicture, VideoSnapshot, VideoStats};

/// How a client reached the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Sora WebSocket signaling.
    Sora,
    /// WHIP (RFC 9725).
    Whip,
}

/// Lifecycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Signaling in progress; media not flowing yet.
    Connecting,
    /// The peer connection is connected.
    Connected,
    /// Over.
    Closed,
}

/// Who ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Closer {
    /// The client (disconnect message, close frame, dropped socket, WHIP DELETE).
    Client,
    /// The endpoint (refusal, control API, shutdown, failure).
    Server,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloseInfo {
    /// WebSocket close code (none for WHIP, or when the socket just dropped).
    pub code: Option<u16>,
    /// Close reason.
    pub reason: String,
    /// Who ended it.
    pub by: Closer,
}

/// Commands the control API sends to a Sora signaling session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Close the WebSocket with this code and reason.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Renegotiate: send a `re-offer`.
    ReOffer,
}

/// Signaling facts about a connection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SignalingInfo {
    /// `role` from `connect`.
    pub role: Option<String>,
    /// Client id (the client's or assigned).
    pub client_id: Option<String>,
    /// Bundle id.
    pub bundle_id: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// The `connect` message as received.
    pub connect: Option<Value>,
    /// Where the client was redirected, if it was.
    pub redirected_to: Option<String>,
    /// The SDP the endpoint sent (Sora offer / WHIP answer).
    pub local_sdp: Option<String>,
    /// The SDP the client sent (Sora answer / WHIP offer).
    pub remote_sdp: Option<String>,
    /// `notify` `connection.created` was sent.
    pub connection_created_sent: bool,
    /// `ping`s sent.
    pub pings_sent: u64,
    /// `pong`s received.
    pub pongs: u64,
    /// Of those, with a `stats` report.
    pub pongs_with_stats: u64,
    /// Candidates received in the C++/Python SDK form (`candidate` only).
    pub candidates_plain: u64,
    /// Candidates received in the browser form (`sdpMid`, `sdpMLineIndex`, `usernameFragment`).
    pub candidates_browser: u64,
    /// Candidates webrtc-rs refused.
    pub candidate_errors: u64,
    /// Answers (or WHIP offers) refused because they would not leave the endpoint the DTLS
    /// server (e.g. `a=setup:passive`).
    pub dtls_role_refusals: u64,
    /// `re-offer`s sent.
    pub re_offers_sent: u64,
    /// `re-answer`s applied.
    pub re_answers: u64,
    /// The simulcast `encodings` the offer carried (simulcast connections only).
    pub encodings: Option<Value>,
    /// Message types received that the endpoint ignores (first 32).
    pub ignored_message_types: Vec<String>,
}

#[derive(Debug)]
struct Mutable {
    state: ConnState,
    peer_state: String,
    close: Option<CloseInfo>,
    connected_at_ms: Option<f64>,
    closed_at_ms: Option<f64>,
    signaling: SignalingInfo,
    ingest_errors: Vec<String>,
}

/// One client connection, shared by its session task, its ingest tasks and the API.
#[derive(Debug)]
pub struct Connection {
    /// Connection id (26 characters); also the WHIP resource id.
    pub id: String,
    /// How the client connected.
    pub transport: Transport,
    /// The channel.
    pub channel_id: String,
    /// Creation, milliseconds since the Unix epoch.
    pub created_at_ms: f64,
    /// Video receive counters.
    pub video: Arc<VideoStats>,
    /// Audio receive counters.
    pub audio: Arc<AudioStats>,
    /// Cancelled to end the session (WHIP DELETE, control API for WHIP, shutdown).
    pub cancel: CancellationToken,
    simulcast: OnceLock<Arc<SimulcastLayers>>,
    control: Option<mpsc::Sender<Control>>,
    mutable: Mutex<Mutable>,
    frames: Mutex<FrameLog>,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    /// A new connection record in state `connecting`.
    pub fn new(
        id: String,
        transport: Transport,
        channel_id: String,
        frame_ring: usize,
        control: Option<mpsc::Sender<Control>>,
    ) -> Self {
        Self {
            id,
            transport,
            channel_id,
            created_at_ms: unix_ms_now(),
            video: Arc::default(),
            audio: Arc::default(),
            cancel: CancellationToken::new(),
            simulcast: OnceLock::new(),
            control,
            mutable: Mutex::new(Mutable {
                state: ConnState::Connecting,
                peer_state: "new".into(),
                close: None,
                connected_at_ms: None,
                closed_at_ms: None,
                signaling: SignalingInfo::default(),
                ingest_errors: Vec::new(),
            }),
            frames: Mutex::new(FrameLog::new(frame_ring)),
        }
    }

    /// Current lifecycle state.
    pub fn state(&self) -> ConnState {
        lock(&self.mutable).state
    }

    /// How it closed, once closed.
    pub fn close_info(&self) -> Option<CloseInfo> {
        lock(&self.mutable).close.clone()
    }

    /// Edits the signaling facts.
    pub fn with_signaling<R>(&self, f: impl FnOnce(&mut SignalingInfo) -> R) -> R {
        f(&mut lock(&self.mutable).signaling)
    }

    /// Records the webrtc-rs peer connection state.
    pub fn set_peer_state(&self, state: &str) {
        lock(&self.mutable).peer_state = state.to_owned();
    }

    /// Marks the connection connected (first time only).
    pub fn mark_connected(&self) {
        let mut m = lock(&self.mutable);
        if m.state == ConnState::Connecting {
            m.state = ConnState::Connected;
            m.connected_at_ms = Some(unix_ms_now());
        }
    }

    /// Marks the connection closed; the first close wins. Returns whether this call closed it.
    pub fn mark_closed(&self, info: CloseInfo) -> bool {
        let mut m = lock(&self.mutable);
        if m.state == ConnState::Closed {
            return false;
        }
        m.state = ConnState::Closed;
        m.closed_at_ms = Some(unix_ms_now());
        m.close = Some(info);
        true
    }

    /// Keeps an ingest failure for the API.
    pub fn note_ingest_error(&self, error: String) {
        let mut m = lock(&self.mutable);
        if m.ingest_errors.len() < 16 {
            m.ingest_errors.push(error);
        }
    }

    /// Sends a control command to the signaling session; false when there is none or it ended.
    pub fn send_control(&self, command: Control) -> bool {
        self.control.as_ref().is_some_and(|tx| tx.try_send(command).is_ok())
    }

    /// Whether control commands (close, re-offer) reach a signaling session.
    pub fn has_signaling_session(&self) -> bool {
        self.control.is_some()
    }

    /// Stores one decoded frame (called on the ingest task).
    pub fn record_frame(&self, decoded: DecodedPicture) {
        let now = Instant::now();
        let since_arrival = now.saturating_duration_since(decoded.arrival);
        let arrival_ms = unix_ms_now() - since_arrival.as_secs_f64() * 1000.0;
        let decode_latency_ms = decoded
            .decoded_at
            .saturating_duration_since(decoded.arrival)
            .as_secs_f64()
            * 1000.0;
        let summary = summarize(
            &decoded.picture,
            decoded.index,
            decoded.rtp_timestamp,
            decoded.keyframe,
            arrival_ms,
            decode_latency_ms,
        );
        lock(&self.frames).push(Arc::new(decoded.picture), summary, now);
    }

    /// Declares the simulcast layers the client's answer sends (first answer only); their
    /// tracks are then received layer by layer. False when layers were already declared.
    pub fn set_simulcast_layers(&self, rids: &[String]) -> bool {
        self.simulcast.set(Arc::new(SimulcastLayers::new(rids))).is_ok()
    }

    /// The simulcast layers, for a simulcast connection.
    pub fn simulcast_layers(&self) -> Option<Arc<SimulcastLayers>> {
        self.simulcast.get().cloned()
    }

    /// The newest decoded picture.
    pub fn latest_frame(&self) -> Option<Arc<Picture>> {
        lock(&self.frames).latest()
    }

    /// The API's view; `frames` limits how many frame summaries are included.
    pub fn view(&self, frames: usize) -> ConnectionView {
        let now = Instant::now();
        let (last_frame, recent, fps) = {
            let log = lock(&self.frames);
            (log.last().cloned(), log.recent(frames), log.fps(now))
        };
        let m = lock(&self.mutable);
        ConnectionView {
            connection_id: self.id.clone(),
            transport: self.transport,
            channel_id: self.channel_id.clone(),
            state: m.state,
            peer_state: m.peer_state.clone(),
            close: m.close.clone(),
            created_at_ms: self.created_at_ms,
            connected_at_ms: m.connected_at_ms,
            closed_at_ms: m.closed_at_ms,
            signaling: m.signaling.clone(),
            video: VideoView {
                width: last_frame.as_ref().map(|f| f.width),
                height: last_frame.as_ref().map(|f| f.height),
                fps,
                ingest: self.video.snapshot(),
                last_frame,
            },
            video_layers: self.simulcast.get().map(|l| l.view()).unwrap_or_default(),
            audio: self.audio.snapshot(),
            ingest_errors: m.ingest_errors.clone(),
            frames: recent,
        }
    }
}

/// Video as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VideoView {
    /// Width of the newest decoded frame.
    pub width: Option<u32>,
    /// Height of the newest decoded frame.
    pub height: Option<u32>,
    /// Decoded frames over the last second.
    pub fps: f64,
    /// Receive and decode counters (codec, frames_decoded, keyframes_decoded, decode_errors,
    /// plis_sent, ...).
    #[serde(flatten)]
    pub ingest: VideoSnapshot,
    /// Summary of the newest decoded frame.
    pub last_frame: Option<FrameSummary>,
}

/// A connection as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionView {
    /// Connection id (also the WHIP resource id).
    pub connection_id: String,
    /// `sora` or `whip`.
    pub transport: Transport,
    /// The channel.
    pub channel_id: String,
    /// `connecting`, `connected` or `closed`.
    pub state: ConnState,
    /// webrtc-rs peer connection state.
    pub peer_state: String,
    /// How it closed.
    pub close: Option<CloseInfo>,
    /// Creation time (Unix ms).
    pub created_at_ms: f64,
    /// When it became connected (Unix ms).
    pub connected_at_ms: Option<f64>,
    /// When it closed (Unix ms).
    pub closed_at_ms: Option<f64>,
    /// Signaling facts.
    pub signaling: SignalingInfo,
    /// Video counters and the newest frame's summary (of a simulcast connection: of the layer
    /// feeding them, see [`crate::layers`]).
    pub video: VideoView,
    /// Each simulcast layer on its own, sorted by rid; empty for other connections.
    pub video_layers: Vec<LayerView>,
    /// Audio counters.
    pub audio: AudioSnapshot,
    /// Ingest failures (e.g. unsupported codec).
    pub ingest_errors: Vec<String>,
    /// Recent frame summaries, oldest first.
    pub frames: Vec<FrameSummary>,
}

/// All connections, in creation order; closed ones are kept up to a bound.
#[derive(Debug)]
pub struct Registry {
    connections: Mutex<Vec<Arc<Connection>>>,
    max_closed: usize,
    redirect_to: Mutex<Option<String>>,
}

impl Registry {
    /// An empty registry keeping at most `max_closed` closed connections.
    pub fn new(max_closed: usize, redirect_to: Option<String>) -> Self {
        Self {
            connections: Mutex::new(Vec::new()),
            max_closed,
            redirect_to: Mutex::new(redirect_to),
        }
    }

    /// Adds a connection (and forgets the oldest closed ones beyond the bound).
    pub fn add(&self, connection: Arc<Connection>) {
        let mut all = lock(&self.connections);
        all.push(connection);
        let closed = all.iter().filter(|c| c.state() == ConnState::Closed).count();
        let mut excess = closed.saturating_sub(self.max_closed);
        all.retain(|c| {
            if excess > 0 && c.state() == ConnState::Closed {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Looks a connection up by id.
    pub fn get(&self, id: &str) -> Option<Arc<Connection>> {
        lock(&self.connections).iter().find(|c| c.id == id).cloned()
    }

    /// All connections, oldest first.
    pub fn all(&self) -> Vec<Arc<Connection>> {
        lock(&self.connections).clone()
    }

    /// Where new Sora connects are redirected, if anywhere.
    pub fn redirect_to(&self) -> Option<String> {
        lock(&self.redirect_to).clone()
    }

    /// Sets or clears the redirect target.
    pub fn set_redirect_to(&self, location: Option<String>) {
        *lock(&self.redirect_to) = location;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> Arc<Connection> {
        Arc::new(Connection::new(id.into(), Transport::Sora, "ch".into(), 10, None))
    }

    #[test]
    fn first_close_wins() {
        let c = conn("a");
        c.mark_connected();
        assert_eq!(c.state(), ConnState::Connected);
        assert!(c.mark_closed(CloseInfo {
            code: Some(1000),
            reason: "TYPE-DISCONNECT".into(),
            by: Closer::Client
        }));
        assert!(!c.mark_closed(CloseInfo {
            code: None,
            reason: "later".into(),
            by: Closer::Server
        }));
        assert_eq!(c.close_info().unwrap().reason, "TYPE-DISCONNECT");
        c.mark_connected();
        assert_eq!(c.state(), ConnState::Closed);
    }

    #[test]
    fn registry_bounds_closed_connections_only() {
        let r = Registry::new(2, None);
        for i in 0..5 {
            let c = conn(&format!("c{i}"));
            if i < 4 {
                c.mark_closed(CloseInfo {
                    code: None,
                    reason: String::new(),
                    by: Closer::Client,
                });
            }
            r.add(c);
        }
        let ids: Vec<String> = r.all().iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, ["c2", "c3", "c4"]);
        assert!(r.get("c4").is_some() && r.get("c0").is_none());
    }

    #[test]
    fn control_without_session_is_refused() {
        let c = conn("a");
        assert!(!c.send_control(Control::ReOffer));
        let (tx, mut rx) = mpsc::channel(1);
        let c = Connection::new("b".into(), Transport::Sora, "ch".into(), 10, Some(tx));
        assert!(c.send_control(Control::ReOffer));
        assert_eq!(rx.try_recv().ok(), Some(Control::ReOffer));
    }

    #[test]
    fn view_serializes() {
        let c = conn("a");
        let v = serde_json::to_value(c.view(10)).unwrap();
        assert_eq!(v["state"], "connecting");
        assert_eq!(v["transport"], "sora");
        assert_eq!(v["video"]["frames_decoded"], 0);
        assert_eq!(v["video_layers"], serde_json::json!([]), "not simulcast");
        assert!(c.set_simulcast_layers(&["r1".into(), "r0".into()]));
        assert!(!c.set_simulcast_layers(&["x".into()]), "declared once");
        let v = serde_json::to_value(c.view(10)).unwrap();
        assert_eq!(v["video_layers"][0]["rid"], "r0");
        assert_eq!(v["video_layers"][1]["rid"], "r1");
        assert_eq!(v["video_layers"][1]["ssrc"], serde_json::Value::Null);
    }
}
