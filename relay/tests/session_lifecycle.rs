//! The browser session's life against the real relay binary, as an unlucky or hostile network
//! would drive it: offers racing, requests dropped half-way, refused viewers by the hundred, a
//! peer that vanishes, an ICE blip. The "browser" is a webrtc-rs peer (the relay's own send
//! peer), reaching the relay through a UDP proxy the test can cut.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livefilter_relay::codec::VideoCodec;
use livefilter_relay::publish::KeyframeRequest;
use livefilter_relay::publish::peer::{PeerEvent, PeerOptions, SendPeer};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use support::udp_proxy::UdpProxy;
use support::{Relay, WAIT};

/// A webrtc-rs sender standing in for the browser.
struct Sender {
    peer: SendPeer,
    events: mpsc::Receiver<PeerEvent>,
}

impl Sender {
    async fn new() -> Self {
        let (tx, events) = mpsc::channel(64);
        let options = PeerOptions::loopback(VideoCodec::Vp8);
        let peer = SendPeer::new(&options, tx, KeyframeRequest::default(), || {})
            .await
            .expect("sender peer");
        Self { peer, events }
    }

    /// The sender's complete offer (every candidate gathered).
    async fn offer(&mut self) -> String {
        self.peer.offer().await.expect("offer");
        while let Some(e) = self.events.recv().await {
            if matches!(e, PeerEvent::GatheringComplete) {
                break;
            }
        }
        self.peer.local_sdp().await.expect("local description")
    }

    async fn wait_connected(&mut self) {
        tokio::time::timeout(WAIT, async {
            while let Some(e) = self.events.recv().await {
                if matches!(e, PeerEvent::Connected) {
                    return;
                }
            }
            panic!("sender events ended before it connected");
        })
        .await
        .expect("the sender connected");
    }
}

/// The offer without its candidates: the relay can then only learn the sender's address from
/// the checks that reach it (through the proxy).
fn without_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The relay's UDP address in its answer, and the answer pointing at `proxy` instead.
fn through_proxy(answer: &str, proxy: Option<SocketAddr>) -> (SocketAddr, String) {
    let candidate = answer
        .lines()
        .find(|l| l.starts_with("a=candidate:") && (l.contains(" udp ") || l.contains(" UDP ")))
        .and_then(|l| l.strip_prefix("a=candidate:"))
        .expect("a UDP host candidate in the answer");
    let fields: Vec<&str> = candidate.split(' ').collect();
    let relay: SocketAddr = format!("{}:{}", fields[4], fields[5])
        .parse()
        .expect("candidate address");
    let rewritten = match proxy {
        Some(p) => answer.replace(
            &format!(" {} {} typ", fields[4], fields[5]),
            &format!(" {} {} typ", p.ip(), p.port()),
        ),
        None => answer.to_owned(),
    };
    (relay, rewritten)
}

/// The offer with a second, different DTLS fingerprint in its first media section.
fn conflicting_fingerprints(sdp: &str) -> String {
    let mut lines: Vec<String> = sdp.split("\r\n").map(str::to_owned).collect();
    let first_media = lines.iter().position(|l| l.starts_with("m=")).expect("a media section");
    lines.insert(first_media + 1, "a=fingerprint:sha-256 00:11:22:33".to_owned());
    lines.join("\r\n")
}

