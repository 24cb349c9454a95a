//! The relay's test pattern, published over Sora signaling and WHIP into the Sora-compatible
//! endpoint (itself proven against the official Sora SDKs), decoded there and checked.

mod support;

use livefilter_relay::testpattern::hue_rgb;
use serde_json::Value;
use support::{Endpoint, Relay, free_port};

/// A small (320x180) test pattern published over Sora signaling to `endpoint`'s `channel`:
/// enough for the tests about signaling behaviour, cheap on two cores.
fn small_sora_relay(endpoint: &Endpoint, channel: &str) -> Relay {
    Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        channel,
        "--width",
        "320",
        "--height",
        "180",
    ])
}

/// RTP ticks per test-pattern frame at 30 fps.
const TICKS_PER_FRAME: u32 = 90_000 / 30;

/// The hue (0..179) whose colour is nearest to `rgb`.
fn nearest_hue(rgb: [u8; 3]) -> i32 {
    (0..180u8)
        .min_by_key(|&h| {
            let c = hue_rgb(h);
            (0..3)
                .map(|i| (i32::from(c[i]) - i32::from(rgb[i])).pow(2))
                .sum::<i32>()
        })
        .map_or(0, i32::from)
}

fn rgb(v: &Value) -> [u8; 3] {
    let a = v.as_array().expect("rgb array");
    [0, 1, 2].map(|i| a[i].as_u64().expect("channel") as u8)
}

/// Hue steps a lossy codec may lag or lead on one frame: a slowly changing flat area is often
/// left unrefreshed for a frame or two, and where two colour channels cross near zero the
/// nearest hue is ambiguous by a step or two.
const PER_FRAME_SLACK: i32 = 3;

fn hue_error(actual: i32, expected: i32) -> i32 {
    let d = (actual - expected).rem_euclid(180);
    d.min(180 - d)
}

/// The corner's hue advances by exactly the number of frames the RTP timestamps say passed
/// (one hue step per frame, mod 180): almost every frame within one step, every frame within a
/// small slack, and the whole run within two steps.
fn assert_hue_advances_one_step_per_frame(frames: &[Value]) {
    let frames = frames.get(5..).unwrap_or_default();
    assert!(frames.len() >= 30, "too few frame summaries: {}", frames.len());
    let ts = |f: &Value| f["rtp_timestamp"].as_u64().expect("rtp_timestamp") as u32;
    let hue = |f: &Value| nearest_hue(rgb(&f["patch_rgb"]));
    let frames_between = |a: &Value, b: &Value| {
        let ticks = ts(b).wrapping_sub(ts(a));
        assert_eq!(
            ticks % TICKS_PER_FRAME,
            0,
            "RTP timestamps are not on the 30 fps grid: {a} {b}"
        );
        (ticks / TICKS_PER_FRAME) as i32
    };
    let mut close = 0;
    for pair in frames.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let expected = hue(a) + frames_between(a, b);
        let error = hue_error(hue(b), expected);
        assert!(
            error <= PER_FRAME_SLACK,
            "hue {} after {a} -> {b}, expected {expected}",
            hue(b)
        );
        close += usize::from(error <= 1);
    }
    let pairs = frames.len() - 1;
    assert!(
        close * 10 >= pairs * 8,
        "only {close} of {pairs} frame steps advanced the hue by one"
    );
    let (first, last) = (&frames[0], &frames[frames.len() - 1]);
    let expected = hue(first) + frames_between(first, last);
    assert!(
        hue_error(hue(last), expected) <= 2,
        "hue {} at the end, expected {expected}: {first} -> {last}",
        hue(last)
    );
}

/// Pixels of the centre third that are (nearly) black: the clock's glyph fill. The hue
/// background is fully saturated and bright, so it never counts.
fn clock_mask(img: &image::RgbImage) -> Vec<bool> {
    let (w, h) = img.dimensions();
    let mut mask = Vec::new();
    for y in h / 3..2 * h / 3 {
        for x in w / 6..5 * w / 6 {
            let p = img.get_pixel(x, y).0;
            mask.push(p.iter().all(|&c| c < 70));
        }
    }
    mask
}

