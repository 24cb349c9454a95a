//! The operator's Prometheus metrics, on its own registry (each test creates its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::crd::Phase;

/// The figures exported per relay.
pub const RELAY_FIGURES: [&str; 5] = [
    "fps_in",
    "fps_out",
    "dropped_frames",
    "latency_p50_ms",
    "latency_p95_ms",
];

/// Every operator metric.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconcile_runs: IntCounter,
    /// Reconciles that failed, by error kind.
    pub reconcile_failures: IntCounterVec,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Sessions by phase.
    pub sessions: IntGaugeVec,
    /// ImageFlux API calls by target and result.
    pub imageflux_calls: IntCounterVec,
    /// Reads of relays' `/status` by result (`ok`, `error`).
    pub relay_reads: IntCounterVec,
    /// Each relay's latest figures, by session and figure (`fps_in`, `fps_out`, `latency_p95_ms`, ...).
    pub relay_figures: GaugeVec,
    /// Status writes by writer (`reconcile`, `observer`).
    pub status_writes: IntCounterVec,
    /// ImageFlux channels in the account that no session records (a leak, or another owner's).
    pub stray_channels: IntGauge,
    /// Stray ImageFlux channels the sweep deleted (`--delete-orphan-channels`).
    pub stray_channels_deleted: IntCounter,
    phases: Arc<Mutex<HashMap<String, Phase>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics on a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconcile_runs =
            IntCounter::new("livefilter_operator_reconcile_runs_total", "Reconciles started").expect("valid metric");
        let reconcile_failures = IntCounterVec::new(
            Opts::new(
                "livefilter_operator_reconcile_failures_total",
                "Reconciles that failed, by error kind",
            ),
            &["error"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new("livefilter_operator_reconcile_duration_seconds", "Reconcile duration").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let sessions = IntGaugeVec::new(
            Opts::new("livefilter_operator_sessions", "Sessions by phase"),
            &["phase"],
        )
        .expect("valid metric");
        let imageflux_calls = IntCounterVec::new(
            Opts::new(
                "livefilter_operator_imageflux_calls_total",
                "ImageFlux API calls by target and result",
            ),
            &["target", "result"],
        )
        .expect("valid metric");
        let relay_reads = IntCounterVec::new(
            Opts::new(
                "livefilter_operator_relay_reads_total",
                "Reads of relays' /status by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let relay_figures = GaugeVec::new(
            Opts::new(
                "livefilter_operator_relay_figure",
                "Each relay's latest figures from /status, by session and figure",
            ),
            &["session", "figure"],
        )
        .expect("valid metric");
        let status_writes = IntCounterVec::new(
            Opts::new("livefilter_operator_status_writes_total", "Status writes by writer"),
            &["writer"],
        )
        .expect("valid metric");
        let stray_channels = IntGauge::new(
            "livefilter_operator_stray_channels",
            "ImageFlux channels in the account that no session records",
        )
        .expect("valid metric");
        let stray_channels_deleted = IntCounter::new(
            "livefilter_operator_stray_channels_deleted_total",
            "Stray ImageFlux channels the sweep deleted",
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconcile_runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_failures.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(sessions.clone()),
            Box::new(imageflux_calls.clone()),
            Box::new(relay_reads.clone()),
            Box::new(relay_figures.clone()),
            Box::new(status_writes.clone()),
            Box::new(stray_channels.clone()),
            Box::new(stray_channels_deleted.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        for phase in Phase::ALL {
            sessions.with_label_values(&[phase.as_str()]).set(0);
        }
        Self {
            registry,
            reconcile_runs,
            reconcile_failures,
            reconcile_duration,
            sessions,
            imageflux_calls,
            relay_reads,
            relay_figures,
            status_writes,
            stray_channels,
            stray_channels_deleted,
            phases: Arc::default(),
        }
    }

    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconcile_runs.inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_failures.with_label_values(&[kind]).inc();
    }

    /// Records a session's phase for the by-phase gauge.
    pub fn set_phase(&self, session: &str, phase: Phase) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases.insert(session.to_owned(), phase);
        self.publish_phases(&phases);
    }

    /// Forgets a deleted session.
    pub fn forget(&self, session: &str) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases.remove(session);
        self.publish_phases(&phases);
        self.forget_relay(session);
    }

    /// Exports a relay's figures (`None` removes a figure).
    pub fn set_relay_figures(&self, session: &str, figures: &[(&str, Option<f64>)]) {
        for (figure, value) in figures {
            match value {
                Some(v) => self.relay_figures.with_label_values(&[session, figure]).set(*v),
                None => {
                    let _ = self.relay_figures.remove_label_values(&[session, figure]);
                }
            }
        }
    }

    /// Removes a relay's figures (its Pod is gone or not ready).
    pub fn forget_relay(&self, session: &str) {
        for figure in RELAY_FIGURES {
            let _ = self.relay_figures.remove_label_values(&[session, figure]);
        }
    }

    fn publish_phases(&self, phases: &HashMap<String, Phase>) {
        for phase in Phase::ALL {
            let n = phases.values().filter(|p| **p == phase).count();
            self.sessions
                .with_label_values(&[phase.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Observes the reconcile duration when dropped, so early returns are timed too.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_gauge_counts_each_session_once_in_its_latest_phase() {
        let m = Metrics::new();
        m.set_phase("ns/a", Phase::Provisioning);
        m.set_phase("ns/b", Phase::Provisioning);
        m.set_phase("ns/a", Phase::Streaming);
        m.forget("ns/b");

        let text = m.render();

        assert!(
            text.contains("livefilter_operator_sessions{phase=\"Streaming\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("livefilter_operator_sessions{phase=\"Provisioning\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_reconcile_is_counted_and_timed_when_its_timer_drops() {
        let m = Metrics::new();

        drop(m.reconcile_started());
        m.reconcile_failed("imageflux");

        let text = m.render();
        assert!(text.contains("livefilter_operator_reconcile_runs_total 1"), "{text}");
        assert!(
            text.contains("livefilter_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("livefilter_operator_reconcile_failures_total{error=\"imageflux\"} 1"),
            "{text}"
        );
    }
}
