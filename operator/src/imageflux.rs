//! The ImageFlux Live Streaming HTTP API: one `POST /` per call, the operation named by the
//! `X-Sora-Target` header, the API token as a bearer token.

use std::time::Duration;

use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crd::HlsCodec;

/// The public API endpoint.
pub const DEFAULT_BASE_URL: &str = "https://live-api.imageflux.jp/";

/// `X-Sora-Target` values.
pub mod target {
    /// Creates a channel without HLS.
    pub const CREATE_CHANNEL: &str = "ImageFlux_20200316.CreateMultistreamChannel";
    /// Creates a channel with HLS renditions.
    pub const CREATE_CHANNEL_WITH_HLS: &str = "ImageFlux_20200316.CreateMultistreamChannelWithHLS";
    /// Lists a channel's HLS playlists (available once publishing started).
    pub const LIST_PLAYLIST_URLS: &str = "ImageFlux_20200207.ListPlaylistURLs";
    /// Deletes a channel: disconnects clients, stops HLS, stops billing.
    pub const DELETE_CHANNEL: &str = "ImageFlux_20180501.DeleteChannel";
    /// Lists the account's channels.
    pub const LIST_CHANNEL_IDS: &str = "ImageFlux_20200729.ListChannelIDs";
}

/// What went wrong with a call; the status and body are kept so a condition can show them.
#[derive(Debug, thiserror::Error)]
pub enum ImageFluxError {
    /// The API answered with a non-2xx status (or a 2xx `{"ok": false}`).
    #[error("{target}: HTTP {status}: {body}")]
    Api {
        /// The `X-Sora-Target`.
        target: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The response body, truncated.
        body: String,
    },
    /// No answer (DNS, connect, TLS, timeout).
    #[error("{target}: {source}")]
    Transport {
        /// The `X-Sora-Target`.
        target: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not the documented JSON.
    #[error("{target}: unexpected response ({detail}): {body}")]
    Decode {
        /// The `X-Sora-Target`.
        target: &'static str,
        /// What was wrong.
        detail: String,
        /// The response body, truncated.
        body: String,
    },
}

impl ImageFluxError {
    /// The HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying soon may help (server errors, throttling, no answer); a 4xx needs a
    /// person (wrong token, bad request) and is retried only with a long backoff.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Self::Transport { .. } => true,
            Self::Decode { .. } => false,
        }
    }

    /// The `result` label of the calls counter.
    fn result_label(&self) -> &'static str {
        match self {
            Self::Api { status, .. } if *status >= 500 => "server_error",
            Self::Api { .. } => "client_error",
            Self::Transport { .. } => "transport_error",
            Self::Decode { .. } => "decode_error",
        }
    }
}

/// One HLS rendition, in the API's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HlsRenditionRequest {
    /// Segment length in seconds.
    pub duration_seconds: u32,
    /// Where playback starts relative to the live edge, in seconds.
    pub start_time_offset: i32,
    /// The video settings.
    pub video: HlsVideo,
    /// The audio settings.
    pub audio: HlsAudio,
}

/// Video of one HLS rendition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HlsVideo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Bitrate in bit/s.
    pub bps: u32,
    /// `h264_high`, `h264_main` or `h264_baseline`.
    pub codec: &'static str,
}

/// Audio of one HLS rendition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HlsAudio {
    /// Bitrate in bit/s.
    pub bps: u32,
}

impl HlsVideo {
    /// The video part of a rendition.
    pub fn new(width: u32, height: u32, fps: u32, bps: u32, codec: HlsCodec) -> Self {
        Self {
            width,
            height,
            fps,
            bps,
            codec: codec.as_str(),
        }
    }
}

/// What CreateMultistreamChannel(WithHLS) answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CreatedChannel {
    /// The new channel's id.
    pub channel_id: String,
    /// Its Sora signaling URL (one string, not a list).
    pub sora_url: String,
}

