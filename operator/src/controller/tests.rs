//! Reconcile scenarios against a mocked API server (tower-test) and a local mock of the
//! ImageFlux API: each test asserts the exact calls, in order, and their payloads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodCondition, PodStatus, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::*;
use crate::crd::{HlsSpec, ImageFluxOutput, KeyRef, LiveFilterSessionSpec, OutputSpec, SoraOutput};
use crate::ports::PortRange;
use crate::status::RelayStatus;
use futures_util::future::BoxFuture;

const NOW: i64 = 1_700_000_000;
const CHANNEL: &str = "c0ffee";
const SORA_URL: &str = "wss://live-sora001.imageflux.jp/signaling";
const SESSIONS: &str = "/apis/livefilter.dev/v1alpha1/namespaces/default/livefiltersessions";
const APPLY: &str = "?&force=true&fieldManager=livefilter-operator";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events?";

// ---------------------------------------------------------------------------------------------
// fixtures

fn imageflux_spec(hls: bool) -> LiveFilterSessionSpec {
    LiveFilterSessionSpec {
        source: Default::default(),
        output: OutputSpec {
            imageflux: Some(ImageFluxOutput {
                // No reference: the operator's default Secret (`imageflux`) is read.
                token_secret_ref: None,
                hls: HlsSpec {
                    enabled: hls,
                    renditions: Vec::new(),
                },
            }),
            ..OutputSpec::default()
        },
        filter: Default::default(),
        video: Default::default(),
        relay: Default::default(),
        network: Default::default(),
        access: Default::default(),
        preview: Default::default(),
    }
}

fn session(spec: LiveFilterSessionSpec, status: Option<LiveFilterSessionStatus>) -> LiveFilterSession {
    let mut s = LiveFilterSession::new("demo", spec);
    s.metadata.namespace = Some("default".into());
    s.metadata.uid = Some("uid-demo".into());
    s.metadata.generation = Some(1);
    s.metadata.finalizers = Some(vec![FINALIZER.into()]);
    s.status = status;
    s
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn true_cond(type_: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(1),
        last_transition_time: Time(t(NOW - 600)),
    }
}

/// A session that has been streaming for a while: channel, ports, relay Pod `pod-1`.
fn streaming_status(hls_url: Option<&str>) -> LiveFilterSessionStatus {
    LiveFilterSessionStatus {
        phase: Some(Phase::Streaming),
        conditions: vec![
            true_cond(
                "ChannelReady",
                "ChannelCreated",
                &format!("ImageFlux channel {CHANNEL}"),
            ),
            true_cond("RelayScheduled", "Scheduled", "on node gpu-1"),
            true_cond("RelayReady", "Ready", "the relay answers /readyz"),
            true_cond("Publishing", "Publishing", "connected: sora"),
        ],
        observed_generation: Some(1),
        channel: Some(ChannelStatus {
            provider: "ImageFlux".into(),
            id: Some(CHANNEL.into()),
            signaling_url: Some(SORA_URL.into()),
            hls_url: hls_url.map(str::to_owned),
        }),
        offer_url: Some("http://demo-offer.default.svc:80/offer".into()),
        page_url: Some("http://demo-offer.default.svc:80/".into()),
        node_name: Some("gpu-1".into()),
        address: Some("10.0.0.7".into()),
        ports: Some(PortsStatus {
            http: 38000,
            udp: 40000,
        }),
        relay_pod_uid: Some("pod-1".into()),
        metrics: None,
        channel_requested_at: None,
    }
}

