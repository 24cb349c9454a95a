//! Test harness: the real relay binary publishing into the real Sora-compatible endpoint.

#![allow(dead_code)]

pub mod browser;
pub mod turn;
pub mod udp_mirror;
pub mod udp_proxy;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_livefilter-relay"))
}

fn endpoint_bin() -> PathBuf {
    let path = relay_bin().with_file_name("sora-endpoint");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p sora-endpoint` (make test does)",
        path.display()
    );
    path
}

/// A free TCP port on loopback (bound and released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The value of the sample `series` (exact name with labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// A running `sora-endpoint`.
pub struct Endpoint {
    child: Child,
    // Kept open: a closed pipe would make the endpoint's next stdout write fail.
    _stdout: BufReader<std::process::ChildStdout>,
    /// Its HTTP/WebSocket address.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Starts one on a free port.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(0, extra)
    }

    /// Starts one on `port` (0: any); waits until it listens.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let mut child = Command::new(endpoint_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sora-endpoint");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("endpoint prints its address");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected endpoint banner: {line:?}"));
        Self {
            child,
            _stdout: stdout,
            addr,
        }
    }

    /// `ws://addr/signaling`.
    pub fn signaling_url(&self) -> String {
        format!("ws://{}/signaling", self.addr)
    }

    /// `http://addr/whip/<channel>`.
    pub fn whip_url(&self, channel: &str) -> String {
        format!("http://{}/whip/{channel}", self.addr)
    }

    /// `GET /api/wait?<query>`: the newest connection matching, or a panic with what was there.
    pub async fn wait_for(&self, query: &str) -> Value {
        let url = format!("http://{}/api/wait?timeout_ms={}&{query}", self.addr, WAIT.as_millis());
        let response = reqwest::get(&url).await.expect("endpoint reachable");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(status, 200, "condition `{query}` not met: {body:#}");
        body
    }

    /// `GET /api/connections/{id}` with up to `frames` frame summaries.
    pub async fn connection(&self, id: &str, frames: usize) -> Value {
        let url = format!("http://{}/api/connections/{id}?frames={frames}", self.addr);
        reqwest::get(&url)
            .await
            .expect("endpoint reachable")
            .json()
            .await
            .expect("JSON")
    }

    /// Every connection the endpoint knows.
    pub async fn connections(&self) -> Vec<Value> {
        let url = format!("http://{}/api/connections", self.addr);
        reqwest::get(&url)
            .await
            .expect("endpoint reachable")
            .json()
            .await
            .expect("JSON")
    }

    /// The newest decoded frame of a connection, as RGB.
    pub async fn frame_png(&self, id: &str) -> image::RgbImage {
        let url = format!("http://{}/api/connections/{id}/frame.png", self.addr);
        let response = reqwest::get(&url).await.expect("endpoint reachable");
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.expect("body");
        image::load_from_memory(&bytes).expect("a PNG").to_rgb8()
    }

    /// Closes a Sora connection from the server side with `code` and `reason`.
    pub async fn close(&self, id: &str, code: u16, reason: &str) {
        let url = format!("http://{}/api/connections/{id}/close", self.addr);
        let response = reqwest::Client::new()
            .post(&url)
            .json(&serde_json::json!({"code": code, "reason": reason}))
            .send()
            .await
            .expect("endpoint reachable");
        assert!(response.status().is_success(), "close refused: {}", response.status());
    }

    /// Sends a `re-offer` on a Sora connection.
    pub async fn re_offer(&self, id: &str) {
        let url = format!("http://{}/api/connections/{id}/re-offer", self.addr);
        let response = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect("endpoint reachable");
        assert!(
            response.status().is_success(),
            "re-offer refused: {}",
            response.status()
        );
    }

    /// Kills the process at once (a crashed SFU).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The inodes of the sockets process `pid` holds (its descriptors that link to `socket:[N]`),
/// to match against the kernel's tables in `/proc/<pid>/net/*`.
pub fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A running `livefilter-relay test-pattern`, logging to a file the test can read.
pub struct Relay {
    child: Child,
    /// Its HTTP address.
    pub http: SocketAddr,
    log: PathBuf,
}

impl Relay {
    /// Starts `livefilter-relay test-pattern` with loopback networking plus `args`.
    pub fn test_pattern(args: &[&str]) -> Self {
        Self::spawn("test-pattern", args)
    }

    /// Starts `livefilter-relay serve` (browser ingest) with loopback networking plus `args`,
    /// and waits until it answers HTTP.
    pub async fn serve(args: &[&str]) -> Self {
        let mut relay = Self::spawn("serve", args);
        relay.wait_until_listening().await;
        relay
    }

    /// Starts `livefilter-relay serve` on `http` (a relay coming back where another was), and
    /// waits until it answers HTTP.
    pub async fn serve_on(http: SocketAddr, args: &[&str]) -> Self {
        let mut relay = Self::spawn_on(http, "serve", args);
        relay.wait_until_listening().await;
        relay
    }

    fn spawn(subcommand: &str, args: &[&str]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        Self::spawn_on(http, subcommand, args)
    }

    fn spawn_on(http: SocketAddr, subcommand: &str, args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("livefilter-relay-{}-{}.log", std::process::id(), http.port()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(relay_bin())
            .arg(subcommand)
            .args(["--listen", &http.to_string(), "--udp-addr", "127.0.0.1:0"])
            .args(args)
            .env("LIVEFILTER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start livefilter-relay");
        Self { child, http, log }
    }

    /// CPU time (user + system) the relay process has used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Open file descriptors of the relay process (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// UDP sockets the relay process holds (its descriptors that `/proc/net/udp{,6}` lists).
    pub fn udp_sockets(&self) -> usize {
        let pid = self.child.id();
        let inodes = socket_inodes(pid);
        ["udp", "udp6"]
            .iter()
            .flat_map(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/net/{t}"))
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .filter(|inode| inodes.contains(inode))
            .count()
    }

    /// Waits until the relay holds exactly `expected` UDP sockets (they close asynchronously);
    /// panics with the count and the log if it never does.
    pub async fn wait_for_udp_sockets(&self, expected: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.udp_sockets();
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay holds {now} UDP sockets, expected {expected}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Waits until `/healthz` answers; panics with the log if the relay exits or never does.
    pub async fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if reqwest::get(self.url("/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("relay exited with {status} before listening; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "relay never answered /healthz; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the relay logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "relay never logged {needle:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The relay's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("relay reachable")
            .text()
            .await
            .expect("text")
    }

    /// The value of one metric sample line (exact name with labels), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Waits until `/metrics` shows `series` at least `min`.
    pub async fn wait_for_metric(&self, series: &str, min: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/metrics", self.http)).await
                && let Ok(text) = r.text().await
                && sample(&text, series).is_some_and(|v| v >= min)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached {min}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The relay's `/status` JSON.
    pub async fn status(&self) -> Value {
        reqwest::get(format!("http://{}/status", self.http))
            .await
            .expect("relay reachable")
            .json()
            .await
            .expect("JSON")
    }

    /// Waits until `/status` shows publisher `name` in `state`.
    pub async fn wait_for_publisher_state(&self, name: &str, state: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/status", self.http)).await
                && let Ok(v) = r.json::<Value>().await
                && v["publishers"][name]["state"] == state
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "publisher {name} never reached {state}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
