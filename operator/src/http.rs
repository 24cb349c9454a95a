//! The operator's own HTTP endpoints: `/metrics` (Prometheus) and `/healthz`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// The router, testable in-process.
pub fn app(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        assert_eq!(
            get(app(Metrics::new()), "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
    }

    #[tokio::test]
    async fn metrics_expose_every_operator_family() {
        let m = Metrics::new();
        m.imageflux_calls
            .with_label_values(&["ImageFlux_20180501.DeleteChannel", "ok"])
            .inc();
        drop(m.reconcile_started());

        let (status, text) = get(app(m), "/metrics").await;

        assert_eq!(status, StatusCode::OK);
        for family in [
            "livefilter_operator_reconcile_runs_total 1",
            "livefilter_operator_reconcile_duration_seconds_bucket",
            "livefilter_operator_sessions{phase=\"Streaming\"} 0",
            "livefilter_operator_imageflux_calls_total{result=\"ok\",target=\"ImageFlux_20180501.DeleteChannel\"} 1",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
    }
}
