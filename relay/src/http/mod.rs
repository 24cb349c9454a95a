//! The relay's HTTP surface: `/metrics`, `/healthz`, `/readyz`, `/status` in every mode; in
//! serve mode also `/offer` (the browser's SDP offer; `PATCH`/`DELETE /offer/<session>` for an
//! ICE restart and Stop), `/whep` (preview viewers), `/filter`, `/api/info` and the two pages
//! (`/` sender, `/view` preview). Every refusal is JSON `{"error": ...}` with a 4xx (5xx only
//! for the relay's own failures), logged and counted. [`server`] is the listener around it.

pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::filter::FilterError;
use crate::filter::live::LiveParams;
use crate::filter::params::ParamsError;
use crate::health::Health;
use crate::ice_servers::IceServers;
use crate::latency::Stage;
use crate::metrics::Metrics;
use crate::publish::PublisherState;
use crate::publish::preview::{PreviewError, PreviewHub};
use crate::session::{AcceptError, SessionState, Sessions};
use livefilter_contract::status::{self, OverallState, PublisherStatus, RelayStatus};

/// The sender page.
pub const INDEX_HTML: &str = include_str!("../../../static/index.html");
/// The preview viewer page.
pub const VIEW_HTML: &str = include_str!("../../../static/view.html");

/// What the relay is doing, fixed at startup.
#[derive(Clone, Debug, Serialize)]
pub struct RelayInfo {
    /// `test-pattern` or `serve`.
    pub mode: &'static str,
    /// Output codec.
    pub codec: String,
    /// Configured output width (test pattern, or scaled output).
    pub width: u32,
    /// Configured output height.
    pub height: u32,
    /// Configured frame rate.
    pub fps: u32,
    /// Names of the configured publishers.
    pub publishers: Vec<String>,
    /// The filter's name.
    pub filter: String,
}

/// Serve mode's live parts.
#[derive(Clone)]
pub struct ServeState {
    /// The browser session.
    pub sessions: Sessions,
    /// The local preview, when enabled.
    pub preview: Option<Arc<PreviewHub>>,
    /// Bearer token `/offer` requires.
    pub token: Option<String>,
    /// HLS URL shown on the sender page.
    pub hls_url: Option<String>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// CORS origins.
    pub allowed_origins: Vec<String>,
    /// The running filter's live parameters (`GET`/`PATCH /filter`).
    pub filter: Option<Arc<LiveParams>>,
    /// STUN/TURN servers for the sender page (`/api/info`).
    pub ice_servers: Arc<IceServers>,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Static facts.
    pub info: Arc<RelayInfo>,
    /// Live counters.
    pub metrics: Metrics,
    /// Present in serve mode.
    pub serve: Option<ServeState>,
    /// The media stages' supervision, answered at `/healthz`.
    pub health: Health,
}

/// A JSON error body `{"error": "..."}` with `status`, logged and counted (`/offer` answers in
/// `livefilter_offer_requests_total`, every other route's refusals in
/// `livefilter_http_refusals_total`).
fn error(metrics: &Metrics, status: StatusCode, message: impl Into<String>) -> Response {
    refuse(metrics, "offer", status, message)
}

pub(crate) fn refuse(
    metrics: &Metrics,
    route: &'static str,
    status: StatusCode,
    message: impl Into<String>,
) -> Response {
    let message = message.into();
    if status.is_server_error() {
        tracing::error!(route, %status, %message, "request failed");
    } else {
        tracing::warn!(route, %status, %message, "request refused");
    }
    if route == "offer" {
        metrics.offers.with_label_values(&[status.as_str()]).inc();
    } else {
        metrics.http_refusals.with_label_values(&[route, status.as_str()]).inc();
    }
    (status, Json(json!({"error": message}))).into_response()
}

/// `ok`, or 503 naming the stage that died or stalled while the browser is sending.
async fn healthz(State(state): State<AppState>) -> Response {
    let sending = state.serve.as_ref().is_some_and(|s| s.sessions.receiving());
    match state.health.check(std::time::Instant::now(), sending) {
        Ok(()) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string(), "stage": e.stage})),
        )
            .into_response(),
    }
}

/// The router, testable in-process.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status));
    let mut cors = None;
    let mut limit = 64 * 1024;
    if let Some(serve) = &state.serve {
        router = router
            .route("/", get(|| async { Html(INDEX_HTML) }))
            .route("/index.html", get(|| async { Html(INDEX_HTML) }))
            .route("/api/info", get(info))
            .route("/offer", post(offer))
            .route("/offer/{id}", delete(stop).patch(restart));
        if serve.filter.is_some() {
            router = router.route("/filter", get(filter_get).patch(filter_patch));
        }
        if serve.preview.is_some() {
            router = router
                .route("/view", get(|| async { Html(VIEW_HTML) }))
                .route("/whep", post(whep_post))
                .route("/whep/{id}", delete(whep_delete));
        }
        limit = serve.max_body_bytes;
        if !serve.allowed_origins.is_empty() {
            let origins: Vec<HeaderValue> = serve
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            cors = Some(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
                    .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
                    .expose_headers([header::LOCATION]),
            );
        }
    }
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    match cors {
        Some(c) => router.layer(c),
        None => router,
    }
}

async fn not_found(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    refuse(
        &state.metrics,
        "other",
        StatusCode::NOT_FOUND,
        format!("no such path {}", uri.path()),
    )
}

