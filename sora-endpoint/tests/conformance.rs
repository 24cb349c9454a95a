//! Conformance of the endpoint against the OFFICIAL Sora clients: the Python SDK (PyPI
//! `sora-sdk`) and the JavaScript SDK (npm `sora-js-sdk`) in headless Chromium. Each test starts
//! the `sora-endpoint` binary, runs a client as a subprocess, and checks through the HTTP API.
//!
//! Missing prerequisites fail the test with a message to run `make setup`.

mod common;

use common::{Driver, Endpoint, js_driver, python, repo_root};
use serde_json::Value;

/// Media tests run one at a time: they share two CPU cores with Chromium and the encoders.
static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Background colour the Python driver publishes (RGB).
const PY_COLOR: [i64; 3] = [200, 60, 30];

fn python_publish(name: &str, urls: &[String], channel: &str, extra: &[&str]) -> Driver {
    let script = repo_root().join("tests/conformance/python_sdk_publish.py");
    let mut args = vec![script.display().to_string()];
    for url in urls {
        args.extend(["--signaling-url".into(), url.clone()]);
    }
    args.extend(["--channel-id".into(), channel.into()]);
    args.extend(["--width", "640", "--height", "480", "--seconds", "20"].map(String::from));
    args.extend(["--color".into(), PY_COLOR.map(|c| c.to_string()).join(",")]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Driver::spawn(name, python(), &args)
}

fn js_publish(urls: &[String], channel: &str, extra: &[&str]) -> Driver {
    let script = js_driver("sora_js_publish.mjs");
    let mut args = vec![script.display().to_string()];
    for url in urls {
        args.extend(["--signaling-url".into(), url.clone()]);
    }
    args.extend(["--channel-id".into(), channel.into(), "--seconds".into(), "20".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Driver::spawn("sora-js-sdk", "node", &args)
}

fn close_of(connection: &Value) -> (Option<u64>, &str, &str) {
    let close = &connection["close"];
    (
        close["code"].as_u64(),
        close["reason"].as_str().unwrap_or(""),
        close["by"].as_str().unwrap_or(""),
    )
}

/// Asserts what every clean sendonly publish must show on the endpoint.
fn assert_clean_publish(c: &Value, codec: &str, min_frames: u64, output: &str) {
    let v = &c["video"];
    println!(
        "{}: {} {}x{}, {} frames decoded ({} keyframes, {} PLIs, {} lost packets), {} audio packets",
        c["channel_id"],
        v["codec"],
        v["width"],
        v["height"],
        v["frames_decoded"],
        v["keyframes_decoded"],
        v["plis_sent"],
        v["lost_packets"],
        c["audio"]["packets"]
    );
    assert_eq!(c["state"], "closed", "{output}");
    assert_eq!(
        close_of(c),
        (Some(1000), "TYPE-DISCONNECT", "client"),
        "close: {:#}\n{output}",
        c["close"]
    );
    assert_eq!(c["signaling"]["connect"]["role"], "sendonly");
    assert_eq!(c["signaling"]["connection_created_sent"], true);
    assert_eq!(v["codec"], codec);
    assert!(v["frames_decoded"].as_u64().unwrap_or(0) >= min_frames, "frames: {v:#}");
    assert_eq!(v["decode_errors"], 0, "{v:#}");
    let frames = c["frames"].as_array().expect("frame ring");
    assert!(frames.len() as u64 >= min_frames);
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "frame seqs not consecutive: {seqs:?}"
    );
    let arrivals: Vec<f64> = frames.iter().filter_map(|f| f["arrival_ms"].as_f64()).collect();
    assert!(arrivals.windows(2).all(|w| w[1] >= w[0]), "arrivals not monotonic");
    assert_eq!(frames[0]["keyframe"], true, "first decoded frame must be a keyframe");
}

fn assert_color_near(rgb: &Value, want: [i64; 3]) {
    let got: Vec<i64> = rgb
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    assert_eq!(got.len(), 3, "{rgb}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 12, "patch colour {got:?} is not near {want:?}");
    }
}

/// The endpoint's two ICE modes (`--ice-mode`): ICE-lite like Sora (the default), full ICE.
#[derive(Clone, Copy, Debug)]
enum Ice {
    Lite,
    Full,
}

impl Ice {
    fn flag(self) -> &'static str {
        match self {
            Ice::Lite => "lite",
            Ice::Full => "full",
        }
    }
}

/// What libwebrtc (every official SDK) answers: always the DTLS client, whatever the ICE mode.
fn assert_answer_is_dtls_client(c: &Value, ice: Ice) {
    let offer = c["signaling"]["local_sdp"].as_str().unwrap_or("");
    let answer = c["signaling"]["remote_sdp"].as_str().unwrap_or("");
    println!("--- offer ({ice:?} ICE) ---\n{offer}--- answer of the official SDK ---\n{answer}");
    assert_eq!(offer.contains("a=ice-lite"), matches!(ice, Ice::Lite), "{offer}");
    let setups: Vec<&str> = answer
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=setup:"))
        .collect();
    assert!(
        !setups.is_empty() && setups.iter().all(|l| *l == "a=setup:active"),
        "{answer}"
    );
    assert_eq!(c["signaling"]["dtls_role_refusals"], 0);
}

/// Python SDK, VP8, one signaling URL, against the ICE-lite (Sora-like) endpoint.
#[tokio::test]
async fn python_sdk_publishes_vp8_and_disconnects_cleanly() {
    python_sdk_publishes_vp8(Ice::Lite, "py-vp8").await;
}

/// The same against the endpoint doing full ICE.
#[tokio::test]
async fn python_sdk_publishes_vp8_over_full_ice() {
    python_sdk_publishes_vp8(Ice::Full, "py-vp8-full").await;
}

/// Connect, publish 640x480, disconnect.
async fn python_sdk_publishes_vp8(ice: Ice, channel: &str) {
    let _media = MEDIA.lock().await;
    let endpoint = Endpoint::start(channel, &["--ping-interval-secs", "1", "--ice-mode", ice.flag()]).await;
    let mut driver = python_publish("sora-sdk (python)", &[endpoint.ws_url()], channel, &[]);
    let live = endpoint
        .wait(&format!(
            "channel_id={channel}&state=connected&min_frames=45&min_pongs=1"
        ))
        .await;
    let id = live["connection_id"].as_str().expect("connection id").to_owned();
    assert!(
        live["video"]["fps"].as_f64().unwrap_or(0.0) >= 10.0,
        "fps: {:#}",
        live["video"]
    );

    // The newest frame as PNG: the published size and colour.
    let (status, png) = endpoint.get_bytes(&format!("/api/connections/{id}/frame.png")).await;
    assert_eq!(status, 200);
    let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .expect("PNG")
        .to_rgb8();
    assert_eq!(image.dimensions(), (640, 480));
    let pixel = image.get_pixel(16, 16).0.map(i64::from);
    assert_color_near(&serde_json::json!(pixel), PY_COLOR);

    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "python driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true, "{output}");
    assert_eq!(summary["offer_connection_id"], id.as_str(), "offer connection_id");
    assert_eq!(
        summary["notify_connection_id"],
        id.as_str(),
        "connection.created connection_id"
    );
    assert_eq!(
        summary["ws_close"],
        serde_json::json!([1000, "TYPE-DISCONNECT"]),
        "{output}"
    );

    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "vp8", 45, &output);
    assert_answer_is_dtls_client(&c, ice);
    let connect = &c["signaling"]["connect"];
    assert_eq!(connect["video"]["codec_type"], "VP8");
    assert_eq!(connect["audio"], false);
    assert!(
        connect["sora_client"]
            .as_str()
            .unwrap_or("")
            .starts_with("Sora Python SDK"),
        "{connect:#}"
    );
    let v = &c["video"];
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(480)),
        "{v:#}"
    );
    assert_color_near(&v["last_frame"]["patch_rgb"], PY_COLOR);
    let frames = c["frames"].as_array().expect("frames");
    assert!(
        frames.iter().all(|f| f["width"] == 640 && f["height"] == 480),
        "a frame not at 640x480"
    );
    let hashes: std::collections::HashSet<&str> = frames.iter().filter_map(|f| f["center_hash"].as_str()).collect();
    assert!(
        hashes.len() > 5,
        "centre content should move (bar): {} distinct hashes",
        hashes.len()
    );
    let s = &c["signaling"];
    assert!(s["candidates_plain"].as_u64().unwrap_or(0) >= 1, "{s:#}");
    assert_eq!(s["candidates_browser"], 0);
    assert!(s["pongs"].as_u64().unwrap_or(0) >= 1, "{s:#}");
    assert_eq!(s["pongs_with_stats"], 0);
}

