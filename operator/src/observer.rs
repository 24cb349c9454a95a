//! Observation apart from convergence: reads each ready relay's `/status` on its own cadence,
//! exports the figures to Prometheus, and writes `status.metrics` at most once per status
//! interval and only when it moved beyond a tolerance. When what the phase depends on changes
//! (the Publishing condition), it wakes the session's reconcile, which reads the latest
//! observation instead of the relay. Reconcile never reads relays; the observer never touches
//! phase or conditions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::crd::{LiveFilterSession, RelayMetrics};
use crate::metrics::Metrics;
use crate::status::{self, Cond, RelayStatus};

/// The field manager of the observer's status writes (it owns `status.metrics` only).
pub const OBSERVER_MANAGER: &str = "livefilter-operator-observer";

/// Why the relay did not take a filter change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterPatchError {
    /// The relay answered and refused (the change needs a new process, or is invalid).
    #[error("the relay refused the filter change (HTTP {status}): {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's answer.
        body: String,
    },
    /// The relay could not be reached; try again later.
    #[error("cannot reach the relay: {0}")]
    Unreachable(String),
}

/// Talks to relays: `GET /status`, `PATCH /filter` (HTTP in production, doubles in tests and
/// the bench).
pub trait RelayApi: Send + Sync {
    /// The relay's `/status` at `base` (`http://ip:port`), or why there is none.
    fn fetch(&self, base: String) -> BoxFuture<'static, Result<RelayStatus, String>>;
    /// Merges `patch` into the running filter's parameters (RFC 7396), with the session's
    /// `/offer` token as the bearer token.
    fn patch_filter(
        &self,
        base: String,
        token: Option<String>,
        patch: serde_json::Value,
    ) -> BoxFuture<'static, Result<(), FilterPatchError>>;
}

/// The relays' HTTP API with a short timeout.
pub struct HttpRelayApi {
    http: reqwest::Client,
}

impl HttpRelayApi {
    /// A client with a 2-second timeout per request.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
        })
    }
}

impl RelayApi for HttpRelayApi {
    fn fetch(&self, base: String) -> BoxFuture<'static, Result<RelayStatus, String>> {
        let http = self.http.clone();
        Box::pin(async move {
            let response = http
                .get(format!("{base}/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            response.json().await.map_err(|e| e.to_string())
        })
    }

    fn patch_filter(
        &self,
        base: String,
        token: Option<String>,
        patch: serde_json::Value,
    ) -> BoxFuture<'static, Result<(), FilterPatchError>> {
        let http = self.http.clone();
        Box::pin(async move {
            let mut request = http
                .patch(format!("{base}/filter"))
                .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
                .body(patch.to_string());
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let response = request
                .send()
                .await
                .map_err(|e| FilterPatchError::Unreachable(e.to_string()))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response.text().await.unwrap_or_default();
            if status.is_server_error() {
                return Err(FilterPatchError::Unreachable(format!(
                    "HTTP {}: {body}",
                    status.as_u16()
                )));
            }
            Err(FilterPatchError::Refused {
                status: status.as_u16(),
                body,
            })
        })
    }
}

/// How often the observer reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct ObserverSettings {
    /// Between two reads of one relay (short, so Streaming shows within seconds).
    pub read_interval: Duration,
    /// At most one `status.metrics` write per session per this interval.
    pub write_interval: Duration,
    /// Reads at once across all relays.
    pub concurrency: usize,
}

impl Default for ObserverSettings {
    fn default() -> Self {
        Self {
            read_interval: Duration::from_secs(1),
            write_interval: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// A relay to observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The session's namespace.
    pub namespace: String,
    /// The session's name.
    pub name: String,
    /// The relay's HTTP base (`http://ip:port`).
    pub base: String,
    /// The relay Pod observed (a new Pod starts a new observation).
    pub pod_uid: String,
}

/// What the latest read said, as the reconcile uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The Pod it was read from.
    pub pod_uid: String,
    /// The Publishing condition.
    pub publishing: Cond,
}

struct Entry {
    target: Target,
    observation: Option<Observation>,
    last_sent: Option<u64>,
    written: Option<(RelayMetrics, Instant)>,
    next_read: Instant,
}

/// The observer; shared by the reconcile (which registers relays) and its own task.
pub struct Observer {
    /// The relays' API (the reconcile uses it for live filter changes).
    pub relays: Arc<dyn RelayApi>,
    entries: Mutex<HashMap<String, Entry>>,
    client: kube::Client,
    metrics: Metrics,
    settings: ObserverSettings,
    wake: mpsc::UnboundedSender<ObjectRef<LiveFilterSession>>,
}

impl Observer {
    /// An observer and the stream of sessions it wakes (feed it to the controller).
    pub fn new(
        client: kube::Client,
        relays: Arc<dyn RelayApi>,
        metrics: Metrics,
        settings: ObserverSettings,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectRef<LiveFilterSession>>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let observer = Self {
            entries: Mutex::default(),
            relays,
            client,
            metrics,
            settings,
            wake,
        };
        (observer, woken)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or keeps) observing a ready relay; a new Pod starts afresh and is read at once.
    pub fn watch(&self, key: &str, target: Target) {
        let mut entries = self.entries();
        if entries.get(key).is_some_and(|e| e.target == target) {
            return;
        }
        entries.insert(
            key.to_owned(),
            Entry {
                target,
                observation: None,
                last_sent: None,
                written: None,
                next_read: Instant::now(),
            },
        );
    }

    /// Stops observing (the relay is not ready, or the session is gone).
    pub fn forget(&self, key: &str) {
        if self.entries().remove(key).is_some() {
            self.metrics.forget_relay(key);
        }
    }