/// One HLS playlist of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PlaylistUrl {
    /// The publishing connection.
    #[serde(default)]
    pub connection_id: String,
    /// The `.m3u8` URL.
    pub playlist_url: String,
}

/// How a DeleteChannel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The channel was deleted now.
    Deleted,
    /// It did not exist (deleted before, by us or by hand): the goal is reached all the same.
    AlreadyGone,
}

/// A client for one API endpoint.
#[derive(Clone)]
pub struct ImageFluxClient {
    http: reqwest::Client,
    base_url: String,
    calls: Option<IntCounterVec>,
}

const BODY_LIMIT: usize = 2048;

impl ImageFluxClient {
    /// A client for `base_url` (e.g. [`DEFAULT_BASE_URL`]); `calls` counts each call by target
    /// and result.
    pub fn new(base_url: impl Into<String>, calls: Option<IntCounterVec>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("livefilter-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.into(),
            calls,
        })
    }

    /// Creates a channel; with renditions, CreateMultistreamChannelWithHLS.
    pub async fn create_channel(
        &self,
        token: &str,
        hls: &[HlsRenditionRequest],
    ) -> Result<CreatedChannel, ImageFluxError> {
        let (target, body) = if hls.is_empty() {
            (target::CREATE_CHANNEL, json!({}))
        } else {
            (target::CREATE_CHANNEL_WITH_HLS, json!({ "hls": hls }))
        };
        let (_, text) = self.call(target, token, &body).await?;
        decode(target, &text)
    }

    /// The channel's HLS playlists; empty until publishing has started.
    pub async fn list_playlist_urls(&self, token: &str, channel_id: &str) -> Result<Vec<PlaylistUrl>, ImageFluxError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            hls: Vec<PlaylistUrl>,
        }
        let target = target::LIST_PLAYLIST_URLS;
        let (_, text) = self.call(target, token, &json!({ "channel_id": channel_id })).await?;
        Ok(decode::<Answer>(target, &text)?.hls)
    }

    /// Deletes a channel; a channel that does not exist counts as deleted.
    pub async fn delete_channel(&self, token: &str, channel_id: &str) -> Result<Deleted, ImageFluxError> {
        let target = target::DELETE_CHANNEL;
        match self.call(target, token, &json!({ "channel_id": channel_id })).await {
            Ok(_) => Ok(Deleted::Deleted),
            Err(e) if is_not_found(&e) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// The account's channel ids.
    pub async fn list_channel_ids(&self, token: &str) -> Result<Vec<String>, ImageFluxError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            channel_ids: Vec<String>,
        }
        let target = target::LIST_CHANNEL_IDS;
        let (_, text) = self.call(target, token, &json!({})).await?;
        Ok(decode::<Answer>(target, &text)?.channel_ids)
    }

    async fn call(&self, target: &'static str, token: &str, body: &Value) -> Result<(u16, String), ImageFluxError> {
        let result = self.call_uncounted(target, token, body).await;
        if let Some(calls) = &self.calls {
            let label = match &result {
                Ok(_) => "ok",
                Err(e) if is_not_found(e) => "not_found",
                Err(e) => e.result_label(),
            };
            calls.with_label_values(&[target, label]).inc();
        }
        result
    }

    async fn call_uncounted(
        &self,
        target: &'static str,
        token: &str,
        body: &Value,
    ) -> Result<(u16, String), ImageFluxError> {
        let response = self
            .http
            .post(&self.base_url)
            .header("X-Sora-Target", target)
            .bearer_auth(token.trim())
            .json(body)
            .send()
            .await
            .map_err(|source| ImageFluxError::Transport { target, source })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|source| ImageFluxError::Transport { target, source })?;
        if !(200..300).contains(&status) {
            return Err(ImageFluxError::Api {
                target,
                status,
                body: truncate(&text),
            });
        }
        // Some deployments answer 200 with {"ok": false, "error": "..."}; that is a failure too.
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text)
            && map.get("ok") == Some(&Value::Bool(false))
        {
            return Err(ImageFluxError::Api {
                target,
                status,
                body: truncate(&text),
            });
        }
        Ok((status, text))
    }
}