/// Video kbit/s the Python SDK sends to an endpoint started with `endpoint_args`, publishing
/// noise with `video_bit_rate` 2500, measured at the endpoint over 5 s once it has settled.
async fn python_sdk_kbps(channel: &str, endpoint_args: &[&str]) -> f64 {
    let endpoint = Endpoint::start(channel, endpoint_args).await;
    let mut driver = python_publish(
        "sora-sdk (python)",
        &[endpoint.ws_url()],
        channel,
        &["--pattern", "noise", "--bitrate", "2500"],
    );
    let live = endpoint
        .wait(&format!("channel_id={channel}&state=connected&min_frames=1"))
        .await;
    let id = live["connection_id"].as_str().expect("connection id").to_owned();
    // Noise squeezed into a cap decodes at a few fps: the rate is measured in bytes, not frames.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let bytes = |c: Value| c["video"]["bytes"].as_f64().expect("video bytes");
    let before = bytes(endpoint.get(&format!("/api/connections/{id}?frames=0")).await);
    let start = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let after = bytes(endpoint.get(&format!("/api/connections/{id}?frames=0")).await);
    let kbps = (after - before) * 8.0 / start.elapsed().as_secs_f64() / 1000.0;
    driver.stop().await;
    let (status, output, _) = driver.finish().await;
    assert!(status.success(), "python driver failed ({status}):\n{output}");
    kbps
}

