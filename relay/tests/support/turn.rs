//! A real TURN server for tests: Debian's coturn (`turnserver`) on loopback, with time-limited
//! credentials from a shared secret (`use-auth-secret`, the TURN REST API), as a deployment
//! would run it. `make setup` (scripts/setup.sh) installs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{WAIT, free_port};

/// The coturn binary (`TURNSERVER_PATH` overrides).
fn turnserver_bin() -> PathBuf {
    let path = PathBuf::from(std::env::var("TURNSERVER_PATH").unwrap_or_else(|_| "/usr/sbin/turnserver".into()));
    let path = if path.exists() {
        path
    } else {
        PathBuf::from("/usr/bin/turnserver")
    };
    if !path.exists() {
        panic!("coturn (turnserver) is missing: run `make setup` (scripts/setup.sh) first");
    }
    path
}

/// A running coturn, killed on drop.
pub struct TurnServer {
    child: Child,
    /// Where it listens for clients (UDP and TCP).
    pub addr: SocketAddr,
    /// Its shared secret.
    pub secret: String,
    log: PathBuf,
}

impl TurnServer {
    /// Starts coturn on a free loopback port, relaying on loopback (which a production TURN
    /// server refuses: `--allow-loopback-peers` is for this test only), and waits until it
    /// answers a STUN binding request over TCP.
    pub async fn start(secret: &str) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("livefilter-coturn-{}-{port}.log", std::process::id()));
        let child = Command::new(turnserver_bin())
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--fingerprint",
                "--simple-log",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--allow-loopback-peers", "--realm", "livefilter.test"])
            .args(["--use-auth-secret", "--static-auth-secret", secret])
            .arg("--log-file")
            .arg(&log)
            .args(["--pidfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start turnserver: {e}"));
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret: secret.to_owned(),
            log,
        };
        server.wait_until_answering().await;
        server
    }

    /// `turn:127.0.0.1:<port>?transport=<transport>`.
    pub fn url(&self, transport: &str) -> String {
        format!("turn:{}?transport={transport}", self.addr)
    }

    /// What coturn logged (its log file; coturn adds a date to the name).
    pub fn log(&self) -> String {
        let dir = self.log.parent().unwrap_or(Path::new("/tmp"));
        let stem = self
            .log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// TCP connections clients hold open to coturn's listening port now (from coturn's own
    /// descriptors and the kernel's table: coturn does not log every session it relays).
    pub fn tcp_clients(&self) -> usize {
        let pid = self.child.id();
        let inodes = super::socket_inodes(pid);
        let local = format!("0100007F:{:04X}", self.addr.port());
        std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            // local_address rem_address st(01: ESTABLISHED) ... inode (10th field)
            .filter(|f| f.len() > 9 && f[1] == local && f[3] == "01" && inodes.contains(f[9]))
            .count()
    }

    async fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited with {status}; its log:\n{}", self.log());
            }
            if stun_binding_over_tcp(self.addr).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "turnserver never answered STUN on {}; its log:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a STUN binding request (RFC 8489) over TCP gets a binding success response.
async fn stun_binding_over_tcp(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        request.extend_from_slice(b"livefilter!!");
        stream.write_all(&request).await.ok()?;
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).await.ok()?;
        Some(header[..2] == [0x01, 0x01] && header[8..20] == request[8..20])
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
