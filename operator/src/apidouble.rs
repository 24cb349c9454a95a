//! An in-memory Kubernetes API server for the controller-loop tests and the scale bench: list
//! and watch with resource versions (a trimmed history answers `410 Gone` like etcd
//! compaction), get, create, replace with optimistic concurrency, server-side apply (per field
//! manager on `status`), merge and JSON patches, delete with finalizers and owner garbage
//! collection. Writes that change nothing are not writes: no new resource version, no watch event.
//! A stand-in kubelet can mark Pods ready, and an admission rule can reject Pods.
//!
//! It counts every request by verb and every status write per object, which is what the tests
//! and the bench assert on.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How many past watch events are kept for watches that resume from a resource version.
const HISTORY: usize = 1_000;

/// Where an object lives: resource plural, namespace (empty for cluster scope), name.
type Key = (String, String, String);

struct Watch {
    plural: String,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Per object: which top-level `status` keys each field manager applied.
    status_owners: HashMap<Key, HashMap<String, BTreeSet<String>>>,
    history: VecDeque<(u64, String, String, Value, &'static str)>,
    watches: Vec<Watch>,
    requests: BTreeMap<String, u64>,
    status_writes: BTreeMap<String, u64>,
    reject_pods: Option<String>,
    kubelet: bool,
    next_uid: u64,
}

/// The API double; clone it freely, every clone is the same server.
#[derive(Clone, Default)]
pub struct ApiDouble {
    inner: Arc<Mutex<Inner>>,
}

/// An error answer: code, reason, message.
struct Failure(u16, &'static str, String);

impl ApiDouble {
    /// An empty server with the stand-in kubelet on (new Pods run and are ready at once).
    pub fn new() -> Self {
        let d = Self::default();
        d.lock().kubelet = true;
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client talking to this server.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Turns the stand-in kubelet on or off (off: new Pods stay `Pending`).
    pub fn set_kubelet(&self, on: bool) {
        self.lock().kubelet = on;
    }

    /// Makes admission reject every new Pod with `message` (`None`: admit again).
    pub fn reject_pods(&self, message: Option<&str>) {
        self.lock().reject_pods = message.map(str::to_owned);
    }

    /// Requests served, by `VERB resource` (`PATCH livefiltersessions/status`).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    /// Requests served in all.
    pub fn request_total(&self) -> u64 {
        self.lock().requests.values().sum()
    }

    /// Writes of `status` per object (`namespace/name`), counting only writes that changed it.
    pub fn status_writes(&self) -> BTreeMap<String, u64> {
        self.lock().status_writes.clone()
    }

    /// The object, if it exists.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(plural.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of `plural`.
    pub fn list(&self, plural: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((p, _, _), _)| p == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object as a user would (`kubectl apply`), with a watch event.
    pub fn put(&self, plural: &str, obj: Value) {
        let ns = str_at(&obj, "/metadata/namespace");
        let name = str_at(&obj, "/metadata/name");
        let key = (plural.to_owned(), ns, name);
        let mut inner = self.lock();
        let exists = inner.objects.contains_key(&key);
        let obj = if exists {
            let mut current = inner.objects[&key].clone();
            let spec_before = current.get("spec").cloned();
            for (k, v) in obj.as_object().into_iter().flatten() {
                if k != "metadata" && k != "status" {
                    current[k] = v.clone();
                }
            }
            merge_metadata(&mut current, &obj);
            if current.get("spec") != spec_before.as_ref() {
                bump_generation(&mut current);
            }
            current
        } else {
            inner.prepare_new(obj)
        };
        inner.store(key, obj, if exists { "MODIFIED" } else { "ADDED" });
    }

    /// Deletes an object as a user would (`kubectl delete`).
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        let _ = self.lock().delete(&key, None);
    }

    /// Runs `f` on a stored object (the kubelet or another controller writing), with a watch
    /// event when it changed.
    pub fn update(&self, plural: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        let mut inner = self.lock();
        let Some(mut obj) = inner.objects.get(&key).cloned() else {
            return;
        };
        f(&mut obj);
        if inner.objects.get(&key) != Some(&obj) {
            inner.store(key, obj, "MODIFIED");
        }
    }

    /// Serves this server over HTTP on `listener` until the task is dropped, so that it can run
    /// in a process of its own (the bench measures the operator's memory alone that way).
    /// Besides the API, `GET /_double/stats` answers `{"requests", "status_writes", "streaming"}`.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let me = self.clone();
        let app = axum::Router::new()
            .route(
                "/_double/stats",
                axum::routing::get(move || {
                    let me = me.clone();
                    async move { axum::Json(me.stats()) }
                }),
            )
            .fallback(move |req: axum::extract::Request| {
                let me = self.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                    me.answer(parts, body).await
                }
            });
        axum::serve(listener, app).await
    }

    /// Requests served, status writes and Streaming sessions, as `/_double/stats` reports them.
    pub fn stats(&self) -> Value {
        let streaming = self
            .list("livefiltersessions")
            .iter()
            .filter(|s| s.pointer("/status/phase").and_then(Value::as_str) == Some("Streaming"))
            .count();
        json!({
            "requests": self.request_total(),
            "status_writes": self.status_writes().values().sum::<u64>(),
            "streaming": streaming,
        })
    }

    async fn handle(&self, req: Request<Body>) -> Response<axum::body::Body> {
        let (parts, body) = req.into_parts();
        let body = body.collect_bytes().await.unwrap_or_default();
        self.answer(parts, body).await
    }

    async fn answer(&self, parts: http::request::Parts, body: Bytes) -> Response<axum::body::Body> {
        let route = Route::parse(parts.uri.path(), parts.uri.query().unwrap_or_default());
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let verb = match (&parts.method, &route.name, route.watch) {
            (&Method::GET, _, true) => "WATCH",
            (&Method::GET, None, false) => "LIST",
            (&Method::GET, Some(_), _) => "GET",
            (m, _, _) => m.as_str(),
        };
        let label = match &route.sub {
            Some(sub) => format!("{verb} {}/{sub}", route.plural),
            None => format!("{verb} {}", route.plural),
        };
        *self.lock().requests.entry(label).or_insert(0) += 1;
        let result = match (&parts.method, &route.name) {
            (&Method::GET, None) if route.watch => return self.watch(&route),
            (&Method::GET, None) => Ok(self.list_response(&route)),
            (&Method::GET, Some(_)) => self.lock().read(&route.key()),
            (&Method::POST, _) => self.lock().create(&route, &body),
            (&Method::PUT, Some(_)) => self.lock().replace(&route, &body),
            (&Method::PATCH, Some(_)) => self.lock().patch(&route, &content_type, &body),
            (&Method::DELETE, Some(_)) => {
                let preconditions: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let uid = preconditions.pointer("/preconditions/uid").and_then(Value::as_str);
                self.lock().delete(&route.key(), uid)
            }
            _ => Err(Failure(
                405,
                "MethodNotAllowed",
                format!("{} {}", parts.method, parts.uri),
            )),
        };
        match result {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(Failure(code, reason, message)) => json_response(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "reason": reason, "message": message, "code": code}),
            ),
        }
    }

    fn list_response(&self, route: &Route) -> Value {
        let inner = self.lock();
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((p, ns, _), v)| {
                p == &route.plural
                    && route.namespace.as_ref().is_none_or(|want| want == ns)
                    && selects(&route.selector, v)
            })
            .map(|(_, v)| v.clone())
            .collect();
        json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items})
    }

    fn watch(&self, route: &Route) -> Response<axum::body::Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut inner = self.lock();
            let from: u64 = route.resource_version.parse().unwrap_or(0);
            let oldest = inner.history.front().map_or(inner.rv, |e| e.0.saturating_sub(1));
            if from < oldest && from != 0 {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Expired", "message": format!("too old resource version: {from} ({oldest})"), "code": 410}});
                let _ = tx.send(line(&gone));
            } else {
                for (rv, plural, ns, obj, type_) in &inner.history {
                    if *rv > from
                        && plural == &route.plural
                        && route.namespace.as_ref().is_none_or(|want| want == ns)
                        && selects(&route.selector, obj)
                    {
                        let _ = tx.send(line(&json!({"type": type_, "object": obj})));
                    }
                }
                inner.watches.push(Watch {
                    plural: route.plural.clone(),
                    namespace: route.namespace.clone(),
                    selector: route.selector.clone(),
                    tx,
                });
            }
        }
        let limit = Duration::from_secs(route.timeout_secs.unwrap_or(290));
        let stream = tokio_stream_from(rx).take_until(tokio::time::sleep(limit));
        let body = axum::body::Body::from_stream(stream.map(Ok::<_, Infallible>));
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap_or_default()
    }
}

fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn json_response(status: StatusCode, v: &Value) -> Response<axum::body::Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_default()
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn selects(selector: &[(String, String)], obj: &Value) -> bool {
    selector.iter().all(|(k, want)| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(want.as_str())
    })
}

fn bump_generation(obj: &mut Value) {
    let g = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
    obj["metadata"]["generation"] = json!(g + 1);
}

fn merge_metadata(current: &mut Value, given: &Value) {
    for field in ["labels", "annotations"] {
        if let Some(m) = given.pointer(&format!("/metadata/{field}")).and_then(Value::as_object) {
            let slot = &mut current["metadata"][field];
            if !slot.is_object() {
                *slot = json!({});
            }
            for (k, v) in m {
                slot[k] = v.clone();
            }
        }
    }
    if let Some(refs) = given.pointer("/metadata/ownerReferences") {
        current["metadata"]["ownerReferences"] = refs.clone();
    }
}

/// RFC 7396.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The JSON Patch operations kube's finalizer helper uses: test, add, remove, replace.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), Failure> {
    let invalid = |m: String| Failure(422, "Invalid", m);
    for op in ops.as_array().into_iter().flatten() {
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| invalid(format!("bad path {path}")))?;
        match op.get("op").and_then(Value::as_str) {
            Some("test") => {
                let actual = target.pointer(path).cloned().unwrap_or(Value::Null);
                if actual != value {
                    return Err(invalid(format!("test failed at {path}: {actual} != {value}")));
                }
            }
            Some("add" | "replace") => {
                let slot = target
                    .pointer_mut(parent)
                    .ok_or_else(|| invalid(format!("no parent for {path}")))?;
                match slot {
                    Value::Array(a) if last == "-" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| invalid(format!("bad index {path}")))?;
                        if i > a.len() {
                            return Err(invalid(format!("index out of range {path}")));
                        }
                        a.insert(i, value);
                    }
                    Value::Object(m) => {
                        m.insert(last.to_owned(), value);
                    }
                    _ => return Err(invalid(format!("cannot add at {path}"))),
                }
            }
            Some("remove") => {
                let slot = target
                    .pointer_mut(parent)
                    .ok_or_else(|| invalid(format!("no parent for {path}")))?;
                match slot {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| invalid(format!("bad index {path}")))?;
                        if i >= a.len() {
                            return Err(invalid(format!("index out of range {path}")));
                        }
                        a.remove(i);
                    }
                    Value::Object(m) => {
                        m.remove(last).ok_or_else(|| invalid(format!("nothing at {path}")))?;
                    }
                    _ => return Err(invalid(format!("cannot remove at {path}"))),
                }
            }
            other => return Err(invalid(format!("unsupported op {other:?}"))),
        }
    }
    Ok(())
}

