//! The Sora publisher (what ImageFlux Live Streaming speaks): WebSocket signaling, a send-only
//! peer, reconnection with backoff, and a polite `disconnect` on shutdown.

pub mod signaling;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

use self::signaling::{CloseKind, ConnectOptions, ServerMessage, SignalingError};
use super::backoff::Backoff;
use super::congestion::{BitrateEstimate, BitrateLimits};
use super::lipsync::{AudioDelay, audio_delay};
use super::peer::{
    LinkTiming, LinkWatch, PeerError, PeerEvent, PeerOptions, SendPeer, StreamStats, on_link_change, sleep_until_some,
};
use super::simulcast::{Encoding, SimulcastControl, recv_rids};
use super::{KeyframeRequest, PublisherInputs, PublisherState, observe_sent, retry_after_error, wait_to_reconnect};
use crate::metrics::{DropReason, Metrics};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The metric label of this publisher.
pub const PUBLISHER: &str = "sora";

/// Consecutive redirects followed by default: a real cluster redirects once.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Sora publisher settings.
#[derive(Clone, Debug)]
pub struct SoraConfig {
    /// Signaling URLs; all are tried at once and the first handshake wins.
    pub signaling_urls: Vec<String>,
    /// What goes into `connect`.
    pub connect: ConnectOptions,
    /// Local UDP binding and advertised addresses for the peer.
    pub udp_addrs: Vec<String>,
    /// Addresses to advertise instead of the bound ones.
    pub public_ips: Vec<String>,
    /// How long one signaling URL may take to complete its WebSocket handshake.
    pub url_timeout: Duration,
    /// How long from the first WebSocket attempt until media must be flowing.
    pub connect_timeout: Duration,
    /// How long to wait for the server's close after sending `disconnect`.
    pub disconnect_timeout: Duration,
    /// Consecutive `redirect`s followed before they count as an error (a redirect loop).
    pub max_redirects: u32,
    /// ICE timers and the grace a `disconnected` media connection gets.
    pub link: LinkTiming,
    /// The range congestion control keeps the bitrate within (default: fixed at
    /// `connect.bitrate_kbps`).
    pub bitrate: BitrateLimits,
    /// Where the connection's estimate of its path goes (the encoder follows it).
    pub estimate: BitrateEstimate,
    /// Shared with the encode stage: the simulcast layers of the current session, and the
    /// path's estimate they share (see [`crate::layers`]).
    pub simulcast: SimulcastControl,
}

impl SoraConfig {
    /// Defaults as in the official SDKs: 3 s per URL, 30 s to connect, a few seconds to say
    /// goodbye.
    pub fn new(signaling_urls: Vec<String>, connect: ConnectOptions) -> Self {
        let bitrate = BitrateLimits::fixed_kbps(connect.bitrate_kbps);
        Self {
            signaling_urls,
            connect,
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            public_ips: Vec::new(),
            url_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            disconnect_timeout: Duration::from_secs(3),
            max_redirects: DEFAULT_MAX_REDIRECTS,
            link: LinkTiming::default(),
            bitrate,
            estimate: BitrateEstimate::default(),
            simulcast: SimulcastControl::default(),
        }
    }
}

/// Why a Sora session ended.
#[derive(Debug, thiserror::Error)]
pub enum SoraError {
    /// Configuration that can never work.
    #[error("invalid Sora configuration: {0}")]
    Config(String),
    /// No signaling URL completed a WebSocket handshake.
    #[error("no signaling URL answered: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// The WebSocket failed.
    #[error("signaling WebSocket to {url} failed: {detail}")]
    WebSocket { url: String, detail: String },
    /// The server sent something unusable.
    #[error("signaling from {url}: {source}")]
    Signaling {
        url: String,
        #[source]
        source: SignalingError,
    },
    /// The server closed the signaling with an error code.
    #[error("server closed signaling with code {code} ({reason})")]
    ClosedWithError { code: u16, reason: String },
    /// Not connected within the time limit.
    #[error("not publishing within {0:?} of starting to connect")]
    Timeout(Duration),
    /// The media connection could not be set up.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The media connection went down.
    #[error("media connection {0}")]
    PeerDown(RTCPeerConnectionState),
    /// The servers kept redirecting.
    #[error("{count} redirects in a row without publishing (the last to {location})")]
    RedirectLoop { count: u32, location: String },
}

