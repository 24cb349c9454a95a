//! Prometheus metrics of one relay process, on its own registry (tests create their own).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::latency::Latency;

use crate::publish::PublisherState;

/// Why a frame did not reach a publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The publisher was not connected (connecting, reconnecting, or its SFU is gone).
    PublisherDisconnected,
    /// The publisher's small send buffer was full: the network is slower than the encoder.
    PublisherBacklog,
    /// The generator or encoder fell behind its schedule and skipped a frame.
    Late,
    /// The encoder's rate control skipped the frame.
    EncoderSkipped,
    /// The encoder failed on the frame.
    EncodeError,
    /// A newer decoded frame replaced it in the newest-frame slot before the filter took it.
    Stale,
    /// The filter failed on the frame.
    FilterError,
    /// The decoder thread's queue was full (decoding slower than frames arrive); the stream
    /// waits for the next keyframe.
    DecoderBacklog,
}

impl DropReason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::PublisherDisconnected => "publisher_disconnected",
            DropReason::PublisherBacklog => "publisher_backlog",
            DropReason::Late => "late",
            DropReason::EncoderSkipped => "encoder_skipped",
            DropReason::EncodeError => "encode_error",
            DropReason::Stale => "stale",
            DropReason::FilterError => "filter_error",
            DropReason::DecoderBacklog => "decoder_backlog",
        }
    }
}

/// All relay metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Test-pattern frames generated.
    pub frames_generated: IntCounter,
    /// Frames encoded, by codec.
    pub frames_encoded: IntCounterVec,
    /// Frames handed to the network, by publisher.
    pub frames_sent: IntCounterVec,
    /// Frames dropped, by publisher (or `pipeline`) and reason.
    pub frames_dropped: IntCounterVec,
    /// Encode time per frame.
    pub encode_seconds: Histogram,
    /// 1 for each publisher's current state, 0 for the others.
    pub publisher_state: IntGaugeVec,
    /// Publisher (re)connection attempts after the first, by publisher.
    pub publisher_reconnects: IntCounterVec,
    /// Publisher errors, by publisher and kind.
    pub publisher_errors: IntCounterVec,
    /// Keyframes requested by a viewer (PLI/FIR) or a (re)connect, by publisher.
    pub keyframe_requests: IntCounterVec,
    /// Frames received from the browser (complete frames assembled from RTP).
    pub frames_received: IntCounter,
    /// Frames decoded from the browser.
    pub frames_decoded: IntCounter,
    /// Frames the filter produced.
    pub frames_filtered: IntCounter,
    /// Input and output frame size and rate (`side`: input/output; `dim`: width/height/fps).
    pub video: GaugeVec,
    /// `/offer` answers by HTTP status.
    pub offers: IntCounterVec,
    /// Browser audio packets forwarded to publishers.
    pub audio_packets_forwarded: IntCounter,
    /// 1 for the filter's device: `requested` as configured, `device` where its model runs.
    pub filter_device: IntGaugeVec,
    /// Live filter parameter changes by result (`applied`, `invalid`, `not_live`).
    pub filter_param_updates: IntCounterVec,
    /// Browser sessions ended, by reason.
    pub sessions_ended: IntCounterVec,
    /// Refused requests other than `/offer`, by route and status.
    pub http_refusals: IntCounterVec,
    /// Open HTTP connections.
    pub http_connections: IntGauge,
    /// HTTP connections closed on accept, by the limit they hit.
    pub http_connections_refused: IntCounterVec,
    /// Keyframe requests the encoder answered, by `result`: `honoured` (forced a keyframe) or
    /// `coalesced` (merged into a keyframe already due, by the at-most-once-per-interval limit).
    pub keyframe_requests_answered: IntCounterVec,
    /// Browser input refused before decoding, by `reason` (see `ingest::Refusal`).
    pub ingest_refused: IntCounterVec,
    /// Each driving publisher's congestion-control estimate of its path, in bit/s (0 while it
    /// has none), by publisher.
    pub publisher_target_bitrate: GaugeVec,
    /// The bitrate the shared encoder is set to, in bit/s.
    pub encoder_target_bitrate: Gauge,
    /// Browser frames passed to the publishers as they came (passthrough without transcoding).
    pub frames_forwarded: IntCounter,
    /// Each simulcast layer's share of the Sora path in bit/s (0: suspended or inactive), by rid.
    pub simulcast_layer_bitrate: GaugeVec,
    /// Frames encoded per simulcast layer (the output stream's own frames count for the layer that
    /// is the output itself), by rid.
    pub simulcast_layer_frames: IntCounterVec,
    /// Per-stage latency histograms and windows.
    pub latency: Latency,
    /// From a browser's offer to its session's first filtered frame handed to the publishers.
    pub first_frame_seconds: Histogram,
    /// The current browser session's start and first output (see [`Metrics::first_frame_ms`]).
    first_frame: std::sync::Arc<std::sync::Mutex<FirstFrame>>,
    /// Each publisher's current state (the truth `/status` and `/readyz` read; the
    /// `publisher_state` gauge exports it).
    publisher_states: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, PublisherState>>>,
}

