//! The relay's `GET /status` JSON.
//!
//! Reading is lenient on purpose: unknown fields are ignored and missing ones take their default,
//! so a newer or older relay never breaks the operator. Unknown state names read as `unknown`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole `/status` document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayStatus {
    /// The relay as a whole: `publishing` while a browser's video is received and a publisher
    /// is connected, else the session's state (`idle` without a session).
    pub state: OverallState,
    /// `test-pattern` or `serve`.
    pub mode: String,
    /// The filter's name.
    pub filter: String,
    /// Where the filter's model runs (serve mode with a filter).
    pub inference: Option<Inference>,
    /// The browser session (serve mode).
    pub session: Option<SessionView>,
    /// The input video (the browser's).
    pub input: VideoShape,
    /// The output video.
    pub output: OutputShape,
    /// Frame counters since start.
    pub frames: Frames,
    /// Latency percentiles over the recent window.
    pub latency_ms: LatencySummary,
    /// Each configured publisher by name (`sora`, `whip`, `preview`).
    pub publishers: BTreeMap<String, PublisherStatus>,
}

/// The relay's overall state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverallState {
    /// No browser (serve) and no connected publisher.
    #[default]
    Idle,
    /// A browser's offer was answered; its media has not arrived yet.
    Connecting,
    /// The browser's video arrives; no publisher is connected.
    Receiving,
    /// Video flows out (a browser's, or the test pattern's).
    Publishing,
    /// A state this operator does not know.
    #[serde(other)]
    Unknown,
}

/// Where inference runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inference {
    /// The device the model runs on (`cpu`, `cuda:0`); `None` before it loaded.
    pub device: Option<String>,
    /// The configured device.
    pub requested_device: String,
}

/// The browser session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionView {
    /// `idle`, `connecting` or `receiving`.
    pub state: SessionState,
    /// Seconds since the offer was answered.
    pub age_secs: Option<f64>,
    /// The negotiated input codec.
    pub codec: Option<String>,
    /// Milliseconds from the offer to the session's first filtered frame handed to the
    /// publishers (`None` until one went out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_frame_ms: Option<f64>,
}

/// The browser session's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// No browser.
    #[default]
    Idle,
    /// The offer was answered; media has not arrived yet.
    Connecting,
    /// The browser's video arrives.
    Receiving,
    /// A state this operator does not know.
    #[serde(other)]
    Unknown,
}

/// Size and rate of a video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VideoShape {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Frames per second, measured.
    pub fps: f64,
}

/// The output video.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputShape {
    /// `vp8` or `h264`.
    pub codec: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Frames per second, measured.
    pub fps: f64,
}

/// Frame counters since the relay started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Frames {
    /// Test-pattern frames drawn.
    pub generated: u64,
    /// Frames assembled from the browser's RTP in the current (or last) session.
    pub received: u64,
    /// Frames decoded.
    pub decoded: u64,
    /// Frames dropped because a newer one arrived first.
    pub dropped_stale: u64,
    /// Frames through the filter.
    pub filtered: u64,
    /// Frames encoded.
    pub encoded: u64,
    /// Frames sent by the busiest publisher.
    pub sent: u64,
}

/// Latency of the whole pipeline and of each stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    /// Capture (or arrival) to send.
    pub total: Percentiles,
    /// Each stage by name (`decode`, `filter`, `encode`, ...).
    pub stages: BTreeMap<String, Percentiles>,
}

/// Percentiles of a window, in milliseconds; all zero when the window is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples in the window.
    pub samples: u64,
}

impl Percentiles {
    /// Whether the window held no samples (the figures mean nothing then).
    pub fn is_empty(&self) -> bool {
        self.samples == 0 && self.p50 == 0.0 && self.p95 == 0.0 && self.p99 == 0.0
    }
}

/// One publisher.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublisherStatus {
    /// Its connection state.
    pub state: PublisherState,
    /// Frames it sent.
    pub frames_sent: u64,
    /// Viewers watching (the local preview only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u64>,
}

/// A publisher's connection state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherState {
    /// Not started yet (no state recorded).
    #[default]
    Starting,
    /// Waiting for something to send.
    Idle,
    /// Connecting to its endpoint.
    Connecting,
    /// Connected and sending.
    Connected,
    /// Lost its connection; retrying after a pause.
    Backoff,
    /// Gave up for good.
    Stopped,
    /// A state this operator does not know.
    #[serde(other)]
    Unknown,
}

