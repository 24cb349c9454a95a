//! The WHIP publisher (RFC 9725): POST an SDP offer with a Bearer token, get 201 + Location and
//! the answer, DELETE the resource on stop. Reconnects with backoff after errors.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

use super::backoff::Backoff;
use super::congestion::{BitrateEstimate, BitrateLimits};
use super::lipsync::{AudioDelay, audio_delay};
use super::peer::{
    LinkTiming, LinkWatch, PeerError, PeerEvent, PeerOptions, SendPeer, on_link_change, sleep_until_some,
};
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
    /// ICE timers and the grace a `disconnected` media connection gets.
    pub link: LinkTiming,
    /// The range congestion control keeps the bitrate within.
    pub bitrate: BitrateLimits,
    /// Where the connection's estimate of its path goes (the encoder follows it).
    pub estimate: BitrateEstimate,
}

/// The largest SDP answer taken from an endpoint (a real one is a few KiB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How much of an error response's body is read, for the message.
pub const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;

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
            link: LinkTiming::default(),
            bitrate: BitrateLimits::fixed_kbps(1000),
            estimate: BitrateEstimate::default(),
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
    /// 201 without a usable Location header.
    #[error("WHIP endpoint {url} answered 201 without a usable Location header: {detail}")]
    NoLocation { url: String, detail: String },
    /// The answer is larger than [`MAX_ANSWER_BYTES`].
    #[error("WHIP endpoint {url} answered with more than {limit} bytes of SDP; refused")]
    AnswerTooLarge { url: String, limit: usize },
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
            WhipError::NoLocation { .. } => "no_location",
            WhipError::AnswerTooLarge { .. } => "answer_too_large",
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
                link: self.config.link,
                bitrate: self.config.bitrate,
                estimate: self.config.estimate.clone(),
                rids: Vec::new(),
                layer_keyframes: Default::default(),
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
                f = inputs.video.recv() => match f {
                    Some(_) => self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected),
                    // A closed input (the pipeline ended) would be ready forever: stop instead.
                    None => return Ok(()),
                },
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
        let mut link = LinkWatch::new(self.config.link.disconnect_grace);
        let mut held_audio = AudioDelay::default();
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            let grace = link.deadline();
            let audio_due = held_audio.next_due();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = sleep_until_some(audio_due), if audio_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(packet) = held_audio.pop_due(now) {
                        if let Err(e) = peer.write_audio(&packet).await {
                            tracing::debug!(error = %e, "audio packet not written");
                        }
                    }
                }
                _ = &mut timer, if !live => return Err(WhipError::Timeout(self.config.connect_timeout)),
                _ = sleep_until_some(grace), if grace.is_some() => {
                    tracing::warn!(grace_ms = self.config.link.disconnect_grace.as_millis() as u64, "media connection did not come back in time");
                    return Err(WhipError::PeerDown(RTCPeerConnectionState::Disconnected));
                }
                e = peer_rx.recv() => match e {
                    Some(PeerEvent::Connected) if !live => {
                        link.connected(tokio::time::Instant::now());
                        live = true;
                        backoff.reset();
                        self.keyframes.request();
                        self.set_state(PublisherState::Connected);
                        tracing::info!("publishing over WHIP");
                    }
                    Some(PeerEvent::Connected) => on_link_change(link.connected(tokio::time::Instant::now()), &self.keyframes),
                    Some(PeerEvent::Disconnected) => on_link_change(link.disconnected(tokio::time::Instant::now()), &self.keyframes),
                    Some(PeerEvent::Down(state)) => return Err(WhipError::PeerDown(state)),
                    Some(_) => {}
                    None => return Err(WhipError::PeerDown(RTCPeerConnectionState::Closed)),
                },
                a = inputs.audio.recv() => {
                    // Held back by the video's latency so both leave together (lip sync).
                    if let Some(packet) = a && link.is_up()
                        && let Some(early) = held_audio.push(packet, tokio::time::Instant::now(), audio_delay(&self.metrics.latency))
                        && let Err(e) = peer.write_audio(&early).await
                    {
                        tracing::debug!(error = %e, "audio packet not written");
                    }
                }
                f = inputs.video.recv() => {
                    let Some(frame) = f else { return Ok(()) };
                    // While the path is lost, frames are dropped and counted; a keyframe follows
                    // the recovery.
                    if !link.is_up() {
                        self.metrics.drop_frame(PUBLISHER, DropReason::PublisherDisconnected);
                        continue;
                    }
                    match peer.write_frame(&frame).await {
                        Ok(_) => observe_sent(&self.metrics, PUBLISHER, &frame),
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
        if status != StatusCode::CREATED {
            let body = error_excerpt(response).await;
            return Err(WhipError::Status {
                method: "POST",
                url: self.config.url.clone(),
                status,
                body,
            });
        }
        let resource =
            resource_url(&self.url, response.headers().get(LOCATION).map(|v| v.as_bytes())).map_err(|detail| {
                WhipError::NoLocation {
                    url: self.config.url.clone(),
                    detail,
                }
            })?;
        let answer = match read_capped(response, MAX_ANSWER_BYTES).await.map_err(http_err)? {
            Capped::Whole(bytes) => answer_sdp(bytes).map_err(|detail| WhipError::Http {
                method: "POST",
                url: self.config.url.clone(),
                detail,
            })?,
            Capped::Over => {
                return Err(WhipError::AnswerTooLarge {
                    url: self.config.url.clone(),
                    limit: MAX_ANSWER_BYTES,
                });
            }
        };
        Ok((resource, answer))
    }

    /// Ends the session at the endpoint; failures are logged (the endpoint times it out anyway).
    async fn delete(&self, resource: &url::Url) {
        match self.authorized(self.http.delete(resource.clone())).send().await {
            Ok(r) if r.status().is_success() => tracing::info!(%resource, "WHIP session deleted"),
            Ok(r) => {
                let status = r.status();
                let body = error_excerpt(r).await;
                tracing::warn!(%resource, %status, %body, "WHIP DELETE refused");
            }
            Err(e) => tracing::warn!(%resource, error = %e, "WHIP DELETE failed"),
        }
    }
}

