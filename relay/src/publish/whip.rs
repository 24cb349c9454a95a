//! The WHIP publisher (RFC 9725): POST an SDP offer with a Bearer token, get 201 + Location and
//! the answer, DELETE the resource on stop. Reconnects with backoff after errors.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

use super::backoff::Backoff;
use super::peer::{PeerError, PeerEvent, PeerOptions, SendPeer};
use super::{KeyframeRequest, PublisherInputs, PublisherState, observe_sent, retry_after_error};
use crate::codec::VideoCodec;
use crate::metrics::{DropReason, Metrics};

/// The metric label of this publisher.
pub const PUBLISHER: &str = "whip";

/// WHIP publisher settings.
#[derive(Clone, Debug)]
pub struct WhipConfig {
    /// The WHIP endpoint, e.g. `https://<host of sora_url>/whip/<channel_id>`.
    pub url: String,
    /// Bearer token, if the endpoint wants one.
    pub token: Option<String>,
    /// The video codec to offer.
    pub codec: VideoCodec,
    /// STUN/TURN servers for the peer.
    pub ice_servers: Vec<RTCIceServer>,
    /// Local UDP sockets.
    pub udp_addrs: Vec<String>,
    /// Addresses to advertise instead of the bound ones.
    pub public_ips: Vec<String>,
    /// Whether the browser's audio is forwarded.
    pub audio: bool,
    /// Limit for one HTTP request.
    pub request_timeout: Duration,
    /// Limit from the POST until media flows.
    pub connect_timeout: Duration,
}

impl WhipConfig {
    /// Settings with the usual timeouts.
    pub fn new(url: String, token: Option<String>, codec: VideoCodec) -> Self {
        Self {
            url,
            token,
            codec,
            ice_servers: Vec::new(),
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            public_ips: Vec::new(),
            audio: false,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a WHIP session ended.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    /// Configuration that can never work.
    #[error("invalid WHIP configuration: {0}")]
    Config(String),
    /// The HTTP request failed (unreachable, timeout, TLS).
    #[error("WHIP {method} {url} failed: {detail}")]
    Http {
        method: &'static str,
        url: String,
        detail: String,
    },
    /// The endpoint answered with an unexpected status.
    #[error("WHIP {method} {url} answered {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: StatusCode,
        body: String,
    },
    /// 201 without a Location header.
    #[error("WHIP endpoint {0} answered 201 without a Location header")]
    NoLocation(String),
    /// The media connection could not be set up.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The media connection went down.
    #[error("media connection {0}")]
    PeerDown(RTCPeerConnectionState),
    /// Not connected in time.
    #[error("not publishing within {0:?} of posting the offer")]
    Timeout(Duration),
}

impl WhipError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WhipError::Config(_) => "config",
            WhipError::Http { .. } => "http",
            WhipError::Status { .. } => "status",
            WhipError::NoLocation(_) => "no_location",
            WhipError::Peer(_) => "peer",
            WhipError::PeerDown(_) => "peer_down",
            WhipError::Timeout(_) => "timeout",
        }
    }
}

/// Publishes encoded frames to a WHIP endpoint until shut down.
pub struct WhipPublisher {
    config: WhipConfig,
    url: url::Url,
    http: reqwest::Client,
    metrics: Metrics,
    keyframes: KeyframeRequest,
    shutdown: CancellationToken,
}

