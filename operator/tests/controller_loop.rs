//! The real controller loop (watches, triggers, observer, reconcile) against the in-memory API
//! double with watch semantics, a relay double and, for channels, a local ImageFlux double.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use futures_util::future::BoxFuture;
use livefilter_contract::status::RelayStatus;
use livefilter_operator::apidouble::ApiDouble;
use livefilter_operator::controller::Settings;
use livefilter_operator::imageflux::ImageFluxClient;
use livefilter_operator::metrics::Metrics;
use livefilter_operator::observer::{FilterPatchError, ObserverSettings, RelayApi};
use livefilter_operator::runner::{self, RunConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(10);

/// A relay whose `/status` says what the test sets, and which records `PATCH /filter` calls.
#[derive(Default)]
struct Relays {
    status: Mutex<Value>,
    sent: Mutex<u64>,
    patches: Mutex<Vec<(String, Option<String>, Value)>>,
}

impl Relays {
    fn set(&self, v: Value) {
        *self.status.lock().unwrap() = v;
    }
}

fn idle() -> Value {
    json!({"state": "idle", "mode": "serve", "session": {"state": "idle"},
           "frames": {"sent": 0}, "publishers": {"sora": {"state": "connected"}}})
}

fn streaming() -> Value {
    json!({"state": "publishing", "mode": "serve", "session": {"state": "receiving"},
           "frames": {"sent": 1}, "latency_ms": {"total": {"p50": 20.0, "p95": 30.0, "p99": 40.0, "samples": 100}},
           "publishers": {"sora": {"state": "connected"}}})
}

impl RelayApi for Relays {
    fn fetch(&self, _base: String) -> BoxFuture<'static, Result<RelayStatus, String>> {
        let mut v = self.status.lock().unwrap().clone();
        if v.pointer("/session/state") == Some(&json!("receiving")) {
            let mut sent = self.sent.lock().unwrap();
            *sent += 30;
            v["frames"]["sent"] = json!(*sent);
            // The latency wanders by more than the write tolerance on every read.
            v["latency_ms"]["total"]["p95"] = json!(if (*sent / 30).is_multiple_of(2) { 30.0 } else { 45.0 });
        }
        Box::pin(async move { serde_json::from_value(v).map_err(|e| e.to_string()) })
    }

    fn patch_filter(
        &self,
        base: String,
        token: Option<String>,
        patch: Value,
    ) -> BoxFuture<'static, Result<(), FilterPatchError>> {
        self.patches.lock().unwrap().push((base, token, patch));
        Box::pin(async { Ok(()) })
    }
}

fn sora_session(name: &str) -> Value {
    json!({
        "apiVersion": "livefilter.dev/v1alpha1", "kind": "LiveFilterSession",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"output": {"sora": {"signalingUrls": ["wss://sora.example/signaling"], "channelId": "room"}}}
    })
}

struct Loop {
    api: ApiDouble,
    relays: Arc<Relays>,
    metrics: Metrics,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    fn start(api: ApiDouble, relays: Arc<Relays>, imageflux_url: &str) -> Self {
        Self::start_with(api, relays, imageflux_url, |_| {})
    }

    fn start_with(api: ApiDouble, relays: Arc<Relays>, imageflux_url: &str, tune: impl FnOnce(&mut Settings)) -> Self {
        let metrics = Metrics::new();
        let config = RunConfig {
            namespace: None,
            concurrency: 4,
            http_ports: "38000-38099".parse().unwrap(),
            udp_ports: "40000-40099".parse().unwrap(),
            settings: Settings {
                status_interval: INTERVAL,
                ..Settings::default()
            },
            observer: ObserverSettings {
                read_interval: Duration::from_secs(1),
                write_interval: INTERVAL,
                concurrency: 4,
            },
            instance: Some("test".into()),
        };
        let mut config = config;
        tune(&mut config.settings);
        let token = CancellationToken::new();
        let imageflux = ImageFluxClient::new(imageflux_url, Some(metrics.imageflux_calls.clone())).unwrap();
        let task = tokio::spawn({
            let (client, relays, metrics, token) = (api.client(), relays.clone(), metrics.clone(), token.clone());
            async move {
                runner::run(client, imageflux, relays, metrics, config, token)
                    .await
                    .unwrap();
            }
        });
        Self {
            api,
            relays,
            metrics,
            token,
            task,
        }
    }