impl Inner {
    fn prepare_new(&mut self, mut obj: Value) -> Value {
        self.next_uid += 1;
        obj["metadata"]["uid"] = json!(format!("uid-{}", self.next_uid));
        obj["metadata"]["creationTimestamp"] = json!(Timestamp::now().to_string());
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        obj
    }

    fn store(&mut self, key: Key, mut obj: Value, type_: &'static str) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.emit(&key, obj, type_);
    }

    fn emit(&mut self, key: &Key, obj: Value, type_: &'static str) {
        let (plural, ns, _) = key;
        let event = line(&json!({"type": type_, "object": obj}));
        self.watches.retain(|w| {
            if &w.plural != plural || w.namespace.as_ref().is_some_and(|want| want != ns) || !selects(&w.selector, &obj)
            {
                return !w.tx.is_closed();
            }
            w.tx.send(event.clone()).is_ok()
        });
        self.history
            .push_back((self.rv, plural.clone(), ns.clone(), obj, type_));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn read(&self, key: &Key) -> Result<Value, Failure> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| Failure(404, "NotFound", format!("{} {:?} not found", key.0, key.2)))
    }

    fn admit(&self, plural: &str, obj: &mut Value) -> Result<(), Failure> {
        if plural != "pods" {
            return Ok(());
        }
        if let Some(message) = &self.reject_pods {
            return Err(Failure(
                403,
                "Forbidden",
                format!("pods {:?} is forbidden: {message}", str_at(obj, "/metadata/name")),
            ));
        }
        let n = self.next_uid;
        obj["status"] = if self.kubelet {
            json!({"phase": "Running", "podIP": format!("10.1.{}.{}", n / 250 % 250, n % 250 + 1), "hostIP": "192.0.2.10",
                   "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]})
        } else {
            json!({"phase": "Pending"})
        };
        if self.kubelet {
            obj["spec"]["nodeName"] = json!("node-1");
        }
        Ok(())
    }

    fn create(&mut self, route: &Route, body: &[u8]) -> Result<Value, Failure> {
        let mut obj: Value =
            serde_json::from_slice(body).map_err(|e| Failure(400, "BadRequest", format!("body: {e}")))?;
        if let Some(ns) = &route.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let name = match str_at(&obj, "/metadata/name") {
            n if !n.is_empty() => n,
            _ => {
                let prefix = str_at(&obj, "/metadata/generateName");
                let n = format!("{prefix}{}", self.rv + 1);
                obj["metadata"]["name"] = json!(n);
                n
            }
        };
        let key = (route.plural.clone(), route.namespace.clone().unwrap_or_default(), name);
        if self.objects.contains_key(&key) {
            return Err(Failure(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", key.0, key.2),
            ));
        }
        self.admit(&route.plural, &mut obj)?;
        let obj = self.prepare_new(obj);
        self.store(key.clone(), obj, "ADDED");
        self.read(&key)
    }

    fn replace(&mut self, route: &Route, body: &[u8]) -> Result<Value, Failure> {
        let key = route.key();
        let current = self.read(&key)?;
        let mut obj: Value =
            serde_json::from_slice(body).map_err(|e| Failure(400, "BadRequest", format!("body: {e}")))?;
        let given_rv = str_at(&obj, "/metadata/resourceVersion");
        if !given_rv.is_empty() && given_rv != str_at(&current, "/metadata/resourceVersion") {
            return Err(Failure(409, "Conflict", "the object has been modified".into()));
        }
        obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
        obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.write(key, current, obj, route.sub.is_some())
    }

    fn patch(&mut self, route: &Route, content_type: &str, body: &[u8]) -> Result<Value, Failure> {
        let key = route.key();
        let patch: Value =
            serde_json::from_slice(body).map_err(|e| Failure(400, "BadRequest", format!("body: {e}")))?;
        let status = route.sub.as_deref() == Some("status");
        let Some(current) = self.objects.get(&key).cloned() else {
            if content_type.starts_with("application/apply-patch") && !status {
                let mut obj = patch;
                obj["metadata"]["namespace"] = json!(key.1);
                self.admit(&route.plural, &mut obj)?;
                let obj = self.prepare_new(obj);
                self.store(key.clone(), obj, "ADDED");
                return self.read(&key);
            }
            return Err(Failure(404, "NotFound", format!("{} {:?} not found", key.0, key.2)));
        };
        let mut next = current.clone();
        if content_type.starts_with("application/apply-patch") {
            if status {
                let manager = route.field_manager.clone().unwrap_or_default();
                let given: BTreeSet<String> = patch
                    .get("status")
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let owners = self.status_owners.entry(key.clone()).or_default();
                let before = owners.insert(manager.clone(), given.clone()).unwrap_or_default();
                let others: BTreeSet<String> = owners
                    .iter()
                    .filter(|(m, _)| **m != manager)
                    .flat_map(|(_, keys)| keys.iter().cloned())
                    .collect();
                if !next["status"].is_object() {
                    next["status"] = json!({});
                }
                if let Some(st) = next["status"].as_object_mut() {
                    for dropped in before.difference(&given) {
                        if !others.contains(dropped) {
                            st.remove(dropped);
                        }
                    }
                    for (k, v) in patch.get("status").and_then(Value::as_object).into_iter().flatten() {
                        st.insert(k.clone(), v.clone());
                    }
                }
            } else {
                for (k, v) in patch.as_object().into_iter().flatten() {
                    if !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind") {
                        next[k] = v.clone();
                    }
                }
                merge_metadata(&mut next, &patch);
            }
        } else if content_type.starts_with("application/merge-patch") {
            if status {
                merge_patch(&mut next["status"], patch.get("status").unwrap_or(&Value::Null));
            } else {
                let mut p = patch;
                if let Some(m) = p.as_object_mut() {
                    m.remove("status");
                }
                merge_patch(&mut next, &p);
            }
        } else if content_type.starts_with("application/json-patch") {
            json_patch(&mut next, &patch)?;
        } else {
            return Err(Failure(415, "UnsupportedMediaType", content_type.to_owned()));
        }
        self.write(key, current, next, status)
    }

    fn write(&mut self, key: Key, current: Value, mut next: Value, status: bool) -> Result<Value, Failure> {
        if status {
            // The status subresource changes only status.
            let st = next.get("status").cloned();
            next = current.clone();
            if let Some(st) = st {
                next["status"] = st;
            }
        } else if current.get("status").is_some() && key.0 != "pods" {
            next["status"] = current["status"].clone();
        }
        if next.get("spec") != current.get("spec") && !status {
            bump_generation(&mut next);
        }
        if next == current {
            return Ok(current);
        }
        if status {
            *self.status_writes.entry(format!("{}/{}", key.1, key.2)).or_insert(0) += 1;
        }
        let finalizers_empty = next
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if next.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty {
            self.remove(&key);
            return Ok(next);
        }
        self.store(key.clone(), next, "MODIFIED");
        self.read(&key)
    }

    fn delete(&mut self, key: &Key, uid: Option<&str>) -> Result<Value, Failure> {
        let current = self.read(key)?;
        if let Some(uid) = uid
            && str_at(&current, "/metadata/uid") != uid
        {
            return Err(Failure(409, "Conflict", format!("precondition failed: uid {uid}")));
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_none() {
                let mut next = current;
                next["metadata"]["deletionTimestamp"] = json!(Timestamp::now().to_string());
                bump_generation(&mut next);
                self.store(key.clone(), next, "MODIFIED");
            }
            return self.read(key);
        }
        self.remove(key);
        Ok(current)
    }

    /// Removes an object and, like the garbage collector, everything it owns.
    fn remove(&mut self, key: &Key) {
        let Some(mut obj) = self.objects.remove(key) else {
            return;
        };
        self.status_owners.remove(key);
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let uid = str_at(&obj, "/metadata/uid");
        self.emit(key, obj, "DELETED");
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in owned {
            self.remove(&k);
        }
    }
}