/// A running, ready relay Pod as the kubelet reports it.
fn running(mut pod: Pod, uid: &str) -> Pod {
    pod.metadata.uid = Some(uid.into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some("gpu-1".into());
    }
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        host_ip: Some("10.0.0.7".into()),
        pod_ip: Some("10.0.0.7".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

/// The object as `apply_if_changed` would have stamped it.
fn stamped<K: kube::Resource + serde::Serialize>(mut obj: K) -> K {
    let hash = objects::stable_hash(&[&serde_json::to_vec(&obj).unwrap()]);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.into(), hash);
    obj
}

// ---------------------------------------------------------------------------------------------
// the mocked ImageFlux API

#[derive(Clone, Debug)]
struct FluxCall {
    target: String,
    authorization: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Flux {
    calls: Arc<Mutex<Vec<FluxCall>>>,
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
}

impl Flux {
    async fn start(answers: &[(u16, &str)]) -> (Self, String) {
        let flux = Flux::default();
        flux.answers
            .lock()
            .unwrap()
            .extend(answers.iter().map(|(s, b)| (*s, (*b).to_owned())));
        let app = Router::new()
            .route(
                "/",
                post(|State(f): State<Flux>, headers: HeaderMap, body: String| async move {
                    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    f.calls.lock().unwrap().push(FluxCall {
                        target: h("x-sora-target"),
                        authorization: h("authorization"),
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    });
                    let (status, answer) = f
                        .answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((599, "unexpected call".into()));
                    (StatusCode::from_u16(status).unwrap(), answer)
                }),
            )
            .with_state(flux.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (flux, format!("http://{addr}/"))
    }

    fn targets(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|c| c.target.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// a relay whose /status answers a fixed JSON

#[derive(Default)]
struct FakeRelay {
    answer: Mutex<Option<Value>>,
    urls: Mutex<Vec<String>>,
}

impl RelayApi for FakeRelay {
    fn patch_filter(
        &self,
        _base: String,
        _token: Option<String>,
        _patch: Value,
    ) -> BoxFuture<'static, Result<(), crate::observer::FilterPatchError>> {
        Box::pin(async { Ok(()) })
    }

    fn fetch(&self, url: String) -> BoxFuture<'static, Result<RelayStatus, String>> {
        self.urls.lock().unwrap().push(url);
        let answer = self
            .answer
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "connection refused".to_owned())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()));
        Box::pin(async move { answer })
    }
}

fn publishing_relay() -> Value {
    json!({
        "state": "publishing",
        "session": {"state": "receiving"},
        "input": {"fps": 30},
        "output": {"fps": 30},
        "frames": {"dropped_stale": 2, "sent": 900},
        "latency_ms": {"total": {"p50": 20.0, "p95": 31.5, "p99": 40.0, "samples": 300}},
        "publishers": {"sora": {"state": "connected", "frames_sent": 900}}
    })
}

// ---------------------------------------------------------------------------------------------
// the mocked API server

struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// The next request, which must be `method uri`; returns its JSON body and the responder.
    async fn expect(&mut self, method: Method, uri: &str) -> (Value, SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {uri}, but no further API call came"))
            .expect("the client is alive");
        assert_eq!(
            (request.method().clone(), request.uri().to_string()),
            (method, uri.to_owned())
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    /// Asserts that the reconcile made no further call.
    async fn expect_no_more(&mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(100), self.0.next_request()).await {
            panic!("unexpected API call {} {}", request.method(), request.uri());
        }
    }
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    send.send_response(Response::builder().status(status).body(Body::from(bytes)).unwrap());
}

fn not_found(send: SendResponse<Response<Body>>) {
    respond(
        send,
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    );
}

/// Answers a status patch the way the API server does: the whole object, spec included.
fn respond_with_status(send: SendResponse<Response<Body>>, session: &LiveFilterSession, patch: &Value) {
    let mut obj = serde_json::to_value(session).unwrap();
    obj["status"] = patch["status"].clone();
    respond(send, 200, &obj);
}

/// Answers an apply with the object itself (plus what the API server would add).
fn respond_applied(send: SendResponse<Response<Body>>, body: &Value, uid: &str) {
    let mut obj = body.clone();
    obj["metadata"]["uid"] = json!(uid);
    obj["metadata"]["resourceVersion"] = json!("1");
    respond(send, 200, &obj);
}

fn token_secret() -> Value {
    serde_json::to_value(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("imageflux".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(b"api-token\n".to_vec()),
        )])),
        ..Secret::default()
    })
    .unwrap()
}

/// The channel request goes on record (`status.channelRequestedAt`, no channel yet) before
/// ImageFlux is called.
async fn expect_channel_request_on_record(api: &mut ApiServer, session: &LiveFilterSession) {
    let (patch, send) = api
        .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
        .await;
    assert!(patch["status"]["channelRequestedAt"].is_string(), "{patch}");
    assert_eq!(patch["status"]["channel"], Value::Null);
    respond_with_status(send, session, &patch);
}

async fn expect_event(api: &mut ApiServer, reason: &str) -> Value {
    let (body, send) = api.expect(Method::POST, EVENTS).await;
    assert_eq!(body["reason"], reason, "event {body}");
    respond(send, 201, &body);
    body
}