    fn phase(&self, name: &str) -> Option<String> {
        self.api
            .get("livefiltersessions", "default", name)
            .and_then(|s| s.pointer("/status/phase").and_then(Value::as_str).map(str::to_owned))
    }

    /// Waits (in the test's time) until `cond` holds; `None` when it did not within `limit`.
    async fn until(&self, limit: Duration, cond: impl Fn(&Self) -> bool) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while !cond(self) {
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(start.elapsed())
    }

    async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap();
    }

    /// Ends the loop as a crash would: mid-call, nothing finished or cleaned up.
    fn crash(self) -> ApiDouble {
        self.task.abort();
        self.token.cancel();
        self.api
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_session_left_alone_writes_status_at_most_once_per_interval_and_never_wakes_itself() {
    let api = ApiDouble::new();
    let relays = Arc::new(Relays::default());
    relays.set(streaming());
    api.put("livefiltersessions", sora_session("demo"));
    let op = Loop::start(api, relays, "http://127.0.0.1:9/");
    op.until(Duration::from_secs(30), |l| {
        l.phase("demo").as_deref() == Some("Streaming")
    })
    .await
    .expect("the session streams");
    // Let the first figures be written.
    tokio::time::sleep(INTERVAL).await;
    let writes_before = op.api.status_writes().get("default/demo").copied().unwrap_or(0);
    let reconciles_before = op.metrics.reconcile_runs.get();

    tokio::time::sleep(INTERVAL * 10).await;

    let writes = op.api.status_writes().get("default/demo").copied().unwrap_or(0) - writes_before;
    let reconciles = op.metrics.reconcile_runs.get() - reconciles_before;
    assert!(writes <= 10, "{writes} status writes in 10 status intervals");
    assert!(writes >= 9, "{writes}: the figures keep being written while they move");
    assert_eq!(reconciles, 0, "no reconcile woken by the operator's own writes");
    let status = op.api.get("livefiltersessions", "default", "demo").unwrap()["status"].clone();
    let p95 = &status["metrics"]["latencyMs"]["total"]["p95"];
    assert!(*p95 == json!(30.0) || *p95 == json!(45.0), "{p95}");
    assert_eq!(status["phase"], "Streaming");
    op.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_phase_follows_the_browser_ready_streaming_ready_within_two_seconds() {
    let api = ApiDouble::new();
    let relays = Arc::new(Relays::default());
    relays.set(idle());
    api.put("livefiltersessions", sora_session("demo"));
    let op = Loop::start(api, relays, "http://127.0.0.1:9/");
    op.until(Duration::from_secs(30), |l| l.phase("demo").as_deref() == Some("Ready"))
        .await
        .expect("an idle relay with its publisher connected is Ready, not Streaming");
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(op.phase("demo").as_deref(), Some("Ready"), "no browser, no Streaming");

    op.relays.set(streaming());
    let took = op
        .until(Duration::from_secs(10), |l| {
            l.phase("demo").as_deref() == Some("Streaming")
        })
        .await
        .expect("Streaming once frames flow");
    assert!(took <= Duration::from_secs(2), "Streaming after {took:?} (virtual)");

    op.relays.set(idle());
    op.until(Duration::from_secs(10), |l| l.phase("demo").as_deref() == Some("Ready"))
        .await
        .expect("back to Ready when the browser leaves");
    op.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_rejected_at_admission_fails_the_session_with_the_apis_message_and_a_warning() {
    let api = ApiDouble::new();
    api.reject_pods(Some(
        "violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)",
    ));
    let relays = Arc::new(Relays::default());
    relays.set(idle());
    api.put("livefiltersessions", sora_session("demo"));
    let op = Loop::start(api, relays, "http://127.0.0.1:9/");

    op.until(Duration::from_secs(30), |l| {
        l.phase("demo").as_deref() == Some("Failed")
    })
    .await
    .expect("the session fails");

    let status = op.api.get("livefiltersessions", "default", "demo").unwrap()["status"].clone();
    let scheduled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RelayScheduled")
        .unwrap()
        .clone();
    assert_eq!(scheduled["reason"], "AdmissionRejected");
    assert!(scheduled["message"].as_str().unwrap().contains("hostNetwork=true"));
    let events = op.api.list("events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "RelayRejected" && e["type"] == "Warning"),
        "{events:?}"
    );
    op.stop().await;
}

#[tokio::test(start_paused = true)]
async fn changed_filter_params_reach_the_running_relay_without_a_new_pod() {
    let api = ApiDouble::new();
    let relays = Arc::new(Relays::default());
    relays.set(streaming());
    let mut s = sora_session("demo");
    s["spec"]["filter"] = json!({"kind": "background-blur", "params": {"radius": 12}});
    api.put("livefiltersessions", s.clone());
    let op = Loop::start(api, relays, "http://127.0.0.1:9/");
    op.until(Duration::from_secs(30), |l| {
        l.phase("demo").as_deref() == Some("Streaming")
    })
    .await
    .expect("streams");
    let pod_uid = op.api.get("pods", "default", "demo-relay").unwrap()["metadata"]["uid"].clone();

    s["spec"]["filter"]["params"] = json!({"radius": 30});
    op.api.put("livefiltersessions", s);
    op.until(Duration::from_secs(10), |l| {
        !l.relays.patches.lock().unwrap().is_empty()
    })
    .await
    .expect("the relay gets a PATCH /filter");

    let patches = op.relays.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].2, json!({"radius": 30}));
    op.until(Duration::from_secs(5), |l| {
        l.api.get("pods", "default", "demo-relay").unwrap()["metadata"]["annotations"]["livefilter.dev/filter-params"]
            == json!("{\"radius\":30}")
    })
    .await
    .expect("the Pod records the parameters it runs with");
    assert_eq!(
        op.api.get("pods", "default", "demo-relay").unwrap()["metadata"]["uid"],
        pod_uid,
        "the same Pod keeps streaming"
    );
    op.stop().await;
}

/// An ImageFlux double that creates channels (or, told to, creates one and never answers, as a
/// call cut by a crash), lists the live ones and counts DeleteChannel per channel.
#[derive(Clone, Default)]
struct Flux {
    deletes: Arc<Mutex<BTreeMap<String, u32>>>,
    created: Arc<Mutex<u32>>,
    live: Arc<Mutex<Vec<String>>>,
    hang_creates: Arc<std::sync::atomic::AtomicBool>,
}

async fn flux() -> (Flux, String) {
    let f = Flux::default();
    let app = Router::new()
        .route(
            "/",
            post(|State(f): State<Flux>, headers: HeaderMap, body: String| async move {
                let target = headers
                    .get("x-sora-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if target.contains("CreateMultistreamChannel") {
                    let id = {
                        let mut n = f.created.lock().unwrap();
                        *n += 1;
                        format!("ch{n}")
                    };
                    f.live.lock().unwrap().push(id.clone());
                    if f.hang_creates.load(std::sync::atomic::Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    return json!({"channel_id": id, "sora_url": "wss://sora.example/signaling"}).to_string();
                }
                if target.contains("DeleteChannel") {
                    let id = body["channel_id"].as_str().unwrap_or("").to_owned();
                    f.live.lock().unwrap().retain(|c| *c != id);
                    *f.deletes.lock().unwrap().entry(id).or_insert(0) += 1;
                }
                if target.contains("ListChannelIDs") {
                    return json!({"channel_ids": *f.live.lock().unwrap()}).to_string();
                }
                "{}".to_owned()
            }),
        )
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (f, format!("http://{addr}/"))
}

// Real sockets to the ImageFlux double: time runs normally here.
#[tokio::test]
async fn deleting_a_session_deletes_its_channel_exactly_once() {
    let (flux, url) = flux().await;
    let api = ApiDouble::new();
    api.put(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "imageflux", "namespace": "default"},
               "data": {"token": "YXBpLXRva2Vu"}}),
    );
    let relays = Arc::new(Relays::default());
    relays.set(idle());
    api.put(
        "livefiltersessions",
        json!({"apiVersion": "livefilter.dev/v1alpha1", "kind": "LiveFilterSession",
               "metadata": {"name": "demo", "namespace": "default"},
               "spec": {"output": {"imageflux": {}}}}),
    );
    let op = Loop::start(api, relays, &url);
    op.until(Duration::from_secs(20), |l| l.phase("demo").as_deref() == Some("Ready"))
        .await
        .expect("the session gets its channel and relay");

    op.api.delete("livefiltersessions", "default", "demo");
    op.until(Duration::from_secs(20), |l| {
        l.api.get("livefiltersessions", "default", "demo").is_none()
    })
    .await
    .expect("the finalizer goes");
    // Give any stale-cache reconcile the chance to run.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(*flux.created.lock().unwrap(), 1);
    assert_eq!(
        flux.deletes.lock().unwrap().clone(),
        BTreeMap::from([("ch1".to_owned(), 1)])
    );
    assert_eq!(op.metrics.reconcile_failures.with_label_values(&["finalizer"]).get(), 0);
    op.stop().await;
}