/// `--max-bitrate-kbps` holds the official Python SDK to the cap (b=AS/b=TIAS in the offer), as
/// Sora holds a publisher to its channel's bitrate: without it the SDK sends well over the cap.
#[tokio::test]
async fn python_sdk_keeps_to_the_endpoint_bitrate_cap() {
    let _media = MEDIA.lock().await;
    const CAP: f64 = 500.0;
    let uncapped = python_sdk_kbps("py-uncapped", &[]).await;
    let capped = python_sdk_kbps("py-capped", &["--max-bitrate-kbps", "500"]).await;
    println!(
        "sora-sdk (python), noise at video_bit_rate 2500: {uncapped:.0} kbit/s uncapped, {capped:.0} capped at {CAP}"
    );
    assert!(capped <= CAP * 1.2, "capped at {CAP} kbit/s, the SDK sent {capped:.0}");
    assert!(
        uncapped >= CAP * 1.5,
        "uncapped, the SDK sent only {uncapped:.0} kbit/s: the test proves nothing"
    );
}

/// Python SDK given a dead signaling URL first and a live one second: it connects to the live one.
#[tokio::test]
async fn python_sdk_skips_a_dead_signaling_url() {
    let _media = MEDIA.lock().await;
    let endpoint = Endpoint::start("py-multi", &[]).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }; // closed again here: nothing listens on that port
    let urls = [format!("ws://127.0.0.1:{dead}/signaling"), endpoint.ws_url()];
    let mut driver = python_publish("sora-sdk (python)", &urls, "py-multi", &[]);
    let live = endpoint.wait("channel_id=py-multi&state=connected&min_frames=20").await;
    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "python driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true);
    let id = live["connection_id"].as_str().expect("id");
    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "vp8", 20, &output);
    let all = endpoint.get("/api/connections?channel_id=py-multi").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "exactly one connection: {all:#}");
}

/// Python SDK against an endpoint in redirect mode: it follows `redirect` to the target.
#[tokio::test]
async fn python_sdk_follows_a_redirect() {
    let _media = MEDIA.lock().await;
    let target = Endpoint::start("py-redirect-target", &[]).await;
    let front = Endpoint::start("py-redirect-front", &["--redirect-to", &target.ws_url()]).await;
    let mut driver = python_publish("sora-sdk (python)", &[front.ws_url()], "py-redirect", &[]);
    let live = target
        .wait("channel_id=py-redirect&state=connected&min_frames=20")
        .await;
    assert_eq!(
        live["signaling"]["connect"]["redirect"], true,
        "re-connect must carry redirect:true"
    );
    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "python driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true);
    let id = live["connection_id"].as_str().expect("id");
    let c = target
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "vp8", 20, &output);

    let redirected = front.wait("channel_id=py-redirect&state=closed").await;
    assert_eq!(redirected["signaling"]["redirected_to"], target.ws_url().as_str());
    assert_eq!(close_of(&redirected).1, "REDIRECT");
    assert_eq!(
        redirected["video"]["packets"], 0,
        "nothing may be published to the front"
    );
}