// ---------------------------------------------------------------------------------------------
// the harness

struct Writers {
    pods: Writer<Pod>,
    config_maps: Writer<ConfigMap>,
    services: Writer<Service>,
    ingresses: Writer<Ingress>,
}

struct Harness {
    ctx: Arc<Context>,
    api: ApiServer,
    flux: Flux,
    relay: Arc<FakeRelay>,
    writers: Writers,
}

impl Harness {
    async fn new(flux_answers: &[(u16, &str)]) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (flux, url) = Flux::start(flux_answers).await;
        let metrics = Metrics::new();
        let imageflux = ImageFluxClient::new(url, Some(metrics.imageflux_calls.clone())).unwrap();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "livefilter-operator".into(),
                instance: Some("test".into()),
            },
        );
        let ports = PortAllocator::new(
            "38000-38099".parse::<PortRange>().unwrap(),
            "40000-40099".parse::<PortRange>().unwrap(),
        )
        .unwrap();
        let (pods, mut pw) = reflector::store::<Pod>();
        let (config_maps, mut cw) = reflector::store::<ConfigMap>();
        let (services, mut sw) = reflector::store::<Service>();
        let (ingresses, mut iw) = reflector::store::<Ingress>();
        pw.apply_watcher_event(&watcher::Event::InitDone);
        cw.apply_watcher_event(&watcher::Event::InitDone);
        sw.apply_watcher_event(&watcher::Event::InitDone);
        iw.apply_watcher_event(&watcher::Event::InitDone);
        let relay = Arc::new(FakeRelay::default());
        let mut ctx = Context::new(
            client,
            imageflux,
            recorder,
            metrics,
            ports,
            Stores {
                pods,
                config_maps,
                services,
                ingresses,
            },
            Arc::new(
                crate::observer::Observer::new(
                    // The observer's own writes go elsewhere: the scripts play the reconcile's.
                    crate::apidouble::ApiDouble::new().client(),
                    relay.clone(),
                    Metrics::new(),
                    crate::observer::ObserverSettings::default(),
                )
                .0,
            ),
            Settings::default(),
        );
        ctx.clock = Arc::new(|| t(NOW));
        Self {
            ctx: Arc::new(ctx),
            api: ApiServer(handle),
            flux,
            relay,
            writers: Writers {
                pods: pw,
                config_maps: cw,
                services: sw,
                ingresses: iw,
            },
        }
    }

    /// Puts the objects a healthy session owns into the caches, as the watches would.
    fn with_children(&mut self, s: &LiveFilterSession, pod: bool) {
        let st = s.status.clone().unwrap();
        let ports = st.ports.unwrap();
        let config = relay_config::build(&s.spec, st.channel.as_ref(), ports).unwrap();
        let cm = stamped(objects::config_map(s, &config).unwrap());
        self.writers.config_maps.apply_watcher_event(&watcher::Event::Apply(cm));
        let svc = stamped(objects::offer_service(s, ports).unwrap().unwrap());
        self.writers.services.apply_watcher_event(&watcher::Event::Apply(svc));
        if pod {
            let p = objects::relay_pod(s, ports, &config, &self.ctx.settings.images).unwrap();
            self.writers
                .pods
                .apply_watcher_event(&watcher::Event::Apply(running(p, "pod-1")));
        }
    }

    /// Runs one reconcile while `script` plays the API server.
    async fn run<F, Fut>(mut self, s: LiveFilterSession, script: F) -> (Result<Action, Error>, Self)
    where
        F: FnOnce(ApiServer) -> Fut,
        Fut: std::future::Future<Output = ApiServer> + Send + 'static,
    {
        let api = std::mem::replace(
            &mut self.api,
            ApiServer(tower_test::mock::pair::<Request<Body>, Response<Body>>().1),
        );
        // The observer has read the relay before, as it does about once a second.
        let key = session_key(&s);
        let pod = self
            .ctx
            .stores
            .pods
            .get(&ObjectRef::new(&Names::of(&s.name_any()).pod).within("default"));
        if let (Some(pod), Some(ports)) = (pod, s.status.as_ref().and_then(|st| st.ports))
            && let (Some(uid), Some(base)) = (pod.uid(), relay_base(&pod, ports))
        {
            let target = Target {
                namespace: "default".into(),
                name: s.name_any(),
                base,
                pod_uid: uid,
            };
            self.ctx.observer.watch(&key, target);
            self.ctx.observer.observe(&key).await;
        }
        let verifier = tokio::spawn(script(api));
        let result = reconcile(Arc::new(s), self.ctx.clone()).await;
        let mut api = tokio::time::timeout(Duration::from_secs(10), verifier)
            .await
            .expect("the scenario finished")
            .expect("the scenario's assertions held");
        api.expect_no_more().await;
        self.api = api;
        (result, self)
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios

#[tokio::test]
async fn a_new_session_first_gets_the_finalizer_and_nothing_else() {
    let h = Harness::new(&[]).await;
    let mut s = session(imageflux_spec(false), None);
    s.metadata.finalizers = None;
    let answer = serde_json::to_value(session(imageflux_spec(false), None)).unwrap();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (body, send) = api.expect(Method::PATCH, &format!("{SESSIONS}/demo?")).await;
            assert_eq!(
                body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
                ])
            );
            respond(send, 200, &answer);
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::await_change());
    assert!(h.flux.targets().is_empty());
}

