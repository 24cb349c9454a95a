//! The endpoint's signaling edge cases, driven in-process by a raw WebSocket client:
//! refusals, malformed input, unknown types, control-API close, redirect, shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sora_endpoint::{AppState, Config};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const STEP: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(config);
        let done = tokio::spawn(sora_endpoint::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            done,
        }
    }

    async fn ws(&self) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/signaling", self.addr))
            .await
            .expect("ws connect");
        ws
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(self.url(path))
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

/// The next JSON text message (skipping pings).
async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("timely message")
            .expect("open")
            .expect("ok");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Close(frame) => panic!("closed early: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server's close frame; returns (code, reason), then checks the server also
/// closes the TCP connection.
async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let frame = loop {
        let message = tokio::time::timeout(STEP, ws.next()).await.expect("timely close");
        match message {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let (code, reason) = frame
        .map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()));
    // After the closing handshake the server hangs up (the official Python SDK waits for it).
    let end = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("server closes TCP after the handshake");
    assert!(matches!(end, None | Some(Err(_))), "stream continued: {end:?}");
    (code, reason)
}

fn connect_msg(channel: &str) -> Value {
    json!({"type": "connect", "role": "sendonly", "channel_id": channel, "metadata": {"access_token": "tok"},
           "video": {"codec_type": "VP8"}, "audio": true, "sora_client": "signaling-test"})
}

#[tokio::test]
async fn offer_has_the_fields_the_official_sdks_need_and_disconnect_closes_1000() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-offer")).await;
    let offer = recv_json(&mut ws).await;
    assert_eq!(offer["type"], "offer");
    let id = offer["connection_id"].as_str().expect("connection_id");
    assert_eq!(id.len(), 26);
    assert_eq!(offer["config"], json!({"iceServers": [], "iceTransportPolicy": "all"}));
    assert_eq!(offer["channel_id"], "ch-offer");
    assert_eq!(offer["mid"], json!({"audio": "0", "video": "1"}));
    assert_eq!(offer["metadata"], json!({"access_token": "tok"}));
    for key in ["session_id", "client_id", "bundle_id", "version"] {
        assert!(offer[key].is_string(), "{key} missing: {offer:#}");
    }
    let sdp = offer["sdp"].as_str().expect("sdp");
    assert!(sdp.contains("a=recvonly"), "{sdp}");
    assert!(
        sdp.contains("127.0.0.1") && sdp.contains("typ host"),
        "host candidate in the offer: {sdp}"
    );
    assert!(
        sdp.contains("VP8/90000") && !sdp.contains("H264/90000"),
        "only the requested codec: {sdp}"
    );
    assert!(sdp.contains("opus/48000"), "{sdp}");
    // Like Sora: ICE-lite, and the client picks the DTLS role (it must take the client's).
    assert!(sdp.contains("a=ice-lite"), "{sdp}");
    assert!(
        sdp.contains("a=setup:actpass") && !sdp.contains("a=setup:passive"),
        "{sdp}"
    );

    // Unknown types are ignored; the session stays open.
    send(&mut ws, json!({"type": "stats", "reports": []})).await;
    send(&mut ws, json!({"type": "push-ack"})).await;
    send(&mut ws, json!({"type": "disconnect", "reason": "NO-ERROR"})).await;
    assert_eq!(expect_close(&mut ws).await, (1000, "TYPE-DISCONNECT".to_owned()));

    let c = server.get(&format!("/api/connections/{id}")).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(
        c["close"],
        json!({"code": 1000, "reason": "TYPE-DISCONNECT", "by": "client"})
    );
    assert_eq!(c["signaling"]["ignored_message_types"], json!(["stats", "push-ack"]));
    assert_eq!(c["signaling"]["connect"]["sora_client"], "signaling-test");
}