async fn method_not_allowed(State(state): State<AppState>, method: Method, uri: axum::http::Uri) -> Response {
    refuse(
        &state.metrics,
        "other",
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

fn publisher_state(metrics: &Metrics, name: &str) -> Option<PublisherState> {
    metrics.publisher_state_of(name)
}

/// Ready when no publisher has stopped for good: a stopped publisher (its SFU ended the
/// session) will never publish again, so the pod should be replaced.
async fn readyz(State(state): State<AppState>) -> Response {
    let stopped: Vec<&String> = state
        .info
        .publishers
        .iter()
        .filter(|p| publisher_state(&state.metrics, p) == Some(PublisherState::Stopped))
        .collect();
    if stopped.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"ready": true, "filter": state.info.filter})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "stopped_publishers": stopped})),
        )
            .into_response()
    }
}

async fn status(State(state): State<AppState>) -> Json<RelayStatus> {
    Json(relay_status(&state))
}

/// The relay's state as `/status` reports it.
pub fn relay_status(state: &AppState) -> RelayStatus {
    let m = &state.metrics;
    let publishers: BTreeMap<String, PublisherStatus> = state
        .info
        .publishers
        .iter()
        .map(|name| {
            let viewers = (name == "preview")
                .then(|| state.serve.as_ref().and_then(|s| s.preview.as_ref()))
                .flatten()
                .map(|preview| preview.viewer_count() as u64);
            let entry = PublisherStatus {
                state: publisher_state(m, name).map_or(status::PublisherState::Starting, Into::into),
                frames_sent: m.frames_sent.with_label_values(&[name]).get(),
                viewers,
            };
            (name.clone(), entry)
        })
        .collect();
    let stages = Stage::ALL
        .iter()
        .filter(|s| **s != Stage::Total)
        .map(|s| (s.as_str().to_owned(), m.latency.window(*s)))
        .collect();
    let dropped = |reason: &str| m.frames_dropped.with_label_values(&["pipeline", reason]).get();
    let (iw, ih, ifps) = m.video_of("input");
    let (ow, oh, ofps) = m.video_of("output");
    let session = state.serve.as_ref().map(|s| s.sessions.view());
    let received = state.serve.as_ref().map_or(0, |s| s.sessions.frames_received());
    let publishing = state
        .info
        .publishers
        .iter()
        .any(|p| publisher_state(m, p) == Some(PublisherState::Connected));
    let overall = match (session.as_ref().map(|s| s.state), publishing) {
        (Some(SessionState::Receiving), true) | (None, true) => OverallState::Publishing,
        (Some(SessionState::Receiving), false) => OverallState::Receiving,
        (Some(SessionState::Connecting), _) => OverallState::Connecting,
        (Some(SessionState::Idle), _) | (None, false) => OverallState::Idle,
        (Some(SessionState::Unknown), _) => OverallState::Unknown,
    };
    let inference = state.serve.as_ref().and_then(|s| s.filter.as_ref()).map(|f| {
        let (requested_device, device) = f.devices();
        status::Inference {
            device,
            requested_device,
        }
    });
    RelayStatus {
        state: overall,
        mode: state.info.mode.to_string(),
        filter: state.info.filter.to_string(),
        inference,
        session,
        input: status::VideoShape {
            width: iw,
            height: ih,
            fps: ifps,
        },
        output: status::OutputShape {
            codec: state.info.codec.to_string(),
            width: ow,
            height: oh,
            fps: ofps,
        },
        frames: status::Frames {
            generated: m.frames_generated.get(),
            received,
            decoded: m.frames_decoded.get(),
            dropped_stale: dropped("stale"),
            filtered: m.frames_filtered.get(),
            encoded: m.frames_encoded.with_label_values(&[&state.info.codec]).get(),
            sent: state
                .info
                .publishers
                .iter()
                .map(|p| m.frames_sent.with_label_values(&[p]).get())
                .max()
                .unwrap_or(0),
        },
        latency_ms: status::LatencySummary {
            total: m.latency.window(Stage::Total),
            stages,
        },
        publishers,
    }
}

/// A refused `/filter` change: logged, counted by `result`, answered as JSON.
fn filter_refused(metrics: &Metrics, status: StatusCode, result: &str, message: String) -> Response {
    tracing::warn!(%status, %message, "filter change refused");
    metrics.filter_param_updates.with_label_values(&[result]).inc();
    (status, Json(json!({"error": message}))).into_response()
}

async fn filter_get(State(state): State<AppState>) -> Response {
    match &serve_state(&state).filter {
        Some(live) => Json(live.snapshot()).into_response(),
        None => refuse(
            &state.metrics,
            "filter",
            StatusCode::NOT_FOUND,
            "this relay has no filter",
        ),
    }
}