fn decode<T: serde::de::DeserializeOwned>(target: &'static str, text: &str) -> Result<T, ImageFluxError> {
    serde_json::from_str(text).map_err(|e| ImageFluxError::Decode {
        target,
        detail: e.to_string(),
        body: truncate(text),
    })
}

/// "Already gone": a 404, or an error body saying the channel does not exist (the API's error
/// format is undocumented, so the wording is matched loosely).
fn is_not_found(e: &ImageFluxError) -> bool {
    match e {
        ImageFluxError::Api { status: 404, .. } => true,
        ImageFluxError::Api { status, body, .. } if *status < 500 => {
            let b = body.to_ascii_lowercase();
            b.contains("not found") || b.contains("not_found") || b.contains("notfound") || b.contains("not exist")
        }
        _ => false,
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= BODY_LIMIT {
        return text.to_owned();
    }
    let mut end = BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;

    /// One request as the mock API saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        target: String,
        authorization: String,
        content_type: String,
        body: Value,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A local stand-in for the API that records each request and answers `status`, `answer`.
    async fn mock_answering(status: u16, answer: &'static str) -> (String, Log) {
        let log: Log = Arc::default();
        let app = Router::new()
            .route(
                "/",
                post(
                    move |State(log): State<Log>, headers: HeaderMap, body: String| async move {
                        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        log.lock().unwrap().push(Seen {
                            target: h("x-sora-target"),
                            authorization: h("authorization"),
                            content_type: h("content-type"),
                            body: serde_json::from_str(&body).unwrap_or(Value::Null),
                        });
                        (StatusCode::from_u16(status).unwrap(), answer)
                    },
                ),
            )
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), log)
    }

    fn rendition() -> HlsRenditionRequest {
        HlsRenditionRequest {
            duration_seconds: 1,
            start_time_offset: -2,
            video: HlsVideo::new(1280, 720, 30, 1_000_000, HlsCodec::H264High),
            audio: HlsAudio { bps: 96_000 },
        }
    }

    #[tokio::test]
    async fn create_without_hls_sends_the_plain_target_bearer_token_and_empty_object() {
        let (url, log) = mock_answering(
            200,
            r#"{"channel_id":"c0ffee","sora_url":"wss://live-sora001.imageflux.jp/signaling"}"#,
        )
        .await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let created = client.create_channel("tok\n", &[]).await.unwrap();

        assert_eq!(
            created,
            CreatedChannel {
                channel_id: "c0ffee".into(),
                sora_url: "wss://live-sora001.imageflux.jp/signaling".into()
            }
        );
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].target, "ImageFlux_20200316.CreateMultistreamChannel");
        assert_eq!(seen[0].authorization, "Bearer tok");
        assert_eq!(seen[0].content_type, "application/json");
        assert_eq!(seen[0].body, json!({}));
    }

    #[tokio::test]
    async fn create_with_hls_sends_each_rendition_in_the_api_shape() {
        let (url, log) = mock_answering(200, r#"{"channel_id":"c1","sora_url":"wss://x/signaling"}"#).await;
        let client = ImageFluxClient::new(url, None).unwrap();

        client.create_channel("tok", &[rendition()]).await.unwrap();

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0].target, "ImageFlux_20200316.CreateMultistreamChannelWithHLS");
        assert_eq!(
            seen[0].body,
            json!({"hls": [{
                "durationSeconds": 1, "startTimeOffset": -2,
                "video": {"width": 1280, "height": 720, "fps": 30, "bps": 1_000_000, "codec": "h264_high"},
                "audio": {"bps": 96_000}
            }]})
        );
    }

    #[tokio::test]
    async fn a_non_2xx_answer_keeps_target_status_and_body() {
        let (url, _log) = mock_answering(503, r#"{"error":"maintenance"}"#).await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let err = client.create_channel("tok", &[]).await.unwrap_err();

        assert_eq!(err.status(), Some(503));
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            r#"ImageFlux_20200316.CreateMultistreamChannel: HTTP 503: {"error":"maintenance"}"#
        );
    }

    #[tokio::test]
    async fn a_401_is_not_transient() {
        let (url, _log) = mock_answering(401, "unauthorized").await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let err = client.create_channel("bad", &[]).await.unwrap_err();

        assert_eq!(err.status(), Some(401));
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_2xx_that_is_not_the_documented_json_is_a_decode_error() {
        let (url, _log) = mock_answering(200, "<html>").await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let err = client.create_channel("tok", &[]).await.unwrap_err();

        assert!(matches!(err, ImageFluxError::Decode { body, .. } if body == "<html>"));
    }

    #[tokio::test]
    async fn delete_sends_the_channel_id_and_treats_an_empty_200_as_deleted() {
        let (url, log) = mock_answering(200, "").await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let outcome = client.delete_channel("tok", "c0ffee").await.unwrap();

        assert_eq!(outcome, Deleted::Deleted);
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0].target, "ImageFlux_20180501.DeleteChannel");
        assert_eq!(seen[0].body, json!({"channel_id": "c0ffee"}));
    }

    #[tokio::test]
    async fn delete_of_a_missing_channel_is_already_gone() {
        for (status, body) in [(404, ""), (400, r#"{"ok":false,"error":"channel not found"}"#)] {
            let (url, _log) = mock_answering(status, body).await;
            let client = ImageFluxClient::new(url, None).unwrap();

            let outcome = client.delete_channel("tok", "gone").await.unwrap();

            assert_eq!(outcome, Deleted::AlreadyGone, "HTTP {status} {body}");
        }
    }

    #[tokio::test]
    async fn a_200_with_ok_false_is_an_error() {
        let (url, _log) = mock_answering(200, r#"{"ok":false,"error":"quota exceeded"}"#).await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let err = client.delete_channel("tok", "c").await.unwrap_err();

        assert_eq!(err.status(), Some(200));
        assert!(err.to_string().contains("quota exceeded"));
    }

    #[tokio::test]
    async fn list_playlist_urls_returns_each_playlist() {
        let (url, log) = mock_answering(
            200,
            r#"{"channel_id":"c","hls":[{"connection_id":"K","playlist_url":"https://hls.example/c/index.m3u8"}]}"#,
        )
        .await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let urls = client.list_playlist_urls("tok", "c").await.unwrap();

        assert_eq!(
            urls,
            vec![PlaylistUrl {
                connection_id: "K".into(),
                playlist_url: "https://hls.example/c/index.m3u8".into()
            }]
        );
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0].target, "ImageFlux_20200207.ListPlaylistURLs");
        assert_eq!(seen[0].body, json!({"channel_id": "c"}));
    }

    #[tokio::test]
    async fn list_channel_ids_sends_an_empty_object() {
        let (url, log) = mock_answering(200, r#"{"channel_ids":["a","b"]}"#).await;
        let client = ImageFluxClient::new(url, None).unwrap();

        let ids = client.list_channel_ids("tok").await.unwrap();

        assert_eq!(ids, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(log.lock().unwrap()[0].target, "ImageFlux_20200729.ListChannelIDs");
    }

    #[tokio::test]
    async fn each_call_is_counted_by_target_and_result() {
        let m = crate::metrics::Metrics::new();
        let (url, _log) = mock_answering(500, "boom").await;
        let client = ImageFluxClient::new(url, Some(m.imageflux_calls.clone())).unwrap();

        let _ = client.create_channel("tok", &[]).await;

        let n = m
            .imageflux_calls
            .with_label_values(&["ImageFlux_20200316.CreateMultistreamChannel", "server_error"])
            .get();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transient_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = ImageFluxClient::new(format!("http://127.0.0.1:{port}/"), None).unwrap();

        let err = client.list_channel_ids("tok").await.unwrap_err();

        assert!(matches!(err, ImageFluxError::Transport { .. }));
        assert!(err.is_transient());
    }
}