/// Python SDK with H.264 (OpenH264 from Debian's libopenh264-7). Ignored: with sora-sdk
/// 2025.4.0 and libopenh264 2.3.1 the SDK either crashes (SIGSEGV) or encodes frames but sends
/// no packets. Run with `--ignored` to re-check after changing either.
#[tokio::test]
#[ignore = "sora-sdk 2025.4.0 + Debian libopenh264 2.3.1: SIGSEGV or no packets sent"]
async fn python_sdk_publishes_h264() {
    let _media = MEDIA.lock().await;
    let endpoint = Endpoint::start("py-h264", &[]).await;
    let mut driver = python_publish(
        "sora-sdk (python)",
        &[endpoint.ws_url()],
        "py-h264",
        &["--codec", "H264"],
    );
    let live = endpoint.wait("channel_id=py-h264&state=connected&min_frames=30").await;
    driver.stop().await;
    let (status, output, _) = driver.finish().await;
    assert!(status.success(), "python driver failed ({status}):\n{output}");
    let id = live["connection_id"].as_str().expect("id");
    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "h264", 30, &output);
}

/// sora-js-sdk in headless Chromium, VP8 + Opus: browser-format candidates, audio, a re-offer
/// mid-stream, clean disconnect.
#[tokio::test]
async fn js_sdk_publishes_vp8_with_audio_and_renegotiates() {
    let _media = MEDIA.lock().await;
    let endpoint = Endpoint::start("js-vp8", &["--ping-interval-secs", "1", "--ping-stats"]).await;
    let mut driver = js_publish(&[endpoint.ws_url()], "js-vp8", &["--codec", "VP8"]);
    let live = endpoint
        .wait("channel_id=js-vp8&state=connected&min_frames=20&min_audio_packets=20")
        .await;
    let id = live["connection_id"].as_str().expect("id").to_owned();
    let before = live["video"]["frames_decoded"].as_u64().unwrap_or(0);

    let (status, body) = endpoint
        .post(&format!("/api/connections/{id}/re-offer"), Value::Null)
        .await;
    assert_eq!(status, 202, "{body}");
    let renegotiated = endpoint.wait(&format!("connection_id={id}&min_re_answers=1")).await;
    assert_eq!(renegotiated["signaling"]["re_offers_sent"], 1);
    // Media keeps flowing after the renegotiation.
    endpoint
        .wait(&format!("connection_id={id}&min_frames={}&min_pongs=1", before + 20))
        .await;

    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "JS driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true, "{output}");
    assert_eq!(summary["connection_id"], id.as_str());
    assert_eq!(summary["disconnect"]["reason"], "TYPE-DISCONNECT", "{output}");

    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "vp8", 40, &output);
    let s = &c["signaling"];
    assert!(
        s["candidates_browser"].as_u64().unwrap_or(0) >= 1,
        "JS-format candidates: {s:#}"
    );
    assert_eq!(s["candidate_errors"], 0, "{s:#}");
    assert!(
        s["pongs_with_stats"].as_u64().unwrap_or(0) >= 1,
        "pong with stats: {s:#}"
    );
    assert!(
        s["connect"]["sora_client"]
            .as_str()
            .unwrap_or("")
            .starts_with("Sora JavaScript SDK")
    );
    assert!(c["audio"]["packets"].as_u64().unwrap_or(0) >= 20, "{:#}", c["audio"]);
    assert!(c["video"]["width"].as_u64().unwrap_or(0) > 0);
}

/// sora-js-sdk in headless Chromium with H.264 (Chromium's OpenH264 encoder), ICE-lite endpoint.
#[tokio::test]
async fn js_sdk_publishes_h264() {
    js_sdk_publishes_h264_with(Ice::Lite, "js-h264").await;
}

/// The same against the endpoint doing full ICE.
#[tokio::test]
async fn js_sdk_publishes_h264_over_full_ice() {
    js_sdk_publishes_h264_with(Ice::Full, "js-h264-full").await;
}

async fn js_sdk_publishes_h264_with(ice: Ice, channel: &str) {
    let _media = MEDIA.lock().await;
    let endpoint = Endpoint::start(channel, &["--ice-mode", ice.flag()]).await;
    let mut driver = js_publish(&[endpoint.ws_url()], channel, &["--codec", "H264", "--no-audio"]);
    let live = endpoint
        .wait(&format!("channel_id={channel}&state=connected&min_frames=30"))
        .await;
    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "JS driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true);
    let id = live["connection_id"].as_str().expect("id");
    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_clean_publish(&c, "h264", 30, &output);
    assert_answer_is_dtls_client(&c, ice);
    assert!(
        c["signaling"]["local_sdp"]
            .as_str()
            .unwrap_or("")
            .contains("profile-level-id=42e01f")
    );
}