/// A request's target.
struct Route {
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch: bool,
    resource_version: String,
    selector: Vec<(String, String)>,
    timeout_secs: Option<u64>,
    field_manager: Option<String>,
}

impl Route {
    fn parse(path: &str, query: &str) -> Self {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest: &[&str] = match segs.first() {
            Some(&"api") => segs.get(2..).unwrap_or_default(),
            _ => segs.get(3..).unwrap_or_default(),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            _ => (None, rest),
        };
        let q: HashMap<String, String> = url_pairs(query);
        let selector = q
            .get("labelSelector")
            .map(|s| {
                s.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Route {
            plural: rest.first().map(|s| (*s).to_owned()).unwrap_or_default(),
            namespace,
            name: rest.get(1).map(|s| (*s).to_owned()),
            sub: rest.get(2).map(|s| (*s).to_owned()),
            watch: q.get("watch").is_some_and(|w| w == "true" || w == "1"),
            resource_version: q.get("resourceVersion").cloned().unwrap_or_default(),
            selector,
            timeout_secs: q.get("timeoutSeconds").and_then(|t| t.parse().ok()),
            field_manager: q.get("fieldManager").cloned(),
        }
    }

    fn key(&self) -> Key {
        (
            self.plural.clone(),
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }
}

fn url_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