/// Publishes, then checks what the endpoint decoded: size, codec, hue progression, a ticking
/// clock, and what the `connect` (or WHIP offer) said.
async fn assert_test_pattern_arrives(
    endpoint: &Endpoint,
    transport: &str,
    codec: &str,
    width: u32,
    height: u32,
) -> Value {
    let conn = endpoint
        .wait_for(&format!("transport={transport}&state=connected&min_frames=45"))
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id").to_owned();
    let first_png = endpoint.frame_png(&id).await;
    let conn = endpoint.wait_for(&format!("connection_id={id}&min_frames=75")).await;
    let detail = endpoint.connection(&id, 600).await;

    assert_eq!(
        detail["video"]["codec"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some(codec),
        "{detail:#}"
    );
    assert_eq!(
        (detail["video"]["width"].as_u64(), detail["video"]["height"].as_u64()),
        (Some(width.into()), Some(height.into()))
    );
    assert!(detail["video"]["keyframes_decoded"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(detail["video"]["decode_errors"].as_u64(), Some(0), "{detail:#}");
    assert_hue_advances_one_step_per_frame(detail["frames"].as_array().expect("frames"));

    let later_png = endpoint.frame_png(&id).await;
    assert_eq!(later_png.dimensions(), (width, height));
    let (before, after) = (clock_mask(&first_png), clock_mask(&later_png));
    let black = after.iter().filter(|&&b| b).count();
    assert!(
        black > after.len() / 200,
        "no clock digits in the centre ({black} dark pixels)"
    );
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(
        changed > after.len() / 500,
        "the clock did not change between frames ({changed} pixels)"
    );
    conn
}

#[tokio::test]
async fn sora_vp8_test_pattern_arrives_at_1280x720_with_hue_and_clock_advancing() {
    let endpoint = Endpoint::start(&[]);
    let _relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "vp8-room",
        "--metadata",
        r#"{"access_token":"t0"}"#,
    ]);

    let conn = assert_test_pattern_arrives(&endpoint, "sora", "vp8", 1280, 720).await;

    let connect = &conn["signaling"]["connect"];
    assert_eq!(connect["role"], "sendonly");
    assert_eq!(connect["channel_id"], "vp8-room");
    assert_eq!(connect["metadata"]["access_token"], "t0");
    assert_eq!(connect["video"]["codec_type"], "VP8");
    assert_eq!(connect["video"]["bit_rate"], 1000);
    assert_eq!(connect["data_channel_signaling"], false);
}

#[tokio::test]
async fn the_relay_answers_an_ice_lite_offer_as_dtls_client() {
    // The endpoint behaves like Sora by default: ICE-lite, `a=setup:actpass`, DTLS server only.
    let endpoint = Endpoint::start(&[]);
    let _relay = small_sora_relay(&endpoint, "ice-lite-room");

    let conn = endpoint
        .wait_for("channel_id=ice-lite-room&state=connected&min_frames=10")
        .await;

    let offer = conn["signaling"]["local_sdp"].as_str().expect("offer SDP");
    assert!(offer.lines().any(|l| l.trim_end() == "a=ice-lite"), "{offer}");
    assert!(offer.lines().any(|l| l.trim_end() == "a=setup:actpass"), "{offer}");
    let answer = conn["signaling"]["remote_sdp"].as_str().expect("answer SDP");
    println!("--- ICE-lite offer ---\n{offer}--- the relay's answer ---\n{answer}");
    let setups: Vec<&str> = answer
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=setup:"))
        .collect();
    assert!(
        !setups.is_empty() && setups.iter().all(|l| *l == "a=setup:active"),
        "{answer}"
    );
    assert_eq!(conn["signaling"]["dtls_role_refusals"], 0);
    assert!(conn["video"]["frames_decoded"].as_u64().unwrap_or(0) >= 10, "{conn:#}");
}

#[tokio::test]
async fn sora_h264_test_pattern_arrives_with_hue_and_clock_advancing() {
    let endpoint = Endpoint::start(&[]);
    let _relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "h264-room",
        "--codec",
        "h264",
        "--width",
        "640",
        "--height",
        "360",
        "--bitrate-kbps",
        "800",
    ]);

    let conn = assert_test_pattern_arrives(&endpoint, "sora", "h264", 640, 360).await;

    assert_eq!(
        conn["signaling"]["connect"]["video"],
        serde_json::json!({"codec_type": "H264", "bit_rate": 800})
    );
}

