//! Helpers for the endpoint's integration tests: start the `sora-endpoint` binary on a free
//! port, query its API, and run the official SDK drivers as subprocesses.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Overall bound for any condition a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing(what: &str) -> ! {
    panic!("{what} is missing: run `make setup` (scripts/setup.sh) first")
}

/// The venv Python with the official `sora-sdk`.
pub fn python() -> PathBuf {
    let python = repo_root().join(".cache/venv/bin/python");
    if !python.exists() {
        missing(&format!("{} (Python venv with sora-sdk)", python.display()));
    }
    let ok = std::process::Command::new(&python)
        .args(["-c", "import sora_sdk"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing("the sora-sdk Python package in .cache/venv");
    }
    python
}

/// Checks node, playwright-core, sora-js-sdk and Chromium; returns the JS driver's path.
pub fn js_driver(script: &str) -> PathBuf {
    let js = repo_root().join("tests/js");
    for dep in [
        "node_modules/playwright-core/package.json",
        "node_modules/sora-js-sdk/dist/sora.js",
    ] {
        if !js.join(dep).exists() {
            missing(&format!("tests/js/{dep}"));
        }
    }
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).exists() {
        missing(&format!("Chromium ({chromium})"));
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing("node");
    }
    js.join(script)
}

/// A running `sora-endpoint` binary; killed on drop.
pub struct Endpoint {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Endpoint {
    /// Starts the binary on a free port with extra arguments.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sora-endpoint-{name}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create endpoint log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sora-endpoint"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info,sora_endpoint=debug,livefilter_relay=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sora-endpoint");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("sora-endpoint did not start; log: {}", log.display()))
            .expect("read endpoint stdout")
            .unwrap_or_else(|| panic!("sora-endpoint exited at start; log: {}", log.display()));
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr, log }
    }

    /// Its signaling URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/signaling", self.addr)
    }

    /// Its HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.http());
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }

    /// GET raw bytes with the status.
    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.http());
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// POST JSON; returns status and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let url = format!("{}{path}", self.http());
        let response = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits (server-side long poll, bounded by [`WAIT`]) for a connection matching `query`
    /// (see README: /api/wait) and returns it; panics with the current state on timeout.
    pub async fn wait(&self, query: &str) -> Value {
        let url = format!("{}/api/wait?{query}&timeout_ms={}", self.http(), WAIT.as_millis());
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            200,
            "condition {query:?} not met within {WAIT:?}: {body:#}\nendpoint log: {}",
            self.log.display()
        );
        body
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("endpoint did not exit after SIGTERM")
            .expect("wait endpoint")
    }
}

/// A driver subprocess (Python or node) whose output lines are collected.
pub struct Driver {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Driver {
    /// Spawns `program args...` in the repository root.
    pub fn spawn(name: &str, program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child.stdout.take().map(Either::Out),
            child.stderr.take().map(Either::Err),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = match stream {
                    Either::Out(s) => {
                        Box::pin(BufReader::new(s)) as std::pin::Pin<Box<dyn tokio::io::AsyncBufRead + Send>>
                    }
                    Either::Err(s) => Box::pin(BufReader::new(s)),
                };
                let mut line = String::new();
                while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line.trim_end().to_owned());
                    line.clear();
                }
            }));
        }
        let stdin = child.stdin.take();
        Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            readers,
        }
    }

    /// Everything the driver printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Asks the driver to stop publishing (a "stop" line on stdin).
    pub async fn stop(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n").await;
            let _ = stdin.flush().await;
        }
    }

    /// Waits (bounded) for the driver to exit; returns its status, output and final summary.
    pub async fn finish(mut self) -> (ExitStatus, String, Value) {
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait driver"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("{} did not exit within {WAIT:?}; output:\n{}", self.name, self.output());
            }
        };
        // The pipes close with the process: let the readers collect the last lines.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let output = self.output();
        let summary = output
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("summary").cloned())
            })
            .unwrap_or(Value::Null);
        (status, output, summary)
    }
}

enum Either<A, B> {
    Out(A),
    Err(B),
}