#[tokio::test]
async fn a_bitrate_cap_is_offered_in_the_video_section_only() {
    let server = Server::start(Config {
        max_video_bitrate_kbps: Some(1000),
        ..Config::default()
    })
    .await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-cap")).await;
    let offer = recv_json(&mut ws).await;
    let sdp = offer["sdp"].as_str().expect("sdp");
    let (audio, video) = sdp.split_once("m=video").expect("a video m-line");
    assert!(!audio.contains("b="), "no cap on audio or the session: {sdp}");
    assert!(video.contains("\r\nb=AS:1000\r\nb=TIAS:1000000\r\n"), "{sdp}");
    let id = offer["connection_id"].as_str().expect("connection_id");
    let c = server.get(&format!("/api/connections/{id}")).await;
    assert_eq!(c["signaling"]["local_sdp"], sdp, "the API shows the offer as sent");

    let uncapped = Server::start(Config::default()).await;
    let mut ws = uncapped.ws().await;
    send(&mut ws, connect_msg("ch-nocap")).await;
    let offer = recv_json(&mut ws).await;
    assert!(!offer["sdp"].as_str().expect("sdp").contains("b=AS"), "{offer:#}");
}

/// The video m-section of an SDP, line by line.
fn video_section(sdp: &str) -> Vec<&str> {
    let mut lines = sdp.lines().skip_while(|l| !l.starts_with("m=video "));
    let first = lines.next().into_iter();
    first.chain(lines.take_while(|l| !l.starts_with("m="))).collect()
}

#[tokio::test]
async fn a_simulcast_connect_gets_an_offer_asking_for_three_layers_like_sora() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(
        &mut ws,
        json!({"type": "connect", "role": "sendonly", "channel_id": "ch-sim", "simulcast": true,
               "video": {"codec_type": "VP8", "bit_rate": 1000}}),
    )
    .await;
    let offer = recv_json(&mut ws).await;
    assert_eq!(offer["simulcast"], true);
    assert_eq!(
        offer["encodings"],
        json!([
            {"rid": "r0", "active": true, "scaleResolutionDownBy": 4.0, "maxBitrate": 150_000},
            {"rid": "r1", "active": true, "scaleResolutionDownBy": 2.0, "maxBitrate": 300_000},
            {"rid": "r2", "active": true, "scaleResolutionDownBy": 1.0, "maxBitrate": 550_000},
        ])
    );
    let sdp = offer["sdp"].as_str().expect("sdp");
    let video = video_section(sdp);
    for uri in [
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    ] {
        assert!(
            video.iter().any(|l| l.starts_with("a=extmap:") && l.ends_with(uri)),
            "{uri} missing: {sdp}"
        );
    }
    let simulcast: Vec<&str> = video
        .iter()
        .copied()
        .filter(|l| l.starts_with("a=rid:") || l.starts_with("a=simulcast:"))
        .collect();
    assert_eq!(
        simulcast,
        [
            "a=rid:r0 recv",
            "a=rid:r1 recv",
            "a=rid:r2 recv",
            "a=simulcast:recv r0;r1;r2"
        ],
        "{sdp}"
    );
    assert!(
        sdp.contains("a=candidate:"),
        "the offer sent carries the gathered candidates: {sdp}"
    );
    let id = offer["connection_id"].as_str().expect("connection_id");
    let c = server.get(&format!("/api/connections/{id}")).await;
    assert_eq!(c["signaling"]["encodings"], offer["encodings"]);
    assert_eq!(c["video_layers"], json!([]), "no layer before the answer");
}

#[tokio::test]
async fn configured_simulcast_encodings_are_offered_verbatim_and_a_plain_connect_gets_none() {
    let encodings = r#"[{"rid":"low","scaleResolutionDownTo":{"maxWidth":320,"maxHeight":180},"maxBitrate":100000},
        {"rid":"high","active":true,"maxFramerate":15}]"#;
    let server = Server::start(Config {
        simulcast_encodings: Some(sora_endpoint::simulcast::Encodings::parse(encodings).expect("valid")),
        ..Config::default()
    })
    .await;
    let mut ws = server.ws().await;
    send(
        &mut ws,
        json!({"type": "connect", "role": "sendrecv", "channel_id": "ch-sim2", "simulcast": true}),
    )
    .await;
    let offer = recv_json(&mut ws).await;
    assert_eq!(
        offer["encodings"],
        serde_json::from_str::<Value>(encodings).expect("JSON")
    );
    let sdp = offer["sdp"].as_str().expect("sdp");
    let video = video_section(sdp);
    assert_eq!(
        video[video.len() - 3..],
        ["a=rid:low recv", "a=rid:high recv", "a=simulcast:recv low;high"],
        "{sdp}"
    );

    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-plain")).await;
    let offer = recv_json(&mut ws).await;
    assert_eq!(offer["simulcast"], false);
    assert!(offer.get("encodings").is_none(), "{offer:#}");
    assert!(!offer["sdp"].as_str().expect("sdp").contains("a=rid:"), "{offer:#}");
}

