//! The browser's session: at most one browser streams at a time. One task (the actor) owns the
//! session's life — its peer connection, its state and its timers; HTTP handlers send it a
//! command and await the reply, so a request dropped half-way (client gone, timeout, shutdown)
//! cannot leave anything half-changed. Every peer event carries its session's epoch, so a late
//! event of an ended session never touches the next one.
//!
//! Lifecycle: `answering` (offer applied, candidates gathering) → `connecting` (answer sent,
//! waiting for ICE/DTLS) → `receiving` ⇄ `interrupted` (ICE `disconnected`: a grace period that
//! ends early when the connection comes back, or with an ICE restart from the page) → ended
//! (stopped, refused, abandoned, timed out, failed, tab closed, shutdown) → idle, with the peer
//! closed and its sockets released before the next offer is taken.

mod peer;

pub use peer::pong_for;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::answer::with_start_bitrate;
use crate::codec::VideoCodec;
use crate::feed::MediaSinks;
use crate::ice;
use crate::ingest::VideoIngestConfig;
use crate::offer::{OfferError, check_offer};
use crate::publish::KeyframeRequest;
use peer::{BrowserPeer, PeerContext};

/// Why an offer (or an ICE restart) was not answered.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// A browser is already streaming.
    #[error("a stream is already live (started {0:.0} s ago); stop it first")]
    Busy(f64),
    /// The offer itself is unusable.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// webrtc-rs failed on something that does not depend on the offer.
    #[error("WebRTC {op} failed: {detail}")]
    WebRtc {
        /// What was being done.
        op: &'static str,
        /// webrtc-rs's words.
        detail: String,
    },
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// Every port of the configured UDP range is taken.
    #[error("{0}")]
    NoUdpPort(String),
    /// The address to advertise is not known yet.
    #[error("the relay does not know its public address yet: {0}")]
    NoPublicAddress(String),
    /// An ICE restart named a session that is not the live one.
    #[error("no live session {0}")]
    UnknownSession(String),
    /// An ICE restart came while the session was still answering an offer.
    #[error("session {0} is still negotiating; retry when its answer has arrived")]
    Negotiating(String),
}

/// Settings of the browser sessions.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Video codecs accepted from the browser, in preference order.
    pub codecs: Vec<VideoCodec>,
    /// Local UDP sockets.
    pub udp_addrs: Vec<String>,
    /// Local TCP listeners for ICE over TCP (none: UDP only).
    pub tcp_addrs: Vec<String>,
    /// Addresses to advertise.
    pub public_ips: Vec<String>,
    /// Bind the first free port of this range instead of the `udp_addrs` ports.
    pub udp_port_range: Option<ice::PortRange>,
    /// A file with more addresses to advertise, read for every offer.
    pub public_ips_file: Option<std::path::PathBuf>,
    /// The bitrate the browser starts sending at (kbit/s), so it reaches full resolution
    /// sooner than its cautious default allows.
    pub start_bitrate_kbps: u32,
    /// The session's timers.
    pub timers: SessionTimers,
    /// Settings of the video receiver.
    pub video: VideoIngestConfig,
}

/// How long each wait of a session may last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimers {
    /// How long an answer may wait for ICE gathering (it carries every candidate).
    pub gather: Duration,
    /// How long the browser has to connect after the answer (or after an ICE restart).
    pub connect: Duration,
    /// How long an ICE `disconnected` (or `failed`) may last before the session ends, unless
    /// the connection comes back or the page restarts ICE.
    pub disconnected_grace: Duration,
    /// How long closing the peer may take before the relay goes idle regardless.
    pub close: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        Self {
            gather: Duration::from_secs(5),
            connect: Duration::from_secs(20),
            disconnected_grace: Duration::from_secs(5),
            close: Duration::from_secs(2),
        }
    }
}

/// What `/status` shows of the session (the contract's type).
pub use livefilter_contract::status::{SessionState, SessionView};

/// The session's phase as published to readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    Idle,
    Connecting { started: Instant },
    Receiving { started: Instant },
}

/// A successful offer: the id that names the session (for its Stop and ICE restarts) and the
/// answer with every candidate.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The session id.
    pub session: String,
    /// The answer SDP.
    pub answer: String,
}

type Reply = oneshot::Sender<Result<Accepted, AcceptError>>;

enum Command {
    Offer { sdp: String, reply: Reply },
    Restart { id: String, sdp: String, reply: Reply },
    Stop { id: String, reply: oneshot::Sender<bool> },
}