#[tokio::test]
async fn first_reconcile_creates_the_channel_records_it_at_once_then_applies_the_children() {
    let h = Harness::new(&[(
        200,
        r#"{"channel_id":"c0ffee","sora_url":"wss://live-sora001.imageflux.jp/signaling"}"#,
    )])
    .await;
    let s = session(imageflux_spec(true), None);
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            // The token, from the Secret the spec names.
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());

            expect_channel_request_on_record(&mut api, &echo).await;

            // The channel goes into status before anything else happens.
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["apiVersion"], "livefilter.dev/v1alpha1");
            assert_eq!(patch["kind"], "LiveFilterSession");
            assert_eq!(
                patch["status"]["channel"],
                json!({"provider": "ImageFlux", "id": CHANNEL, "signalingUrl": SORA_URL})
            );
            assert_eq!(patch["status"]["ports"], json!({"http": 38000, "udp": 40000}));
            assert_eq!(patch["status"]["phase"], "Provisioning");
            assert_eq!(patch["status"]["channelRequestedAt"], Value::Null, "answered");
            assert_eq!(patch["status"]["conditions"][0]["type"], "ChannelReady");
            assert_eq!(patch["status"]["conditions"][0]["status"], "True");
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "ChannelCreated").await;

            let (cm, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/configmaps/demo-relay-config{APPLY}"),
                )
                .await;
            let yaml = cm["data"]["relay.yaml"].as_str().unwrap().to_owned();
            assert!(yaml.contains("channel_id: c0ffee"), "{yaml}");
            assert!(yaml.contains("listen: 0.0.0.0:38000"), "{yaml}");
            assert!(cm["metadata"]["annotations"][HASH_ANNOTATION].is_string());
            respond_applied(send, &cm, "cm-1");

            let (pod, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/pods/demo-relay{APPLY}"),
                )
                .await;
            assert_eq!(pod["spec"]["hostNetwork"], true);
            assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-demo");
            respond_applied(send, &pod, "pod-1");
            expect_event(&mut api, "RelayCreated").await;

            let (svc, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/services/demo-offer{APPLY}"),
                )
                .await;
            assert_eq!(svc["spec"]["ports"][0]["targetPort"], 38000);
            respond_applied(send, &svc, "svc-1");

            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            let st = &patch["status"];
            assert_eq!(st["phase"], "Provisioning");
            assert_eq!(st["relayPodUid"], "pod-1");
            assert_eq!(st["offerUrl"], "http://demo-offer.default.svc:80/offer");
            assert_eq!(st["observedGeneration"], 1);
            let conds: Vec<(String, String, String)> = st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["type"].as_str().unwrap().into(),
                        c["status"].as_str().unwrap().into(),
                        c["reason"].as_str().unwrap().into(),
                    )
                })
                .collect();
            assert_eq!(
                conds,
                vec![
                    ("ChannelReady".into(), "True".into(), "ChannelCreated".into()),
                    ("RelayScheduled".into(), "False".into(), "Pending".into()),
                    ("RelayReady".into(), "False".into(), "NotReady".into()),
                    ("Publishing".into(), "False".into(), "RelayNotReady".into()),
                ]
            );
            respond_with_status(send, &echo, &patch);
            let ev = expect_event(&mut api, "Provisioning").await;
            assert_eq!(ev["type"], "Normal");
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(5)));
    let calls = h.flux.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].target, "ImageFlux_20200316.CreateMultistreamChannelWithHLS");
    assert_eq!(calls[0].authorization, "Bearer api-token");
    assert_eq!(
        calls[0].body["hls"][0]["video"],
        json!({"width": 1280, "height": 720, "fps": 30, "bps": 1_000_000, "codec": "h264_high"})
    );
}