#[tokio::test]
async fn h264_connect_gets_an_h264_only_offer() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(
        &mut ws,
        json!({"type": "connect", "role": "sendonly", "channel_id": "ch-h264", "audio": false,
                         "video": {"codec_type": "H264"}}),
    )
    .await;
    let offer = recv_json(&mut ws).await;
    let sdp = offer["sdp"].as_str().expect("sdp");
    assert!(
        sdp.contains("H264/90000") && sdp.contains("profile-level-id=42e01f"),
        "{sdp}"
    );
    assert!(sdp.contains("packetization-mode=1"), "{sdp}");
    assert!(!sdp.contains("VP8/90000") && !sdp.contains("m=audio"), "{sdp}");
    assert_eq!(offer["mid"], json!({"video": "0"}));
}

#[tokio::test]
async fn malformed_first_message_is_refused_with_4400() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    ws.send(Message::text("{not json")).await.expect("send");
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.starts_with("INVALID-MESSAGE"), "{reason}");

    let mut ws = server.ws().await;
    send(&mut ws, json!({"type": "answer", "sdp": "v=0"})).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4400, "EXPECTED-CONNECT: got answer"));
}

#[tokio::test]
async fn malformed_json_mid_session_closes_4400_and_is_recorded() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-bad")).await;
    let offer = recv_json(&mut ws).await;
    ws.send(Message::text("\u{0}garbage")).await.expect("send");
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.starts_with("INVALID-MESSAGE"), "{reason}");
    let c = server
        .get(&format!(
            "/api/connections/{}",
            offer["connection_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(c["close"]["by"], "server");
    assert_eq!(c["close"]["code"], 4400);
}

#[tokio::test]
async fn invalid_answer_closes_4400() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-answer")).await;
    recv_json(&mut ws).await;
    send(&mut ws, json!({"type": "answer", "sdp": "this is not sdp"})).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.starts_with("INVALID-ANSWER"), "{reason}");
}

#[tokio::test]
async fn an_answer_with_setup_passive_is_refused_counted_and_closed_with_the_reason() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-passive")).await;
    let offer = recv_json(&mut ws).await;
    let id = offer["connection_id"].as_str().expect("connection_id").to_owned();
    // What webrtc-rs (or Pion) answers to an ICE-lite offer unless told otherwise.
    let passive_answer = offer["sdp"]
        .as_str()
        .expect("sdp")
        .replace("a=ice-lite\r\n", "")
        .replace("a=setup:actpass", "a=setup:passive")
        .replace("a=recvonly", "a=sendonly");

    send(&mut ws, json!({"type": "answer", "sdp": passive_answer})).await;

    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(
        reason.starts_with("INVALID-ANSWER: a=setup:passive refused"),
        "{reason}"
    );
    let c = server.get(&format!("/api/connections/{id}")).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(c["close"]["by"], "server");
    assert_eq!(c["close"]["reason"], reason.as_str());
    assert_eq!(c["signaling"]["dtls_role_refusals"], 1);
    assert!(c["connected_at_ms"].is_null(), "{c:#}");
}

