//! The HTTP JSON API tests use to inspect and steer the endpoint (see README.md).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use image::ImageEncoder;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::record::{CloseInfo, Closer, ConnState, Connection, ConnectionView, Control, Transport};

/// Frame summaries included in a single-connection view unless `?frames=` says otherwise.
const DEFAULT_FRAMES: usize = 600;
/// Longest `timeout_ms` the wait endpoint accepts.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// How often the wait endpoint re-checks its condition.
const WAIT_POLL: Duration = Duration::from_millis(20);

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Filters shared by the list and wait endpoints; all given ones must match.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    /// Exact connection id.
    pub connection_id: Option<String>,
    /// Exact channel id.
    pub channel_id: Option<String>,
    /// `sora` or `whip`.
    pub transport: Option<String>,
    /// `connecting`, `connected` or `closed`.
    pub state: Option<String>,
    /// At least this many decoded video frames.
    pub min_frames: Option<u64>,
    /// At least this many audio RTP packets.
    pub min_audio_packets: Option<u64>,
    /// At least this many pongs.
    pub min_pongs: Option<u64>,
    /// At least this many re-answers.
    pub min_re_answers: Option<u64>,
    /// For the wait endpoint: give up after this many milliseconds (default 10000).
    pub timeout_ms: Option<u64>,
    /// Frame summaries to include per connection (list: 0, wait: 0 unless given).
    pub frames: Option<usize>,
}

impl Filter {
    fn matches(&self, c: &Connection, view: &ConnectionView) -> bool {
        let state_name = match view.state {
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Closed => "closed",
        };
        let transport_name = match c.transport {
            Transport::Sora => "sora",
            Transport::Whip => "whip",
        };
        self.connection_id.as_ref().is_none_or(|id| *id == c.id)
            && self.channel_id.as_ref().is_none_or(|ch| *ch == c.channel_id)
            && self.transport.as_ref().is_none_or(|t| t == transport_name)
            && self.state.as_ref().is_none_or(|s| s == state_name)
            && self.min_frames.is_none_or(|n| view.video.ingest.frames_decoded >= n)
            && self.min_audio_packets.is_none_or(|n| view.audio.packets >= n)
            && self.min_pongs.is_none_or(|n| view.signaling.pongs >= n)
            && self.min_re_answers.is_none_or(|n| view.signaling.re_answers >= n)
    }