async fn post_offer(relay: &Relay, sdp: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(relay.url("/offer"))
        .json(&json!({"sdp": sdp, "type": "offer"}))
        .send()
        .await
        .expect("relay reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete_session(relay: &Relay, id: &str) -> u16 {
    reqwest::Client::new()
        .delete(relay.url(&format!("/offer/{id}")))
        .send()
        .await
        .expect("relay reachable")
        .status()
        .as_u16()
}

async fn session_state(relay: &Relay) -> String {
    relay.status().await["session"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_for_session_state(relay: &Relay, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = session_state(relay).await;
        if state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "session state stayed {state:?}, wanted {want:?}; log:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a complete HTTP request and closes the connection without reading the answer.
async fn send_and_hang_up(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("request written");
    stream.shutdown().await.expect("hang up");
}

#[tokio::test]
async fn a_refused_offer_and_a_good_one_never_leave_two_sessions_in_either_order() {
    let relay = Relay::serve(&[]).await;
    for round in 0..8 {
        let mut good = Sender::new().await;
        let good_sdp = good.offer().await;
        // Passes the pure checks, fails inside webrtc-rs (two different DTLS fingerprints):
        // refused by the session's own peer, after the actor took the offer.
        let refused_sdp = conflicting_fingerprints(&good_sdp);

        // Rounds 0-3 race the two; 4-5 send the refused one first, 6-7 the good one first.
        let ((refused, _), (good_status, good_body)) = match round {
            0..=3 => tokio::join!(post_offer(&relay, &refused_sdp), post_offer(&relay, &good_sdp)),
            4 | 5 => {
                let r = post_offer(&relay, &refused_sdp).await;
                (r, post_offer(&relay, &good_sdp).await)
            }
            _ => {
                let g = post_offer(&relay, &good_sdp).await;
                (post_offer(&relay, &refused_sdp).await, g)
            }
        };

        assert!(
            refused == 400 || refused == 409,
            "round {round}: the refused offer got {refused}"
        );
        if good_status == 409 {
            // The refused offer held the one place while it was being answered; then let it go.
            assert!(round <= 3, "round {round}: only a race may make the good offer wait");
            wait_for_session_state(&relay, "idle").await;
            continue;
        }
        assert_eq!(good_status, 200, "round {round}: {good_body}");
        let third = post_offer(&relay, &Sender::new().await.offer().await).await;
        assert_eq!(third.0, 409, "round {round}: a third sender must wait: {}", third.1);
        assert_eq!(session_state(&relay).await, "connecting", "round {round}");
        let stopped = delete_session(&relay, good_body["session"].as_str().unwrap_or("none")).await;
        assert_eq!(stopped, 204, "round {round}: the live session is the good one");
        wait_for_session_state(&relay, "idle").await;
    }
    let refusals = relay
        .metric("livefilter_sessions_ended_total{reason=\"refused\"}")
        .await;
    assert!(refusals >= 1.0, "the refusals went through the session actor");
}

#[tokio::test]
async fn an_answer_no_browser_uses_ends_the_session_at_the_connect_timeout() {
    let config = std::env::temp_dir().join(format!("lf-connect-{}.yaml", std::process::id()));
    std::fs::write(&config, "ice: {connect_timeout_secs: 1}\n").expect("config");
    let relay = Relay::serve(&["--config", config.to_str().unwrap()]).await;
    let before = relay.udp_sockets();

    // The client takes its answer and goes away (a reload right after the answer).
    let (status, body) = post_offer(&relay, &Sender::new().await.offer().await).await;

    assert_eq!(status, 200, "{body}");
    relay
        .wait_for_metric("livefilter_sessions_ended_total{reason=\"connect_timeout\"}", 1.0)
        .await;
    wait_for_session_state(&relay, "idle").await;
    relay.wait_for_udp_sockets(before).await;
    let (status, body) = post_offer(&relay, &Sender::new().await.offer().await).await;
    assert_eq!(status, 200, "the next sender is answered: {body}");
}

#[tokio::test]
async fn a_hundred_refused_viewer_offers_leave_no_socket_behind() {
    let relay = Relay::serve(&[]).await;
    let client = reqwest::Client::new();
    let refuse = || async {
        client
            .post(relay.url("/whep"))
            .header("content-type", "application/sdp")
            .body("v=0\r\nthis is not an offer\r\n")
            .send()
            .await
            .expect("relay reachable")
    };
    let before = relay.udp_sockets();
    assert_eq!(refuse().await.status(), 400);

    let mut statuses = Vec::new();
    for _ in 0..100 {
        let response = refuse().await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(body["error"].is_string(), "every refusal is JSON: {body}");
        statuses.push(status);
    }

    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    relay.wait_for_udp_sockets(before).await;
    assert_eq!(relay.status().await["publishers"]["preview"]["viewers"], 0);
}

#[tokio::test]
async fn a_viewer_whose_request_is_dropped_mid_way_frees_its_place() {
    let relay = Relay::serve(&["--max-viewers", "1"]).await;
    let viewer_offer = || async {
        let (tx, mut events) = mpsc::channel(64);
        let options = PeerOptions::loopback(VideoCodec::Vp8);
        // A send-only offer is answered recvonly by nobody: build the viewer's recvonly offer
        // by flipping the direction, as the WHEP page's offer would read.
        let peer = SendPeer::new(&options, tx, KeyframeRequest::default(), || {})
            .await
            .expect("peer");
        peer.offer().await.expect("offer");
        while let Some(e) = events.recv().await {
            if matches!(e, PeerEvent::GatheringComplete) {
                break;
            }
        }
        let sdp = peer.local_sdp().await.expect("sdp").replace("a=sendonly", "a=recvonly");
        peer.close().await;
        sdp
    };

    send_and_hang_up(relay.http, "POST", "/whep", "application/sdp", &viewer_offer().await).await;

    // The relay may not have taken the dropped request up yet, or may still be closing its
    // peer: "frees its place" means a later viewer is let in before the deadline.
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        let response = reqwest::Client::new()
            .post(relay.url("/whep"))
            .header("content-type", "application/sdp")
            .body(viewer_offer().await)
            .send()
            .await
            .expect("relay reachable");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        if status != 503 || Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(
        status,
        201,
        "the only place is free again: {body}; log:\n{}",
        relay.log()
    );
}

/// A sender connected to the relay through a proxy the test controls.
async fn connect_through_proxy(relay: &Relay) -> (Sender, UdpProxy, String) {
    let mut sender = Sender::new().await;
    let offer = without_candidates(&sender.offer().await);
    let (status, body) = post_offer(relay, &offer).await;
    assert_eq!(status, 200, "{body}");
    let answer = body["sdp"].as_str().expect("answer").to_owned();
    let (relay_udp, _) = through_proxy(&answer, None);
    let proxy = UdpProxy::start(relay_udp).await;
    let (_, answer) = through_proxy(&answer, Some(proxy.addr));
    sender.peer.set_answer(answer).await.expect("answer applied");
    sender.wait_connected().await;
    wait_for_session_state(relay, "receiving").await;
    (sender, proxy, body["session"].as_str().expect("session id").to_owned())
}

#[tokio::test]
async fn an_ice_blip_shorter_than_the_grace_keeps_the_same_session() {
    let config = std::env::temp_dir().join(format!("lf-blip-{}.yaml", std::process::id()));
    std::fs::write(&config, "ice: {disconnected_grace_secs: 20}\n").expect("config");
    let relay = Relay::serve(&["--config", config.to_str().unwrap()]).await;
    let (_sender, proxy, session) = connect_through_proxy(&relay).await;

    proxy.cut();
    relay.wait_for_log("browser connection interrupted").await;
    proxy.restore();
    relay.wait_for_log("browser connection recovered").await;

    wait_for_session_state(&relay, "receiving").await;
    assert!(proxy.dropped() > 0, "the proxy really cut the path");
    let ended = relay.metrics().await;
    assert!(
        !ended.contains("livefilter_sessions_ended_total{"),
        "no session ended: {ended}"
    );
    assert_eq!(delete_session(&relay, &session).await, 204, "still the same session");
}

#[tokio::test]
async fn a_sender_that_vanishes_frees_the_relay_after_the_grace() {
    let config = std::env::temp_dir().join(format!("lf-vanish-{}.yaml", std::process::id()));
    std::fs::write(&config, "ice: {disconnected_grace_secs: 1}\n").expect("config");
    let relay = Relay::serve(&["--config", config.to_str().unwrap()]).await;
    let (_sender, proxy, _session) = connect_through_proxy(&relay).await;

    proxy.cut();

    relay
        .wait_for_metric("livefilter_sessions_ended_total{reason=\"disconnected\"}", 1.0)
        .await;
    wait_for_session_state(&relay, "idle").await;
    let (status, body) = post_offer(&relay, &Sender::new().await.offer().await).await;
    assert_eq!(status, 200, "the next sender is answered: {body}");
}