impl WhipPublisher {
    /// Validates the configuration.
    pub fn new(
        config: WhipConfig,
        metrics: Metrics,
        keyframes: KeyframeRequest,
        shutdown: CancellationToken,
    ) -> Result<Self, WhipError> {
        let url = url::Url::parse(&config.url).map_err(|e| WhipError::Config(format!("URL {:?}: {e}", config.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WhipError::Config(format!(
                "URL {:?} must be http:// or https://",
                config.url
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| WhipError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            config,
            url,
            http,
            metrics,
            keyframes,
            shutdown,
        })
    }

    fn set_state(&self, state: PublisherState) {
        self.metrics.set_publisher_state(PUBLISHER, state);
    }

    /// Runs until shutdown, reconnecting after errors.
    pub async fn run(self, mut inputs: PublisherInputs) {
        let mut backoff = Backoff::default();
        loop {
            self.set_state(PublisherState::Connecting);
            match self.session(&mut inputs, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    let kind = e.kind();
                    let retry = retry_after_error(
                        PUBLISHER,
                        &e,
                        kind,
                        &mut backoff,
                        &mut inputs,
                        &self.metrics,
                        &self.shutdown,
                    )
                    .await;
                    if !retry {
                        break;
                    }
                }
            }
        }
        self.set_state(PublisherState::Stopped);
        inputs.close();
    }

    /// One offer/answer exchange and the media that follows. `Ok` means shutdown.
    async fn session(&self, inputs: &mut PublisherInputs, backoff: &mut Backoff) -> Result<(), WhipError> {
        let (peer_tx, mut peer_rx) = mpsc::channel(64);
        let metrics = self.metrics.clone();
        let peer = SendPeer::new(
            &PeerOptions {
                codec: self.config.codec,
                ice_servers: self.config.ice_servers.clone(),
                relay_only: false,
                udp_addrs: self.config.udp_addrs.clone(),
                public_ips: self.config.public_ips.clone(),
                audio: self.config.audio,
            },
            peer_tx,
            self.keyframes.clone(),
            move || metrics.keyframe_requests.with_label_values(&[PUBLISHER]).inc(),
        )
        .await?;
        let result = self.media_session(&peer, &mut peer_rx, inputs, backoff).await;
        peer.close().await;
        result
    }

    async fn media_session(
        &self,
        peer: &SendPeer,
        peer_rx: &mut mpsc::Receiver<PeerEvent>,
        inputs: &mut PublisherInputs,
        backoff: &mut Backoff,
    ) -> Result<(), WhipError> {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        peer.offer().await?;
        // WHIP without trickle: the offer carries every candidate, so wait for gathering.
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => return Err(PeerError::GatheringTimeout(self.config.connect_timeout).into()),
                e = peer_rx.recv() => match e {
                    Some(PeerEvent::GatheringComplete) => break,
                    Some(PeerEvent::Down(state)) => return Err(WhipError::PeerDown(state)),
                    Some(_) => {}
                    None => return Err(WhipError::PeerDown(RTCPeerConnectionState::Closed)),
                },
                f = inputs.video.recv() => if f.is_some() { self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected) },
                _ = inputs.audio.recv() => {}
            }
        }
        let offer = peer.local_sdp().await.unwrap_or_default();
        let (resource, answer) = self.post_offer(offer).await?;
        tracing::info!(%resource, "WHIP session created");
        let result = self.stream(peer, peer_rx, inputs, backoff, answer, deadline).await;
        self.delete(&resource).await;
        result
    }

    async fn stream(
        &self,
        peer: &SendPeer,
        peer_rx: &mut mpsc::Receiver<PeerEvent>,
        inputs: &mut PublisherInputs,
        backoff: &mut Backoff,
        answer: String,
        deadline: tokio::time::Instant,
    ) -> Result<(), WhipError> {
        peer.set_answer(answer).await?;
        let mut live = false;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = &mut timer, if !live => return Err(WhipError::Timeout(self.config.connect_timeout)),
                e = peer_rx.recv() => match e {
                    Some(PeerEvent::Connected) => {
                        live = true;
                        backoff.reset();
                        self.keyframes.request();
                        self.set_state(PublisherState::Connected);
                        tracing::info!("publishing over WHIP");
                    }
                    Some(PeerEvent::Down(state)) => return Err(WhipError::PeerDown(state)),
                    Some(_) => {}
                    None => return Err(WhipError::PeerDown(RTCPeerConnectionState::Closed)),
                },
                a = inputs.audio.recv() => {
                    if let Some(packet) = a && live && let Err(e) = peer.write_audio(&packet).await {
                        tracing::debug!(error = %e, "audio packet not written");
                    }
                }
                f = inputs.video.recv() => {
                    let Some(frame) = f else { return Ok(()) };
                    if !live {
                        self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                        continue;
                    }
                    match peer.write_frame(&frame).await {
                        Ok(()) => observe_sent(&self.metrics, PUBLISHER, &frame),
                        Err(e) => {
                            tracing::debug!(error = %e, "frame not written");
                            self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                        }
                    }
                }
            }
        }
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(token) => req.header(AUTHORIZATION, format!("Bearer {token}")),
            None => req,
        }
    }

    /// POSTs the offer; returns the resource URL and the answer SDP.
    async fn post_offer(&self, offer: String) -> Result<(url::Url, String), WhipError> {
        let http_err = |e: reqwest::Error| WhipError::Http {
            method: "POST",
            url: self.config.url.clone(),
            detail: e.to_string(),
        };
        let response = self
            .authorized(self.http.post(self.url.clone()))
            .header(CONTENT_TYPE, "application/sdp")
            .body(offer)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await.map_err(http_err)?;
        if status != StatusCode::CREATED {
            return Err(WhipError::Status {
                method: "POST",
                url: self.config.url.clone(),
                status,
                body: body.chars().take(500).collect(),
            });
        }
        let location = location.ok_or_else(|| WhipError::NoLocation(self.config.url.clone()))?;
        let resource = self
            .url
            .join(&location)
            .map_err(|e| WhipError::Config(format!("Location {location:?} is not a URL: {e}")))?;
        Ok((resource, body))
    }

    /// Ends the session at the endpoint; failures are logged (the endpoint times it out anyway).
    async fn delete(&self, resource: &url::Url) {
        match self.authorized(self.http.delete(resource.clone())).send().await {
            Ok(r) if r.status().is_success() => tracing::info!(%resource, "WHIP session deleted"),
            Ok(r) => tracing::warn!(%resource, status = %r.status(), "WHIP DELETE refused"),
            Err(e) => tracing::warn!(%resource, error = %e, "WHIP DELETE failed"),
        }
    }
}
