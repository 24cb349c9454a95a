//! A publisher's media path goes silent for a few seconds and comes back: the Sora publisher
//! keeps its connection (the endpoint sees one connection throughout) and frames resume.
//!
//! Every media packet between the relay's publisher and the Sora-compatible endpoint goes
//! through a UDP proxy in the test: a small WebSocket proxy in front of the endpoint's
//! signaling rewrites each side's ICE candidates to a proxy socket standing in for it, so the
//! proxy is the only path either side knows. The proxy can then drop everything for a while.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livefilter_relay::codec::{self, EncoderConfig, VideoCodec};
use livefilter_relay::metrics::Metrics;
use livefilter_relay::pipeline::{EncodeStage, TestPatternPipeline};
use livefilter_relay::publish::peer::LinkTiming;
use livefilter_relay::publish::sora::signaling::ConnectOptions;
use livefilter_relay::publish::sora::{SoraConfig, SoraPublisher};
use livefilter_relay::publish::{KeyframeRequest, PublisherHandle};
use livefilter_relay::testpattern::{self, TestPattern};
use serde_json::Value;
use support::{Endpoint, WAIT};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A UDP proxy that stands in for every address it is told about: a packet reaching the socket
/// standing in for B from A leaves the socket standing in for A towards B, so each side sees
/// only proxy addresses, exactly those the rewritten candidates name.
#[derive(Default)]
struct UdpMirror {
    fronts: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    blocked: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl UdpMirror {
    /// The proxy address standing in for `real` (created on first use).
    fn front(self: &Arc<Self>, real: SocketAddr) -> SocketAddr {
        let mut fronts = self.fronts.lock().expect("fronts");
        if let Some(s) = fronts.get(&real) {
            return s.local_addr().expect("bound");
        }
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a proxy socket");
        std.set_nonblocking(true).expect("non-blocking");
        let socket = Arc::new(UdpSocket::from_std(std).expect("tokio socket"));
        fronts.insert(real, Arc::clone(&socket));
        let mirror = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if mirror.blocked.load(Ordering::Acquire) {
                    mirror.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let out = mirror.front_socket(from);
                if out.send_to(&buf[..n], real).await.is_ok() {
                    mirror.forwarded.fetch_add(1, Ordering::Relaxed);
                }
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
async fn signaling_proxy(upstream: String, mirror: Arc<UdpMirror>) -> String {
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

fn dropped_while_disconnected(metrics: &Metrics) -> u64 {
    metrics
        .frames_dropped
        .with_label_values(&["sora", "publisher_disconnected"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_ice_blip_keeps_the_same_sora_connection_and_frames_resume() {
    let endpoint = Endpoint::start(&[]);
    let mirror = Arc::new(UdpMirror::default());
    let url = signaling_proxy(endpoint.signaling_url(), Arc::clone(&mirror)).await;
    let mut config = SoraConfig::new(
        vec![url],
        ConnectOptions {
            channel_id: "blip".into(),
            client_id: None,
            bundle_id: None,
            metadata: None,
            signaling_notify_metadata: None,
            codec: VideoCodec::Vp8,
            bitrate_kbps: 300,
            audio: false,
        },
    );
    config.udp_addrs = vec!["127.0.0.1:0".into()];
    // ICE notices the silence after 1 s (webrtc-rs's default is 5 s), so a 3 s blip is seen
    // as `disconnected` and has to be ridden out by the 5 s grace.
    config.link = LinkTiming {
        ice_disconnected_timeout: Duration::from_secs(1),
        ice_keepalive_interval: Duration::from_millis(300),
        ..LinkTiming::default()
    };
    let metrics = Metrics::new();
    let keyframes = KeyframeRequest::default();
    let shutdown = CancellationToken::new();
    let (handle, inputs) = PublisherHandle::new("sora", metrics.clone());
    let publisher = SoraPublisher::new(config, metrics.clone(), keyframes.clone(), shutdown.clone()).expect("config");
    let publisher = tokio::spawn(publisher.run(inputs));
    let font = testpattern::load_font(testpattern::DEFAULT_FONT_PATH).expect("font");
    let encoder = codec::new_encoder(&EncoderConfig::default()).expect("encoder");
    let frames = TestPatternPipeline {
        pattern: TestPattern::new(320, 180, 30, font).expect("pattern"),
        stage: EncodeStage::new(encoder, vec![handle], keyframes, metrics.clone()),
    }
    .spawn(shutdown.clone())
    .expect("thread");

    let conn = endpoint.wait_for("state=connected&min_frames=10").await;
    let id = conn["connection_id"].as_str().expect("id").to_owned();
    let dropped_before = dropped_while_disconnected(&metrics);
    let forwarded_before = mirror.forwarded.load(Ordering::Relaxed);

    mirror.blocked.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(3)).await;
    mirror.blocked.store(false, Ordering::Release);
    let blip_frames = dropped_while_disconnected(&metrics) - dropped_before;
    let before = endpoint.connection(&id, 0).await["video"]["frames_decoded"]
        .as_u64()
        .expect("frames");

    endpoint
        .wait_for(&format!(
            "connection_id={id}&state=connected&min_frames={}",
            before + 30
        ))
        .await;
    let connections = endpoint.connections().await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher stops")
        .expect("no panic");
    let _ = tokio::task::spawn_blocking(move || frames.join()).await;

    assert!(forwarded_before > 0 && mirror.dropped.load(Ordering::Relaxed) > 0);
    // The publisher saw the path go down (frames were held back, not sent into the void) ...
    assert!(blip_frames > 0, "the publisher never noticed the blip");
    // ... and rode it out on the same connection.
    assert_eq!(connections.len(), 1, "{connections:#?}");
    assert_eq!(metrics.publisher_reconnects.with_label_values(&["sora"]).get(), 0);
    assert_eq!(
        metrics.publisher_errors.with_label_values(&["sora", "peer_down"]).get(),
        0
    );
}