/// Why a session ended: logged, and counted in `livefilter_sessions_ended_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The sender pressed Stop (`DELETE /offer/<session>`).
    Stopped,
    /// The browser never connected after its answer.
    ConnectTimeout,
    /// An ICE restart did not bring the connection back in time.
    RestartTimeout,
    /// ICE stayed `disconnected`/`failed` past the grace period.
    Disconnected,
    /// The request that carried the offer went away before its answer.
    Abandoned,
    /// The offer could not be answered.
    Refused,
    /// The peer connection closed.
    Closed,
    /// The camera track ended.
    TrackEnded,
    /// The page closed its DataChannel (tab closed, reloaded).
    PageClosed,
    /// The relay is shutting down.
    Shutdown,
}

impl EndReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::ConnectTimeout => "connect_timeout",
            EndReason::RestartTimeout => "restart_timeout",
            EndReason::Disconnected => "disconnected",
            EndReason::Abandoned => "abandoned",
            EndReason::Refused => "refused",
            EndReason::Closed => "closed",
            EndReason::TrackEnded => "track_ended",
            EndReason::PageClosed => "page_closed",
            EndReason::Shutdown => "shutdown",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [EndReason; 10] = [
        EndReason::Stopped,
        EndReason::ConnectTimeout,
        EndReason::RestartTimeout,
        EndReason::Disconnected,
        EndReason::Abandoned,
        EndReason::Refused,
        EndReason::Closed,
        EndReason::TrackEnded,
        EndReason::PageClosed,
        EndReason::Shutdown,
    ];
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::Stopped => "the sender stopped the stream",
            EndReason::ConnectTimeout => "the browser did not connect in time",
            EndReason::RestartTimeout => "the ICE restart did not complete in time",
            EndReason::Disconnected => "the browser stayed disconnected",
            EndReason::Abandoned => "the request was abandoned before its answer",
            EndReason::Refused => "the offer could not be answered",
            EndReason::Closed => "the browser peer closed",
            EndReason::TrackEnded => "the camera track ended",
            EndReason::PageClosed => "the page closed its DataChannel",
            EndReason::Shutdown => "the relay is shutting down",
        })
    }
}

/// What the peer and the session's helpers report; each names its session's epoch.
pub(crate) enum Event {
    Answered {
        epoch: u64,
        result: Result<String, AcceptError>,
    },
    Peer {
        epoch: u64,
        state: RTCPeerConnectionState,
    },
    Ended {
        epoch: u64,
        reason: EndReason,
    },
}

impl Event {
    fn epoch(&self) -> u64 {
        match self {
            Event::Answered { epoch, .. } | Event::Peer { epoch, .. } | Event::Ended { epoch, .. } => *epoch,
        }
    }
}

/// The handle HTTP handlers and the relay's wiring use: cheap to clone, every mutation a
/// command to the actor.
#[derive(Clone)]
pub struct Sessions {
    commands: mpsc::Sender<Command>,
    published: watch::Receiver<Published>,
    codecs: Vec<VideoCodec>,
    sinks: MediaSinks,
}