async fn filter_patch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let serve = serve_state(&state);
    let m = &state.metrics;
    let Some(live) = serve.filter.clone() else {
        return refuse(m, "filter", StatusCode::NOT_FOUND, "this relay has no filter");
    };
    if let Err(why) = origin_allowed(serve, &headers) {
        return filter_refused(m, StatusCode::FORBIDDEN, "forbidden", why);
    }
    if let Err(why) = authorized(serve, &headers) {
        return filter_refused(m, StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(content_type.starts_with("application/json") || content_type.starts_with("application/merge-patch+json")) {
        return filter_refused(
            m,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid",
            format!("Content-Type must be application/json or application/merge-patch+json, got {content_type:?}"),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body exceeds {} bytes", serve.max_body_bytes)
            } else {
                format!("unreadable request body: {rejection}")
            };
            return filter_refused(m, status, "invalid", message);
        }
    };
    let patch = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return filter_refused(
                m,
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body must be a JSON object of parameters, got {other}"),
            );
        }
        Err(e) => {
            return filter_refused(
                m,
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body is not JSON: {e}"),
            );
        }
    };
    match tokio::task::spawn_blocking(move || live.patch(&patch)).await {
        Ok(Ok(snapshot)) => {
            m.filter_param_updates.with_label_values(&["applied"]).inc();
            tracing::info!(params = %snapshot["params"], "filter parameters accepted");
            Json(snapshot).into_response()
        }
        Ok(Err(FilterError::Params(e @ ParamsError::NotLive { .. }))) => {
            filter_refused(m, StatusCode::CONFLICT, "not_live", e.to_string())
        }
        Ok(Err(e)) => filter_refused(m, StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        Err(e) => filter_refused(m, StatusCode::INTERNAL_SERVER_ERROR, "error", e.to_string()),
    }
}

fn serve_state(state: &AppState) -> &ServeState {
    // Serve routes are only mounted when serve state exists.
    state.serve.as_ref().expect("serve routes imply serve state")
}

/// What the sender page needs to know before it starts. TURN credentials only go to a caller
/// that shows the offer token (when one is set): the page is public, and TURN credentials let
/// anyone relay any traffic through the TURN server. Never cached: time-limited credentials
/// are made for each answer.
async fn info(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let serve = serve_state(&state);
    let trusted = authorized(serve, &headers).is_ok();
    let ice_servers = serve.ice_servers.for_page(std::time::SystemTime::now(), trusted);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "token_required": serve.token.is_some(),
            "preview": serve.preview.is_some(),
            "hls_url": serve.hls_url,
            "codecs": ["vp8", "h264"],
            "output_codec": state.info.codec,
            "filter": state.info.filter,
            "ice_servers": ice_servers,
            // The page asks again with its token when this is true.
            "ice_servers_withheld": !trusted && serve.ice_servers.has_credentials(),
        })),
    )
        .into_response()
}

fn authorized(serve: &ServeState, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(expected) = &serve.token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("missing bearer token (Authorization: Bearer ...)")?;
    // Compare every byte so timing does not reveal the matching prefix.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same { Ok(()) } else { Err("wrong bearer token") }
}

/// The browser's offer, as the original sample's contract.
#[derive(Debug, Deserialize)]
struct OfferBody {
    sdp: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A request from another site is refused unless its origin is allowed: otherwise any page a
/// visitor opens could take the relay's one browser slot.
fn origin_allowed(serve: &ServeState, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    if authority.eq_ignore_ascii_case(host) || serve.allowed_origins.iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(format!(
            "origin {origin} is not allowed (allow it with --allowed-origin)"
        ))
    }
}

/// A refusal before any work: the status and the message to answer with.
type Refused = (StatusCode, String);

/// The body of `POST /offer` and `PATCH /offer/<session>`: `{"sdp": ..., "type": "offer"}`.
fn parse_offer_body(
    serve: &ServeState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<OfferBody, Refused> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, got {content_type:?}"),
        ));
    }
    let body = body.map_err(|rejection| body_refusal(serve.max_body_bytes, rejection))?;
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("body must be JSON {{\"sdp\": ..., \"type\": \"offer\"}}: {e}"),
        )
    })
}

/// Why an unreadable body was refused.
fn body_refusal(limit: usize, rejection: BytesRejection) -> Refused {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        (status, format!("request body exceeds {limit} bytes"))
    } else {
        (status, format!("unreadable request body: {rejection}"))
    }
}

async fn offer(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let serve = serve_state(&state);
    let m = &state.metrics;
    let parsed = match offer_preflight(serve, &headers).and_then(|()| parse_offer_body(serve, &headers, body)) {
        Ok(p) => p,
        Err((status, why)) => return error(m, status, why),
    };
    match serve.sessions.accept(&parsed.kind, parsed.sdp).await {
        Ok(accepted) => {
            m.offers.with_label_values(&["200"]).inc();
            (
                [(header::LOCATION, format!("/offer/{}", accepted.session))],
                Json(json!({"sdp": accepted.answer, "type": "answer", "session": accepted.session})),
            )
                .into_response()
        }
        Err(e) => error(m, accept_status(&e), e.to_string()),
    }
}