impl PublisherState {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherState::Starting => "starting",
            PublisherState::Idle => "idle",
            PublisherState::Connecting => "connecting",
            PublisherState::Connected => "connected",
            PublisherState::Backoff => "backoff",
            PublisherState::Stopped => "stopped",
            PublisherState::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The document as the relay's `/status` handler writes it today (serve mode, streaming).
    fn serve_document() -> serde_json::Value {
        json!({
            "state": "publishing",
            "mode": "serve",
            "filter": "background-blur",
            "inference": {"device": "cuda:0", "requested_device": "cuda:0"},
            "session": {"state": "receiving", "age_secs": 12.5, "codec": "vp8"},
            "input": {"width": 1280, "height": 720, "fps": 29.5},
            "output": {"codec": "vp8", "width": 1280, "height": 720, "fps": 30.0},
            "frames": {"generated": 0, "received": 370, "decoded": 370, "dropped_stale": 3,
                       "filtered": 367, "encoded": 367, "sent": 366},
            "latency_ms": {
                "total": {"p50": 20.0, "p95": 35.5, "p99": 50.0, "samples": 300},
                "stages": {"filter": {"p50": 8.0, "p95": 12.0, "p99": 15.0, "samples": 300}}
            },
            "publishers": {
                "preview": {"state": "connected", "frames_sent": 366, "viewers": 1},
                "sora": {"state": "connected", "frames_sent": 366}
            }
        })
    }

    #[test]
    fn a_serve_document_round_trips_unchanged() {
        let doc = serve_document();

        let status: RelayStatus = serde_json::from_value(doc.clone()).unwrap();

        assert_eq!(status.state, OverallState::Publishing);
        assert_eq!(status.session.as_ref().map(|s| s.state), Some(SessionState::Receiving));
        assert_eq!(status.frames.sent, 366);
        assert_eq!(status.latency_ms.stages["filter"].p95, 12.0);
        assert_eq!(status.publishers["preview"].viewers, Some(1));
        assert_eq!(status.publishers["sora"].state, PublisherState::Connected);
        assert_eq!(serde_json::to_value(&status).unwrap(), doc);
    }

    #[test]
    fn a_test_pattern_document_with_nulls_round_trips_unchanged() {
        let doc = json!({
            "state": "idle", "mode": "test-pattern", "filter": "passthrough",
            "inference": null, "session": null,
            "input": {"width": 0, "height": 0, "fps": 0.0},
            "output": {"codec": "h264", "width": 640, "height": 360, "fps": 15.0},
            "frames": {"generated": 42, "received": 0, "decoded": 0, "dropped_stale": 0,
                       "filtered": 42, "encoded": 42, "sent": 0},
            "latency_ms": {"total": {"p50": 0.0, "p95": 0.0, "p99": 0.0, "samples": 0}, "stages": {}},
            "publishers": {"sora": {"state": "backoff", "frames_sent": 0}}
        });

        let status: RelayStatus = serde_json::from_value(doc.clone()).unwrap();

        assert_eq!(status.publishers["sora"].state, PublisherState::Backoff);
        assert!(status.latency_ms.total.is_empty());
        assert_eq!(serde_json::to_value(&status).unwrap(), doc);
    }

    #[test]
    fn added_fields_and_unknown_states_are_tolerated() {
        let mut doc = serve_document();
        doc["health"] = json!({"ready": true, "reasons": []});
        doc["frames"]["new_counter"] = json!(5);
        doc["publishers"]["sora"]["state"] = json!("draining");
        doc["session"]["state"] = json!("renegotiating");

        let status: RelayStatus = serde_json::from_value(doc).unwrap();

        assert_eq!(status.publishers["sora"].state, PublisherState::Unknown);
        assert_eq!(status.session.map(|s| s.state), Some(SessionState::Unknown));
        assert_eq!(status.frames.received, 370);
    }

    #[test]
    fn an_older_relay_without_most_fields_reads_as_defaults() {
        let status: RelayStatus = serde_json::from_value(json!({"state": "receiving"})).unwrap();

        assert_eq!(status.state, OverallState::Receiving);
        assert_eq!(status.frames, Frames::default());
        assert!(status.publishers.is_empty());
    }

    #[test]
    fn publisher_state_names_are_the_wire_names() {
        for s in [
            PublisherState::Starting,
            PublisherState::Idle,
            PublisherState::Connecting,
            PublisherState::Connected,
            PublisherState::Backoff,
            PublisherState::Stopped,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
    }
}