#[tokio::test]
async fn steady_state_writes_nothing_and_reads_no_relay() {
    let mut h = Harness::new(&[]).await;
    let s = session(
        imageflux_spec(true),
        Some(streaming_status(Some("https://hls.example/c0ffee.m3u8"))),
    );
    h.with_children(&s, true);
    *h.relay.answer.lock().unwrap() = Some(publishing_relay());

    let (result, h) = h.run(s, |api| async move { api }).await;

    // Woken by the observer or the objects' events; the periodic look is a safety net.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert!(h.flux.targets().is_empty());
    assert_eq!(
        *h.relay.urls.lock().unwrap(),
        vec!["http://10.0.0.7:38000".to_owned()],
        "only the observer's read (before the reconcile)"
    );
}

#[tokio::test]
async fn the_hls_url_is_fetched_once_publishing_has_started() {
    let mut h = Harness::new(&[(
        200,
        r#"{"channel_id":"c0ffee","hls":[{"connection_id":"K","playlist_url":"https://hls.example/c0ffee.m3u8"}]}"#,
    )])
    .await;
    let s = session(imageflux_spec(true), Some(streaming_status(None)));
    h.with_children(&s, true);
    *h.relay.answer.lock().unwrap() = Some(publishing_relay());
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["channel"]["hlsUrl"], "https://hls.example/c0ffee.m3u8");
            respond_with_status(send, &echo, &patch);
            api
        })
        .await;

    assert!(result.is_ok());
    assert_eq!(h.flux.targets(), vec!["ImageFlux_20200207.ListPlaylistURLs".to_owned()]);
    assert_eq!(h.flux.calls.lock().unwrap()[0].body, json!({"channel_id": CHANNEL}));
}

#[tokio::test]
async fn deletion_deletes_the_channel_before_removing_the_finalizer() {
    let h = Harness::new(&[(200, "")]).await;
    let mut s = session(imageflux_spec(true), Some(streaming_status(None)));
    s.metadata.deletion_timestamp = Some(Time(t(NOW)));
    h.ctx
        .ports()
        .claim(
            "default/demo",
            PortsStatus {
                http: 38000,
                udp: 40000,
            },
        )
        .unwrap();
    let echo = s.clone();
    let flux = h.flux.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["phase"], "Terminating");
            respond_with_status(send, &echo, &patch);
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());
            let ev = expect_event(&mut api, "ChannelDeleted").await;
            assert_eq!(ev["note"], format!("deleted ImageFlux channel {CHANNEL}"));
            let (body, send) = api.expect(Method::PATCH, &format!("{SESSIONS}/demo?")).await;
            // By now the channel is gone.
            assert_eq!(flux.targets(), vec!["ImageFlux_20180501.DeleteChannel".to_owned()]);
            assert_eq!(
                body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                    {"op": "remove", "path": "/metadata/finalizers/0"}
                ])
            );
            respond(send, 200, &serde_json::to_value(&echo).unwrap());
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(h.flux.calls.lock().unwrap()[0].body, json!({"channel_id": CHANNEL}));
    assert_eq!(h.ctx.ports().held("default/demo"), None, "the ports are free again");
}

