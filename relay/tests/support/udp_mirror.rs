//! The only media path between the relay's publisher and the Sora-compatible endpoint: a UDP
//! proxy standing in for every address (candidates in the signaling are rewritten to it by a
//! small WebSocket proxy), which a test can block (an ICE blip) or cap to a bitrate (a
//! bottleneck link with a drop-tail buffer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A packet that would wait longer than this in a capped link's buffer is dropped (a router's
/// drop-tail queue).
pub const LINK_BUFFER: Duration = Duration::from_millis(200);

/// A UDP proxy that stands in for every address it is told about: a packet reaching the socket
/// standing in for B from A leaves the socket standing in for A towards B, so each side sees
/// only proxy addresses, exactly those the rewritten candidates name.
#[derive(Default)]
pub struct UdpMirror {
    fronts: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    /// Drop everything, both ways.
    pub blocked: AtomicBool,
    /// Packets forwarded.
    pub forwarded: AtomicU64,
    /// Packets dropped (blocked, or a capped link's buffer full).
    pub dropped: AtomicU64,
    /// The cap of every link (each direction towards each address), bit/s; 0: none.
    cap_bps: AtomicU64,
    /// Bytes delivered to each real address.
    delivered: Mutex<HashMap<SocketAddr, u64>>,
}

impl UdpMirror {
    /// Caps every link to `bps` (0 lifts the cap).
    pub fn cap(&self, bps: u64) {
        self.cap_bps.store(bps, Ordering::Release);
    }

    /// The most bytes delivered to any one address: the media receiver's.
    pub fn media_bytes_delivered(&self) -> u64 {
        self.delivered
            .lock()
            .expect("delivered")
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The proxy address standing in for `real` (created on first use).
    pub fn front(self: &Arc<Self>, real: SocketAddr) -> SocketAddr {
        let mut fronts = self.fronts.lock().expect("fronts");
        if let Some(s) = fronts.get(&real) {
            return s.local_addr().expect("bound");
        }
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a proxy socket");
        std.set_nonblocking(true).expect("non-blocking");
        let socket = Arc::new(UdpSocket::from_std(std).expect("tokio socket"));
        fronts.insert(real, Arc::clone(&socket));
        // The link towards `real`: packets wait here until the (capped) link has sent those
        // before them.
        let (link_tx, mut link_rx) = mpsc::unbounded_channel::<(Instant, Arc<UdpSocket>, Vec<u8>)>();
        let mirror = Arc::clone(self);
        tokio::spawn(async move {
            while let Some((at, out, packet)) = link_rx.recv().await {
                tokio::time::sleep_until(at).await;
                if out.send_to(&packet, real).await.is_ok() {
                    mirror.forwarded.fetch_add(1, Ordering::Relaxed);
                    *mirror.delivered.lock().expect("delivered").entry(real).or_default() += packet.len() as u64;
                }
            }
        });
        let mirror = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut busy_until = Instant::now();
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if mirror.blocked.load(Ordering::Acquire) {
                    mirror.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let cap = mirror.cap_bps.load(Ordering::Acquire);
                let departs = if cap == 0 {
                    now
                } else {
                    let start = busy_until.max(now);
                    if start - now > LINK_BUFFER {
                        mirror.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    busy_until = start + Duration::from_secs_f64((n * 8) as f64 / cap as f64);
                    busy_until
                };
                let out = mirror.front_socket(from);
                let _ = link_tx.send((departs, out, buf[..n].to_vec()));
            }
        });
        fronts[&real].local_addr().expect("bound")
    }

    fn front_socket(self: &Arc<Self>, real: SocketAddr) -> Arc<UdpSocket> {
        self.front(real);
        Arc::clone(&self.fronts.lock().expect("fronts")[&real])
    }

    /// `candidate:F C udp P IP PORT typ ...` with IP:PORT replaced by its stand-in.
    fn rewrite_candidate(self: &Arc<Self>, candidate: &str) -> String {
        let mut fields: Vec<String> = candidate.split(' ').map(str::to_owned).collect();
        if fields.len() > 5
            && fields[2].eq_ignore_ascii_case("udp")
            && let Ok(real) = format!("{}:{}", fields[4], fields[5]).parse::<SocketAddr>()
        {
            let front = self.front(real);
            fields[4] = front.ip().to_string();
            fields[5] = front.port().to_string();
        }
        fields.join(" ")
    }

    /// A signaling message with every candidate (in `sdp` or `candidate`) rewritten.
    fn rewrite_message(self: &Arc<Self>, text: &str) -> String {
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            return text.to_owned();
        };
        if let Some(sdp) = v.get("sdp").and_then(Value::as_str) {
            let rewritten: Vec<String> = sdp
                .split("\r\n")
                .map(|line| match line.strip_prefix("a=") {
                    Some(c) if c.starts_with("candidate:") => format!("a={}", self.rewrite_candidate(c)),
                    _ => line.to_owned(),
                })
                .collect();
            v["sdp"] = Value::String(rewritten.join("\r\n"));
        }
        if let Some(c) = v.get("candidate").and_then(Value::as_str) {
            v["candidate"] = Value::String(self.rewrite_candidate(c));
        }
        v.to_string()
    }
}

/// A WebSocket proxy in front of `upstream` that rewrites candidates both ways; returns its URL.
pub async fn signaling_proxy(upstream: String, mirror: Arc<UdpMirror>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (upstream, mirror) = (upstream.clone(), Arc::clone(&mirror));
            tokio::spawn(async move {
                let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Ok((server, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await else {
                    return;
                };
                let (mut client_tx, mut client_rx) = client.split();
                let (mut server_tx, mut server_rx) = server.split();
                let up_mirror = Arc::clone(&mirror);
                let up = async move {
                    while let Some(Ok(msg)) = client_rx.next().await {
                        let msg = match msg {
                            Message::Text(t) => Message::text(up_mirror.rewrite_message(&t)),
                            other => other,
                        };
                        if server_tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    while let Some(Ok(msg)) = server_rx.next().await {
                        let msg = match msg {
                            Message::Text(t) => Message::text(mirror.rewrite_message(&t)),
                            other => other,
                        };
                        if client_tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    format!("ws://{addr}/signaling")
}