#[tokio::test]
async fn whip_vp8_test_pattern_arrives_with_bearer_token() {
    let endpoint = Endpoint::start(&["--whip-token", "s3cret"]);
    let _relay = Relay::test_pattern(&[
        "--whip-url",
        &endpoint.whip_url("whip-vp8"),
        "--whip-token",
        "s3cret",
        "--width",
        "640",
        "--height",
        "360",
    ]);

    let conn = assert_test_pattern_arrives(&endpoint, "whip", "vp8", 640, 360).await;

    assert_eq!(conn["channel_id"], "whip-vp8");
}

#[tokio::test]
async fn whip_h264_test_pattern_arrives() {
    let endpoint = Endpoint::start(&[]);
    let _relay = Relay::test_pattern(&[
        "--whip-url",
        &endpoint.whip_url("whip-h264"),
        "--codec",
        "h264",
        "--width",
        "640",
        "--height",
        "360",
    ]);

    assert_test_pattern_arrives(&endpoint, "whip", "h264", 640, 360).await;
}

#[tokio::test]
async fn relay_reconnects_and_frames_resume_after_the_endpoint_restarts() {
    let port = free_port();
    let endpoint = Endpoint::start_on(port, &[]);
    let relay = small_sora_relay(&endpoint, "restart");
    endpoint.wait_for("state=connected&min_frames=10").await;

    endpoint.kill();
    let restarted = Endpoint::start_on(port, &[]);

    restarted.wait_for("state=connected&min_frames=20").await;
    relay.wait_for_publisher_state("sora", "connected").await;
    assert!(
        relay
            .metric(r#"livefilter_publisher_reconnects_total{publisher="sora"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn server_close_with_an_error_code_is_logged_and_retried_with_backoff() {
    let endpoint = Endpoint::start(&[]);
    let relay = small_sora_relay(&endpoint, "err");
    let first = endpoint.wait_for("state=connected&min_frames=5").await;
    let first_id = first["connection_id"].as_str().expect("id").to_owned();

    endpoint.close(&first_id, 4000, "TEST-FAILURE").await;

    relay
        .wait_for_log("server closed signaling with code 4000 (TEST-FAILURE)")
        .await;
    let second = endpoint.wait_for("state=connected&min_frames=5").await;
    assert_ne!(
        second["connection_id"],
        first_id.as_str(),
        "no new connection after the error close"
    );
    assert_eq!(
        relay
            .metric(r#"livefilter_publisher_errors_total{kind="closed_with_error",publisher="sora"}"#)
            .await,
        1.0
    );
    assert!(relay.log().contains("retry_in_ms"), "backoff not logged");
}

#[tokio::test]
async fn normal_server_close_stops_the_publisher_without_reconnecting() {
    let endpoint = Endpoint::start(&[]);
    let relay = small_sora_relay(&endpoint, "bye");
    let conn = endpoint.wait_for("state=connected&min_frames=5").await;

    endpoint
        .close(conn["connection_id"].as_str().expect("id"), 1000, "DISCONNECTED-API")
        .await;

    relay.wait_for_publisher_state("sora", "stopped").await;
    assert_eq!(
        endpoint.connections().await.len(),
        1,
        "the relay reconnected after a normal close"
    );
    assert!(
        relay.log().contains("Sora ended the session normally"),
        "{}",
        relay.log()
    );
}

#[tokio::test]
async fn sigterm_sends_disconnect_and_exits_cleanly() {
    let endpoint = Endpoint::start(&[]);
    let mut relay = small_sora_relay(&endpoint, "term");
    let conn = endpoint.wait_for("state=connected&min_frames=5").await;
    let id = conn["connection_id"].as_str().expect("id").to_owned();

    let status = relay.terminate();

    assert!(status.success(), "relay exited with {status}; log:\n{}", relay.log());
    let closed = endpoint.wait_for(&format!("connection_id={id}&state=closed")).await;
    assert_eq!(
        closed["close"],
        serde_json::json!({"code": 1000, "reason": "TYPE-DISCONNECT", "by": "client"})
    );
}

#[tokio::test]
async fn several_signaling_urls_race_and_the_live_one_wins() {
    let endpoint = Endpoint::start(&[]);
    let dead = format!("ws://127.0.0.1:{}/signaling", free_port());
    let _relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &dead,
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "race",
        "--width",
        "320",
        "--height",
        "180",
    ]);

    let conn = endpoint.wait_for("state=connected&min_frames=10").await;

    assert_eq!(conn["channel_id"], "race");
}

#[tokio::test]
async fn redirect_is_followed_with_redirect_true() {
    let target = Endpoint::start(&[]);
    let front = Endpoint::start(&["--redirect-to", &target.signaling_url()]);
    let _relay = small_sora_relay(&front, "moved");

    let conn = target.wait_for("state=connected&min_frames=10").await;

    assert_eq!(conn["signaling"]["connect"]["redirect"], true);
    assert_eq!(conn["channel_id"], "moved");
}

#[tokio::test]
async fn pings_are_answered_with_outbound_stats_when_asked() {
    let endpoint = Endpoint::start(&["--ping-interval-secs", "1", "--ping-stats"]);
    let _relay = small_sora_relay(&endpoint, "ping");

    let conn = endpoint.wait_for("state=connected&min_pongs=2").await;

    assert!(
        conn["signaling"]["pongs_with_stats"].as_u64().unwrap_or(0) >= 1,
        "{conn:#}"
    );
}

#[tokio::test]
async fn re_offer_is_re_answered_and_frames_keep_flowing() {
    let endpoint = Endpoint::start(&[]);
    let _relay = small_sora_relay(&endpoint, "reneg");
    let conn = endpoint.wait_for("state=connected&min_frames=5").await;
    let id = conn["connection_id"].as_str().expect("id").to_owned();
    let before = conn["video"]["frames_decoded"].as_u64().expect("frames");

    endpoint.re_offer(&id).await;

    endpoint.wait_for(&format!("connection_id={id}&min_re_answers=1")).await;
    endpoint
        .wait_for(&format!("connection_id={id}&min_frames={}", before + 30))
        .await;
}

#[tokio::test]
async fn a_wrong_access_token_is_refused_logged_and_retried() {
    let endpoint = Endpoint::start(&["--require-access-token", "right"]);
    let relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "auth",
        "--metadata",
        r#"{"access_token":"wrong"}"#,
        "--width",
        "320",
        "--height",
        "180",
    ]);

    let refused = endpoint.wait_for("state=closed").await;

    assert_eq!(refused["close"]["by"], "server");
    let code = refused["close"]["code"].as_u64().expect("close code");
    relay
        .wait_for_log(&format!("server closed signaling with code {code}"))
        .await;
    relay
        .wait_for_metric(
            r#"livefilter_publisher_errors_total{kind="closed_with_error",publisher="sora"}"#,
            1.0,
        )
        .await;
    assert_eq!(
        relay.metric(r#"livefilter_frames_sent_total{publisher="sora"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn a_wrong_whip_token_is_answered_401_and_logged() {
    let endpoint = Endpoint::start(&["--whip-token", "right"]);
    let relay = Relay::test_pattern(&[
        "--whip-url",
        &endpoint.whip_url("locked"),
        "--whip-token",
        "wrong",
        "--width",
        "320",
        "--height",
        "180",
    ]);

    relay.wait_for_log("answered 401 Unauthorized").await;

    relay
        .wait_for_metric(
            r#"livefilter_publisher_errors_total{kind="status",publisher="whip"}"#,
            1.0,
        )
        .await;
    assert!(endpoint.connections().await.is_empty());
}

#[tokio::test]
async fn frames_are_dropped_and_counted_while_the_sfu_is_unreachable() {
    let dead = format!("ws://127.0.0.1:{}/signaling", free_port());
    let relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &dead,
        "--channel-id",
        "void",
        "--width",
        "320",
        "--height",
        "180",
    ]);

    relay
        .wait_for_metric(
            r#"livefilter_frames_dropped_total{publisher="sora",reason="publisher_disconnected"}"#,
            30.0,
        )
        .await;

    assert!(relay.metric("livefilter_frames_generated_total").await >= 30.0);
    relay
        .wait_for_metric(
            r#"livefilter_publisher_errors_total{kind="unreachable",publisher="sora"}"#,
            1.0,
        )
        .await;
}