/// When the current browser session began and when its first filtered frame went out.
#[derive(Clone, Copy, Debug, Default)]
struct FirstFrame {
    began: Option<std::time::Instant>,
    sent: Option<std::time::Instant>,
}

impl Metrics {
    /// Creates and registers every metric on a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            frames_generated: IntCounter::new("livefilter_frames_generated_total", "Test-pattern frames generated")
                .expect("valid metric"),
            frames_encoded: IntCounterVec::new(
                Opts::new("livefilter_frames_encoded_total", "Frames encoded"),
                &["codec"],
            )
            .expect("valid metric"),
            frames_sent: IntCounterVec::new(
                Opts::new("livefilter_frames_sent_total", "Frames written to a publisher's track"),
                &["publisher"],
            )
            .expect("valid metric"),
            frames_dropped: IntCounterVec::new(
                Opts::new("livefilter_frames_dropped_total", "Frames dropped, by where and why"),
                &["publisher", "reason"],
            )
            .expect("valid metric"),
            first_frame_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "livefilter_session_first_frame_seconds",
                    "From a browser's offer to its first filtered frame handed to the publishers",
                )
                .buckets(vec![0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]),
            )
            .expect("valid metric"),
            first_frame: Default::default(),
            encode_seconds: Histogram::with_opts(
                HistogramOpts::new("livefilter_encode_seconds", "Encode time per frame").buckets(vec![
                    0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.033, 0.050, 0.100,
                ]),
            )
            .expect("valid metric"),
            publisher_state: IntGaugeVec::new(
                Opts::new("livefilter_publisher_state", "1 for the publisher's current state"),
                &["publisher", "state"],
            )
            .expect("valid metric"),
            publisher_reconnects: IntCounterVec::new(
                Opts::new(
                    "livefilter_publisher_reconnects_total",
                    "Publisher reconnection attempts",
                ),
                &["publisher"],
            )
            .expect("valid metric"),
            publisher_errors: IntCounterVec::new(
                Opts::new("livefilter_publisher_errors_total", "Publisher errors by kind"),
                &["publisher", "kind"],
            )
            .expect("valid metric"),
            keyframe_requests: IntCounterVec::new(
                Opts::new("livefilter_keyframe_requests_total", "Keyframe requests received"),
                &["publisher"],
            )
            .expect("valid metric"),
            frames_received: IntCounter::new("livefilter_frames_received_total", "Frames received from the browser")
                .expect("valid metric"),
            frames_decoded: IntCounter::new("livefilter_frames_decoded_total", "Frames decoded from the browser")
                .expect("valid metric"),
            frames_filtered: IntCounter::new("livefilter_frames_filtered_total", "Frames the filter produced")
                .expect("valid metric"),
            video: GaugeVec::new(
                Opts::new("livefilter_video", "Input/output frame width, height and fps"),
                &["side", "dim"],
            )
            .expect("valid metric"),
            offers: IntCounterVec::new(
                Opts::new("livefilter_offer_requests_total", "/offer answers by status"),
                &["status"],
            )
            .expect("valid metric"),
            audio_packets_forwarded: IntCounter::new(
                "livefilter_audio_packets_forwarded_total",
                "Browser Opus packets forwarded to publishers",
            )
            .expect("valid metric"),
            filter_device: IntGaugeVec::new(
                Opts::new(
                    "livefilter_filter_device",
                    "1 for the filter's device (requested vs. where its model runs)",
                ),
                &["filter", "requested", "device"],
            )
            .expect("valid metric"),
            filter_param_updates: IntCounterVec::new(
                Opts::new(
                    "livefilter_filter_param_updates_total",
                    "Live filter parameter changes by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
            sessions_ended: IntCounterVec::new(
                Opts::new("livefilter_sessions_ended_total", "Browser sessions ended, by reason"),
                &["reason"],
            )
            .expect("valid metric"),
            http_refusals: IntCounterVec::new(
                Opts::new(
                    "livefilter_http_refusals_total",
                    "Refused HTTP requests other than /offer, by route and status",
                ),
                &["route", "status"],
            )
            .expect("valid metric"),
            http_connections: IntGauge::new("livefilter_http_connections", "Open HTTP connections")
                .expect("valid metric"),
            http_connections_refused: IntCounterVec::new(
                Opts::new(
                    "livefilter_http_connections_refused_total",
                    "HTTP connections closed on accept, by the limit they hit",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            keyframe_requests_answered: IntCounterVec::new(
                Opts::new(
                    "livefilter_keyframe_requests_answered_total",
                    "Keyframe requests the encoder answered, honoured or coalesced",
                ),
                &["result"],
            )
            .expect("valid metric"),
            ingest_refused: IntCounterVec::new(
                Opts::new(
                    "livefilter_ingest_refused_total",
                    "Browser input refused before decoding, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            publisher_target_bitrate: GaugeVec::new(
                Opts::new(
                    "livefilter_publisher_target_bitrate_bps",
                    "A publisher's congestion-control estimate of its path in bit/s (0: none)",
                ),
                &["publisher"],
            )
            .expect("valid metric"),
            encoder_target_bitrate: Gauge::new(
                "livefilter_encoder_target_bitrate_bps",
                "The bitrate the shared encoder is set to, in bit/s",
            )
            .expect("valid metric"),
            frames_forwarded: IntCounter::new(
                "livefilter_frames_forwarded_total",
                "Browser frames passed to the publishers without decoding or re-encoding (passthrough)",
            )
            .expect("valid metric"),
            simulcast_layer_bitrate: GaugeVec::new(
                Opts::new(
                    "livefilter_simulcast_layer_bitrate_bps",
                    "A simulcast layer's share of the Sora path in bit/s (0: suspended or inactive)",
                ),
                &["rid"],
            )
            .expect("valid metric"),
            simulcast_layer_frames: IntCounterVec::new(
                Opts::new(
                    "livefilter_simulcast_layer_frames_total",
                    "Frames encoded for a simulcast layer",
                ),
                &["rid"],
            )
            .expect("valid metric"),
            latency: Latency::new(&registry),
            publisher_states: Default::default(),
            registry,
        };
        for c in [
            Box::new(m.frames_generated.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.frames_encoded.clone()),
            Box::new(m.frames_sent.clone()),
            Box::new(m.frames_dropped.clone()),
            Box::new(m.encode_seconds.clone()),
            Box::new(m.first_frame_seconds.clone()),
            Box::new(m.publisher_state.clone()),
            Box::new(m.publisher_reconnects.clone()),
            Box::new(m.publisher_errors.clone()),
            Box::new(m.keyframe_requests.clone()),
            Box::new(m.frames_received.clone()),
            Box::new(m.frames_decoded.clone()),
            Box::new(m.frames_filtered.clone()),
            Box::new(m.video.clone()),
            Box::new(m.offers.clone()),
            Box::new(m.audio_packets_forwarded.clone()),
            Box::new(m.filter_device.clone()),
            Box::new(m.filter_param_updates.clone()),
            Box::new(m.sessions_ended.clone()),
            Box::new(m.http_refusals.clone()),
            Box::new(m.http_connections.clone()),
            Box::new(m.http_connections_refused.clone()),
            Box::new(m.keyframe_requests_answered.clone()),
            Box::new(m.ingest_refused.clone()),
            Box::new(m.publisher_target_bitrate.clone()),
            Box::new(m.encoder_target_bitrate.clone()),
            Box::new(m.frames_forwarded.clone()),
            Box::new(m.simulcast_layer_bitrate.clone()),
            Box::new(m.simulcast_layer_frames.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// A browser session began at `at` (its offer was accepted): the first-frame clock restarts.
    pub fn session_began(&self, at: std::time::Instant) {
        *self
            .first_frame
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = FirstFrame {
            began: Some(at),
            sent: None,
        };
    }

    /// A filtered frame went to the publishers at `at`; the session's first is timed.
    pub fn frame_out(&self, at: std::time::Instant) {
        let mut f = self
            .first_frame
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(began), None) = (f.began, f.sent) {
            f.sent = Some(at);
            self.first_frame_seconds
                .observe(at.saturating_duration_since(began).as_secs_f64());
        }
    }

    /// Milliseconds from the current (or last) browser session's offer to its first filtered
    /// frame; `None` before one went out.
    pub fn first_frame_ms(&self) -> Option<f64> {
        let f = *self
            .first_frame
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f.sent?.saturating_duration_since(f.began?).as_secs_f64() * 1000.0)
    }

    /// Counts one dropped frame.
    pub fn drop_frame(&self, publisher: &str, reason: DropReason) {
        self.frames_dropped
            .with_label_values(&[publisher, reason.as_str()])
            .inc();
    }

    /// Records the current size and rate of one side (`input` or `output`).
    pub fn set_video(&self, side: &str, width: u32, height: u32, fps: f64) {
        self.video.with_label_values(&[side, "width"]).set(f64::from(width));
        self.video.with_label_values(&[side, "height"]).set(f64::from(height));
        self.video.with_label_values(&[side, "fps"]).set(fps);
    }

    /// The current size and rate of one side.
    pub fn video_of(&self, side: &str) -> (u32, u32, f64) {
        let get = |dim| self.video.with_label_values(&[side, dim]).get();
        (get("width") as u32, get("height") as u32, get("fps"))
    }

    /// Records a publisher's state, clearing its previous one.
    pub fn set_publisher_state(&self, publisher: &str, state: PublisherState) {
        self.publisher_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(publisher.to_owned(), state);
        for s in PublisherState::ALL {
            self.publisher_state
                .with_label_values(&[publisher, s.as_str()])
                .set(i64::from(s == state));
        }
    }

    /// A publisher's current state; `None` before it reported one.
    pub fn publisher_state_of(&self, publisher: &str) -> Option<PublisherState> {
        self.publisher_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(publisher)
            .copied()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which the typed API prevents.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