impl Sessions {
    /// Starts the actor; it ends at `shutdown`, closing the live session first.
    pub fn start(
        config: IngestConfig,
        sinks: MediaSinks,
        keyframes: KeyframeRequest,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands_tx, commands) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(64);
        let (published_tx, published) = watch::channel(Published::Idle);
        let handle = Self {
            commands: commands_tx,
            published,
            codecs: config.codecs.clone(),
            sinks: sinks.clone(),
        };
        let actor = Actor {
            config,
            sinks,
            keyframes,
            shutdown,
            commands,
            events,
            events_tx,
            published: published_tx,
            live: None,
            epoch: 0,
        };
        let task = tokio::spawn(actor.run().instrument(tracing::info_span!("browser-sessions")));
        (handle, task)
    }

    /// The session as `/status` shows it.
    pub fn view(&self) -> SessionView {
        match *self.published.borrow() {
            Published::Idle => SessionView {
                state: SessionState::Idle,
                ..SessionView::default()
            },
            Published::Connecting { started } => SessionView {
                state: SessionState::Connecting,
                age_secs: Some(started.elapsed().as_secs_f64()),
                codec: self.sinks.input_codec(),
                first_frame_ms: None,
            },
            Published::Receiving { started } => SessionView {
                state: SessionState::Receiving,
                age_secs: Some(started.elapsed().as_secs_f64()),
                codec: self.sinks.input_codec(),
                first_frame_ms: self.sinks.metrics.first_frame_ms(),
            },
        }
    }

    /// Whether a browser is connected and sending.
    pub fn receiving(&self) -> bool {
        matches!(*self.published.borrow(), Published::Receiving { .. })
    }

    /// Waits until the relay is idle (no session), e.g. after a stop.
    pub async fn idle(&self) {
        let mut published = self.published.clone();
        let _ = published.wait_for(|p| *p == Published::Idle).await;
    }

    /// Waits until a session holds the relay (answering, connecting or receiving).
    pub async fn busy(&self) {
        let mut published = self.published.clone();
        let _ = published.wait_for(|p| *p != Published::Idle).await;
    }

    /// Frames assembled from the browser's RTP in the current (or last) session.
    pub fn frames_received(&self) -> u64 {
        self.sinks.frames_received()
    }

    /// Answers a browser's offer and starts its session. The offer is checked first (pure), so
    /// a refused offer never touches the live session.
    pub async fn accept(&self, kind: &str, sdp: String) -> Result<Accepted, AcceptError> {
        check_offer(kind, &sdp, &self.codecs)?;
        self.ask(|reply| Command::Offer { sdp, reply }).await
    }

    /// Applies an ICE-restart offer to the live session `id` and returns the new answer.
    pub async fn restart(&self, id: &str, kind: &str, sdp: String) -> Result<Accepted, AcceptError> {
        check_offer(kind, &sdp, &self.codecs)?;
        let id = id.to_owned();
        self.ask(|reply| Command::Restart { id, sdp, reply }).await
    }

    /// Ends the session `id` (its sender pressed Stop); false when that is not the live one.
    pub async fn stop_session(&self, id: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let command = Command::Stop {
            id: id.to_owned(),
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    async fn ask(&self, command: impl FnOnce(Reply) -> Command) -> Result<Accepted, AcceptError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| AcceptError::ShuttingDown)?;
        answer.await.unwrap_or(Err(AcceptError::ShuttingDown))
    }
}

/// The live session, owned by the actor alone.
struct Live {
    id: String,
    epoch: u64,
    started: Instant,
    peer: BrowserPeer,
    public_ips: Vec<IpAddr>,
    /// Cancels everything the session spawned (tracks, DataChannel, negotiation).
    cancel: CancellationToken,
    phase: Phase,
    /// The peer connection's last reported state.
    peer_state: RTCPeerConnectionState,
}

enum Phase {
    /// The first answer is being prepared; the request waits on `reply`.
    Answering { reply: Reply },
    /// Answered; waiting for ICE/DTLS until `deadline`.
    Connecting { deadline: Instant },
    /// Media flows.
    Connected,
    /// ICE `disconnected`/`failed`: ends at `deadline` unless it comes back.
    Interrupted { deadline: Instant },
    /// An ICE restart is being answered; `reply` waits; `deadline` still runs.
    Restarting { reply: Reply, deadline: Instant },
}