impl SoraError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SoraError::Config(_) => "config",
            SoraError::Unreachable(_) => "unreachable",
            SoraError::WebSocket { .. } => "websocket",
            SoraError::Signaling { .. } => "signaling",
            SoraError::ClosedWithError { .. } => "closed_with_error",
            SoraError::Timeout(_) => "timeout",
            SoraError::Peer(_) => "peer",
            SoraError::PeerDown(_) => "peer_down",
            SoraError::RedirectLoop { .. } => "redirect_loop",
        }
    }
}

/// What the next redirect gets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RedirectStep {
    /// Followed at once (the first of a row: a cluster moving the client to its node).
    Now,
    /// Followed after a backoff delay.
    After(Duration),
    /// Too many in a row: an error, retried from the configured URLs with backoff.
    GiveUp(u32),
}

/// Consecutive redirects and the backoff shared with errors; both start over once publishing.
struct Retry {
    backoff: Backoff,
    redirects: u32,
    max_redirects: u32,
}

impl Retry {
    fn new(max_redirects: u32) -> Self {
        Self {
            backoff: Backoff::default(),
            redirects: 0,
            max_redirects,
        }
    }

    /// Decides about one more redirect (`jitter` uniform in `[0, 1)`).
    fn redirect(&mut self, jitter: f64) -> RedirectStep {
        self.redirects += 1;
        if self.redirects > self.max_redirects {
            let count = self.redirects;
            self.redirects = 0;
            return RedirectStep::GiveUp(count);
        }
        if self.redirects == 1 {
            RedirectStep::Now
        } else {
            RedirectStep::After(self.backoff.next_delay(jitter))
        }
    }

    /// Publishing: past failures and redirects are forgotten.
    fn reset(&mut self) {
        self.backoff.reset();
        self.redirects = 0;
    }
}

/// How one session ended when it was not an error.
enum SessionEnd {
    Shutdown,
    Redirect(String),
    ClosedNormally(String),
}

/// Publishes encoded frames into a Sora channel until shut down.
pub struct SoraPublisher {
    config: SoraConfig,
    metrics: Metrics,
    keyframes: KeyframeRequest,
    shutdown: CancellationToken,
}

