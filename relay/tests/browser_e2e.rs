//! A real browser as the streamer: headless Chromium opens the relay's own sender page
//! (`static/index.html`) and preview page (`static/view.html`), streams a generated test card
//! (or Chromium's default fake camera) into `livefilter-relay serve`, and the pictures are
//! checked where they come out: at the Sora-compatible endpoint (decoded there) and in the
//! preview viewer's `<video>`.
//!
//! Needs Debian's Chromium and `tests/js/node_modules` (`make setup`). The tests run one at a
//! time (they use both cores); each waits on conditions, bounded by `support::WAIT`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::browser::{Browser, Camera, Clip, artefact_dir, serial};
use support::turn::TurnServer;
use support::{Endpoint, Relay, free_port};

/// The clip's size: Chromium sends it as is (no ramp-up from a smaller size at this size).
const CLIP_WIDTH: u32 = 640;
const CLIP_HEIGHT: u32 = 360;
/// Two lossy encodes (browser, relay) of a static card keep well above this; any other picture
/// (black, green, shifted, mis-scaled, U/V swapped) falls far below.
const MIN_PSNR_DB: f64 = 25.0;

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The endpoint's newest picture of connection `id` must be the card (saved for inspection).
async fn assert_endpoint_shows_the_card(endpoint: &Endpoint, id: &str, clip: &Clip, name: &str) {
    let picture = endpoint.frame_png(id).await;
    let path = artefact_dir().join(format!("{name}.png"));
    picture.save(&path).expect("save picture");
    let psnr = clip.card.psnr(&picture);
    let (w, h) = picture.dimensions();
    eprintln!("{name}: {w}x{h}, PSNR {psnr:.1} dB against the card");
    assert!(
        psnr >= MIN_PSNR_DB,
        "the endpoint's {w}x{h} picture is not the test card: PSNR {psnr:.1} dB ({})",
        path.display()
    );
}