#[tokio::test]
async fn the_relay_keeps_to_the_video_cap_the_sfus_offer_sets() {
    let endpoint = Endpoint::start(&["--max-bitrate-kbps", "400"]);
    let relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "capped",
        "--bitrate-kbps",
        "1500",
        "--width",
        "640",
        "--height",
        "360",
    ]);
    let conn = endpoint
        .wait_for("transport=sora&channel_id=capped&state=connected&min_frames=30")
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id").to_owned();

    // The encoder follows the publisher's estimate, which the offer's b=TIAS bounds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let target = loop {
        let target = relay.metric("livefilter_encoder_target_bitrate_bps").await;
        if target <= 400_000.0 || std::time::Instant::now() > deadline {
            break target;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        target <= 400_000.0,
        "the encoder targets {target} bit/s under a 400 kbit/s cap"
    );
    // What arrives over the next 5 s of media keeps to it too (CBR may overshoot a little).
    let bytes = |c: &Value| c["video"]["bytes"].as_f64().expect("video bytes");
    let before = bytes(&endpoint.connection(&id, 0).await);
    let start = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let kbps = (bytes(&endpoint.connection(&id, 0).await) - before) * 8.0 / start.elapsed().as_secs_f64() / 1000.0;
    assert!(kbps <= 480.0, "{kbps:.0} kbit/s arrived under a 400 kbit/s cap");
}