impl Live {
    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connecting { deadline } | Phase::Interrupted { deadline } | Phase::Restarting { deadline, .. } => {
                Some(*deadline)
            }
            Phase::Answering { .. } | Phase::Connected => None,
        }
    }

    fn waiting_reply(&mut self) -> Option<&mut Reply> {
        match &mut self.phase {
            Phase::Answering { reply } | Phase::Restarting { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

struct Actor {
    config: IngestConfig,
    sinks: MediaSinks,
    keyframes: KeyframeRequest,
    shutdown: CancellationToken,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    published: watch::Sender<Published>,
    live: Option<Live>,
    epoch: u64,
}

impl Actor {
    async fn run(mut self) {
        loop {
            let deadline = self.live.as_ref().and_then(Live::deadline);
            let waiting = self.live.as_mut().and_then(Live::waiting_reply);
            let has_waiting = waiting.is_some();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => self.on_command(command).await,
                Some(event) = self.events.recv() => self.on_event(event).await,
                _ = sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    let reason = match self.live.as_ref().map(|l| &l.phase) {
                        Some(Phase::Connecting { .. }) => EndReason::ConnectTimeout,
                        Some(Phase::Restarting { .. }) => EndReason::RestartTimeout,
                        _ => EndReason::Disconnected,
                    };
                    self.end(reason).await;
                }
                _ = async { if let Some(reply) = waiting { reply.closed().await } }, if has_waiting => {
                    self.end(EndReason::Abandoned).await;
                }
            }
        }
        self.end(EndReason::Shutdown).await;
        // Whatever is still queued learns why it will not be served.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Offer { reply, .. } | Command::Restart { reply, .. } => {
                    let _ = reply.send(Err(AcceptError::ShuttingDown));
                }
                Command::Stop { reply, .. } => {
                    let _ = reply.send(false);
                }
            }
        }
    }

    fn publish(&self) {
        let next = match &self.live {
            None => Published::Idle,
            Some(live) => match live.phase {
                Phase::Connected => Published::Receiving { started: live.started },
                // An interrupted session is still the live one; readers see it as connecting.
                _ => Published::Connecting { started: live.started },
            },
        };
        self.published.send_if_modified(|p| {
            let changed = *p != next;
            *p = next;
            changed
        });
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Offer { sdp, reply } => {
                if let Some(live) = &self.live {
                    let _ = reply.send(Err(AcceptError::Busy(live.started.elapsed().as_secs_f64())));
                    return;
                }
                if let Err(e) = self.begin(sdp, reply).await {
                    tracing::warn!(error = %e, "browser offer not started");
                }
            }
            Command::Restart { id, sdp, reply } => self.restart(id, sdp, reply),
            Command::Stop { id, reply } => {
                let ours = self.live.as_ref().is_some_and(|l| l.id == id);
                if ours {
                    self.end(EndReason::Stopped).await;
                }
                let _ = reply.send(ours);
            }
        }
        self.publish();
    }

    /// Builds the session's peer and starts answering; the answer comes back as an event.
    async fn begin(&mut self, sdp: String, reply: Reply) -> Result<(), &'static str> {
        let started = Instant::now();
        let public_ips = match self.public_ips() {
            Ok(ips) => ips,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Err("no public address");
            }
        };
        let udp_addrs = match self.config.udp_port_range {
            Some(range) => match ice::pick_udp_port(&self.config.udp_addrs, range) {
                Ok(addrs) => addrs,
                Err(e) => {
                    let _ = reply.send(Err(AcceptError::NoUdpPort(e)));
                    return Err("no UDP port");
                }
            },
            None => self.config.udp_addrs.clone(),
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let cancel = self.shutdown.child_token();
        let ctx = PeerContext {
            epoch,
            events: self.events_tx.clone(),
            cancel: cancel.clone(),
            sinks: self.sinks.clone(),
            keyframes: self.keyframes.clone(),
            video: self.config.video.clone(),
        };
        let binds = peer::Binds {
            udp: udp_addrs,
            tcp: self.config.tcp_addrs.clone(),
        };
        let peer = match peer::build(&self.config.codecs, binds, ctx).await {
            Ok(peer) => peer,
            Err(e) => {
                cancel.cancel();
                let _ = reply.send(Err(e));
                return Err("peer not built");
            }
        };
        let id = format!("{:016x}", rand::random::<u64>());
        tracing::info!(epoch, session = %id, "browser offer accepted; answering");
        self.sinks.metrics.session_began(started);
        self.spawn_answer(&peer, epoch, sdp, &cancel);
        self.live = Some(Live {
            id,
            epoch,
            started,
            peer,
            public_ips,
            cancel,
            phase: Phase::Answering { reply },
            peer_state: RTCPeerConnectionState::New,
        });
        Ok(())
    }

    fn restart(&mut self, id: String, sdp: String, reply: Reply) {
        let Some(live) = self.live.as_mut().filter(|l| l.id == id) else {
            let _ = reply.send(Err(AcceptError::UnknownSession(id)));
            return;
        };
        let deadline = match &live.phase {
            Phase::Answering { .. } | Phase::Restarting { .. } => {
                let _ = reply.send(Err(AcceptError::Negotiating(id)));
                return;
            }
            // A restart gets the time a new connection gets, at least.
            _ => Instant::now() + self.config.timers.connect,
        };
        tracing::info!(epoch = live.epoch, session = %id, "ICE restart requested by the browser");
        let (epoch, cancel) = (live.epoch, live.cancel.clone());
        live.phase = Phase::Restarting { reply, deadline };
        let peer = live.peer.clone();
        self.spawn_answer(&peer, epoch, sdp, &cancel);
    }

    fn spawn_answer(&self, peer: &BrowserPeer, epoch: u64, sdp: String, cancel: &CancellationToken) {
        let peer = peer.clone();
        let events = self.events_tx.clone();
        let cancel = cancel.clone();
        let gather = self.config.timers.gather;
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    r = peer.answer(sdp, gather) => r,
                    _ = cancel.cancelled() => return,
                };
                let _ = events.send(Event::Answered { epoch, result }).await;
            }
            .instrument(tracing::info_span!("browser-answer", epoch)),
        );
    }

    async fn on_event(&mut self, event: Event) {
        let current = self.live.as_ref().map(|l| l.epoch);
        if current != Some(event.epoch()) {
            tracing::debug!(epoch = event.epoch(), "event of an ended session ignored");
            return;
        }
        match event {
            Event::Answered { result, .. } => self.on_answered(result).await,
            Event::Peer { state, .. } => self.on_peer_state(state).await,
            Event::Ended { reason, .. } => self.end(reason).await,
        }
        self.publish();
    }

    async fn on_answered(&mut self, result: Result<String, AcceptError>) {
        let Some(live) = self.live.as_mut() else { return };
        let connect = self.config.timers.connect;
        let (reply, next) = match std::mem::replace(&mut live.phase, Phase::Connected) {
            Phase::Answering { reply } => (
                reply,
                Phase::Connecting {
                    deadline: Instant::now() + connect,
                },
            ),
            // Still connected (a restart the page asked for early) or not yet back.
            Phase::Restarting { reply, deadline } => (
                reply,
                if live.peer_state == RTCPeerConnectionState::Connected {
                    Phase::Connected
                } else {
                    Phase::Interrupted { deadline }
                },
            ),
            other => {
                live.phase = other;
                return;
            }
        };
        let first = matches!(next, Phase::Connecting { .. });
        match result {
            Ok(sdp) => {
                let answer = with_start_bitrate(
                    &ice::rewrite_sdp(&sdp, &live.public_ips),
                    self.config.start_bitrate_kbps,
                );
                live.phase = next;
                let accepted = Accepted {
                    session: live.id.clone(),
                    answer,
                };
                if reply.send(Ok(accepted)).is_err() {
                    self.end(EndReason::Abandoned).await;
                }
            }
            Err(e) => {
                live.phase = next;
                let _ = reply.send(Err(e));
                if first {
                    self.end(EndReason::Refused).await;
                }
            }
        }
    }

    async fn on_peer_state(&mut self, state: RTCPeerConnectionState) {
        let grace = self.config.timers.disconnected_grace;
        let Some(live) = self.live.as_mut() else { return };
        live.peer_state = state;
        match state {
            RTCPeerConnectionState::Connected => match live.phase {
                Phase::Connecting { .. } | Phase::Interrupted { .. } => {
                    if matches!(live.phase, Phase::Interrupted { .. }) {
                        tracing::info!(epoch = live.epoch, "browser connection recovered");
                    }
                    live.phase = Phase::Connected;
                }
                // A restart's own answer is still on its way; the connection is back anyway.
                Phase::Restarting { .. } | Phase::Answering { .. } | Phase::Connected => {}
            },
            RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed => {
                if let Phase::Connected = live.phase {
                    tracing::warn!(epoch = live.epoch, %state, ?grace, "browser connection interrupted; waiting for it to recover");
                    live.phase = Phase::Interrupted {
                        deadline: Instant::now() + grace,
                    };
                }
            }
            RTCPeerConnectionState::Closed => self.end(EndReason::Closed).await,
            _ => {}
        }
    }

    /// Ends the live session, if any: its tasks stop, its peer closes (bounded), and what it
    /// left in the pipeline is forgotten. The relay is idle when this returns.
    async fn end(&mut self, reason: EndReason) {
        let Some(mut live) = self.live.take() else { return };
        live.cancel.cancel();
        if let Some(reply) = match std::mem::replace(&mut live.phase, Phase::Connected) {
            Phase::Answering { reply } | Phase::Restarting { reply, .. } => Some(reply),
            _ => None,
        } {
            let _ = reply.send(Err(AcceptError::WebRtc {
                op: "answering",
                detail: format!("the session ended: {reason}"),
            }));
        }
        if tokio::time::timeout(self.config.timers.close, live.peer.pc.close())
            .await
            .is_err()
        {
            tracing::warn!(epoch = live.epoch, "closing the browser peer took too long");
        }
        self.sinks.reset();
        self.sinks
            .metrics
            .sessions_ended
            .with_label_values(&[reason.label()])
            .inc();
        tracing::info!(epoch = live.epoch, session = %live.id, %reason, "browser session ended; relay idle");
        self.publish();
    }

    /// The addresses to advertise now: the configured ones plus the file's.
    fn public_ips(&self) -> Result<Vec<IpAddr>, AcceptError> {
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
}