impl SoraPublisher {
    /// Validates the configuration.
    pub fn new(
        config: SoraConfig,
        metrics: Metrics,
        keyframes: KeyframeRequest,
        shutdown: CancellationToken,
    ) -> Result<Self, SoraError> {
        if config.signaling_urls.is_empty() {
            return Err(SoraError::Config("at least one signaling URL is required".into()));
        }
        for url in &config.signaling_urls {
            let parsed = url::Url::parse(url).map_err(|e| SoraError::Config(format!("signaling URL {url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "ws" | "wss") {
                return Err(SoraError::Config(format!(
                    "signaling URL {url:?} must be ws:// or wss://"
                )));
            }
        }
        config
            .connect
            .validate()
            .map_err(|e| SoraError::Config(e.to_string()))?;
        Ok(Self {
            config,
            metrics,
            keyframes,
            shutdown,
        })
    }

    fn set_state(&self, state: PublisherState) {
        self.metrics.set_publisher_state(PUBLISHER, state);
    }

    /// Runs until shutdown (or a normal close by the server), reconnecting after errors and
    /// following redirects (after the first of a row with backoff, at most
    /// [`SoraConfig::max_redirects`] in a row).
    pub async fn run(self, mut inputs: PublisherInputs) {
        let mut retry = Retry::new(self.config.max_redirects);
        let mut redirect: Option<String> = None;
        loop {
            self.set_state(PublisherState::Connecting);
            let (urls, is_redirect) = match redirect.take() {
                Some(location) => (vec![location], true),
                None => (self.config.signaling_urls.clone(), false),
            };
            let error = match self.session(&urls, is_redirect, &mut inputs, &mut retry).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::ClosedNormally(reason)) => {
                    tracing::info!(%reason, "Sora ended the session normally; publisher stops");
                    break;
                }
                Ok(SessionEnd::Redirect(location)) => match retry.redirect(rand::random::<f64>()) {
                    RedirectStep::GiveUp(count) => SoraError::RedirectLoop { count, location },
                    step => {
                        let delay = match step {
                            RedirectStep::After(d) => d,
                            _ => Duration::ZERO,
                        };
                        tracing::info!(%location, delay_ms = delay.as_millis() as u64, "Sora redirected the publisher");
                        redirect = Some(location);
                        if !wait_to_reconnect(PUBLISHER, delay, &mut inputs, &self.metrics, &self.shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
                Err(e) => e,
            };
            let kind = error.kind();
            let go_on = retry_after_error(
                PUBLISHER,
                &error,
                kind,
                &mut retry.backoff,
                &mut inputs,
                &self.metrics,
                &self.shutdown,
            )
            .await;
            if !go_on {
                break;
            }
        }
        self.set_state(PublisherState::Stopped);
        // Frames offered after the end are counted as dropped by the handle (channel closed).
        inputs.close();
    }

    async fn session(
        &self,
        urls: &[String],
        redirect: bool,
        inputs: &mut PublisherInputs,
        retry: &mut Retry,
    ) -> Result<SessionEnd, SoraError> {
        let started = tokio::time::Instant::now();
        let connect_deadline = started + self.config.connect_timeout;
        let (url, mut ws) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            r = race_urls(urls, self.config.url_timeout) => r?,
        };
        tracing::info!(%url, "signaling connected");
        let ws_err = |e: tokio_tungstenite::tungstenite::Error| SoraError::WebSocket {
            url: url.clone(),
            detail: e.to_string(),
        };
        let connect = signaling::connect_message(&self.config.connect, redirect);
        ws.send(Message::text(connect.to_string())).await.map_err(ws_err)?;

        // Until the offer arrives there is no peer: only pings, notifies and redirects.
        let offer = loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    say_goodbye(&mut ws, self.config.disconnect_timeout).await;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = tokio::time::sleep_until(connect_deadline) => return Err(SoraError::Timeout(self.config.connect_timeout)),
                f = inputs.video.recv() => {
                    // A closed input (the pipeline ended) would be ready forever: stop instead.
                    if f.is_none() {
                        say_goodbye(&mut ws, self.config.disconnect_timeout).await;
                        return Ok(SessionEnd::Shutdown);
                    }
                    self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                    continue;
                }
                _ = inputs.audio.recv() => continue,
                m = ws.next() => m,
            };
            match self.read_server_message(&url, msg)? {
                Incoming::Message(ServerMessage::Offer(offer)) => break offer,
                Incoming::Message(ServerMessage::Redirect { location }) => return Ok(SessionEnd::Redirect(location)),
                Incoming::Message(ServerMessage::Ping { .. }) => {
                    ws.send(Message::text(signaling::pong_message(None).to_string()))
                        .await
                        .map_err(ws_err)?;
                }
                Incoming::Message(other) => tracing::debug!(?other, "signaling message before offer"),
                Incoming::Closed(CloseKind::Normal { reason }) => return Ok(SessionEnd::ClosedNormally(reason)),
                Incoming::Closed(CloseKind::Error { code, reason }) => {
                    return Err(SoraError::ClosedWithError { code, reason });
                }
                Incoming::Ignored => {}
            }
        };
        tracing::info!(connection_id = %offer.connection_id, ice_servers = offer.ice_servers.len(), "offer received");
        // The offer decides: layers when it asks to receive rids (whatever `connect` said, as
        // libwebrtc answers), one stream otherwise.
        let rids = recv_rids(&offer.sdp);
        match (self.config.connect.simulcast, rids.is_empty()) {
            (true, true) => tracing::warn!("simulcast was asked for but the offer has no rids; publishing one stream"),
            (false, false) => tracing::info!(?rids, "the offer asks for simulcast layers; sending them"),
            _ => {}
        }
        let estimate = if rids.is_empty() {
            self.config.estimate.clone()
        } else {
            self.config.simulcast.path().clone()
        };

        let (peer_tx, mut peer_rx) = mpsc::channel(64);
        let metrics = self.metrics.clone();
        let peer = SendPeer::new(
            &PeerOptions {
                codec: self.config.connect.codec,
                ice_servers: offer
                    .ice_servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone(),
                        credential: s.credential.clone(),
                    })
                    .collect(),
                relay_only: offer.relay_only,
                udp_addrs: self.config.udp_addrs.clone(),
                public_ips: self.config.public_ips.clone(),
                audio: self.config.connect.audio,
                link: self.config.link,
                bitrate: self.config.bitrate,
                estimate,
                rids: rids.clone(),
                layer_keyframes: self.config.simulcast.clone(),
            },
            peer_tx,
            self.keyframes.clone(),
            move || metrics.keyframe_requests.with_label_values(&[PUBLISHER]).inc(),
        )
        .await?;
        let result = self
            .media_session(
                &url,
                &mut ws,
                &peer,
                &mut peer_rx,
                &offer,
                inputs,
                retry,
                connect_deadline,
            )
            .await;
        if peer.is_simulcast() {
            self.config.simulcast.stop();
        }
        peer.close().await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn media_session(
        &self,
        url: &str,
        ws: &mut Ws,
        peer: &SendPeer,
        peer_rx: &mut mpsc::Receiver<PeerEvent>,
        offer: &signaling::Offer,
        inputs: &mut PublisherInputs,
        retry: &mut Retry,
        connect_deadline: tokio::time::Instant,
    ) -> Result<SessionEnd, SoraError> {
        let ws_err = |e: tokio_tungstenite::tungstenite::Error| SoraError::WebSocket {
            url: url.to_owned(),
            detail: e.to_string(),
        };
        let answer = peer.answer(offer.sdp.clone()).await?;
        let rids: Vec<String> = peer
            .streams()
            .into_iter()
            .filter_map(|s| s.rid.map(|r| r.to_string()))
            .collect();
        let mut encodings = None;
        if !rids.is_empty() {
            let layers = layer_encodings(&rids, offer.encodings.as_deref());
            tracing::info!(?layers, "sending simulcast layers");
            self.config.simulcast.start(layers.clone());
            encodings = Some(layers);
        }
        ws.send(Message::text(signaling::answer_message(&answer).to_string()))
            .await
            .map_err(ws_err)?;

        let mut link = LinkWatch::new(self.config.link.disconnect_grace);
        let mut held_audio = AudioDelay::default();
        let mut created = false;
        let mut live = false;
        let connect_timer = tokio::time::sleep_until(connect_deadline);
        tokio::pin!(connect_timer);
        loop {
            if !live && link.is_up() && created {
                live = true;
                retry.reset();
                self.keyframes.request();
                self.set_state(PublisherState::Connected);
                tracing::info!(connection_id = %offer.connection_id, "publishing to Sora");
            }
            let grace = link.deadline();
            let audio_due = held_audio.next_due();
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    say_goodbye(ws, self.config.disconnect_timeout).await;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = sleep_until_some(audio_due), if audio_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(packet) = held_audio.pop_due(now) {
                        if let Err(e) = peer.write_audio(&packet).await {
                            tracing::debug!(error = %e, "audio packet not written");
                        }
                    }
                }
                _ = &mut connect_timer, if !live => return Err(SoraError::Timeout(self.config.connect_timeout)),
                _ = sleep_until_some(grace), if grace.is_some() => {
                    tracing::warn!(grace_ms = self.config.link.disconnect_grace.as_millis() as u64, "media connection did not come back in time");
                    return Err(SoraError::PeerDown(RTCPeerConnectionState::Disconnected));
                }
                event = peer_rx.recv() => match event {
                    Some(PeerEvent::Candidate(c)) => {
                        ws.send(Message::text(signaling::candidate_message(&c.candidate).to_string())).await.map_err(ws_err)?;
                    }
                    Some(PeerEvent::Connected) => on_link_change(link.connected(tokio::time::Instant::now()), &self.keyframes),
                    Some(PeerEvent::Disconnected) => on_link_change(link.disconnected(tokio::time::Instant::now()), &self.keyframes),
                    Some(PeerEvent::GatheringComplete) => {}
                    Some(PeerEvent::Down(state)) => return Err(SoraError::PeerDown(state)),
                    None => return Err(SoraError::PeerDown(RTCPeerConnectionState::Closed)),
                },
                f = inputs.video.recv() => {
                    let Some(frame) = f else {
                        say_goodbye(ws, self.config.disconnect_timeout).await;
                        return Ok(SessionEnd::Shutdown);
                    };
                    // While the path is lost, frames are dropped and counted rather than sent into
                    // the void; a keyframe follows the recovery.
                    if !link.is_up() {
                        self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                        continue;
                    }
                    match peer.write_frame(&frame).await {
                        // Every layer of this frame suspended or rate-limited: nothing left.
                        Ok(0) => {}
                        Ok(_) => {
                            observe_sent(&self.metrics, PUBLISHER, &frame);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "frame not written");
                            self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                        }
                    }
                }
                a = inputs.audio.recv() => {
                    // Held back by the video's latency so both leave together (lip sync).
                    if let Some(packet) = a && link.is_up()
                        && let Some(early) = held_audio.push(packet, tokio::time::Instant::now(), audio_delay(&self.metrics.latency))
                        && let Err(e) = peer.write_audio(&early).await
                    {
                        tracing::debug!(error = %e, "audio packet not written");
                    }
                }
                msg = ws.next() => match self.read_server_message(url, msg)? {
                    Incoming::Message(ServerMessage::Ping { stats }) => {
                        let stats = stats.then(|| outbound_stats(&peer.streams()));
                        ws.send(Message::text(signaling::pong_message(stats).to_string())).await.map_err(ws_err)?;
                    }
                    Incoming::Message(ServerMessage::Notify { event_type, connection_id }) => {
                        if event_type == "connection.created" && connection_id.as_deref() == Some(offer.connection_id.as_str()) {
                            created = true;
                        } else {
                            tracing::debug!(%event_type, ?connection_id, "notify");
                        }
                    }
                    Incoming::Message(ServerMessage::ReOffer { sdp, encodings: new }) => {
                        let offered = recv_rids(&sdp);
                        let answer = peer.reanswer(sdp).await?;
                        if let Some(current) = &encodings {
                            let rids: Vec<String> = current.iter().map(|e| e.rid.clone()).collect();
                            if offered != rids {
                                tracing::warn!(?offered, sending = ?rids, "a re-offer cannot change the simulcast layers of a live connection; keeping them");
                            }
                            // The re-offer's settings where it has them, else the current ones,
                            // applied afresh (new layer encoders start on keyframes).
                            let layers = match new {
                                Some(new) => layer_encodings(&rids, Some(&new)),
                                None => current.clone(),
                            };
                            self.config.simulcast.start(layers.clone());
                            encodings = Some(layers);
                        }
                        ws.send(Message::text(signaling::reanswer_message(&answer).to_string())).await.map_err(ws_err)?;
                        self.keyframes.request();
                    }
                    Incoming::Message(ServerMessage::Push { data }) => tracing::info!(%data, "push from Sora"),
                    Incoming::Message(ServerMessage::Redirect { location }) => {
                        let _ = ws.close(None).await;
                        return Ok(SessionEnd::Redirect(location));
                    }
                    Incoming::Message(ServerMessage::Offer(_)) => tracing::warn!("second offer on one connection ignored"),
                    Incoming::Message(ServerMessage::Unknown { message_type }) => tracing::info!(%message_type, "unknown signaling message ignored"),
                    Incoming::Closed(CloseKind::Normal { reason }) => return Ok(SessionEnd::ClosedNormally(reason)),
                    Incoming::Closed(CloseKind::Error { code, reason }) => return Err(SoraError::ClosedWithError { code, reason }),
                    Incoming::Ignored => {}
                },
            }
        }
    }

    fn read_server_message(
        &self,
        url: &str,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Incoming, SoraError> {
        match msg {
            None => Ok(Incoming::Closed(signaling::classify_close(None, ""))),
            Some(Err(e)) => Err(SoraError::WebSocket {
                url: url.to_owned(),
                detail: e.to_string(),
            }),
            Some(Ok(Message::Text(text))) => {
                signaling::parse_server_message(&text)
                    .map(Incoming::Message)
                    .map_err(|source| SoraError::Signaling {
                        url: url.to_owned(),
                        source,
                    })
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((None, String::new()), |CloseFrame { code, reason }| {
                    (Some(u16::from(code)), reason.to_string())
                });
                let kind = signaling::classify_close(code, &reason);
                match &kind {
                    CloseKind::Normal { reason } => tracing::info!(%reason, "signaling closed normally by the server"),
                    CloseKind::Error { code, reason } => {
                        tracing::warn!(code, %reason, "signaling closed with an error by the server")
                    }
                }
                Ok(Incoming::Closed(kind))
            }
            Some(Ok(_)) => Ok(Incoming::Ignored),
        }
    }
}

