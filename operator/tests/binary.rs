//! The binary against a small fake API server: it explains a missing CRD, and with the CRD it
//! takes the leader Lease, serves `/metrics` and `/healthz`, and on SIGTERM stops and hands the
//! Lease back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_livefilter-operator");

#[derive(Default)]
struct Fake {
    crd_installed: bool,
    lease: Option<Value>,
    lease_writes: Vec<(Method, Value)>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn status(code: u16, reason: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn list(kind: &str, api_version: &str) -> Response {
    axum::Json(json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1"}, "items": []}))
        .into_response()
}

async fn api(State(fake): State<Shared>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut f = fake.lock().unwrap();
    f.requests.push(format!("{method} {path}?{query}"));
    if query.contains("watch=true") {
        // A watch that stays open and quiet.
        return Response::new(Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >()));
    }
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/livefilter-system/leases";
    match (method.clone(), path.as_str()) {
        (Method::GET, "/apis/livefilter.dev/v1alpha1/livefiltersessions") if f.crd_installed => {
            list("LiveFilterSessionList", "livefilter.dev/v1alpha1")
        }
        (Method::GET, "/apis/livefilter.dev/v1alpha1/livefiltersessions") => status(404, "NotFound"),
        (Method::GET, "/api/v1/pods") => list("PodList", "v1"),
        (Method::GET, "/api/v1/configmaps") => list("ConfigMapList", "v1"),
        (Method::GET, "/api/v1/services") => list("ServiceList", "v1"),
        (Method::GET, "/apis/networking.k8s.io/v1/ingresses") => list("IngressList", "networking.k8s.io/v1"),
        (Method::GET, p) if p == format!("{lease_path}/livefilter-operator") => match &f.lease {
            Some(l) => axum::Json(l.clone()).into_response(),
            None => status(404, "NotFound"),
        },
        (Method::POST, p) if p == lease_path => {
            let mut lease = body.clone();
            lease["metadata"]["resourceVersion"] = json!("1");
            f.lease = Some(lease.clone());
            f.lease_writes.push((method, body));
            (StatusCode::CREATED, axum::Json(lease)).into_response()
        }
        (Method::PUT, p) if p == format!("{lease_path}/livefilter-operator") => {
            let mut lease = body.clone();
            let rv: u64 = f
                .lease
                .as_ref()
                .and_then(|l| l["metadata"]["resourceVersion"].as_str()?.parse().ok())
                .unwrap_or(1);
            lease["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
            f.lease = Some(lease.clone());
            f.lease_writes.push((method, body));
            axum::Json(lease).into_response()
        }
        _ => status(404, "NotFound"),
    }
}

/// Starts the fake API server; returns a kubeconfig pointing at it.
async fn fake_api(fake: Shared) -> (tempdir::Dir, std::path::PathBuf) {
    let app = Router::new().fallback(api).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempdir::Dir::new();
    let path = dir.0.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{addr}'}}}}]\n\
             users: [{{name: fake, user: {{token: test}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n"
        ),
    )
    .unwrap();
    (dir, path)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!("lf-operator-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn operator(kubeconfig: &std::path::Path, metrics_port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "op-test")
        .env("POD_NAMESPACE", "livefilter-system")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn a_missing_crd_stops_the_operator_with_instructions() {
    let fake = Shared::default();
    let (_dir, kubeconfig) = fake_api(fake.clone()).await;

    let out = tokio::time::timeout(Duration::from_secs(20), operator(&kubeconfig, free_port()).output())
        .await
        .expect("the operator exits")
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("livefiltersessions.livefilter.dev is not installed")
            && stderr.contains("kubectl apply -f crds/"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_leader_serves_metrics_and_hands_the_lease_back_on_sigterm() {
    let fake = Shared::default();
    fake.lock().unwrap().crd_installed = true;
    let (_dir, kubeconfig) = fake_api(fake.clone()).await;
    let port = free_port();
    let mut child = operator(&kubeconfig, port).spawn().unwrap();

    // It takes the Lease...
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.lock().unwrap().lease.is_none() {
        assert!(
            Instant::now() < deadline,
            "no Lease after 20 s: {:?}",
            fake.lock().unwrap().requests
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = fake.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-test");

    // ...serves its endpoints...
    let http = reqwest::Client::new();
    let mut metrics = String::new();
    while !metrics.contains("livefilter_operator_sessions") {
        assert!(Instant::now() < deadline, "no /metrics after 20 s");
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
            metrics = r.text().await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");

    // ...and on SIGTERM stops cleanly and gives the Lease up.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("it stops")
        .unwrap();

    assert_eq!(status.code(), Some(0));
    let writes = fake.lock().unwrap().lease_writes.clone();
    let (method, last) = writes.last().unwrap();
    assert_eq!(method, Method::PUT);
    assert_eq!(last["spec"]["holderIdentity"], Value::Null, "released: {last}");
    assert_eq!(last["spec"]["leaseDurationSeconds"], 1);
}