#[tokio::test]
async fn deletion_of_a_channel_that_is_already_gone_still_removes_the_finalizer() {
    let h = Harness::new(&[(404, r#"{"error":"channel not found"}"#)]).await;
    let mut s = session(imageflux_spec(false), Some(streaming_status(None)));
    s.metadata.deletion_timestamp = Some(Time(t(NOW)));
    let echo = s.clone();

    let (result, _h) = h
        .run(s, |mut api| async move {
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            respond_with_status(send, &echo, &patch);
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());
            let ev = expect_event(&mut api, "ChannelDeleted").await;
            assert_eq!(ev["note"], format!("ImageFlux channel {CHANNEL} was already gone"));
            let (_, send) = api.expect(Method::PATCH, &format!("{SESSIONS}/demo?")).await;
            respond(send, 200, &serde_json::to_value(&echo).unwrap());
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_failing_delete_is_retried_and_keeps_the_finalizer() {
    let h = Harness::new(&[(503, "busy"), (503, "busy"), (503, "still busy")]).await;
    let mut s = session(imageflux_spec(false), Some(streaming_status(None)));
    s.metadata.deletion_timestamp = Some(Time(t(NOW)));
    s.status.as_mut().unwrap().phase = Some(Phase::Terminating);

    let (result, h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());
            let ev = expect_event(&mut api, "ChannelDeleteFailed").await;
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["note"], "ImageFlux_20180501.DeleteChannel: HTTP 503: still busy");
            api
        })
        .await;

    let err = result.unwrap_err();
    assert_eq!(err.kind(), "imageflux");
    assert_eq!(h.flux.targets().len(), 3, "three attempts");
}

#[tokio::test]
async fn an_imageflux_error_becomes_a_condition_with_status_and_body_and_no_children() {
    let h = Harness::new(&[(500, r#"{"error":"internal"}"#)]).await;
    let s = session(imageflux_spec(false), None);
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());

            expect_channel_request_on_record(&mut api, &echo).await;
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            let st = &patch["status"];
            assert_eq!(st["phase"], "Pending");
            assert_eq!(st["channel"], Value::Null);
            assert!(
                st["channelRequestedAt"].is_string(),
                "a 5xx may hide a created channel: {st}"
            );
            let c = &st["conditions"][0];
            assert_eq!(
                (c["type"].as_str(), c["status"].as_str(), c["reason"].as_str()),
                (Some("ChannelReady"), Some("False"), Some("ImageFluxError"))
            );
            assert_eq!(
                c["message"],
                r#"ImageFlux_20200316.CreateMultistreamChannel: HTTP 500: {"error":"internal"}"#
            );
            respond_with_status(send, &echo, &patch);
            let ev = expect_event(&mut api, "Pending").await;
            assert_eq!(ev["type"], "Normal");
            let ev = expect_event(&mut api, "ChannelFailed").await;
            assert_eq!(ev["type"], "Warning");
            api
        })
        .await;

    let err = result.unwrap_err();
    assert_eq!(err.kind(), "imageflux");
    let policy = error_policy(Arc::new(session(imageflux_spec(false), None)), &err, h.ctx.clone());
    assert_eq!(policy, Action::requeue(Duration::from_secs(5)));
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("livefilter_operator_reconcile_failures_total{error=\"imageflux\"} 1")
    );
    let n = h
        .ctx
        .metrics
        .imageflux_calls
        .with_label_values(&["ImageFlux_20200316.CreateMultistreamChannel", "server_error"])
        .get();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_rejected_token_fails_the_session_until_someone_fixes_it() {
    let h = Harness::new(&[(401, "invalid token")]).await;
    let s = session(imageflux_spec(false), None);
    let echo = s.clone();

    let (result, _h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            respond(send, 200, &token_secret());

            expect_channel_request_on_record(&mut api, &echo).await;
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["phase"], "Failed");
            assert_eq!(
                patch["status"]["channelRequestedAt"],
                Value::Null,
                "a 401 created nothing"
            );
            respond_with_status(send, &echo, &patch);
            let ev = expect_event(&mut api, "Failed").await;
            assert_eq!(ev["type"], "Warning");
            assert_eq!(
                ev["note"],
                "New -> Failed: ImageFluxError: ImageFlux_20200316.CreateMultistreamChannel: HTTP 401: invalid token"
            );
            expect_event(&mut api, "ChannelFailed").await;
            api
        })
        .await;

    assert!(result.is_err());
}

#[tokio::test]
async fn a_missing_token_secret_is_a_pending_condition_without_any_imageflux_call() {
    let h = Harness::new(&[]).await;
    let s = session(imageflux_spec(false), None);
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(Method::GET, "/api/v1/namespaces/default/secrets/imageflux")
                .await;
            not_found(send);
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["conditions"][0]["reason"], "SecretNotFound");
            assert_eq!(
                patch["status"]["conditions"][0]["message"],
                "Secret default/imageflux not found"
            );
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Pending").await;
            api
        })
        .await;

    assert_eq!(result.unwrap_err().kind(), "secret");
    assert!(h.flux.targets().is_empty());
}