enum Incoming {
    Message(ServerMessage),
    Closed(CloseKind),
    Ignored,
}

/// Opens every URL at once; the first completed handshake wins and the others are dropped
/// without a message (as the official SDKs do).
async fn race_urls(urls: &[String], per_url: Duration) -> Result<(String, Ws), SoraError> {
    let mut attempts = JoinSet::new();
    for url in urls {
        let url = url.clone();
        attempts.spawn(async move {
            let r = tokio::time::timeout(per_url, tokio_tungstenite::connect_async(url.as_str())).await;
            let r = match r {
                Ok(Ok((ws, _response))) => Ok(ws),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no handshake within {per_url:?}")),
            };
            (url, r)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = attempts.join_next().await {
        match joined {
            Ok((url, Ok(ws))) => return Ok((url, ws)),
            Ok((url, Err(e))) => {
                tracing::debug!(%url, error = %e, "signaling URL failed");
                failures.push(format!("{url}: {e}"));
            }
            Err(e) => failures.push(format!("connect task failed: {e}")),
        }
    }
    Err(SoraError::Unreachable(failures))
}

/// Sends `disconnect` and waits (bounded) for the server to close, as the SDKs do.
async fn say_goodbye(ws: &mut Ws, wait: Duration) {
    if let Err(e) = ws
        .send(Message::text(signaling::disconnect_message().to_string()))
        .await
    {
        tracing::debug!(error = %e, "sending disconnect failed");
        return;
    }
    let drained = tokio::time::timeout(wait, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                tracing::info!(?frame, "signaling closed after disconnect");
                break;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(?wait, "server did not close signaling after disconnect");
        let _ = ws.close(None).await;
    }
}

/// The encodings of the layers to send: the server's for each offered rid (in the offer's
/// order), an active default where it gave none. Encodings for rids the SDP does not offer
/// are ignored.
fn layer_encodings(rids: &[String], offered: Option<&[Encoding]>) -> Vec<Encoding> {
    let offered = offered.unwrap_or_default();
    for extra in offered.iter().filter(|e| !rids.contains(&e.rid)) {
        tracing::warn!(rid = %extra.rid, "encoding for a rid the offer's SDP does not ask for; ignored");
    }
    rids.iter()
        .map(|rid| {
            offered
                .iter()
                .find(|e| &e.rid == rid)
                .cloned()
                .unwrap_or_else(|| Encoding::new(rid.as_str()))
        })
        .collect()
}

/// The `stats` of a `pong`: one outbound-rtp entry per video stream (per simulcast layer, with
/// its rid).
fn outbound_stats(streams: &[StreamStats]) -> Value {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    streams
        .iter()
        .map(|s| {
            let mut entry = json!({
                "type": "outbound-rtp",
                "id": format!("RTCOutboundRTPVideoStream_{}", s.ssrc),
                "kind": "video",
                "ssrc": s.ssrc,
                "framesSent": s.frames_sent,
                "bytesSent": s.bytes_sent,
                "timestamp": now_ms,
            });
            if let (Some(rid), Some(obj)) = (&s.rid, entry.as_object_mut()) {
                obj.insert("rid".into(), json!(&**rid));
            }
            entry
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::codec::VideoCodec;
    use crate::publish::PublisherHandle;

    #[test]
    fn each_offered_rid_gets_the_servers_encoding_or_an_active_default_in_the_sdps_order() {
        let rids = ["r0".to_owned(), "r1".to_owned(), "r2".to_owned()];
        let mut r2 = Encoding::new("r2");
        r2.max_bitrate_bps = Some(900_000);
        let stray = Encoding::new("x9");

        let layers = layer_encodings(&rids, Some(&[r2.clone(), stray]));

        assert_eq!(layers, vec![Encoding::new("r0"), Encoding::new("r1"), r2]);
        assert_eq!(layer_encodings(&rids[..1], None), vec![Encoding::new("r0")]);
    }

    #[test]
    fn the_first_redirect_is_followed_at_once_and_later_ones_after_growing_delays() {
        let mut retry = Retry::new(5);

        let steps: Vec<RedirectStep> = (0..7).map(|_| retry.redirect(1.0)).collect();

        assert_eq!(
            steps,
            [
                RedirectStep::Now,
                RedirectStep::After(Duration::from_millis(500)),
                RedirectStep::After(Duration::from_secs(1)),
                RedirectStep::After(Duration::from_secs(2)),
                RedirectStep::After(Duration::from_secs(4)),
                RedirectStep::GiveUp(6),
                RedirectStep::Now,
            ]
        );
        // The error after giving up waits longer still: the backoff was not reset.
        assert_eq!(retry.backoff.next_delay(1.0), Duration::from_secs(8));
    }

    #[test]
    fn publishing_forgets_past_redirects() {
        let mut retry = Retry::new(2);
        retry.redirect(1.0);
        retry.redirect(1.0);

        retry.reset();

        assert_eq!(retry.redirect(1.0), RedirectStep::Now);
        assert_eq!(retry.redirect(1.0), RedirectStep::After(Duration::from_millis(500)));
    }

    /// A signaling server that answers every `connect` with a redirect to itself; counts them.
    async fn redirect_loop_server() -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/signaling", listener.local_addr().unwrap());
        let connects = Arc::new(AtomicU32::new(0));
        let (location, count) = (url.clone(), Arc::clone(&connects));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (location, count) = (location.clone(), Arc::clone(&count));
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    if let Some(Ok(Message::Text(_connect))) = ws.next().await {
                        count.fetch_add(1, Ordering::SeqCst);
                        let redirect = json!({"type": "redirect", "location": location}).to_string();
                        let _ = ws.send(Message::text(redirect)).await;
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        (url, connects)
    }

    #[tokio::test(start_paused = true)]
    async fn a_redirect_loop_is_bounded_and_backed_off() {
        let (url, connects) = redirect_loop_server().await;
        let mut config = SoraConfig::new(
            vec![url],
            ConnectOptions {
                channel_id: "loop".into(),
                client_id: None,
                bundle_id: None,
                metadata: None,
                signaling_notify_metadata: None,
                codec: VideoCodec::Vp8,
                bitrate_kbps: 500,
                audio: false,
                simulcast: false,
            },
        );
        // Only the backoff may pace this test's virtual clock.
        config.url_timeout = Duration::from_secs(3600);
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let (_handle, inputs) = PublisherHandle::new(PUBLISHER, metrics.clone());
        let publisher =
            SoraPublisher::new(config, metrics.clone(), KeyframeRequest::default(), shutdown.clone()).unwrap();
        let task = tokio::spawn(publisher.run(inputs));

        tokio::time::sleep(Duration::from_secs(10)).await;
        let seen = connects.load(Ordering::SeqCst);
        shutdown.cancel();
        task.await.unwrap();

        // 1 + 5 followed redirects, then the loop is an error waiting 4-8 s (and its retry is
        // redirected once more at once): 6 to 8 connections in 10 s, where it used to be
        // thousands.
        assert!((6..=8).contains(&seen), "{seen} connections in 10 s");
        let errors = metrics
            .publisher_errors
            .with_label_values(&[PUBLISHER, "redirect_loop"])
            .get();
        assert_eq!(errors, 1);
        let reconnects = metrics.publisher_reconnects.with_label_values(&[PUBLISHER]).get();
        // Every connection after the first was a counted reconnect (the last may be counted
        // and still connecting when the test stops).
        assert!(
            (u64::from(seen) - 1..=u64::from(seen)).contains(&reconnects),
            "{reconnects} reconnects"
        );
    }
}