    fn select(&self, app: &AppState) -> Vec<ConnectionView> {
        let frames = self.frames.unwrap_or(0);
        app.registry
            .all()
            .iter()
            .filter_map(|c| {
                let view = c.view(frames);
                self.matches(c, &view).then_some(view)
            })
            .collect()
    }
}

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /api/connections`: connections matching the filter, oldest first.
pub async fn list(State(app): State<AppState>, Query(filter): Query<Filter>) -> Response {
    Json(filter.select(&app)).into_response()
}

/// `GET /api/wait`: the newest connection matching the filter, once one does (200), or 408
/// with the current list when `timeout_ms` passes.
pub async fn wait(State(app): State<AppState>, Query(filter): Query<Filter>) -> Response {
    let timeout = Duration::from_millis(filter.timeout_ms.unwrap_or(10_000)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = filter.select(&app).pop() {
            return Json(found).into_response();
        }
        if app.shutdown.is_cancelled() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        if tokio::time::Instant::now() >= deadline {
            let scope = Filter {
                connection_id: filter.connection_id.clone(),
                channel_id: filter.channel_id.clone(),
                ..Filter::default()
            };
            let current = scope.select(&app);
            return (
                StatusCode::REQUEST_TIMEOUT,
                Json(json!({"error": "condition not met before timeout", "connections": current})),
            )
                .into_response();
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Query of `GET /api/connections/{id}`.
#[derive(Debug, Deserialize)]
pub struct DetailQuery {
    /// Frame summaries to include (default 600).
    pub frames: Option<usize>,
}

fn find(app: &AppState, id: &str) -> Result<Arc<Connection>, Box<Response>> {
    app.registry
        .get(id)
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, format!("no connection {id}"))))
}

/// `GET /api/connections/{id}`: one connection with its recent frame summaries.
pub async fn detail(State(app): State<AppState>, Path(id): Path<String>, Query(q): Query<DetailQuery>) -> Response {
    match find(&app, &id) {
        Ok(c) => Json(c.view(q.frames.unwrap_or(DEFAULT_FRAMES))).into_response(),
        Err(response) => *response,
    }
}

/// `GET /api/connections/{id}/frame.png`: the newest decoded frame.
pub async fn frame_png(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let c = match find(&app, &id) {
        Ok(c) => c,
        Err(response) => return *response,
    };
    let Some(frame) = c.latest_frame() else {
        return error(StatusCode::NOT_FOUND, "no frame decoded yet");
    };
    let (width, height) = (frame.width(), frame.height());
    let png = tokio::task::spawn_blocking(move || {
        let rgb = frame.to_rgb();
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(Cursor::new(&mut out))
            .write_image(&rgb, width, height, image::ExtendedColorType::Rgb8)
            .map(|()| out)
    })
    .await;
    match png {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("PNG encoding failed: {err}")),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("PNG task failed: {err}")),
    }
}

/// Body of `POST /api/connections/{id}/close`.
#[derive(Debug, Deserialize)]
pub struct CloseRequest {
    /// WebSocket close code (default 4000).
    #[serde(default = "default_close_code")]
    pub code: u16,
    /// Close reason (default `CLOSED-BY-API`).
    #[serde(default = "default_close_reason")]
    pub reason: String,
}

fn default_close_code() -> u16 {
    4000
}

fn default_close_reason() -> String {
    "CLOSED-BY-API".into()
}

/// `POST /api/connections/{id}/close`: server-initiated close (WS close frame; WHIP teardown).
pub async fn close(State(app): State<AppState>, Path(id): Path<String>, body: Option<Json<CloseRequest>>) -> Response {
    let request = body.map(|Json(b)| b).unwrap_or(CloseRequest {
        code: default_close_code(),
        reason: default_close_reason(),
    });
    if !(1000..5000).contains(&request.code) || matches!(request.code, 1004..=1006 | 1015) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("close code {} cannot be sent", request.code),
        );
    }
    let c = match find(&app, &id) {
        Ok(c) => c,
        Err(response) => return *response,
    };
    if c.state() == ConnState::Closed {
        return error(StatusCode::CONFLICT, "already closed");
    }
    let accepted = if c.has_signaling_session() {
        c.send_control(Control::Close {
            code: request.code,
            reason: request.reason.clone(),
        })
    } else {
        c.mark_closed(CloseInfo {
            code: Some(request.code),
            reason: request.reason.clone(),
            by: Closer::Server,
        });
        c.cancel.cancel();
        true
    };
    if accepted {
        (StatusCode::ACCEPTED, Json(json!({"ok": true}))).into_response()
    } else {
        error(StatusCode::CONFLICT, "session is not accepting commands")
    }
}

/// `POST /api/connections/{id}/re-offer`: renegotiate a Sora connection.
pub async fn re_offer(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let c = match find(&app, &id) {
        Ok(c) => c,
        Err(response) => return *response,
    };
    if !c.has_signaling_session() {
        return error(StatusCode::CONFLICT, "re-offer needs a Sora signaling connection");
    }
    if c.state() != ConnState::Connected {
        return error(StatusCode::CONFLICT, "connection is not connected");
    }
    if c.send_control(Control::ReOffer) {
        (StatusCode::ACCEPTED, Json(json!({"ok": true}))).into_response()
    } else {
        error(StatusCode::CONFLICT, "session is not accepting commands")
    }
}

/// Body of `PUT /api/redirect`.
#[derive(Debug, Deserialize)]
pub struct RedirectRequest {
    /// Signaling URL to redirect new connects to; `null` turns redirecting off.
    pub location: Option<String>,
}

/// `GET /api/redirect`: the current redirect target.
pub async fn get_redirect(State(app): State<AppState>) -> Response {
    Json(json!({"location": app.registry.redirect_to()})).into_response()
}

/// `PUT /api/redirect`: sets or clears the redirect target.
pub async fn put_redirect(State(app): State<AppState>, Json(request): Json<RedirectRequest>) -> Response {
    app.registry.set_redirect_to(request.location.clone());
    Json(json!({"location": request.location})).into_response()
}