#[tokio::test]
async fn a_lost_pod_is_recreated_for_the_same_channel() {
    let mut h = Harness::new(&[]).await;
    let s = session(
        imageflux_spec(true),
        Some(streaming_status(Some("https://hls.example/c0ffee.m3u8"))),
    );
    h.with_children(&s, false);
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (pod, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/pods/demo-relay{APPLY}"),
                )
                .await;
            assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "demo-relay-config");
            respond_applied(send, &pod, "pod-2");
            let ev = expect_event(&mut api, "RelayRecreated").await;
            assert_eq!(
                ev["note"],
                "the relay Pod pod-1 was gone; created pod-2 for the same channel"
            );
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["channel"]["id"], CHANNEL);
            assert_eq!(patch["status"]["relayPodUid"], "pod-2");
            assert_eq!(patch["status"]["phase"], "Provisioning");
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Provisioning").await;
            api
        })
        .await;

    assert!(result.is_ok());
    assert!(h.flux.targets().is_empty(), "no new channel");
}

#[tokio::test]
async fn a_failed_pod_is_deleted_so_that_it_can_be_recreated() {
    let mut h = Harness::new(&[]).await;
    let s = session(imageflux_spec(false), Some(streaming_status(None)));
    h.with_children(&s, true);
    let mut failed = (*h.ctx.stores.pods.state()[0]).clone();
    let st = failed.status.as_mut().unwrap();
    st.phase = Some("Failed".into());
    st.reason = Some("Evicted".into());
    h.writers.pods.apply_watcher_event(&watcher::Event::Apply(failed));
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (body, send) = api
                .expect(Method::DELETE, "/api/v1/namespaces/default/pods/demo-relay?")
                .await;
            assert_eq!(body["preconditions"], json!({"uid": "pod-1"}));
            respond(
                send,
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
            let ev = expect_event(&mut api, "RelayFailed").await;
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["note"], "the relay Pod ended (Failed) Evicted; recreating it");
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["channel"]["id"], CHANNEL);
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Degraded").await;
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(2)));
    assert!(h.flux.targets().is_empty());
}