    /// The latest observation of the session's relay Pod `pod_uid`.
    pub fn observation(&self, key: &str, pod_uid: &str) -> Option<Observation> {
        self.entries()
            .get(key)
            .and_then(|e| e.observation.clone())
            .filter(|o| o.pod_uid == pod_uid)
    }

    /// Reads the relays that are due, until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.read_interval.min(Duration::from_millis(500)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let due: Vec<String> = {
                let mut entries = self.entries();
                entries
                    .iter_mut()
                    .filter(|(_, e)| e.next_read <= now)
                    .map(|(k, e)| {
                        e.next_read = now + self.settings.read_interval;
                        k.clone()
                    })
                    .collect()
            };
            futures_util::stream::iter(due)
                .for_each_concurrent(self.settings.concurrency.max(1), |key| {
                    let me = self.clone();
                    async move { me.observe(&key).await }
                })
                .await;
        }
    }

    /// Reads one relay and acts on what changed.
    pub async fn observe(&self, key: &str) {
        let Some(target) = self.entries().get(key).map(|e| e.target.clone()) else {
            return;
        };
        let read = self.relays.fetch(target.base.clone()).await;
        self.metrics
            .relay_reads
            .with_label_values(&[if read.is_ok() { "ok" } else { "error" }])
            .inc();
        let now = Timestamp::now();
        let (wake, write) = {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(key).filter(|e| e.target == target) else {
                return;
            };
            let publishing = status::publishing(&Cond::yes("Ready", ""), Some(&read), e.last_sent);
            let observation = Observation {
                pod_uid: target.pod_uid.clone(),
                publishing,
            };
            let wake = e
                .observation
                .as_ref()
                .map(|o| (o.publishing.status, &o.publishing.reason))
                != Some((observation.publishing.status, &observation.publishing.reason));
            e.observation = Some(observation);
            let mut write = None;
            match &read {
                Ok(r) => {
                    e.last_sent = Some(r.frames.sent);
                    let m = status::relay_metrics(r, now);
                    export(&self.metrics, key, &m);
                    let due = e
                        .written
                        .as_ref()
                        .is_none_or(|(_, at)| at.elapsed() >= self.settings.write_interval);
                    if due && e.written.as_ref().is_none_or(|(old, _)| moved(old, &m)) {
                        e.written = Some((m.clone(), Instant::now()));
                        write = Some(m);
                    }
                }
                Err(error) => debug!(session = %key, %error, "cannot read the relay's /status"),
            }
            (wake, write)
        };
        if wake {
            let _ = self.wake.send(ObjectRef::new(&target.name).within(&target.namespace));
        }
        if let Some(m) = write {
            let api: Api<LiveFilterSession> = Api::namespaced(self.client.clone(), &target.namespace);
            let patch = json!({
                "apiVersion": "livefilter.dev/v1alpha1",
                "kind": "LiveFilterSession",
                "status": {"metrics": m},
            });
            match api
                .patch_status(
                    &target.name,
                    &PatchParams::apply(OBSERVER_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => self.metrics.status_writes.with_label_values(&["observer"]).inc(),
                Err(error) => {
                    warn!(session = %key, %error, "cannot write the relay's figures");
                    if let Some(e) = self.entries().get_mut(key) {
                        e.written = None;
                    }
                }
            }
        }
    }
}

fn export(metrics: &Metrics, key: &str, m: &RelayMetrics) {
    let total = m.latency_ms.as_ref().and_then(|l| l.total);
    metrics.set_relay_figures(
        key,
        &[
            ("fps_in", m.fps_in),
            ("fps_out", m.fps_out),
            ("dropped_frames", m.dropped_frames.map(|d| d as f64)),
            ("latency_p50_ms", total.and_then(|t| t.p50)),
            ("latency_p95_ms", total.and_then(|t| t.p95)),
        ],
    );
}

/// Whether the figures moved enough to be worth a write: a state changed, or a rate or
/// latency moved by more than 10 % (and more than 1 unit, so near-zero noise is ignored).
pub fn moved(old: &RelayMetrics, new: &RelayMetrics) -> bool {
    let far = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > 1.0 && (a - b).abs() > 0.1 * a.abs().max(b.abs()),
        (None, None) => false,
        _ => true,
    };
    let p = |m: &RelayMetrics, f: fn(&crate::crd::Percentiles) -> Option<f64>| {
        m.latency_ms.as_ref().and_then(|l| l.total.as_ref()).and_then(f)
    };
    old.state != new.state
        || old.publishers != new.publishers
        || far(old.fps_in, new.fps_in)
        || far(old.fps_out, new.fps_out)
        || far(p(old, |t| t.p50), p(new, |t| t.p50))
        || far(p(old, |t| t.p95), p(new, |t| t.p95))
        || far(p(old, |t| t.p99), p(new, |t| t.p99))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LatencyStatus, Percentiles};

    fn figures(fps: f64, p95: f64) -> RelayMetrics {
        RelayMetrics {
            state: Some("publishing".into()),
            fps_out: Some(fps),
            latency_ms: Some(LatencyStatus {
                total: Some(Percentiles {
                    p50: Some(20.0),
                    p95: Some(p95),
                    p99: Some(40.0),
                }),
                stages: Default::default(),
            }),
            ..RelayMetrics::default()
        }
    }

    #[test]
    fn small_moves_are_not_worth_a_write_but_large_ones_and_state_changes_are() {
        let base = figures(30.0, 31.0);

        assert!(!moved(&base, &figures(29.5, 32.5)));
        assert!(moved(&base, &figures(30.0, 45.0)));
        assert!(moved(&base, &figures(20.0, 31.0)));
        let mut idle = base.clone();
        idle.state = Some("idle".into());
        assert!(moved(&base, &idle));
    }
}
