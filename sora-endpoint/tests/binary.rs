//! The `sora-endpoint` binary itself: startup line, SIGTERM closing sessions, exit status.

mod common;

use std::time::Duration;

use common::Endpoint;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_zero() {
    let endpoint = Endpoint::start("sigterm", &["--ping-interval-secs", "0"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(endpoint.ws_url())
        .await
        .expect("ws connect");
    let connect = json!({"type": "connect", "role": "sendonly", "channel_id": "sigterm", "audio": false});
    ws.send(Message::text(connect.to_string())).await.expect("send");
    let offer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("timely offer")
        .expect("open")
        .expect("ok");
    assert!(offer.to_text().expect("text").contains("\"offer\""), "{offer:?}");
    let live = endpoint.get("/api/connections?channel_id=sigterm").await;
    assert_eq!(live[0]["state"], "connecting");

    let closing = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    let status = endpoint.terminate().await;
    assert!(status.success(), "exit status {status}");
    let frame = closing.await.expect("join");
    assert_eq!(frame, Some((1001, "SERVER-SHUTDOWN".to_owned())));
}

#[test]
fn invalid_simulcast_encodings_are_refused_at_startup_with_the_reason() {
    for (value, reason) in [
        (
            "[{\"rid\":\"r0\"},{\"maxBitrate\":1000}]",
            "encoding 1 has no string \"rid\"",
        ),
        ("{\"rid\":\"r0\"}", "non-empty JSON array"),
        ("[{\"rid\":\"r0\"},{\"rid\":\"r0\"}]", "appears twice"),
        ("not json", "not JSON"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sora-endpoint"))
            .args(["--listen", "127.0.0.1:0", "--simulcast-encodings", value])
            .output()
            .expect("run sora-endpoint");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains("--simulcast-encodings") && stderr.contains(reason),
            "{value}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "it must not start listening");
    }
}