/// The layers the simulcast test offers, lowest first: rid, decoded size, maxBitrate (bit/s).
/// Modest bitrates, so that Chromium's loopback bandwidth estimate reaches all three in time.
const SIMULCAST_LAYERS: [(&str, (u64, u64), u64); 3] = [
    ("r0", (320, 180), 150_000),
    ("r1", (640, 360), 400_000),
    ("r2", (1280, 720), 1_000_000),
];
/// How far over its maxBitrate a layer's received payload rate may be (encoder overshoot,
/// keyframes).
const BITRATE_MARGIN: f64 = 1.3;
/// How long Chromium may take to enable every layer as its bandwidth estimate grows.
const ALL_LAYERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

fn layer<'a>(c: &'a Value, rid: &str) -> &'a Value {
    c["video_layers"]
        .as_array()
        .and_then(|layers| layers.iter().find(|l| l["rid"] == rid))
        .unwrap_or(&Value::Null)
}

fn layer_is_decoding_at(l: &Value, size: (u64, u64)) -> bool {
    l["frames_decoded"].as_u64().unwrap_or(0) >= 30
        && l["fps"].as_f64().unwrap_or(0.0) >= 5.0
        && (l["width"].as_u64(), l["height"].as_u64()) == (Some(size.0), Some(size.1))
}