/// Waits until the endpoint decodes frames of `width` x `height` on connection `id`, then
/// until `more` further frames of that size arrive.
async fn wait_for_endpoint_size(endpoint: &Endpoint, id: &str, width: u32, height: u32, more: u64) {
    let deadline = Instant::now() + support::WAIT;
    let decoded = loop {
        let detail = endpoint.connection(id, 0).await;
        if detail["video"]["width"] == width && detail["video"]["height"] == height {
            break u64_of(&detail["video"]["frames_decoded"]);
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint never decoded {width}x{height}: {:#}",
            detail["video"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let conn = endpoint
        .wait_for(&format!("connection_id={id}&min_frames={}", decoded + more))
        .await;
    assert_eq!(
        (conn["video"]["width"].as_u64(), conn["video"]["height"].as_u64()),
        (Some(width.into()), Some(height.into()))
    );
}

/// Waits until the relay's `/status` reports `width` x `height` as its input size.
async fn wait_for_input_size(relay: &Relay, width: u32, height: u32) {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let status = relay.status().await;
        if status["input"]["width"] == width && status["input"]["height"] == height {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed input {width}x{height}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/status` counts at least `min` received frames.
async fn wait_for_frames_received(relay: &Relay, min: u64) -> u64 {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let status = relay.status().await;
        let received = u64_of(&status["frames"]["received"]);
        if received >= min {
            return received;
        }
        assert!(
            Instant::now() < deadline,
            "/status never counted {min} received frames: {status:#}\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay with its defaults, and Chromium's fake camera live on its sender page ("streamer")
/// at 640x360.
async fn live_streamer() -> (Relay, Browser) {
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;
    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );
    (relay, browser)
}

/// Where a live session stood: its frames and its age.
struct SessionMark {
    received: u64,
    age_secs: f64,
}

impl SessionMark {
    async fn take(relay: &Relay) -> Self {
        let received = wait_for_frames_received(relay, 10).await;
        let age_secs = relay.status().await["session"]["age_secs"].as_f64().unwrap_or(0.0);
        Self { received, age_secs }
    }

    /// The session that was live at the mark is still the one receiving: 30 more frames came,
    /// its age went on (a new session would start over) and no session ended.
    async fn assert_the_same_session_went_on(&self, relay: &Relay) {
        wait_for_frames_received(relay, self.received + 30).await;
        let status = relay.status().await;
        assert_eq!(status["session"]["state"], "receiving", "{status:#}");
        assert!(
            status["session"]["age_secs"].as_f64().unwrap_or(0.0) > self.age_secs,
            "the same session went on (a new one would start its age over): {status:#}"
        );
        assert!(
            !relay.metrics().await.contains("livefilter_sessions_ended_total{"),
            "no session ended"
        );
    }
}

fn assert_live(state: &Value, relay: &Relay) {
    assert_eq!(
        state["phase"],
        "live",
        "the sender page did not go live: {state:#}\nrelay log:\n{}",
        relay.log()
    );
}

#[tokio::test]
async fn relay_serves_the_sender_page_the_viewer_page_and_its_info() {
    let relay = Relay::serve(&[]).await;

    let index = reqwest::get(relay.url("/")).await.expect("GET /");
    let index_type = index.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let index_body = index.text().await.expect("body");
    let view = reqwest::get(relay.url("/view")).await.expect("GET /view");
    let view_type = view.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let view_body = view.text().await.expect("body");
    let info: Value = reqwest::get(relay.url("/api/info"))
        .await
        .expect("GET /api/info")
        .json()
        .await
        .expect("JSON");

    assert!(index_type.starts_with("text/html"), "{index_type}");
    assert_eq!(
        index_body,
        include_str!("../../static/index.html"),
        "GET / is not static/index.html"
    );
    assert!(view_type.starts_with("text/html"), "{view_type}");
    assert_eq!(
        view_body,
        include_str!("../../static/view.html"),
        "GET /view is not static/view.html"
    );
    let contract = ["token_required", "preview", "hls_url", "codecs"].map(|key| info[key].clone());
    assert_eq!(
        contract,
        [json!(false), json!(true), Value::Null, json!(["vp8", "h264"])],
        "/api/info: {info:#}"
    );
}

#[tokio::test]
async fn the_sender_page_links_the_hls_url_and_hides_the_preview_link_as_api_info_says() {
    let _serial = serial().await;
    let hls = "https://live.example/hls/room.m3u8";
    let endpoint = Endpoint::start(&[]);
    let relay = Relay::serve(&[
        "--sora-signaling-url",
        &endpoint.signaling_url(),
        "--channel-id",
        "links",
        "--hls-url",
        hls,
        "--no-preview",
    ])
    .await;
    let mut browser = Browser::launch(Camera::Fake).await;

    browser.open("streamer", &relay.url("/")).await;

    let (_, hls_visible) = browser.text("streamer", "#hls-link").await;
    let (_, preview_visible) = browser.text("streamer", "#preview-link").await;
    assert!(hls_visible, "the HLS link is hidden");
    assert_eq!(
        browser.attr("streamer", "#hls-link", "href").await.as_deref(),
        Some(hls)
    );
    assert!(!preview_visible, "the preview link shows although the preview is off");
    browser.quit().await;
}

/// The arrangement most tests share: a Sora-compatible endpoint, the relay serving browsers and
/// publishing to it (plus `extra` flags), and a browser whose camera plays a generated test card,
/// with the sender page open.
struct ClipToSora {
    endpoint: Endpoint,
    relay: Relay,
    clip: Clip,
    browser: Browser,
}

impl ClipToSora {
    async fn open(channel: &str, clip_name: &str, extra: &[&str]) -> Self {
        let endpoint = Endpoint::start(&[]);
        let signaling = endpoint.signaling_url();
        let mut args = vec!["--sora-signaling-url", signaling.as_str(), "--channel-id", channel];
        args.extend_from_slice(extra);
        let relay = Relay::serve(&args).await;
        let clip = Clip::test_card(clip_name, CLIP_WIDTH, CLIP_HEIGHT);
        let mut browser = Browser::launch(Camera::Clip(clip.path.clone())).await;
        browser.open("streamer", &relay.url("/")).await;
        Self {
            endpoint,
            relay,
            clip,
            browser,
        }
    }
}

/// Starts the streamer page's clip in `codec`, checks it went live, and waits until the
/// endpoint decoded `min_frames` of it on `channel`; returns that connection.
async fn go_live(
    browser: &mut Browser,
    relay: &Relay,
    endpoint: &Endpoint,
    channel: &str,
    codec: &str,
    min_frames: u32,
) -> Value {
    let started = browser
        .start(
            "streamer",
            json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT, "codec": codec}),
        )
        .await;
    assert_live(&started, relay);
    endpoint
        .wait_for(&format!(
            "transport=sora&channel_id={channel}&state=connected&min_frames={min_frames}"
        ))
        .await
}

#[tokio::test]
async fn browser_clip_reaches_the_sora_endpoint_through_the_relay_with_its_pixels_and_audio() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open("browser-vp8", "passthrough", &[]).await;

    let started = browser
        .start(
            "streamer",
            json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT, "codec": "vp8"}),
        )
        .await;

    assert_live(&started, &relay);
    let conn = endpoint
        .wait_for("transport=sora&channel_id=browser-vp8&state=connected&min_frames=40&min_audio_packets=50")
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "passthrough-endpoint").await;
    let detail = endpoint.connection(id, 0).await;
    assert_eq!(detail["video"]["decode_errors"], 0, "{:#}", detail["video"]);
    assert!(
        u64_of(&detail["audio"]["packets"]) >= 50,
        "the browser's Opus was not forwarded: {:#}",
        detail["audio"]
    );
    let status = relay.status().await;
    assert_eq!(status["session"]["codec"], "vp8", "{status:#}");
    assert!(u64_of(&status["publishers"]["sora"]["frames_sent"]) >= 40, "{status:#}");
    let first_frame_ms = status["session"]["first_frame_ms"].as_f64();
    assert!(
        first_frame_ms.is_some_and(|ms| ms > 0.0),
        "offer to first frame: {status:#}"
    );
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains("livefilter_session_first_frame_seconds_count 1\n"),
        "one session, one first frame timed"
    );
    let sender = browser
        .wait_state("streamer", "answered two DataChannel pings", |s| {
            u64_of(&s["pongs"]) >= 2
        })
        .await;
    assert!(sender["rttMs"].as_f64().is_some_and(|rtt| rtt < 1000.0), "{sender:#}");
    let (rtt_text, rtt_visible) = browser.text("streamer", "#rtt").await;
    assert!(rtt_visible && rtt_text.ends_with(" ms"), "#rtt shows {rtt_text:?}");
    browser.screenshot("streamer", "passthrough-sender").await;
    browser.quit().await;
}

/// Whether a TCP connection to local `port` is established (from /proc/net/tcp: the local
/// address's port in hex, state 01).
fn tcp_established_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[1].rsplit_once(':').map(|(_, p)| p) == Some(&format!("{port:04X}"))
            && fields[3] == "01"
    })
}

/// With ICE over TCP only (the relay offers no UDP candidate, as where no UDP gets through),
/// Chromium's session goes live over the relay's TCP port and frames flow.
#[tokio::test]
async fn the_browser_streams_over_ice_tcp_when_the_relay_takes_ice_over_tcp_only() {
    let _serial = serial().await;
    let tcp_port = free_port();
    let tcp_addr = format!("127.0.0.1:{tcp_port}");
    let relay = Relay::serve(&["--ice-tcp-addr", &tcp_addr, "--ice-tcp-only"]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;

    let state = browser.start("streamer", json!({"width": 640, "height": 360})).await;

    assert_live(&state, &relay);
    wait_for_frames_received(&relay, 30).await;
    assert!(
        tcp_established_on(tcp_port),
        "the media came over the relay's ICE-TCP port {tcp_port}"
    );
    browser.quit().await;
}

/// The screenshot is `target/tmp/browser-e2e/phone-sender-live.png`.
#[tokio::test]
async fn on_a_phone_the_sender_page_goes_live_and_fits_the_screen_width() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open_mobile("phone", &relay.url("/")).await;

    let state = browser.start("phone", json!({"width": 640, "height": 360})).await;

    assert_live(&state, &relay);
    let layout = browser.layout("phone").await;
    assert_eq!(
        layout["overflowing"],
        json!([]),
        "nothing reaches past the screen: {layout}"
    );
    assert!(
        u64_of(&layout["scrollWidth"]) <= u64_of(&layout["innerWidth"]),
        "no sideways scrolling: {layout}"
    );
    browser.screenshot("phone", "phone-sender-live").await;
    browser.quit().await;
}

#[tokio::test]
async fn preview_viewer_plays_the_live_stream_of_the_default_fake_camera() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;

    browser.open("viewer", &relay.url("/view")).await;

    let playing = browser
        .wait_state("viewer", "playing", |s| {
            u64_of(&s["video"]["readyState"]) >= 2
                && u64_of(&s["video"]["videoWidth"]) > 0
                && u64_of(&s["received"]["framesDecoded"]) > 0
        })
        .await;
    let decoded = u64_of(&playing["received"]["framesDecoded"]);
    let later = browser
        .wait_state("viewer", "decoding 20 more frames", |s| {
            u64_of(&s["received"]["framesDecoded"]) >= decoded + 20
        })
        .await;
    assert!(
        u64_of(&later["audioReceived"]["packetsReceived"]) > 0,
        "no audio reached the viewer: {later:#}"
    );
    let first = browser.snapshot("viewer", "#remote").await;
    let deadline = Instant::now() + support::WAIT;
    loop {
        let now = browser.snapshot("viewer", "#remote").await;
        if now.dimensions() != first.dimensions() || support::browser::psnr(&first, &now) < 40.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer's picture never changed (the fake camera moves)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status_text, _) = browser.text("viewer", "#status").await;
    assert_eq!(status_text, "Playing");
    let status = relay.status().await;
    let preview = &status["publishers"]["preview"];
    assert_eq!(preview["viewers"], 1, "{status:#}");
    assert!(u64_of(&preview["frames_sent"]) > 20, "{status:#}");
    browser.screenshot("viewer", "preview-viewer").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_preview_says_the_stream_ended_when_the_sender_stops_and_plays_again_when_it_returns() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;
    browser.open("viewer", &relay.url("/view")).await;
    browser
        .wait_state("viewer", "playing", |s| s["phase"] == "playing")
        .await;

    browser.stop("streamer").await;
    let stopped_at = Instant::now();
    browser.wait_state("viewer", "ended", |s| s["phase"] == "ended").await;
    // Reported, not asserted (tests do not judge wall-clock time): the page aims at 1-2 s.
    eprintln!(
        "the preview said \"ended\" {:?} after the sender stopped",
        stopped_at.elapsed()
    );
    let (shown, _) = browser.text("viewer", "#status").await;
    assert!(shown.starts_with("The stream ended"), "the viewer page shows {shown:?}");
    browser.screenshot("viewer", "preview-ended").await;
    let before = u64_of(&browser.state("viewer").await["received"]["framesDecoded"]);

    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );

    let again = browser
        .wait_state("viewer", "playing again", |s| {
            s["phase"] == "playing" && u64_of(&s["received"]["framesDecoded"]) > before + 10
        })
        .await;
    assert_eq!(again["reconnects"], 0, "the same viewer session resumed: {again:#}");
    browser.quit().await;
}

#[tokio::test]
async fn the_preview_reconnects_by_itself_when_the_relay_comes_back() {
    let _serial = serial().await;
    let (mut relay, mut browser) = live_streamer().await;
    browser.open("viewer", &relay.url("/view")).await;
    browser
        .wait_state("viewer", "playing", |s| s["phase"] == "playing")
        .await;

    relay.terminate();
    let lost = browser
        .wait_state("viewer", "reconnecting", |s| s["phase"] == "reconnecting")
        .await;
    let (shown, _) = browser.text("viewer", "#status").await;
    assert!(
        shown.contains("reconnecting in"),
        "the viewer page shows {shown:?}; {lost:#}"
    );
    browser.screenshot("viewer", "preview-reconnecting").await;
    let relay = Relay::serve_on(relay.http, &[]).await;
    browser.stop("streamer").await;
    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );

    let back = browser
        .wait_state("viewer", "playing on the new relay", |s| {
            s["phase"] == "playing" && u64_of(&s["reconnects"]) >= 1
        })
        .await;
    assert!(u64_of(&back["received"]["framesDecoded"]) > 0, "{back:#}");
    assert_eq!(relay.status().await["publishers"]["preview"]["viewers"], 1);
    browser.quit().await;
}

#[tokio::test]
async fn the_sender_page_shows_the_relays_own_figures_as_status_reports_them() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;

    // The relay's latency runs to a publisher's track: a viewer gives it one.
    browser.open("viewer", &relay.url("/view")).await;

    let shown = browser
        .wait_state("streamer", "the relay's figures", |s| {
            s["relay"]["output"]["width"].as_u64().unwrap_or(0) > 0 && s["relay"]["p50"].as_f64().unwrap_or(0.0) > 0.0
        })
        .await;
    let status = relay.status().await;

    let relay_fig = &shown["relay"];
    assert_eq!(relay_fig["output"]["codec"], status["output"]["codec"], "{shown:#}");
    assert_eq!(relay_fig["output"]["width"], status["output"]["width"], "{shown:#}");
    assert_eq!(relay_fig["output"]["height"], status["output"]["height"], "{shown:#}");
    assert_eq!(
        relay_fig["publishers"]["preview"]["state"],
        status["publishers"]["preview"]["state"]
    );
    let (out, _) = browser.text("streamer", "#relay-out").await;
    assert!(out.starts_with("VP8 640 × 360"), "the page shows {out:?}");
    let (latency, _) = browser.text("streamer", "#relay-latency").await;
    assert!(
        latency.starts_with("p50 ") && latency.contains("p95 "),
        "the page shows {latency:?}"
    );
    let (publishing, _) = browser.text("streamer", "#relay-publishers").await;
    assert!(
        publishing.contains("preview connected (1 watching)"),
        "the page shows {publishing:?}"
    );
    browser.screenshot("streamer", "sender-relay-figures").await;
    browser.quit().await;
}

#[tokio::test]
async fn switching_camera_while_live_keeps_the_same_session_and_its_frames_flowing() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;
    let before = SessionMark::take(&relay).await;

    let switched = browser
        .call(json!({"cmd": "switch-camera", "page": "streamer", "camera": ""}))
        .await;

    assert_eq!(switched["cameraSwitches"], 1, "{switched:#}");
    assert_eq!(switched["phase"], "live", "{switched:#}");
    before.assert_the_same_session_went_on(&relay).await;
    browser.quit().await;
}

#[tokio::test]
async fn the_streamer_sees_the_relays_output_in_an_inset_when_asked() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;

    let live = browser
        .start("streamer", json!({"width": 640, "height": 360, "inset": true}))
        .await;

    assert_live(&live, &relay);
    let shown = browser
        .wait_state("streamer", "the inset decoding the relay's output", |s| {
            u64_of(&s["inset"]["framesDecoded"]) > 10
        })
        .await;
    assert_eq!(shown["inset"]["width"], 640, "{shown:#}");
    let (_, visible) = browser.text("streamer", "#filtered").await;
    assert!(visible, "the inset is shown");
    assert_eq!(relay.status().await["publishers"]["preview"]["viewers"], 1);
    browser.screenshot("streamer", "sender-with-output-inset").await;

    browser.stop("streamer").await;
    relay.wait_for_log("preview viewer ended").await;
    browser.quit().await;
}

#[tokio::test]
async fn resolution_changes_mid_stream_are_followed_and_frames_keep_arriving() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open("browser-resize", "resize", &[]).await;
    assert_live(
        &browser
            .start("streamer", json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT}))
            .await,
        &relay,
    );
    let conn = endpoint.wait_for("transport=sora&state=connected&min_frames=10").await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    wait_for_endpoint_size(&endpoint, id, CLIP_WIDTH, CLIP_HEIGHT, 10).await;
    wait_for_input_size(&relay, CLIP_WIDTH, CLIP_HEIGHT).await;

    browser.scale_down("streamer", 2.0).await;

    wait_for_input_size(&relay, CLIP_WIDTH / 2, CLIP_HEIGHT / 2).await;
    wait_for_endpoint_size(&endpoint, id, CLIP_WIDTH / 2, CLIP_HEIGHT / 2, 20).await;
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "resize-half").await;

    browser.scale_down("streamer", 1.0).await;

    wait_for_input_size(&relay, CLIP_WIDTH, CLIP_HEIGHT).await;
    wait_for_endpoint_size(&endpoint, id, CLIP_WIDTH, CLIP_HEIGHT, 20).await;
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "resize-full").await;
    let detail = endpoint.connection(id, 0).await;
    assert_eq!(
        detail["state"], "connected",
        "the relay's Sora connection did not survive the size changes"
    );
    assert_eq!(detail["video"]["decode_errors"], 0, "{:#}", detail["video"]);
    browser.quit().await;
}

#[tokio::test]
async fn with_scale_to_output_the_output_size_stays_constant_while_the_input_size_changes() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open(
        "browser-fixed",
        "fixed",
        &["--scale-to-output", "--width", "640", "--height", "360"],
    )
    .await;
    assert_live(
        &browser
            .start("streamer", json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT}))
            .await,
        &relay,
    );
    let conn = endpoint.wait_for("transport=sora&state=connected&min_frames=10").await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    wait_for_input_size(&relay, CLIP_WIDTH, CLIP_HEIGHT).await;

    browser.scale_down("streamer", 2.0).await;

    wait_for_input_size(&relay, CLIP_WIDTH / 2, CLIP_HEIGHT / 2).await;
    let decoded = u64_of(&endpoint.connection(id, 0).await["video"]["frames_decoded"]);
    let later = endpoint
        .wait_for(&format!("connection_id={id}&min_frames={}", decoded + 20))
        .await;
    let sizes: std::collections::BTreeSet<(u64, u64)> = endpoint.connection(id, 600).await["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| (u64_of(&f["width"]), u64_of(&f["height"])))
        .collect();
    assert_eq!(
        sizes.into_iter().collect::<Vec<_>>(),
        [(640, 360)],
        "the output size changed: {:#}",
        later["video"]
    );
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "fixed-upscaled").await;
    browser.quit().await;
}

#[tokio::test]
async fn a_viewer_beyond_max_viewers_is_told_the_preview_is_full_and_gets_in_by_itself_when_another_leaves() {
    let _serial = serial().await;
    let relay = Relay::serve(&["--max-viewers", "1"]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;
    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );
    browser.open("viewer-1", &relay.url("/view")).await;
    browser
        .wait_state("viewer-1", "playing", |s| u64_of(&s["received"]["framesDecoded"]) > 0)
        .await;

    browser.open("viewer-2", &relay.url("/view")).await;

    let refused = browser
        .wait_state("viewer-2", "refused, retrying", |s| {
            s["phase"] == "reconnecting" && s["error"]["status"] == 503
        })
        .await;
    assert_eq!(refused["error"]["kind"], "viewer-limit", "{refused:#}");
    let (shown, visible) = browser.text("viewer-2", "#status").await;
    assert!(
        visible && shown.contains("503") && shown.contains("reconnecting"),
        "the viewer page shows {shown:?}"
    );
    browser.screenshot("viewer-2", "viewer-limit-503").await;

    browser.disconnect_viewer("viewer-1").await;

    let playing = browser
        .wait_state("viewer-2", "playing after viewer-1 left", |s| {
            s["phase"] == "playing" && u64_of(&s["received"]["framesDecoded"]) > 0
        })
        .await;
    assert_eq!(playing["phase"], "playing", "{playing:#}");
    browser.quit().await;
}

#[tokio::test]
async fn h264_from_the_browser_is_decoded_and_republished_in_the_relays_own_codec() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open("browser-h264", "h264", &["--codec", "vp8"]).await;

    let started = browser
        .start(
            "streamer",
            json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT, "codec": "h264"}),
        )
        .await;

    assert_live(&started, &relay);
    let sender = browser
        .wait_state("streamer", "reporting its codec", |s| s["negotiatedCodec"].is_string())
        .await;
    assert_eq!(
        sender["negotiatedCodec"], "H264",
        "the relay did not accept H.264: {sender:#}"
    );
    let status = relay.status().await;
    assert_eq!(
        status["session"]["codec"], "h264",
        "the relay's input codec: {status:#}"
    );
    let conn = endpoint
        .wait_for("transport=sora&channel_id=browser-h264&state=connected&min_frames=40")
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    assert_eq!(
        conn["video"]["codec"].as_str().map(str::to_ascii_lowercase).as_deref(),
        Some("vp8"),
        "{:#}",
        conn["video"]
    );
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "h264-endpoint").await;
    browser.quit().await;
}

#[tokio::test]
async fn h264_from_the_browser_is_forwarded_untranscoded_when_the_output_is_h264() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open("forward-h264", "forward-h264", &["--codec", "h264"]).await;

    let conn = go_live(&mut browser, &relay, &endpoint, "forward-h264", "h264", 40).await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    assert_eq!(
        conn["video"]["codec"].as_str().map(str::to_ascii_lowercase).as_deref(),
        Some("h264"),
        "{:#}",
        conn["video"]
    );
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "forward-h264-endpoint").await;
    assert!(relay.metric("livefilter_frames_forwarded_total").await >= 40.0);
    assert_eq!(relay.metric("livefilter_frames_decoded_total").await, 0.0);
    browser.quit().await;
}

#[tokio::test]
async fn a_second_streamer_gets_409_on_its_page_while_the_first_stays_live() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("first", &relay.url("/")).await;
    browser.open("second", &relay.url("/")).await;
    assert_live(
        &browser.start("first", json!({"width": 640, "height": 360})).await,
        &relay,
    );

    let refused = browser.start("second", json!({"width": 640, "height": 360})).await;

    assert_eq!(refused["phase"], "error", "{refused:#}");
    assert_eq!(refused["error"]["status"], 409, "{refused:#}");
    let server_text = refused["error"]["serverText"].as_str().unwrap_or_default();
    assert!(
        !server_text.is_empty(),
        "the relay's 409 had no JSON error text: {refused:#}"
    );
    let (shown, visible) = browser.text("second", "#error").await;
    assert!(
        visible && shown.contains("409") && shown.contains(server_text),
        "the page shows {shown:?}"
    );
    browser.screenshot("second", "busy-409").await;
    let received = wait_for_frames_received(&relay, 1).await;
    wait_for_frames_received(&relay, received + 20).await;
    assert_eq!(browser.state("first").await["phase"], "live");
    browser.quit().await;
}

#[tokio::test]
async fn after_stop_on_the_page_the_next_streamer_goes_live_at_once() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("first", &relay.url("/")).await;
    browser.open("second", &relay.url("/")).await;
    assert_live(
        &browser.start("first", json!({"width": 640, "height": 360})).await,
        &relay,
    );

    browser.stop("first").await;
    let next = browser.start("second", json!({"width": 640, "height": 360})).await;

    assert_live(&next, &relay);
    browser.quit().await;
}

#[tokio::test]
async fn closing_the_streamers_tab_frees_the_relay_at_once() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("first", &relay.url("/")).await;
    browser.open("second", &relay.url("/")).await;
    assert_live(
        &browser.start("first", json!({"width": 640, "height": 360})).await,
        &relay,
    );

    browser.close("first").await;

    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = relay.status().await;
        if status["state"] == "idle" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay still holds the closed tab's session: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = browser.start("second", json!({"width": 640, "height": 360})).await;

    assert_live(&next, &relay);
    browser.quit().await;
}

#[tokio::test]
async fn with_an_offer_token_the_page_shows_401_until_the_right_token_is_entered() {
    let _serial = serial().await;
    let relay = Relay::serve(&["--offer-token", "s3cret"]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;
    let (_, token_field_visible) = browser.text("streamer", "#token-row").await;
    assert!(
        token_field_visible,
        "the token field is hidden although /api/info says token_required"
    );

    let without = browser
        .start("streamer", json!({"width": 640, "height": 360, "token": ""}))
        .await;
    let wrong = browser
        .start("streamer", json!({"width": 640, "height": 360, "token": "wrong"}))
        .await;

    assert_eq!(
        (without["phase"].as_str(), without["error"]["status"].as_u64()),
        (Some("error"), Some(401)),
        "{without:#}"
    );
    assert_eq!(
        (wrong["phase"].as_str(), wrong["error"]["status"].as_u64()),
        (Some("error"), Some(401)),
        "{wrong:#}"
    );
    let (shown, visible) = browser.text("streamer", "#error").await;
    assert!(visible && shown.contains("401"), "the page shows {shown:?}");
    browser.screenshot("streamer", "token-401").await;

    browser.fill("streamer", "#token", "s3cret").await;
    browser.click("streamer", "#start").await;

    let live = browser
        .wait_state("streamer", "live with the right token", |s| {
            s["phase"] != "starting" && s["phase"] != "connecting"
        })
        .await;
    assert_live(&live, &relay);
    browser.quit().await;
}

/// Serves the sender page from an origin of its own, as a site embedding it would.
async fn host_the_sender_page_elsewhere() -> std::net::SocketAddr {
    let page = std::fs::read_to_string(support::browser::repo_root().join("static/index.html")).expect("index.html");
    let app = axum::Router::new().route(
        "/studio/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_sender_page_hosted_on_another_site_streams_to_the_relay_and_token_in_its_fragment() {
    let _serial = serial().await;
    let site = host_the_sender_page_elsewhere().await;
    let origin = format!("http://{site}");
    let relay = Relay::serve(&["--offer-token", "s3cret", "--allowed-origin", &origin]).await;
    let mut browser = Browser::launch(Camera::Fake).await;

    browser
        .open(
            "streamer",
            &format!("{origin}/studio/#relay={}&token=s3cret", relay.url("")),
        )
        .await;
    let live = browser.start("streamer", json!({"width": 640, "height": 360})).await;

    assert_live(&live, &relay);
    let address_bar = browser.call(json!({"cmd": "url", "page": "streamer"})).await;
    assert!(
        !address_bar.to_string().contains("s3cret"),
        "the token stays out of the address bar once read: {address_bar}"
    );
    browser.quit().await;
}

/// A streamer whose network lets only TCP out (UDP blocked): the sender page shows the offer
/// token, so `/api/info` gives it time-limited TURN credentials; it gathers relay candidates
/// only, reaches a real TURN server (coturn) over TCP, and coturn relays its media over UDP to
/// the relay, which publishes it into Sora.
#[tokio::test]
async fn a_streamer_limited_to_turn_over_tcp_reaches_the_sora_endpoint_through_coturn() {
    let _serial = serial().await;
    let turn = TurnServer::start("north-secret").await;
    let turn_url = turn.url("tcp");
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open(
        "browser-turn",
        "turn",
        &[
            "--offer-token",
            "s3cret",
            "--ice-server",
            &turn_url,
            "--ice-auth-secret",
            &turn.secret,
        ],
    )
    .await;

    let started = browser
        .start(
            "streamer",
            json!({
                "width": CLIP_WIDTH, "height": CLIP_HEIGHT, "codec": "vp8",
                "token": "s3cret", "iceTransportPolicy": "relay",
            }),
        )
        .await;

    assert_eq!(
        started["phase"],
        "live",
        "the sender page did not go live through TURN: {started:#}\nrelay log:\n{}\ncoturn log:\n{}",
        relay.log(),
        turn.log()
    );
    let conn = endpoint
        .wait_for("transport=sora&channel_id=browser-turn&state=connected&min_frames=40")
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    assert_endpoint_shows_the_card(&endpoint, id, &clip, "turn-endpoint").await;
    let sender = browser
        .wait_state("streamer", "named its selected candidate pair", |s| {
            s["path"]["local"].is_string()
        })
        .await;
    assert_eq!(
        (
            sender["path"]["local"].as_str(),
            sender["path"]["relayProtocol"].as_str()
        ),
        (Some("relay"), Some("tcp")),
        "the media does not go through TURN over TCP: {:#}",
        sender["path"]
    );
    assert!(
        turn.tcp_clients() >= 1,
        "no client holds a TCP connection to coturn while the page streams through it"
    );
    browser.quit().await;
}

#[tokio::test]
async fn the_page_says_relay_unreachable_when_the_relay_is_gone() {
    let _serial = serial().await;
    let mut relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;
    relay.terminate();

    browser.click("streamer", "#start").await;

    let failed = browser
        .wait_state("streamer", "failed", |s| s["phase"] == "error")
        .await;
    assert_eq!(failed["error"]["kind"], "relay-unreachable", "{failed:#}");
    let (shown, visible) = browser.text("streamer", "#error").await;
    assert!(
        visible && shown.starts_with("Relay unreachable"),
        "the page shows {shown:?}"
    );
    browser.screenshot("streamer", "relay-unreachable").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_page_says_camera_denied_and_posts_no_offer() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::Denied).await;
    browser.open("streamer", &relay.url("/")).await;

    browser.click("streamer", "#start").await;

    let failed = browser
        .wait_state("streamer", "failed", |s| s["phase"] == "error")
        .await;
    assert_eq!(failed["error"]["kind"], "camera-denied", "{failed:#}");
    let (shown, visible) = browser.text("streamer", "#error").await;
    assert!(
        visible && shown.starts_with("Camera access was denied"),
        "the page shows {shown:?}"
    );
    assert_eq!(relay.status().await["state"], "idle");
    browser.screenshot("streamer", "camera-denied").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_browsers_capture_time_reaches_the_preview_viewer_for_glass_to_glass_latency() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;

    browser.open("viewer", &relay.url("/view")).await;
    let stamped = browser
        .wait_state("viewer", "abs-capture-time on received frames", |s| {
            s["captureTimestamp"].as_f64().is_some() && s["glassToGlassMs"].as_f64().is_some()
        })
        .await;

    // Sender, relay and viewer share this machine's clock: the capture time is the browser's
    // own, so glass to glass is small and positive (not the relay's send time, not garbage).
    let g2g = stamped["glassToGlassMs"].as_f64().unwrap();
    assert!((0.0..2000.0).contains(&g2g), "glass-to-glass {g2g} ms: {stamped:#}");
    browser.quit().await;
}

/// Mean absolute horizontal luma-ish gradient (sum of RGB) of a region: how sharp it is.
fn sharpness(img: &image::RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> f64 {
    let mut sum = 0.0;
    for y in y0..y1 {
        for x in x0..x1 - 1 {
            let (a, b) = (img.get_pixel(x, y).0, img.get_pixel(x + 1, y).0);
            sum += (0..3).map(|c| f64::from(a[c].abs_diff(b[c]))).sum::<f64>() / 3.0;
        }
    }
    sum / f64::from((x1 - x0 - 1) * (y1 - y0))
}

fn region_psnr(a: &image::RgbImage, b: &image::RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> f64 {
    let mut sse = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
            sse += (0..3).map(|c| f64::from(p[c].abs_diff(q[c])).powi(2)).sum::<f64>();
        }
    }
    let mse = sse / f64::from((x1 - x0) * (y1 - y0) * 3);
    10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10()
}

/// Waits until `selector`'s text starts with `prefix` and returns it.
async fn wait_for_text(browser: &mut Browser, selector: &str, prefix: &str) -> String {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let (text, _) = browser.text("streamer", selector).await;
        if text.starts_with(prefix) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{selector} shows {text:?}, waited for {prefix:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn background_blur_reaches_the_sora_endpoint_with_the_person_sharp_and_the_background_soft() {
    let _serial = serial().await;
    // The astronaut photo (scikit-image, public domain) as the camera: 640x360, still.
    let photo = support::browser::repo_root().join(".cache/testdata/astronaut.png");
    let bytes = std::fs::read(&photo).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", photo.display()));
    let rgb = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let still =
        livefilter_relay::bench::clip::panned(rgb.as_raw(), rgb.width(), rgb.height(), CLIP_WIDTH, CLIP_HEIGHT, 1)
            .unwrap()
            .remove(0);
    let source = image::RgbImage::from_raw(CLIP_WIDTH, CLIP_HEIGHT, still.to_rgb()).unwrap();
    let clip_path = artefact_dir().join(format!("astronaut-{}.y4m", std::process::id()));
    livefilter_relay::y4m::write(std::fs::File::create(&clip_path).unwrap(), 20, vec![still; 40]).unwrap();
    let endpoint = Endpoint::start(&[]);
    let signaling = endpoint.signaling_url();
    let relay = Relay::serve(&[
        "--sora-signaling-url",
        &signaling,
        "--channel-id",
        "blur",
        "--filter",
        "background-blur",
        "--filter-params",
        r#"{"radius": 16}"#,
        "--bitrate-kbps",
        "2500",
    ])
    .await;
    let mut browser = Browser::launch(Camera::Clip(clip_path.clone())).await;
    browser.open("streamer", &relay.url("/")).await;

    let started = browser
        .start(
            "streamer",
            json!({"width": CLIP_WIDTH, "height": CLIP_HEIGHT, "codec": "vp8"}),
        )
        .await;

    assert_live(&started, &relay);
    let conn = endpoint
        .wait_for("transport=sora&channel_id=blur&state=connected&min_frames=60")
        .await;
    let id = conn["connection_id"].as_str().expect("connection_id");
    let received = endpoint.frame_png(id).await;
    received
        .save(artefact_dir().join("background-blur-endpoint.png"))
        .unwrap();
    source.save(artefact_dir().join("background-blur-source.png")).unwrap();
    // The photo scaled to 640 wide, top 360 rows: the shuttle model (background) at the right,
    // the face in the middle.
    let (bg_src, bg_out) = (
        sharpness(&source, 540, 60, 636, 240),
        sharpness(&received, 540, 60, 636, 240),
    );
    let face = region_psnr(&source, &received, 255, 130, 310, 190);
    println!("background sharpness {bg_src:.2} -> {bg_out:.2}; face PSNR {face:.1} dB");
    assert!(
        bg_out < bg_src * 0.5,
        "the background is not blurred: {bg_src:.2} -> {bg_out:.2}"
    );
    assert!(face > 28.0, "the person is not kept: face PSNR {face:.1} dB");
    let status = relay.status().await;
    assert_eq!(status["filter"], "background-blur", "{status:#}");
    assert_eq!(status["inference"]["device"], "cpu", "{status:#}");
    assert!(
        status["latency_ms"]["stages"]["infer"]["samples"].as_u64().unwrap_or(0) > 0,
        "{status:#}"
    );
    let detail = endpoint.connection(id, 0).await;
    assert_eq!(detail["video"]["decode_errors"], 0, "{:#}", detail["video"]);

    // The panel shows each key's range, and the values as they were written.
    let (ranges, _) = browser.text("streamer", "#filter-ranges").await;
    assert!(
        ranges == "feather 0–16 · radius 1–100 · smoothing 0–0.95 · threshold 0.05–0.95",
        "{ranges:?}"
    );
    // A live change from the page: applied without reconnecting, a bad one refused by name.
    browser.fill("streamer", "#filter-params", r#"{"radius": 40}"#).await;
    browser.click("streamer", "#filter-apply").await;
    let applied = wait_for_text(&mut browser, "#filter-result", "Applied").await;
    assert_eq!(applied, "Applied");
    let shown: Value = reqwest::get(relay.url("/filter")).await.unwrap().json().await.unwrap();
    assert_eq!(shown["params"]["radius"], 40, "{shown:#}");
    browser.fill("streamer", "#filter-params", r#"{"radius": 0}"#).await;
    browser.click("streamer", "#filter-apply").await;
    let refused = wait_for_text(&mut browser, "#filter-result", "Refused").await;
    assert_eq!(
        refused,
        "Refused (400): filter background-blur: radius 0 is outside 1..=100"
    );
    let frames_before = u64_of(&endpoint.connection(id, 0).await["video"]["frames_decoded"]);
    endpoint
        .wait_for(&format!(
            "transport=sora&channel_id=blur&state=connected&min_frames={}",
            frames_before + 10
        ))
        .await;
    assert_eq!(relay.status().await["state"], "publishing", "the stream went on");
    browser.quit().await;
    let _ = std::fs::remove_file(clip_path);
}

#[tokio::test]
async fn an_ice_restart_from_the_page_continues_the_same_session() {
    let _serial = serial().await;
    let (relay, mut browser) = live_streamer().await;
    let before = SessionMark::take(&relay).await;

    let restarted = browser.restart_ice("streamer").await;

    assert_eq!(restarted["iceRestarts"], 1, "{restarted:#}");
    assert!(restarted["error"].is_null(), "the restart failed: {restarted:#}");
    let live = browser
        .wait_state("streamer", "live after the restart", |s| {
            s["connectionState"] == "connected" && s["phase"] == "live"
        })
        .await;
    assert_eq!(live["phase"], "live");
    before.assert_the_same_session_went_on(&relay).await;
    browser.quit().await;
}

/// A session that outlives every timer must not cost more per frame later than early on (a
/// finished timer polled again spins a core): CPU time per frame, early vs. late.
#[tokio::test]
async fn a_session_longer_than_its_timers_keeps_its_cpu_per_frame_flat() {
    let _serial = serial().await;
    let config = std::env::temp_dir().join(format!("lf-flat-{}.yaml", std::process::id()));
    std::fs::write(&config, "ice: {connect_timeout_secs: 3, disconnected_grace_secs: 2}\n").expect("config");
    let relay = Relay::serve(&["--config", config.to_str().expect("path")]).await;
    let mut browser = Browser::launch(Camera::Fake).await;
    browser.open("streamer", &relay.url("/")).await;
    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );
    // Early: after the first frames, before the connect timer fires (3 s).
    let start = u64_of(&relay.status().await["frames"]["received"]);
    let (f0, c0) = (wait_for_frames_received(&relay, start + 5).await, relay.cpu_secs());
    let f1 = wait_for_frames_received(&relay, f0 + 40).await;
    let c1 = relay.cpu_secs();
    // Late: well past every timer of the session.
    let f2 = wait_for_frames_received(&relay, f1 + 200).await;
    let c2 = relay.cpu_secs();
    let f3 = wait_for_frames_received(&relay, f2 + 120).await;
    let c3 = relay.cpu_secs();

    let early = (c1 - c0) / (f1 - f0) as f64;
    let late = (c3 - c2) / (f3 - f2) as f64;
    assert!(
        late <= early * 1.6 + 0.002,
        "CPU per frame grew from {:.2} ms early to {:.2} ms late",
        early * 1000.0,
        late * 1000.0
    );
    assert_eq!(browser.state("streamer").await["phase"], "live");
    browser.quit().await;
}

/// For each flash, the beep nearest to it (within 400 ms): audio time minus video time, in ms.
fn av_offsets(onsets: &Value) -> Vec<f64> {
    let times = |k: &str| -> Vec<f64> {
        onsets[k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let audio = times("audio");
    times("video")
        .into_iter()
        .filter_map(|v| {
            audio
                .iter()
                .map(|a| a - v)
                .filter(|d| d.abs() <= 400.0)
                .min_by(|x, y| x.abs().total_cmp(&y.abs()))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ITU-R BT.1359: viewers notice audio more than 45 ms ahead of the picture or 125 ms behind it.
/// The camera flashes and beeps together; the same detector times both at the sender's own
/// preview and at a preview viewer, so what the relay adds is the difference.
///
///
/// Ignored in CI: the relay aligns audio on video by the capture times of both tracks
/// (`livefilter_capture_lag_seconds` shows both leaving within a few ms, plus the 20 ms aim),
/// but the offset a headless Chromium viewer shows still scatters with its own synchronisation
/// (four runs on the 2-core machine: +38, +40, -50, -32 ms), so the early edge of the window is
/// not yet held every time. Run:
/// `cargo test -p livefilter-relay --test browser_e2e -- --ignored --nocapture lip_sync`.
#[tokio::test]
#[ignore = "the viewer-side offset still scatters past the early edge of the window now and then"]
async fn audio_and_video_reach_the_preview_within_the_bt1359_lip_sync_window() {
    let _serial = serial().await;
    let relay = Relay::serve(&[]).await;
    let mut browser = Browser::launch(Camera::FlashBeep).await;
    browser.open("streamer", &relay.url("/")).await;
    assert_live(
        &browser.start("streamer", json!({"width": 640, "height": 360})).await,
        &relay,
    );
    browser.open("viewer", &relay.url("/view")).await;
    browser
        .wait_state("viewer", "the preview playing", |s| {
            s["video"]["readyState"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    // The viewer's own A/V synchronisation converges over several seconds (its first flashes
    // come with the audio ~250 ms late, then it steps the video delay); measure once settled.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let measured = browser
        .call(json!({"cmd": "av-onsets", "seconds": 8, "targets": [
            {"page": "streamer", "selector": "#local"},
            {"page": "viewer", "selector": "#remote"},
        ]}))
        .await;

    let (sent, seen) = (av_offsets(&measured[0]), av_offsets(&measured[1]));
    assert!(sent.len() >= 5, "flashes paired with beeps at the sender: {measured:#}");
    assert!(seen.len() >= 5, "flashes paired with beeps at the viewer: {measured:#}");
    let added = median(seen.clone()) - median(sent.clone());
    let metrics = reqwest::get(relay.url("/metrics")).await.unwrap().text().await.unwrap();
    let lags: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("livefilter_capture_lag_seconds"))
        .collect();
    eprintln!("capture lags at the relay: {lags:?}");
    eprintln!("lip sync: sender {sent:?}, viewer {seen:?}, relay adds {added:.1} ms (audio minus video)");
    assert!(
        (-45.0..=125.0).contains(&added),
        "audio {added:.1} ms after video at the viewer (BT.1359: -45..=125); sender {sent:?}, viewer {seen:?}"
    );
    browser.quit().await;
}

#[tokio::test]
async fn passthrough_forwards_the_browsers_frames_untranscoded_and_passes_keyframe_requests_and_bitrate_back() {
    let _serial = serial().await;
    let ClipToSora {
        endpoint,
        relay,
        clip,
        mut browser,
    } = ClipToSora::open("forward", "forward", &["--bitrate-kbps", "150"]).await;

    let conn = go_live(&mut browser, &relay, &endpoint, "forward", "vp8", 60).await;
    let first = conn["connection_id"].as_str().expect("connection_id").to_owned();
    assert_endpoint_shows_the_card(&endpoint, &first, &clip, "forward-endpoint").await;

    // Forwarded: nothing was decoded or encoded by the relay.
    let forwarded = relay.metric("livefilter_frames_forwarded_total").await;
    let decoded = relay.metric("livefilter_frames_decoded_total").await;
    assert!(forwarded >= 60.0, "{forwarded} frames forwarded");
    assert_eq!(decoded, 0.0, "the relay decoded browser frames");

    // The browser's encoder is held to the output's bitrate (REMB), below its own start
    // bitrate (2000 kbit/s) and the page's ceiling: its target says so.
    let held = browser
        .wait_state("streamer", "the browser's target bitrate at most 150 kbit/s", |s| {
            s["sent"]["targetBitrateKbps"].as_f64().is_some_and(|k| k <= 150.0)
        })
        .await;
    println!(
        "browser target bitrate under REMB: {} kbit/s",
        held["sent"]["targetBitrateKbps"]
    );

    // A new Sora connection needs a keyframe: the relay asks the browser for one (PLI), since
    // it has no encoder of its own here. Frames decode on the new connection.
    endpoint.close(&first, 4500, "test: reconnect").await;
    endpoint.wait_for(&format!("connection_id={first}&state=closed")).await;
    let again = endpoint
        .wait_for("transport=sora&channel_id=forward&state=connected&min_frames=30")
        .await;
    assert_ne!(again["connection_id"].as_str(), Some(first.as_str()));
    assert!(
        again["video"]["keyframes_decoded"].as_u64().unwrap_or(0) >= 1,
        "{again:#}"
    );
    assert_eq!(relay.metric("livefilter_frames_decoded_total").await, 0.0);
    let asked = browser
        .wait_state("streamer", "a PLI from the relay", |s| {
            s["sent"]["pliCount"].as_u64().is_some_and(|n| n >= 1)
        })
        .await;
    assert!(
        asked["sent"]["keyFramesEncoded"].as_u64().unwrap_or(0) >= 2,
        "{asked:#}"
    );
}