/// A body read up to a limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Capped {
    /// All of it.
    Whole(Vec<u8>),
    /// More than the limit (the rest was not read).
    Over,
}

/// Reads at most `limit` bytes of `response`'s body, chunk by chunk: a body that declares or
/// turns out longer is not read further.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Capped, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Capped::Over);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Capped::Over);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body))
}

/// The first [`MAX_ERROR_BODY_BYTES`] of an error response's body, as text for a message.
async fn error_excerpt(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    return format!("{}…", String::from_utf8_lossy(&body));
                }
            }
            Ok(None) => return String::from_utf8_lossy(&body).into_owned(),
            Err(e) => return format!("{} (body unreadable: {e})", String::from_utf8_lossy(&body)),
        }
    }
}

/// The session resource from a 201's `Location` (RFC 9725 §4.2), resolved against the endpoint.
pub fn resource_url(endpoint: &url::Url, location: Option<&[u8]>) -> Result<url::Url, String> {
    let location = location.ok_or_else(|| "it is missing".to_owned())?;
    let location = std::str::from_utf8(location).map_err(|_| "it is not UTF-8".to_owned())?;
    if location.trim().is_empty() {
        return Err("it is empty".to_owned());
    }
    let resource = endpoint
        .join(location.trim())
        .map_err(|e| format!("{location:?} is not a URL: {e}"))?;
    if !matches!(resource.scheme(), "http" | "https") {
        return Err(format!("{location:?} is not an http(s) URL"));
    }
    Ok(resource)
}

/// The SDP answer of a 201 body: UTF-8 text that starts like SDP.
pub fn answer_sdp(body: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(body).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    if !text.trim_start().starts_with("v=0") {
        let excerpt: String = text.chars().take(80).collect();
        return Err(format!("the answer is not SDP (no v=0 line): {excerpt:?}"));
    }
    Ok(text)
}