fn imageflux_session(api: &ApiDouble, name: &str) {
    api.put(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "imageflux", "namespace": "default"},
               "data": {"token": "YXBpLXRva2Vu"}}),
    );
    api.put(
        "livefiltersessions",
        json!({"apiVersion": "livefilter.dev/v1alpha1", "kind": "LiveFilterSession",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"output": {"imageflux": {}}}}),
    );
}

fn events_with_reason(api: &ApiDouble, reason: &str) -> usize {
    api.list("events").iter().filter(|e| e["reason"] == reason).count()
}

// Real sockets to the ImageFlux double: time runs normally here.
#[tokio::test]
async fn a_channel_created_by_a_request_cut_by_a_crash_is_reported_after_the_restart_and_deleted_when_owned() {
    // Arrange: the first operator crashes while ImageFlux is creating the session's channel.
    let (flux, url) = flux().await;
    let api = ApiDouble::new();
    imageflux_session(&api, "demo");
    flux.hang_creates.store(true, std::sync::atomic::Ordering::SeqCst);
    let relays = Arc::new(Relays::default());
    relays.set(idle());
    let sweep = |s: &mut Settings| s.channel_sweep_interval = Duration::from_millis(200);
    let first = Loop::start_with(api, relays.clone(), &url, sweep);
    first
        .until(Duration::from_secs(20), |_| *flux.created.lock().unwrap() == 1)
        .await
        .expect("the first operator asks for a channel");
    let api = first.crash();
    let status = api.get("livefiltersessions", "default", "demo").unwrap()["status"].clone();
    assert!(
        status["channelRequestedAt"].is_string(),
        "the request is on record: {status}"
    );
    assert!(status["channel"].is_null(), "{status}");

    // Act 1: a restarted operator that does not own the account.
    flux.hang_creates.store(false, std::sync::atomic::Ordering::SeqCst);
    let second = Loop::start_with(api, relays.clone(), &url, sweep);
    second
        .until(Duration::from_secs(20), |l| l.metrics.stray_channels.get() == 1)
        .await
        .unwrap_or_else(|| {
            panic!(
                "the lost channel is not reported as a stray: live {:?}, calls {}, status {}",
                flux.live.lock().unwrap(),
                second
                    .metrics
                    .render()
                    .lines()
                    .filter(|l| l.contains("imageflux_calls"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                second.api.get("livefiltersessions", "default", "demo").unwrap()["status"]
            )
        });

    // Assert 1: reported on the session (once), recorded channel is the new one, nothing deleted.
    let status = second.api.get("livefiltersessions", "default", "demo").unwrap()["status"].clone();
    assert_eq!(status["channel"]["id"], "ch2");
    assert!(status["channelRequestedAt"].is_null(), "{status}");
    second
        .until(Duration::from_secs(5), |l| {
            events_with_reason(&l.api, "StrayChannel") == 1
        })
        .await
        .expect("a StrayChannel event on the session");
    assert_eq!(events_with_reason(&second.api, "ChannelRequestInterrupted"), 1);
    assert!(
        flux.deletes.lock().unwrap().is_empty(),
        "report only: {:?}",
        flux.deletes.lock().unwrap()
    );
    let api = second.crash();

    // Act 2: an operator that owns the account.
    let third = Loop::start_with(api, relays, &url, |s| {
        sweep(s);
        s.delete_orphan_channels = true;
    });
    third
        .until(Duration::from_secs(20), |l| l.metrics.stray_channels_deleted.get() == 1)
        .await
        .expect("the stray is deleted");

    // Assert 2: exactly the stray went, once; the session's own channel lives on.
    assert_eq!(
        flux.deletes.lock().unwrap().clone(),
        BTreeMap::from([("ch1".to_owned(), 1)])
    );
    assert_eq!(*flux.live.lock().unwrap(), vec!["ch2".to_owned()]);
    assert_eq!(*flux.created.lock().unwrap(), 2, "no third channel");
    third
        .until(Duration::from_secs(5), |l| l.metrics.stray_channels.get() == 0)
        .await
        .expect("no stray left");
    third.stop().await;
}