/// The layers Sora asks for in these tests: a quarter, a half and the whole picture, with
/// ceilings low enough for a loopback path to carry all three at once.
const SIMULCAST_ENCODINGS: &str = r#"[
    {"rid": "r0", "active": true, "scaleResolutionDownBy": 4.0, "maxBitrate": 100000},
    {"rid": "r1", "active": true, "scaleResolutionDownBy": 2.0, "maxBitrate": 250000},
    {"rid": "r2", "active": true, "scaleResolutionDownBy": 1.0, "maxBitrate": 600000}
]"#;

/// Polls the connection until every listed rid has decoded `min_frames`; returns its detail.
async fn wait_for_layers(endpoint: &Endpoint, id: &str, rids: &[&str], min_frames: u64) -> Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let detail = endpoint.connection(id, 0).await;
        let layers = detail["video_layers"].as_array().cloned().unwrap_or_default();
        let decoded = |rid: &str| {
            layers
                .iter()
                .find(|l| l["rid"] == rid)
                .and_then(|l| l["frames_decoded"].as_u64())
                .unwrap_or(0)
        };
        if rids.iter().all(|rid| decoded(rid) >= min_frames) {
            return detail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "layers {rids:?} did not each decode {min_frames} frames: {:#}",
            detail["video_layers"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The layer with `rid` in a connection's detail.
fn layer<'a>(detail: &'a Value, rid: &str) -> &'a Value {
    detail["video_layers"]
        .as_array()
        .and_then(|layers| layers.iter().find(|l| l["rid"] == rid))
        .unwrap_or_else(|| panic!("no layer {rid}: {:#}", detail["video_layers"]))
}