#[tokio::test]
async fn a_spec_change_replaces_the_relay_pod_old_first() {
    let mut h = Harness::new(&[]).await;
    let mut s = session(imageflux_spec(false), Some(streaming_status(None)));
    h.with_children(&s, true);
    s.spec.video.bitrate_kbps = 2500;
    s.metadata.generation = Some(2);
    let echo = s.clone();

    let (result, _h) = h
        .run(s, |mut api| async move {
            let (cm, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/configmaps/demo-relay-config{APPLY}"),
                )
                .await;
            assert!(
                cm["data"]["relay.yaml"]
                    .as_str()
                    .unwrap()
                    .contains("bitrate_kbps: 2500")
            );
            respond_applied(send, &cm, "cm-1");
            let (body, send) = api
                .expect(Method::DELETE, "/api/v1/namespaces/default/pods/demo-relay?")
                .await;
            assert_eq!(body["preconditions"], json!({"uid": "pod-1"}));
            respond(
                send,
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
            expect_event(&mut api, "RelayRolling").await;
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(patch["status"]["observedGeneration"], 2);
            assert_eq!(
                patch["status"]["phase"], "Provisioning",
                "a planned roll is not a degradation"
            );
            assert_eq!(patch["status"].get("relayPodUid"), None);
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Provisioning").await;
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_sora_output_needs_no_channel_and_mounts_the_metadata_secret() {
    let h = Harness::new(&[]).await;
    let spec = LiveFilterSessionSpec {
        source: Default::default(),
        output: OutputSpec {
            sora: Some(SoraOutput {
                signaling_urls: vec!["wss://sora.example/signaling".into()],
                channel_id: "room".into(),
                metadata_secret_ref: Some(KeyRef {
                    name: "sora-meta".into(),
                    key: None,
                }),
                ..SoraOutput::default()
            }),
            ..OutputSpec::default()
        },
        ..imageflux_spec(false)
    };
    let s = session(spec, None);
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (cm, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/configmaps/demo-relay-config{APPLY}"),
                )
                .await;
            let yaml = cm["data"]["relay.yaml"].as_str().unwrap().to_owned();
            assert!(
                yaml.contains("metadata_file: /var/run/secrets/livefilter/sora/metadata.json"),
                "{yaml}"
            );
            respond_applied(send, &cm, "cm-1");
            let (pod, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/pods/demo-relay{APPLY}"),
                )
                .await;
            let vols = pod["spec"]["volumes"].as_array().unwrap().clone();
            assert!(
                vols.iter().any(|v| v["secret"]["secretName"] == "sora-meta"),
                "{vols:?}"
            );
            respond_applied(send, &pod, "pod-1");
            expect_event(&mut api, "RelayCreated").await;
            let (svc, send) = api
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/default/services/demo-offer{APPLY}"),
                )
                .await;
            respond_applied(send, &svc, "svc-1");
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            assert_eq!(
                patch["status"]["channel"],
                json!({"provider": "Sora", "id": "room", "signalingUrl": "wss://sora.example/signaling"})
            );
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Provisioning").await;
            api
        })
        .await;

    assert!(result.is_ok());
    assert!(h.flux.targets().is_empty());
}

#[tokio::test]
async fn an_ingress_dropped_from_the_spec_is_deleted() {
    let mut h = Harness::new(&[]).await;
    let s = session(imageflux_spec(false), Some(streaming_status(None)));
    h.with_children(&s, true);
    let mut with_ingress = s.clone();
    with_ingress.spec.access.ingress = Some(crate::crd::IngressSpec {
        host: "live.example.com".into(),
        ..Default::default()
    });
    let old = objects::offer_ingress(&with_ingress).unwrap().unwrap();
    h.writers
        .ingresses
        .apply_watcher_event(&watcher::Event::Apply(stamped(old)));
    *h.relay.answer.lock().unwrap() = Some(publishing_relay());

    let (result, _h) = h
        .run(s, |mut api| async move {
            let (_, send) = api
                .expect(
                    Method::DELETE,
                    "/apis/networking.k8s.io/v1/namespaces/default/ingresses/demo-offer?",
                )
                .await;
            respond(
                send,
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
            // Nothing else changed, so nothing else is written.
            api
        })
        .await;

    assert!(result.is_ok());
}

#[tokio::test]
async fn switching_away_from_a_live_imageflux_channel_is_refused_and_the_channel_kept() {
    let mut h = Harness::new(&[]).await;
    let mut s = session(imageflux_spec(false), Some(streaming_status(None)));
    h.with_children(&s, true);
    s.spec.output = OutputSpec {
        whip: Some(crate::crd::WhipOutput {
            url: "https://whip.example/x".into(),
            token_secret_ref: None,
        }),
        ..OutputSpec::default()
    };
    let echo = s.clone();

    let (result, h) = h
        .run(s, |mut api| async move {
            let (patch, send) = api
                .expect(Method::PATCH, &format!("{SESSIONS}/demo/status{APPLY}"))
                .await;
            let st = &patch["status"];
            assert_eq!(st["phase"], "Failed");
            assert_eq!(st["channel"]["id"], CHANNEL, "the channel is still on record");
            assert_eq!(st["conditions"][0]["reason"], "OutputChanged");
            respond_with_status(send, &echo, &patch);
            expect_event(&mut api, "Failed").await;
            api
        })
        .await;

    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert!(h.flux.targets().is_empty());
}

#[test]
fn ports_are_rebuilt_from_existing_sessions_oldest_first() {
    let mut older = session(imageflux_spec(false), Some(streaming_status(None)));
    older.metadata.name = Some("older".into());
    older.metadata.creation_timestamp = Some(Time(t(NOW - 100)));
    let mut newer = older.clone();
    newer.metadata.name = Some("newer".into());
    newer.metadata.creation_timestamp = Some(Time(t(NOW)));
    let mut allocator = PortAllocator::new("38000-38099".parse().unwrap(), "40000-40099".parse().unwrap()).unwrap();

    let clashes = rebuild_ports(&mut allocator, &[newer, older]);

    assert_eq!(
        allocator.held("default/older"),
        Some(PortsStatus {
            http: 38000,
            udp: 40000
        })
    );
    assert_eq!(clashes.len(), 1);
    assert_eq!(clashes[0].0, "default/newer");
    assert_eq!(
        allocator.allocate("default/third").unwrap(),
        PortsStatus {
            http: 38001,
            udp: 40001
        }
    );
}
