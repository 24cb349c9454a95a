//! The relay's HTTP surface: `/metrics`, `/healthz`, `/status` (the browser issue adds
//! `/offer` and the pages).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::publish::PublisherState;

/// What the relay is doing, fixed at startup.
#[derive(Clone, Debug, Serialize)]
pub struct RelayInfo {
    /// `test-pattern` (later also `serve`).
    pub mode: &'static str,
    /// Output codec.
    pub codec: String,
    /// Output size and rate.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Output frame rate.
    pub fps: u32,
    /// Names of the configured publishers.
    pub publishers: Vec<String>,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Static facts.
    pub info: Arc<RelayInfo>,
    /// Live counters.
    pub metrics: Metrics,
}

/// The router, testable in-process.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

fn publisher_state(metrics: &Metrics, name: &str) -> Option<PublisherState> {
    PublisherState::ALL
        .into_iter()
        .find(|s| metrics.publisher_state.with_label_values(&[name, s.as_str()]).get() == 1)
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    let m = &state.metrics;
    let publishers: serde_json::Map<String, Value> = state
        .info
        .publishers
        .iter()
        .map(|name| {
            let s = publisher_state(m, name).map_or("starting", PublisherState::as_str);
            let sent = m.frames_sent.with_label_values(&[name]).get();
            (name.clone(), json!({"state": s, "frames_sent": sent}))
        })
        .collect();
    Json(json!({
        "mode": state.info.mode,
        "output": {"codec": state.info.codec, "width": state.info.width, "height": state.info.height, "fps": state.info.fps},
        "frames": {
            "generated": m.frames_generated.get(),
            "encoded": m.frames_encoded.with_label_values(&[&state.info.codec]).get(),
        },
        "publishers": publishers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            }),
            metrics,
        }
    }

    async fn get(path: &str) -> (StatusCode, String) {
        let response = app(state()).oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_the_relay_counters() {
        let (status, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("livefilter_frames_generated_total 42"), "{body}");
        assert!(body.contains(r#"livefilter_publisher_state{publisher="sora",state="backoff"} 1"#), "{body}");
    }

    #[tokio::test]
    async fn status_reports_output_and_publisher_state() {
        let (status, body) = get("/status").await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["mode"], "test-pattern");
        assert_eq!(v["output"], json!({"codec": "vp8", "width": 640, "height": 360, "fps": 30}));
        assert_eq!(v["frames"]["generated"], 42);
        assert_eq!(v["publishers"]["sora"]["state"], "backoff");
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_unknown_paths_404() {
        assert_eq!(get("/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }
}