/// sora-js-sdk in headless Chromium publishing simulcast VP8 from a 1280x720 camera: the
/// endpoint's offer asks for r0/r1/r2 at 1/4, 1/2 and full resolution, and every layer is
/// decoded on its own at its size, within its maxBitrate; the top layer feeds the connection's
/// video; a re-offer (carrying the encodings again) keeps every layer going; the connection
/// closes cleanly.
#[tokio::test]
async fn js_sdk_publishes_vp8_simulcast_in_three_layers() {
    let _media = MEDIA.lock().await;
    let encodings: Vec<Value> = SIMULCAST_LAYERS
        .iter()
        // Integers: the SDK echoes the numbers back from JavaScript, where 4.0 is 4.
        .zip([4, 2, 1])
        .map(|(&(rid, _, max), scale)| {
            serde_json::json!({"rid": rid, "active": true, "scaleResolutionDownBy": scale, "maxBitrate": max})
        })
        .collect();
    let encodings = Value::Array(encodings);
    let endpoint = Endpoint::start(
        "js-simulcast",
        &[
            "--ping-interval-secs",
            "1",
            "--simulcast-encodings",
            &encodings.to_string(),
        ],
    )
    .await;
    let mut driver = js_publish(
        &[endpoint.ws_url()],
        "js-simulcast",
        &["--codec", "VP8", "--simulcast", "--no-audio", "--seconds", "120"],
    );
    let live = endpoint
        .wait("channel_id=js-simulcast&state=connected&min_frames=10")
        .await;
    let id = live["connection_id"].as_str().expect("id").to_owned();

    // Chromium enables the upper layers as its bandwidth estimate grows: poll until all decode.
    let started = std::time::Instant::now();
    let all = loop {
        let c = endpoint.get(&format!("/api/connections/{id}?frames=0")).await;
        if SIMULCAST_LAYERS
            .iter()
            .all(|&(rid, size, _)| layer_is_decoding_at(layer(&c, rid), size))
        {
            break c;
        }
        assert!(
            started.elapsed() < ALL_LAYERS_WITHIN,
            "not every layer decodes at its size within {ALL_LAYERS_WITHIN:?}: {:#}\n{}",
            c["video_layers"],
            driver.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    println!(
        "all three layers decoding after {:.1} s: {:#}",
        started.elapsed().as_secs_f64(),
        all["video_layers"]
    );
    assert_eq!(all["video_layers"].as_array().map(Vec::len), Some(3), "{all:#}");
    let ssrcs: std::collections::HashSet<u64> = all["video_layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ssrc"].as_u64())
        .collect();
    assert_eq!(ssrcs.len(), 3, "one SSRC per layer: {:#}", all["video_layers"]);
    // The top layer feeds the connection's video counters and frame log.
    assert_eq!(
        (all["video"]["width"].as_u64(), all["video"]["height"].as_u64()),
        (Some(1280), Some(720)),
        "{:#}",
        all["video"]
    );
    assert_eq!(layer(&all, "r2")["feeding"], true);

    // Each layer keeps to its maxBitrate: sampled over a few 2-s windows.
    let mut peak = [0.0f64; 3];
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let c = endpoint.get(&format!("/api/connections/{id}?frames=0")).await;
        for (i, &(rid, _, _)) in SIMULCAST_LAYERS.iter().enumerate() {
            peak[i] = peak[i].max(layer(&c, rid)["bitrate_kbps"].as_f64().unwrap_or(0.0));
        }
    }
    println!("peak layer bitrates (kbit/s): {peak:?}");
    for (&(rid, _, max), kbps) in SIMULCAST_LAYERS.iter().zip(peak) {
        let cap = max as f64 / 1000.0 * BITRATE_MARGIN;
        assert!(kbps > 0.0, "{rid} stopped sending");
        assert!(
            kbps <= cap,
            "{rid} at {kbps:.0} kbit/s, over its maxBitrate {max} (+30 %)"
        );
    }

    // A re-offer carries the encodings again; every layer keeps decoding after it.
    let before: Vec<u64> = {
        let c = endpoint.get(&format!("/api/connections/{id}?frames=0")).await;
        SIMULCAST_LAYERS
            .iter()
            .map(|&(rid, _, _)| layer(&c, rid)["frames_decoded"].as_u64().unwrap_or(0))
            .collect()
    };
    let (status, body) = endpoint
        .post(&format!("/api/connections/{id}/re-offer"), Value::Null)
        .await;
    assert_eq!(status, 202, "{body}");
    endpoint.wait(&format!("connection_id={id}&min_re_answers=1")).await;
    let started = std::time::Instant::now();
    loop {
        let c = endpoint.get(&format!("/api/connections/{id}?frames=0")).await;
        let grown = SIMULCAST_LAYERS.iter().zip(&before).all(|(&(rid, size, _), n)| {
            layer_is_decoding_at(layer(&c, rid), size)
                && layer(&c, rid)["frames_decoded"].as_u64().unwrap_or(0) >= n + 20
        });
        if grown {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "layers stalled after the re-offer: {:#}",
            c["video_layers"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    driver.stop().await;
    let (status, output, summary) = driver.finish().await;
    assert!(status.success(), "JS driver failed ({status}):\n{output}");
    assert_eq!(summary["connected"], true, "{output}");
    assert_eq!(summary["simulcast"], true, "the SDK took the offer as simulcast");
    assert_eq!(summary["encodings"], encodings, "the SDK applied the offer's encodings");
    let sent = &summary["outbound"]["video_rids"];
    for &(rid, size, _) in &SIMULCAST_LAYERS {
        assert_eq!(
            (sent[rid]["frameWidth"].as_u64(), sent[rid]["frameHeight"].as_u64()),
            (Some(size.0), Some(size.1)),
            "Chromium's {rid}: {sent:#}"
        );
    }
    assert_eq!(summary["disconnect"]["reason"], "TYPE-DISCONNECT", "{output}");

    let c = endpoint
        .wait(&format!("connection_id={id}&state=closed&frames=600"))
        .await;
    assert_eq!(
        close_of(&c),
        (Some(1000), "TYPE-DISCONNECT", "client"),
        "close: {:#}",
        c["close"]
    );
    let answer = c["signaling"]["remote_sdp"].as_str().unwrap_or("");
    for &(rid, _, _) in &SIMULCAST_LAYERS {
        assert!(answer.contains(&format!("a=rid:{rid} send")), "{answer}");
    }
    for l in c["video_layers"].as_array().into_iter().flatten() {
        assert_eq!(l["decode_errors"], 0, "{l:#}");
    }
    let v = &c["video"];
    assert_eq!(v["codec"], "vp8");
    assert_eq!(v["decode_errors"], 0, "{v:#}");
    let frames = c["frames"].as_array().expect("frame ring");
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the connection's frames are numbered in one sequence across layers: {seqs:?}"
    );
    let layer_frames: u64 = c["video_layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["frames_decoded"].as_u64())
        .sum();
    let fed = v["frames_decoded"].as_u64().unwrap_or(0);
    assert!(
        fed > 0 && fed < layer_frames,
        "the connection counts the feeding layer's frames only: {fed} of {layer_frames}"
    );
}