#[tokio::test]
async fn sora_simulcast_sends_three_layers_at_a_quarter_a_half_and_full_size_within_their_bitrates() {
    let endpoint = Endpoint::start(&["--simulcast-encodings", SIMULCAST_ENCODINGS]);
    let relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "simulcast",
        "--sora-simulcast",
        // 640x360 rather than 720p: the debug build's scaler is slow, and two cores run the
        // relay's three encoders and the endpoint's three decoders at once.
        "--width",
        "640",
        "--height",
        "360",
    ]);
    let conn = endpoint.wait_for("transport=sora&state=connected").await;
    let id = conn["connection_id"].as_str().expect("connection_id").to_owned();

    let detail = wait_for_layers(&endpoint, &id, &["r0", "r1", "r2"], 90).await;

    assert_eq!(conn["signaling"]["connect"]["simulcast"], true);
    for (rid, size, max_kbps) in [
        ("r0", (160, 90), 100.0),
        ("r1", (320, 180), 250.0),
        ("r2", (640, 360), 600.0),
    ] {
        let l = layer(&detail, rid);
        let kbps = l["bitrate_kbps"].as_f64().expect("bitrate_kbps");
        println!(
            "layer {rid}: {}x{} {:.1} fps {kbps:.0} kbit/s ({} frames, {} keyframes)",
            l["width"],
            l["height"],
            l["fps"].as_f64().unwrap_or(0.0),
            l["frames_decoded"],
            l["keyframes_decoded"]
        );
        assert_eq!(
            (l["width"].as_u64(), l["height"].as_u64()),
            (Some(size.0), Some(size.1)),
            "{l:#}"
        );
        assert!(l["keyframes_decoded"].as_u64().unwrap_or(0) >= 1, "{l:#}");
        assert!(
            kbps > max_kbps * 0.1 && kbps < max_kbps * 1.3,
            "{rid}: {kbps} kbit/s for a {max_kbps} ceiling"
        );
    }
    assert_eq!(detail["video"]["decode_errors"].as_u64(), Some(0), "{detail:#}");
    let sent = relay
        .metric("livefilter_simulcast_layer_frames_total{rid=\"r0\"}")
        .await;
    assert!(sent >= 90.0, "{sent} r0 frames counted");
}

#[tokio::test]
async fn h264_simulcast_skips_an_inactive_encoding_and_a_re_offer_keeps_the_layers_flowing() {
    let encodings = r#"[
        {"rid": "r0", "scaleResolutionDownBy": 2.0, "maxBitrate": 150000},
        {"rid": "r1", "active": false, "scaleResolutionDownBy": 1.5},
        {"rid": "r2", "maxBitrate": 400000}
    ]"#;
    let endpoint = Endpoint::start(&["--simulcast-encodings", encodings]);
    let _relay = Relay::test_pattern(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "simulcast-reoffer",
        "--sora-simulcast",
        "--codec",
        "h264",
        "--width",
        "320",
        "--height",
        "180",
    ]);
    let conn = endpoint.wait_for("transport=sora&state=connected").await;
    let id = conn["connection_id"].as_str().expect("connection_id").to_owned();
    let before = wait_for_layers(&endpoint, &id, &["r0", "r2"], 15).await;

    endpoint.re_offer(&id).await;
    endpoint.wait_for(&format!("connection_id={id}&min_re_answers=1")).await;
    let r2_before = layer(&before, "r2")["frames_decoded"].as_u64().unwrap_or(0);
    let after = wait_for_layers(&endpoint, &id, &["r0", "r2"], r2_before + 30).await;

    assert_eq!(
        (
            layer(&after, "r0")["width"].as_u64(),
            layer(&after, "r0")["height"].as_u64()
        ),
        (Some(160), Some(90))
    );
    assert_eq!(layer(&after, "r2")["width"].as_u64(), Some(320));
    let r1_frames = after["video_layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["rid"] == "r1"))
        .and_then(|l| l["frames_decoded"].as_u64())
        .unwrap_or(0);
    assert_eq!(r1_frames, 0, "the inactive layer was sent: {:#}", after["video_layers"]);
    assert_eq!(
        after["video"]["codec"].as_str().map(str::to_ascii_lowercase).as_deref(),
        Some("h264")
    );
}