#[tokio::test]
async fn wrong_access_token_is_refused_with_4401() {
    let config = Config {
        access_token: Some("secret".into()),
        ..Config::default()
    };
    let server = Server::start(config).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-auth")).await; // access_token "tok"
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4401);
    assert!(reason.starts_with("AUTHENTICATION-FAILED"), "{reason}");
    let refused = server.get("/api/connections?channel_id=ch-auth").await;
    assert_eq!(refused[0]["close"]["code"], 4401);

    let mut ws = server.ws().await;
    let mut good = connect_msg("ch-auth");
    good["metadata"]["access_token"] = json!("secret");
    send(&mut ws, good).await;
    assert_eq!(recv_json(&mut ws).await["type"], "offer");
}

#[tokio::test]
async fn control_api_closes_with_the_given_code_and_reason() {
    let server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-close")).await;
    let id = recv_json(&mut ws).await["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let client = reqwest::Client::new();
    let re_offer = client
        .post(server.url(&format!("/api/connections/{id}/re-offer")))
        .send()
        .await
        .expect("POST");
    assert_eq!(re_offer.status(), 409, "not connected yet");
    let bad = client
        .post(server.url(&format!("/api/connections/{id}/close")))
        .json(&json!({"code": 1006}))
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status(), 400);
    let ok = client
        .post(server.url(&format!("/api/connections/{id}/close")))
        .json(&json!({"code": 4000, "reason": "BYE-FROM-TEST"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(ok.status(), 202);
    assert_eq!(expect_close(&mut ws).await, (4000, "BYE-FROM-TEST".to_owned()));
    let c = server
        .get(&format!("/api/wait?connection_id={id}&state=closed&timeout_ms=5000"))
        .await;
    assert_eq!(
        c["close"],
        json!({"code": 4000, "reason": "BYE-FROM-TEST", "by": "server"})
    );

    let again = client
        .post(server.url(&format!("/api/connections/{id}/close")))
        .send()
        .await
        .expect("POST");
    assert_eq!(again.status(), 409);
    let unknown = client
        .post(server.url("/api/connections/NOPE/close"))
        .send()
        .await
        .expect("POST");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn redirect_can_be_switched_on_through_the_api() {
    let server = Server::start(Config::default()).await;
    let client = reqwest::Client::new();
    let put = client
        .put(server.url("/api/redirect"))
        .json(&json!({"location": "ws://127.0.0.1:9/signaling"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 200);
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-redirect")).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "redirect", "location": "ws://127.0.0.1:9/signaling"})
    );
    drop(ws);

    // A re-connect that says it was redirected is served here.
    let mut ws = server.ws().await;
    let mut again = connect_msg("ch-redirect");
    again["redirect"] = json!(true);
    send(&mut ws, again).await;
    assert_eq!(recv_json(&mut ws).await["type"], "offer");

    client
        .put(server.url("/api/redirect"))
        .json(&json!({"location": null}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(server.get("/api/redirect").await, json!({"location": null}));
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let mut server = Server::start(Config::default()).await;
    let mut ws = server.ws().await;
    send(&mut ws, connect_msg("ch-shutdown")).await;
    recv_json(&mut ws).await;
    server.stop.take().expect("stop").send(()).expect("server running");
    assert_eq!(expect_close(&mut ws).await, (1001, "SERVER-SHUTDOWN".to_owned()));
    let result = tokio::time::timeout(STEP, server.done)
        .await
        .expect("server stops")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn http_surface_answers_errors_as_json() {
    let server = Server::start(Config::default()).await;
    assert_eq!(
        reqwest::get(server.url("/healthz"))
            .await
            .expect("GET")
            .text()
            .await
            .expect("text"),
        "ok"
    );
    let missing = reqwest::get(server.url("/api/connections/NOPE")).await.expect("GET");
    assert_eq!(missing.status(), 404);
    let missing_png = reqwest::get(server.url("/api/connections/NOPE/frame.png"))
        .await
        .expect("GET");
    assert_eq!(missing_png.status(), 404);
    let timeout = reqwest::get(server.url("/api/wait?channel_id=none&timeout_ms=50"))
        .await
        .expect("GET");
    assert_eq!(timeout.status(), 408);
    assert_eq!(server.get("/api/connections").await, json!([]));
}