/// The status an offer's (or ICE restart's) refusal is answered with.
fn accept_status(e: &AcceptError) -> StatusCode {
    use crate::offer::OfferError;
    match e {
        AcceptError::Busy(_) | AcceptError::Negotiating(_) => StatusCode::CONFLICT,
        AcceptError::Offer(OfferError::NoVideo(_) | OfferError::NoCommonCodec { .. }) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        AcceptError::Offer(_) => StatusCode::BAD_REQUEST,
        AcceptError::UnknownSession(_) => StatusCode::NOT_FOUND,
        AcceptError::ShuttingDown | AcceptError::NoPublicAddress(_) | AcceptError::NoUdpPort(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        AcceptError::WebRtc { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Checks origin and token, shared by the mutating `/offer` routes.
fn offer_preflight(serve: &ServeState, headers: &HeaderMap) -> Result<(), Refused> {
    origin_allowed(serve, headers).map_err(|why| (StatusCode::FORBIDDEN, why))?;
    authorized(serve, headers).map_err(|why| (StatusCode::UNAUTHORIZED, why.to_owned()))
}

/// An ICE restart (WHIP-style, RFC 9725 §4.3, with the JSON body of `POST /offer`): the page's
/// new offer with fresh ICE credentials is applied to its live session, which keeps streaming
/// into the same publishers; the answer carries the relay's new credentials and candidates.
async fn restart(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let serve = serve_state(&state);
    let m = &state.metrics;
    let parsed = match offer_preflight(serve, &headers).and_then(|()| parse_offer_body(serve, &headers, body)) {
        Ok(p) => p,
        Err((status, why)) => return error(m, status, why),
    };
    match serve.sessions.restart(&id, &parsed.kind, parsed.sdp).await {
        Ok(accepted) => {
            m.offers.with_label_values(&["200"]).inc();
            Json(json!({"sdp": accepted.answer, "type": "answer", "session": accepted.session})).into_response()
        }
        Err(e) => error(m, accept_status(&e), e.to_string()),
    }
}

/// Ends a browser session (its sender page's Stop button); only the id the answer gave ends it.
async fn stop(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let serve = serve_state(&state);
    if let Err((status, why)) = offer_preflight(serve, &headers) {
        return error(&state.metrics, status, why);
    }
    if serve.sessions.stop_session(&id).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(&state.metrics, StatusCode::NOT_FOUND, format!("no live session {id}"))
    }
}

async fn whep_post(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let serve = serve_state(&state);
    let m = &state.metrics;
    let Some(preview) = &serve.preview else {
        return refuse(m, "whep", StatusCode::NOT_FOUND, "the preview is disabled");
    };
    if let Err(why) = origin_allowed(serve, &headers) {
        return refuse(m, "whep", StatusCode::FORBIDDEN, why);
    }
    if let Err(why) = authorized(serve, &headers) {
        return refuse(m, "whep", StatusCode::UNAUTHORIZED, why);
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let (status, message) = body_refusal(serve.max_body_bytes, rejection);
            return refuse(m, "whep", status, message);
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return refuse(
            m,
            "whep",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/sdp, got {content_type:?}"),
        );
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return refuse(m, "whep", StatusCode::BAD_REQUEST, "SDP is not UTF-8");
    };
    if !sdp.trim_start().starts_with("v=0") {
        return refuse(
            m,
            "whep",
            StatusCode::BAD_REQUEST,
            "malformed SDP: must start with \"v=0\"",
        );
    }
    match preview.add_viewer(sdp).await {
        Ok((id, answer)) => (
            StatusCode::CREATED,
            [
                (header::CONTENT_TYPE, "application/sdp".to_owned()),
                (header::LOCATION, format!("/whep/{id}")),
            ],
            answer,
        )
            .into_response(),
        Err(e @ (PreviewError::Full(_) | PreviewError::ShuttingDown)) => {
            refuse(m, "whep", StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(PreviewError::Peer(e)) => refuse(
            m,
            "whep",
            StatusCode::BAD_REQUEST,
            format!("viewer offer not usable: {e}"),
        ),
        Err(e @ PreviewError::Gathering(_)) => refuse(m, "whep", StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn whep_delete(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let serve = serve_state(&state);
    let m = &state.metrics;
    if let Err(why) = origin_allowed(serve, &headers) {
        return refuse(m, "whep", StatusCode::FORBIDDEN, why);
    }
    if let Err(why) = authorized(serve, &headers) {
        return refuse(m, "whep", StatusCode::UNAUTHORIZED, why);
    }
    match &serve.preview {
        Some(p) if p.remove_viewer(&id) => StatusCode::OK.into_response(),
        _ => refuse(m, "whep", StatusCode::NOT_FOUND, format!("no preview viewer {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterConfigExt;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> AppState {
        let metrics = Metrics::new();
        metrics.frames_generated.inc_by(42);
        metrics.set_publisher_state("sora", PublisherState::Backoff);
        AppState {
            info: Arc::new(RelayInfo {
                mode: "test-pattern",
                codec: "vp8".into(),
                width: 640,
                height: 360,
                fps: 30,
                publishers: vec!["sora".into()],
                filter: "passthrough".into(),
            }),
            metrics,
            serve: None,
            health: Health::default(),
        }
    }

    #[tokio::test]
    async fn healthz_is_503_naming_a_stage_that_died() {
        let state = state();
        state.health.report_death("filter", "thread 'filter' panicked: boom");
        let response = app(state)
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stage"], "filter");
        assert!(v["error"].as_str().unwrap().contains("boom"), "{v}");
    }

    async fn get(path: &str) -> (StatusCode, String) {
        let response = app(state())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_the_relay_counters() {
        let (status, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("livefilter_frames_generated_total 42"), "{body}");
        assert!(
            body.contains(r#"livefilter_publisher_state{publisher="sora",state="backoff"} 1"#),
            "{body}"
        );
    }

    #[tokio::test]
    async fn status_reports_output_and_publisher_state() {
        let (status, body) = get("/status").await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["mode"], "test-pattern");
        assert_eq!(v["output"]["codec"], "vp8");
        assert_eq!(v["frames"]["generated"], 42);
        assert_eq!(v["publishers"]["sora"]["state"], "backoff");
    }

    mod serve_mode {
        use super::*;
        use crate::codec::VideoCodec;
        use crate::publish::KeyframeRequest;
        use crate::publish::peer::{PeerEvent, PeerOptions, SendPeer};
        use crate::session::IngestConfig;
        use crate::slot::NewestSlot;
        use tokio_util::sync::CancellationToken;

        fn live_params(kind: crate::filter::FilterKind) -> Arc<LiveParams> {
            let config = crate::filter::FilterConfig {
                kind,
                ..Default::default()
            };
            let parsed = config.parsed_params().unwrap();
            LiveParams::new(&config, parsed, Some(crate::infer::Device::Cpu)).0
        }

        async fn patch_filter(app: &Router, body: &str, content_type: &str, auth: Option<&str>) -> (StatusCode, Value) {
            let mut req = Request::patch("/filter").header("content-type", content_type);
            if let Some(t) = auth {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let response = app
                .clone()
                .oneshot(req.body(Body::from(body.to_owned())).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }

        #[tokio::test]
        async fn a_live_parameter_change_is_applied_and_shown() {
            let (app, _shutdown) = serve_app(Some("t"));

            let (status, body) = patch_filter(&app, r#"{"radius": 30}"#, "application/json", Some("t")).await;

            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["kind"], "background-blur");
            assert_eq!(body["params"]["radius"], 30);
            assert_eq!(body["params"]["smoothing"], 0.5, "defaults are filled in");
            let response = app
                .clone()
                .oneshot(Request::get("/filter").body(Body::empty()).unwrap())
                .await
                .unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let shown: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(shown["params"]["radius"], 30);
            assert_eq!(shown["device"], "cpu");
        }

        #[tokio::test]
        async fn bad_live_changes_get_precise_errors_and_are_counted() {
            let (app, _shutdown) = serve_app(Some("t"));

            let cases = [
                (
                    r#"{"radius": 0}"#,
                    "application/json",
                    Some("t"),
                    StatusCode::BAD_REQUEST,
                    "filter background-blur: radius 0 is outside 1..=100",
                ),
                (
                    r#"{"radios": 3}"#,
                    "application/json",
                    Some("t"),
                    StatusCode::BAD_REQUEST,
                    "filter background-blur: unknown field `radios`",
                ),
                (
                    r#"[1]"#,
                    "application/json",
                    Some("t"),
                    StatusCode::BAD_REQUEST,
                    "the body must be a JSON object of parameters, got [1]",
                ),
                (
                    r#"{"#,
                    "application/json",
                    Some("t"),
                    StatusCode::BAD_REQUEST,
                    "the body is not JSON",
                ),
                (
                    r#"{"radius": 3}"#,
                    "text/plain",
                    Some("t"),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Content-Type must be application/json",
                ),
                (
                    r#"{"radius": 3}"#,
                    "application/json",
                    None,
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token",
                ),
                (
                    r#"{"radius": 3}"#,
                    "application/json",
                    Some("x"),
                    StatusCode::UNAUTHORIZED,
                    "wrong bearer token",
                ),
            ];
            for (body, content_type, auth, want, message) in cases {
                let (status, answer) = patch_filter(&app, body, content_type, auth).await;
                assert_eq!(status, want, "{body}: {answer}");
                assert!(
                    answer["error"].as_str().unwrap().starts_with(message),
                    "{body}: {answer}"
                );
            }
            let big = format!(r#"{{"radius": 3, "pad": "{}"}}"#, "x".repeat(9000));
            assert_eq!(
                patch_filter(&app, &big, "application/json", Some("t")).await.0,
                StatusCode::PAYLOAD_TOO_LARGE
            );

            let (_, shown) = patch_filter(&app, "{}", "application/json", Some("t")).await;
            assert_eq!(shown["params"]["radius"], 12, "nothing refused was applied");
            let response = app
                .clone()
                .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
                .await
                .unwrap();
            let text = String::from_utf8(
                axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap()
                    .to_vec(),
            )
            .unwrap();
            assert!(
                text.contains(r#"livefilter_filter_param_updates_total{result="invalid"} 6"#),
                "{text}"
            );
            assert!(
                text.contains(r#"livefilter_filter_param_updates_total{result="unauthorized"} 2"#),
                "{text}"
            );
        }

        fn serve_app(token: Option<&str>) -> (Router, CancellationToken) {
            serve_app_advertising(token, vec![])
        }

        fn serve_app_advertising(token: Option<&str>, public_ips: Vec<String>) -> (Router, CancellationToken) {
            serve_app_with(token, public_ips, None)
        }

        fn serve_app_with(
            token: Option<&str>,
            public_ips: Vec<String>,
            udp_port_range: Option<crate::ice::PortRange>,
        ) -> (Router, CancellationToken) {
            let metrics = Metrics::new();
            let shutdown = CancellationToken::new();
            let sinks = crate::feed::MediaSinks::new(Arc::new(NewestSlot::new()), vec![], metrics.clone());
            let (sessions, _actor) = Sessions::start(
                IngestConfig {
                    codecs: vec![VideoCodec::Vp8, VideoCodec::H264],
                    udp_addrs: vec!["127.0.0.1:0".into()],
                    tcp_addrs: vec![],
                    public_ips,
                    public_ips_file: None,
                    udp_port_range,
                    start_bitrate_kbps: 2000,
                    timers: crate::session::SessionTimers::default(),
                    video: crate::ingest::VideoIngestConfig::default(),
                },
                sinks,
                KeyframeRequest::default(),
                shutdown.clone(),
            );
            let mut st = state();
            st.info = Arc::new(RelayInfo {
                mode: "serve",
                ..(*st.info).clone()
            });
            st.metrics = metrics;
            st.serve = Some(ServeState {
                sessions,
                preview: None,
                token: token.map(str::to_owned),
                hls_url: Some("https://example.test/x.m3u8".into()),
                max_body_bytes: 8 * 1024,
                allowed_origins: vec!["https://studio.example".into()],
                filter: Some(live_params(crate::filter::FilterKind::BackgroundBlur)),
                ice_servers: Arc::new(turn_servers()),
            });
            (app(st), shutdown)
        }

        /// A public STUN server and a TURN server with time-limited credentials.
        fn turn_servers() -> IceServers {
            IceServers::load(&[
                livefilter_contract::config::IceServerConfig {
                    urls: vec!["stun:stun.example:3478".into()],
                    ..Default::default()
                },
                livefilter_contract::config::IceServerConfig {
                    urls: vec!["turn:turn.example:3478?transport=udp".into()],
                    auth_secret: Some("north".into()),
                    ..Default::default()
                },
            ])
            .expect("valid servers")
        }

        async fn info_with(app: &Router, auth: Option<&str>) -> (HeaderMap, Value) {
            let mut req = Request::get("/api/info");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let response = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let headers = response.headers().clone();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (headers, serde_json::from_slice(&bytes).unwrap())
        }

        #[tokio::test]
        async fn api_info_gives_turn_credentials_only_to_a_caller_with_the_offer_token() {
            let (app, _shutdown) = serve_app(Some("s3cret"));

            let (_, anonymous) = info_with(&app, None).await;
            let (_, wrong) = info_with(&app, Some("Bearer guess")).await;
            let (headers, trusted) = info_with(&app, Some("Bearer s3cret")).await;

            let stun_only = json!([{"urls": ["stun:stun.example:3478"]}]);
            assert_eq!(anonymous["ice_servers"], stun_only);
            assert_eq!(anonymous["ice_servers_withheld"], true);
            assert_eq!(wrong["ice_servers"], stun_only);
            assert!(!anonymous.to_string().contains("credential"), "{anonymous}");
            let turn = &trusted["ice_servers"][1];
            assert_eq!(turn["urls"], json!(["turn:turn.example:3478?transport=udp"]));
            let username = turn["username"].as_str().expect("a username");
            let (expiry, name) = username.split_once(':').expect("<expiry>:<name>");
            assert_eq!(name, "livefilter");
            let expected = crate::ice_servers::rest_credentials("north", name, expiry.parse().unwrap()).1;
            assert_eq!(turn["credential"], expected);
            assert_eq!(trusted["ice_servers_withheld"], false);
            assert_eq!(headers.get("cache-control").unwrap(), "no-store");
        }

        #[tokio::test]
        async fn without_an_offer_token_every_page_gets_the_turn_credentials() {
            let (app, _shutdown) = serve_app(None);

            let (_, info) = info_with(&app, None).await;

            assert_eq!(info["ice_servers"].as_array().map(Vec::len), Some(2), "{info}");
            assert_eq!(info["ice_servers_withheld"], false);
        }

        /// A real WebRTC offer (VP8, send-only) from webrtc-rs.
        async fn real_offer() -> String {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let opts = PeerOptions::loopback(VideoCodec::Vp8);
            let peer = SendPeer::new(&opts, tx, KeyframeRequest::default(), || {})
                .await
                .unwrap();
            peer.offer().await.unwrap();
            while let Some(e) = rx.recv().await {
                if matches!(e, PeerEvent::GatheringComplete) {
                    break;
                }
            }
            peer.local_sdp().await.unwrap()
        }

        async fn post(app: &Router, body: String, auth: Option<&str>) -> (StatusCode, Value) {
            let mut req = Request::post("/offer").header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let response = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }

        #[tokio::test]
        async fn a_real_offer_is_answered_and_a_second_one_conflicts() {
            let (app, shutdown) = serve_app(None);
            let offer = json!({"sdp": real_offer().await, "type": "offer"}).to_string();

            let (first, answer) = post(&app, offer.clone(), None).await;
            let (second, conflict) = post(&app, offer, None).await;
            shutdown.cancel();

            assert_eq!(first, StatusCode::OK, "{answer}");
            assert_eq!(answer["type"], "answer");
            assert!(
                answer["sdp"].as_str().unwrap().contains("a=candidate:"),
                "answer lacks candidates"
            );
            assert_eq!(second, StatusCode::CONFLICT);
            assert!(
                conflict["error"].as_str().unwrap().contains("already live"),
                "{conflict}"
            );
        }

        #[tokio::test]
        async fn the_answer_advertises_the_configured_public_ip() {
            let (app, shutdown) = serve_app_advertising(None, vec!["203.0.113.7".into()]);

            let (status, answer) = post(
                &app,
                json!({"sdp": real_offer().await, "type": "offer"}).to_string(),
                None,
            )
            .await;
            shutdown.cancel();

            assert_eq!(status, StatusCode::OK, "{answer}");
            let sdp = answer["sdp"].as_str().unwrap();
            let candidates: Vec<&str> = sdp.lines().filter(|l| l.starts_with("a=candidate:")).collect();
            assert!(!candidates.is_empty());
            assert!(
                candidates.iter().all(|c| c.contains(" 203.0.113.7 ")),
                "{candidates:#?}"
            );
        }

        #[tokio::test]
        async fn a_session_is_stopped_only_by_its_own_id() {
            let (app, shutdown) = serve_app(None);
            let (status, answer) = post(
                &app,
                json!({"sdp": real_offer().await, "type": "offer"}).to_string(),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let session = answer["session"].as_str().unwrap().to_owned();
            let delete = |path: String| Request::delete(path).body(Body::empty()).unwrap();

            let wrong = app.clone().oneshot(delete("/offer/0000".into())).await.unwrap();
            let right = app.clone().oneshot(delete(format!("/offer/{session}"))).await.unwrap();
            shutdown.cancel();

            assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
            assert_eq!(right.status(), StatusCode::NO_CONTENT);
        }

        #[tokio::test]
        async fn cross_site_and_non_json_offers_are_refused_before_any_webrtc_work() {
            let (app, _shutdown) = serve_app(None);
            let body = json!({"sdp": "v=0", "type": "offer"}).to_string();
            let send = |origin: Option<&str>, content_type: &str| {
                let mut req = Request::post("/offer")
                    .header("host", "relay.test:8080")
                    .header("content-type", content_type);
                if let Some(o) = origin {
                    req = req.header("origin", o);
                }
                app.clone().oneshot(req.body(Body::from(body.clone())).unwrap())
            };

            let foreign = send(Some("http://evil.example"), "application/json").await.unwrap();
            let plain = send(None, "text/plain").await.unwrap();
            let same_site = send(Some("http://relay.test:8080"), "application/json").await.unwrap();
            let allowed = send(Some("https://studio.example"), "application/json").await.unwrap();

            assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
            assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert_eq!(
                same_site.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "same origin reaches SDP checks"
            );
            assert_eq!(
                allowed.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "an allowed origin reaches SDP checks"
            );
        }

        #[tokio::test]
        async fn with_a_port_range_the_session_binds_a_port_inside_it() {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let first = probe.local_addr().unwrap().port().saturating_add(1);
            drop(probe);
            let range = crate::ice::PortRange {
                first,
                last: first.saturating_add(20),
            };
            let (app, shutdown) = serve_app_with(None, vec![], Some(range));

            let (status, answer) = post(
                &app,
                json!({"sdp": real_offer().await, "type": "offer"}).to_string(),
                None,
            )
            .await;
            shutdown.cancel();

            assert_eq!(status, StatusCode::OK, "{answer}");
            let ports: Vec<u16> = answer["sdp"]
                .as_str()
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("a=candidate:"))
                .map(|l| l.split(' ').nth(5).unwrap().parse().unwrap())
                .collect();
            assert!(!ports.is_empty());
            assert!(
                ports.iter().all(|p| (range.first..=range.last).contains(p)),
                "{ports:?} not in {range:?}"
            );
        }

        #[tokio::test]
        async fn with_a_token_every_mutating_and_viewing_route_needs_it() {
            let (app, _shutdown) = serve_app_with_preview(Some("s3cret"));
            let send = |method: &str, path: &str, auth: Option<&str>, content_type: &str, body: &str| {
                let mut req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", content_type);
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap())
            };

            let cases = [
                ("POST", "/whep", "application/sdp", "v=0\r\n"),
                ("DELETE", "/whep/0000", "application/json", ""),
                ("DELETE", "/offer/0000", "application/json", ""),
                (
                    "PATCH",
                    "/offer/0000",
                    "application/json",
                    r#"{"sdp": "v=0", "type": "offer"}"#,
                ),
            ];
            for (method, path, content_type, body) in cases {
                let without = send(method, path, None, content_type, body).await.unwrap();
                let wrong = send(method, path, Some("Bearer nope"), content_type, body)
                    .await
                    .unwrap();
                let right = send(method, path, Some("Bearer s3cret"), content_type, body)
                    .await
                    .unwrap();

                assert_eq!(without.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_ne!(right.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            }
        }

        fn serve_app_with_preview(token: Option<&str>) -> (Router, CancellationToken) {
            let (_, shutdown) = serve_app(token);
            let metrics = Metrics::new();
            let hub = crate::publish::preview::PreviewHub::new(
                crate::publish::preview::PreviewConfig {
                    codec: VideoCodec::Vp8,
                    max_viewers: 2,
                    udp_addrs: vec!["127.0.0.1:0".into()],
                    public_ips: vec![],
                    bitrate: crate::publish::congestion::BitrateLimits::fixed_kbps(1000),
                },
                metrics.clone(),
                KeyframeRequest::default(),
                shutdown.clone(),
            );
            let sinks = crate::feed::MediaSinks::new(Arc::new(NewestSlot::new()), vec![], metrics.clone());
            let (sessions, _actor) = Sessions::start(
                IngestConfig {
                    codecs: vec![VideoCodec::Vp8],
                    udp_addrs: vec!["127.0.0.1:0".into()],
                    tcp_addrs: vec![],
                    public_ips: vec![],
                    public_ips_file: None,
                    udp_port_range: None,
                    start_bitrate_kbps: 0,
                    timers: crate::session::SessionTimers::default(),
                    video: crate::ingest::VideoIngestConfig::default(),
                },
                sinks,
                KeyframeRequest::default(),
                shutdown.clone(),
            );
            let mut st = state();
            st.metrics = metrics;
            st.serve = Some(ServeState {
                sessions,
                preview: Some(hub),
                token: token.map(str::to_owned),
                hls_url: None,
                max_body_bytes: 8 * 1024,
                allowed_origins: vec![],
                filter: None,
                ice_servers: Arc::default(),
            });
            (app(st), shutdown)
        }

        #[tokio::test]
        async fn the_token_is_required_when_configured() {
            let (app, _shutdown) = serve_app(Some("s3cret"));
            let body = json!({"sdp": "v=0", "type": "offer"}).to_string();

            let (missing, m) = post(&app, body.clone(), None).await;
            let (wrong, w) = post(&app, body.clone(), Some("Bearer nope")).await;
            let (right, _) = post(&app, body, Some("Bearer s3cret")).await;

            assert_eq!(
                (missing, m["error"].as_str()),
                (
                    StatusCode::UNAUTHORIZED,
                    Some("missing bearer token (Authorization: Bearer ...)")
                )
            );
            assert_eq!(
                (wrong, w["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("wrong bearer token"))
            );
            assert_eq!(
                right,
                StatusCode::UNPROCESSABLE_ENTITY,
                "a right token reaches SDP validation (no video)"
            );
        }

        #[tokio::test]
        async fn bad_bodies_get_precise_errors() {
            let (app, _shutdown) = serve_app(None);

            let (too_big, e1) = post(&app, "x".repeat(9000), None).await;
            let (not_json, e2) = post(&app, "{sdp".into(), None).await;
            let (bad_sdp, e3) = post(&app, json!({"sdp": "hello", "type": "offer"}).to_string(), None).await;
            let (answer, e4) = post(&app, json!({"sdp": "v=0", "type": "answer"}).to_string(), None).await;
            let (no_video, e5) = post(
                &app,
                json!({"sdp": "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n", "type": "offer"}).to_string(),
                None,
            )
            .await;

            assert_eq!(
                (too_big, e1["error"].as_str()),
                (StatusCode::PAYLOAD_TOO_LARGE, Some("request body exceeds 8192 bytes"))
            );
            assert_eq!(not_json, StatusCode::BAD_REQUEST);
            assert!(e2["error"].as_str().unwrap().starts_with("body must be JSON"));
            assert_eq!(bad_sdp, StatusCode::BAD_REQUEST);
            assert!(e3["error"].as_str().unwrap().starts_with("malformed SDP"), "{e3}");
            assert_eq!(
                (answer, e4["error"].as_str()),
                (
                    StatusCode::BAD_REQUEST,
                    Some("expected a description of type \"offer\", got \"answer\"")
                )
            );
            assert_eq!(no_video, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(e5["error"].as_str().unwrap().contains("no video m-line"), "{e5}");
        }

        #[tokio::test]
        async fn cors_allows_only_the_configured_origin() {
            let (app, _shutdown) = serve_app(None);
            let preflight = |origin: &str| {
                Request::builder()
                    .method("OPTIONS")
                    .uri("/offer")
                    .header("origin", origin)
                    .header("access-control-request-method", "POST")
                    .body(Body::empty())
                    .unwrap()
            };

            let allowed = app.clone().oneshot(preflight("https://studio.example")).await.unwrap();
            let other = app.clone().oneshot(preflight("https://evil.example")).await.unwrap();

            assert_eq!(
                allowed.headers().get("access-control-allow-origin").unwrap(),
                "https://studio.example"
            );
            assert!(other.headers().get("access-control-allow-origin").is_none());
        }

        #[tokio::test]
        async fn info_and_pages_are_served() {
            let (app, _shutdown) = serve_app(Some("t"));
            let info = app
                .clone()
                .oneshot(Request::get("/api/info").body(Body::empty()).unwrap())
                .await
                .unwrap();
            let body = axum::body::to_bytes(info.into_body(), 1 << 20).await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            let page = app
                .clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap())
                .await
                .unwrap();

            assert_eq!(v["token_required"], true);
            assert_eq!(v["hls_url"], "https://example.test/x.m3u8");
            assert_eq!(v["preview"], false);
            assert_eq!(page.status(), StatusCode::OK);
            assert_eq!(page.headers().get("content-type").unwrap(), "text/html; charset=utf-8");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_unknown_paths_404() {
        assert_eq!(get("/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_answered_as_json_and_counted() {
        let app = app(state());

        let missing = app
            .clone()
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let wrong_method = app
            .clone()
            .oneshot(Request::delete("/status").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = |r: Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        };
        assert_eq!(body(missing).await["error"], "no such path /nope");
        assert_eq!(wrong_method.headers().get("content-type").unwrap(), "application/json");
        assert_eq!(body(wrong_method).await["error"], "DELETE is not allowed on /status");
    }
}