/// Fuzz entry point: a `Location` header and a 201 body as an endpoint may send them, split at
/// the first zero byte. Never a panic; what is accepted is an http(s) resource and SDP text.
pub fn fuzz_created_response(data: &[u8]) {
    let (location, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let endpoint = url::Url::parse("https://sfu.example/whip/channel").expect("a valid literal URL");
    if let Ok(resource) = resource_url(&endpoint, Some(location)) {
        assert!(matches!(resource.scheme(), "http" | "https"), "{resource}");
    }
    if let Ok(sdp) = answer_sdp(body.to_vec()) {
        assert!(sdp.trim_start().starts_with("v=0"));
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Response, StatusCode as Http};
    use axum::routing::post;
    use bytes::Bytes;

    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    /// An endless body: reading it whole would never end (and never stop growing).
    fn endless() -> Body {
        Body::from_stream(futures_util::stream::repeat_with(|| {
            Ok::<_, Infallible>(Bytes::from(vec![b'x'; 16 * 1024]))
        }))
    }

    async fn endpoint() -> String {
        let app = Router::new()
            .route(
                "/ok",
                post(|| async {
                    Response::builder()
                        .status(Http::CREATED)
                        .header("location", "/resource/1")
                        .body(Body::from(ANSWER))
                        .unwrap()
                }),
            )
            .route(
                "/huge-answer",
                post(|| async {
                    Response::builder()
                        .status(Http::CREATED)
                        .header("location", "/resource/1")
                        .body(Body::from(format!("{ANSWER}{}", "a=x\r\n".repeat(20_000))))
                        .unwrap()
                }),
            )
            .route(
                "/endless-answer",
                post(|| async {
                    Response::builder()
                        .status(Http::CREATED)
                        .header("location", "/resource/1")
                        .body(endless())
                        .unwrap()
                }),
            )
            .route(
                "/endless-error",
                post(|| async { Response::builder().status(Http::BAD_GATEWAY).body(endless()).unwrap() }),
            )
            .route(
                "/no-location",
                post(|| async {
                    Response::builder()
                        .status(Http::CREATED)
                        .body(Body::from(ANSWER))
                        .unwrap()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn publisher(url: String) -> WhipPublisher {
        WhipPublisher::new(
            WhipConfig::new(url, None, VideoCodec::Vp8),
            Metrics::new(),
            KeyframeRequest::default(),
            CancellationToken::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_created_answer_is_taken_with_its_resolved_location() {
        let base = endpoint().await;

        let (resource, answer) = publisher(format!("{base}/ok")).post_offer("v=0".into()).await.unwrap();

        assert_eq!(resource.as_str(), format!("{base}/resource/1"));
        assert_eq!(answer, ANSWER);
    }

    #[tokio::test]
    async fn an_answer_over_64_kib_is_refused_with_a_clear_error() {
        let base = endpoint().await;
        for path in ["huge-answer", "endless-answer"] {
            let url = format!("{base}/{path}");

            let err = publisher(url.clone()).post_offer("v=0".into()).await.unwrap_err();

            assert_eq!(
                err.to_string(),
                format!("WHIP endpoint {url} answered with more than 65536 bytes of SDP; refused")
            );
            assert_eq!(err.kind(), "answer_too_large");
        }
    }

    #[tokio::test]
    async fn only_the_first_4_kib_of_an_endless_error_body_is_read() {
        let base = endpoint().await;

        let err = publisher(format!("{base}/endless-error"))
            .post_offer("v=0".into())
            .await
            .unwrap_err();

        let WhipError::Status { status, body, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body, format!("{}…", "x".repeat(MAX_ERROR_BODY_BYTES)));
    }

    #[tokio::test]
    async fn a_201_without_location_names_what_is_missing() {
        let base = endpoint().await;
        let url = format!("{base}/no-location");

        let err = publisher(url.clone()).post_offer("v=0".into()).await.unwrap_err();

        assert_eq!(
            err.to_string(),
            format!("WHIP endpoint {url} answered 201 without a usable Location header: it is missing")
        );
    }

    #[test]
    fn locations_resolve_against_the_endpoint_and_must_stay_http() {
        let endpoint = url::Url::parse("https://sfu.example/whip/ch").unwrap();
        let resolve = |l: &str| resource_url(&endpoint, Some(l.as_bytes()));

        assert_eq!(
            resolve("/whip/ch/abc").unwrap().as_str(),
            "https://sfu.example/whip/ch/abc"
        );
        assert_eq!(resolve("abc").unwrap().as_str(), "https://sfu.example/whip/abc");
        assert_eq!(
            resolve("https://other.example/r").unwrap().as_str(),
            "https://other.example/r"
        );
        assert_eq!(resolve("  ").unwrap_err(), "it is empty");
        assert_eq!(
            resolve("javascript:alert(1)").unwrap_err(),
            "\"javascript:alert(1)\" is not an http(s) URL"
        );
        assert_eq!(
            resource_url(&endpoint, Some(&[0xff, 0xfe])).unwrap_err(),
            "it is not UTF-8"
        );
    }

    #[test]
    fn an_answer_that_is_not_sdp_is_named_as_such() {
        assert_eq!(
            answer_sdp(b"<html>oops</html>".to_vec()).unwrap_err(),
            "the answer is not SDP (no v=0 line): \"<html>oops</html>\""
        );
        assert!(
            answer_sdp(vec![0xc3, 0x28])
                .unwrap_err()
                .starts_with("the answer is not UTF-8")
        );
        assert_eq!(answer_sdp(ANSWER.as_bytes().to_vec()).unwrap(), ANSWER);
    }
}
