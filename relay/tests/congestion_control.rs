//! Congestion control end to end: the path between the relay's Sora publisher and the
//! Sora-compatible endpoint (which reports arrivals in transport-wide feedback, as Sora does)
//! is capped below the relay's configured bitrate, then freed. The encoder's bitrate follows the
//! publisher's estimate down to what the path carries — it settles near the cap rather than at
//! the floor, retransmissions do not flood the path, frames keep decoding — and ramps back up
//! once the cap is lifted. Assertions hold over windows of seconds with tolerances; the delay
//! column of the printed trace is for reading only (wall-clock timing on a shared machine).
//!
//! Every media packet goes through a UDP proxy in the test that acts as a bottleneck link with a
//! drop-tail buffer ([`support::udp_mirror`]).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use livefilter_relay::codec::{self, EncoderConfig, VideoCodec};
use livefilter_relay::frame::{FrameTimes, I420Frame};
use livefilter_relay::layers::LayerEncoders;
use livefilter_relay::metrics::Metrics;
use livefilter_relay::pipeline::EncodeStage;
use livefilter_relay::publish::congestion::{BitrateEstimate, BitrateLimits, EncoderBitrate};
use livefilter_relay::publish::rtp::MediaTime;
use livefilter_relay::publish::simulcast::SimulcastControl;
use livefilter_relay::publish::sora::signaling::ConnectOptions;
use livefilter_relay::publish::sora::{SoraConfig, SoraPublisher};
use livefilter_relay::publish::{KeyframeRequest, PublisherHandle};
use serde_json::Value;
use support::udp_mirror::{UdpMirror, signaling_proxy};
use support::{Endpoint, WAIT};
use tokio_util::sync::CancellationToken;

const START_KBPS: u32 = 1500;
const CAP_BPS: u64 = 600_000;
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: u64 = 30;

/// Pictures that cost as many bits as the encoder is given: a texture scrolling under fresh
/// noise, so a lower bitrate is a coarser picture rather than an undershoot.
fn picture(index: u64, texture: &[u8]) -> I420Frame {
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    let mut seed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let shift = (index as usize * 3) % w;
    let mut y = vec![0u8; w * h];
    for row in 0..h {
        for col in 0..w {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 5) as i16 - 2;
            let base = i16::from(texture[row * w + (col + shift) % w]);
            y[row * w + col] = (base + noise).clamp(16, 235) as u8;
        }
    }
    let chroma = (w / 2) * (h / 2);
    I420Frame::from_planes(WIDTH, HEIGHT, y, vec![128; chroma], vec![128; chroma]).expect("planes")
}

/// Blurs a random texture (a 4x4 box) so that motion search can follow it.
fn smooth(texture: &[u8]) -> Vec<u8> {
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    (0..w * h)
        .map(|i| {
            let (row, col) = (i / w, i % w);
            let mut sum = 0u32;
            for dy in 0..4 {
                for dx in 0..4 {
                    sum += u32::from(texture[((row + dy) % h) * w + (col + dx) % w]);
                }
            }
            (sum / 16) as u8
        })
        .collect()
}

/// Encodes a picture every 1/30 s on its own thread until `stop`.
fn spawn_source(mut stage: EncodeStage, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let texture: Vec<u8> = (0..WIDTH * HEIGHT)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (40 + seed % 180) as u8
            })
            .collect();
        let texture = smooth(&texture);
        let start = Instant::now();
        let mut index = 0u64;
        while !stop.load(Ordering::Acquire) {
            let due = start + Duration::from_millis(index * 1000 / FPS);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let frame = picture(index, &texture);
            let media_time = MediaTime {
                epoch: 1,
                rtp_timestamp: (index * 90_000 / FPS) as u32,
            };
            stage.encode(&frame, FrameTimes::new(Instant::now()), media_time, None);
            index += 1;
        }
    })
}

/// One second of the run as the test saw it.
#[derive(Debug)]
struct Sample {
    second: usize,
    capped: bool,
    estimate_kbps: f64,
    encoder_kbps: f64,
    delivered_kbps: f64,
    frames: u64,
    /// How much later the newest frame arrived than its media time says, relative to the first
    /// sample: the queueing delay the path built up.
    delay_ms: f64,
}

fn last_frame(connection: &Value) -> (u64, f64, f64) {
    let video = &connection["video"];
    let frames = video["frames_decoded"].as_u64().unwrap_or(0);
    let last = &video["last_frame"];
    let rtp = last["rtp_timestamp"].as_f64().unwrap_or(0.0);
    let arrival = last["arrival_ms"].as_f64().unwrap_or(0.0);
    (frames, rtp, arrival)
}

/// A VP8 Sora publisher on loopback into `channel` at `url`, within `limits`, its estimate in
/// `estimate`.
fn sora_config(
    url: String,
    channel: &str,
    simulcast: bool,
    limits: BitrateLimits,
    estimate: &BitrateEstimate,
) -> SoraConfig {
    let mut config = SoraConfig::new(
        vec![url],
        ConnectOptions {
            channel_id: channel.into(),
            client_id: None,
            bundle_id: None,
            metadata: None,
            signaling_notify_metadata: None,
            codec: VideoCodec::Vp8,
            bitrate_kbps: START_KBPS,
            audio: false,
            simulcast,
        },
    );
    config.udp_addrs = vec!["127.0.0.1:0".into()];
    config.bitrate = limits;
    config.estimate = estimate.clone();
    config
}

/// Stops the source and the publisher (which must stop in time and without a panic).
async fn finish(
    stop: &AtomicBool,
    shutdown: &CancellationToken,
    publisher: tokio::task::JoinHandle<()>,
    source: JoinHandle<()>,
) {
    stop.store(true, Ordering::Release);
    shutdown.cancel();
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher stops")
        .expect("no panic");
    let _ = tokio::task::spawn_blocking(move || source.join()).await;
}

fn mean(samples: &[&Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(|s| f(s)).sum::<f64>() / samples.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_path_lowers_the_bitrate_to_the_cap_and_lifting_it_ramps_back() {
    let endpoint = Endpoint::start(&[]);
    let mirror = Arc::new(UdpMirror::default());
    let url = signaling_proxy(endpoint.signaling_url(), Arc::clone(&mirror)).await;
    let limits = BitrateLimits::from_kbps(150, START_KBPS, START_KBPS);
    let estimate = BitrateEstimate::default();
    let config = sora_config(url, "congestion", false, limits, &estimate);
    let metrics = Metrics::new();
    let keyframes = KeyframeRequest::default();
    let shutdown = CancellationToken::new();
    let (handle, inputs) = PublisherHandle::new("sora", metrics.clone());
    let publisher = SoraPublisher::new(config, metrics.clone(), keyframes.clone(), shutdown.clone()).expect("config");
    let publisher = tokio::spawn(publisher.run(inputs));
    let encoder = codec::new_encoder(&EncoderConfig {
        codec: VideoCodec::Vp8,
        fps: FPS as u32,
        bitrate_kbps: START_KBPS,
        ..EncoderConfig::default()
    })
    .expect("encoder");
    let stage = EncodeStage::new(encoder, vec![handle], keyframes, metrics.clone())
        .with_bitrate_control(EncoderBitrate::new(vec![estimate.clone()], limits));
    let stop = Arc::new(AtomicBool::new(false));
    let source = spawn_source(stage, Arc::clone(&stop));

    let conn = endpoint.wait_for("state=connected&min_frames=10").await;
    let id = conn["connection_id"].as_str().expect("id").to_owned();

    // Per second: 4 s free, 10 s capped at 600 kbit/s, 15 s free again.
    let (free_before, capped, free_after) = (4, 10, 15);
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut bytes = mirror.media_bytes_delivered();
    let mut baseline: Option<(f64, f64)> = None;
    let mut frames_before = 0;
    for second in 0..free_before + capped + free_after {
        let capped_now = (free_before..free_before + capped).contains(&second);
        mirror.cap(if capped_now { CAP_BPS } else { 0 });
        ticks.tick().await;
        let now_bytes = mirror.media_bytes_delivered();
        let (frames, rtp, arrival) = last_frame(&endpoint.connection(&id, 0).await);
        let (rtp0, arrival0) = *baseline.get_or_insert((rtp, arrival));
        let delay_ms = (arrival - arrival0) - (rtp - rtp0) / 90.0;
        samples.push(Sample {
            second,
            capped: capped_now,
            estimate_kbps: estimate.get().unwrap_or(0.0) / 1000.0,
            encoder_kbps: metrics.encoder_target_bitrate.get() / 1000.0,
            delivered_kbps: (now_bytes - bytes) as f64 * 8.0 / 1000.0,
            frames: frames - frames_before,
            delay_ms,
        });
        bytes = now_bytes;
        frames_before = frames;
    }
    finish(&stop, &shutdown, publisher, source).await;

    eprintln!("second  capped  estimate_kbps  encoder_kbps  delivered_kbps  frames  delay_ms");
    for s in &samples {
        eprintln!(
            "{:>6}  {:>6}  {:>13.0}  {:>12.0}  {:>14.0}  {:>6}  {:>8.0}",
            s.second, s.capped, s.estimate_kbps, s.encoder_kbps, s.delivered_kbps, s.frames, s.delay_ms
        );
    }
    let cap_kbps = CAP_BPS as f64 / 1000.0;
    let window = |from: usize, to: usize| -> Vec<&Sample> { samples[from..to].iter().collect() };
    let before = window(1, free_before);
    let during = window(free_before, free_before + capped);
    // The cap's first seconds are the reaction (a full link buffer is lost at once, the receiver
    // waits for a keyframe); its second half is the steady state.
    let cap_steady = window(free_before + capped / 2, free_before + capped);
    let after = window(free_before + capped, samples.len());
    let after_tail = window(samples.len() - 4, samples.len());

    // Free path: the configured bitrate goes through.
    assert!(
        mean(&before, |s| s.delivered_kbps) > cap_kbps * 1.3,
        "the uncapped path should carry well above the cap: {before:#?}"
    );
    // Capped: what reaches the receiver fits the cap (retransmissions do not flood it)...
    assert!(mean(&during, |s| s.delivered_kbps) <= cap_kbps * 1.3, "{during:#?}");
    // ...the encoder settles near the cap, neither above it nor down at the floor...
    assert!(
        cap_steady
            .iter()
            .all(|s| (cap_kbps * 0.3..=cap_kbps * 1.2).contains(&s.encoder_kbps)),
        "the encoder's bitrate must settle near the cap: {cap_steady:#?}"
    );
    // ...and the picture keeps decoding.
    assert!(
        cap_steady.iter().all(|s| s.frames > 0) && mean(&cap_steady, |s| s.frames as f64) >= FPS as f64 / 2.0,
        "frames must keep decoding under the cap: {cap_steady:#?}"
    );
    // Lifted: the bitrate ramps back well above the cap and the path carries it.
    assert!(
        after.iter().any(|s| s.encoder_kbps > cap_kbps * 1.5),
        "the encoder's bitrate must recover above the old cap: {after:#?}"
    );
    assert!(
        mean(&after_tail, |s| s.delivered_kbps) > cap_kbps * 1.3,
        "{after_tail:#?}"
    );
}

/// The simulcast layers of the capped-path test: a quarter, a half and the whole picture.
const SIMULCAST_ENCODINGS: &str = r#"[
    {"rid": "r0", "scaleResolutionDownBy": 4.0, "maxBitrate": 150000},
    {"rid": "r1", "scaleResolutionDownBy": 2.0, "maxBitrate": 400000},
    {"rid": "r2", "scaleResolutionDownBy": 1.0, "maxBitrate": 1000000}
]"#;

/// One second of the simulcast run as the test saw it (layers in rid order r0, r1, r2).
#[derive(Debug)]
struct LayerSample {
    second: usize,
    capped: bool,
    path_kbps: f64,
    share_kbps: [f64; 3],
    delivered_kbps: f64,
    frames: [u64; 3],
}

/// Frames each layer has decoded so far, in rid order r0, r1, r2.
fn layer_frames(connection: &Value) -> [u64; 3] {
    let decoded = |rid: &str| {
        connection["video_layers"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["rid"] == rid))
            .and_then(|l| l["frames_decoded"].as_u64())
            .unwrap_or(0)
    };
    [decoded("r0"), decoded("r1"), decoded("r2")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_path_suspends_the_top_simulcast_layer_and_lifting_it_brings_the_layer_back() {
    let endpoint = Endpoint::start(&["--simulcast-encodings", SIMULCAST_ENCODINGS]);
    let mirror = Arc::new(UdpMirror::default());
    let url = signaling_proxy(endpoint.signaling_url(), Arc::clone(&mirror)).await;
    let limits = BitrateLimits::from_kbps(150, START_KBPS, START_KBPS);
    let driver = BitrateEstimate::default();
    let mut config = sora_config(url, "congestion-simulcast", true, limits, &driver);
    config.simulcast = SimulcastControl::new(driver.clone());
    let control = config.simulcast.clone();
    let metrics = Metrics::new();
    let keyframes = KeyframeRequest::default();
    let shutdown = CancellationToken::new();
    let (handle, inputs) = PublisherHandle::new("sora", metrics.clone());
    let publisher = SoraPublisher::new(config, metrics.clone(), keyframes.clone(), shutdown.clone()).expect("config");
    let publisher = tokio::spawn(publisher.run(inputs));
    let encoder_config = EncoderConfig {
        codec: VideoCodec::Vp8,
        fps: FPS as u32,
        bitrate_kbps: START_KBPS,
        ..EncoderConfig::default()
    };
    let encoder = codec::new_encoder(&encoder_config).expect("encoder");
    let stage = EncodeStage::new(encoder, vec![handle], keyframes, metrics.clone())
        .with_bitrate_control(EncoderBitrate::new(vec![driver.clone()], limits))
        .with_simulcast(LayerEncoders::new(control.clone(), encoder_config, metrics.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let source = spawn_source(stage, Arc::clone(&stop));

    let conn = endpoint.wait_for("state=connected&min_frames=10").await;
    let id = conn["connection_id"].as_str().expect("id").to_owned();

    // Per second: 4 s free, 10 s capped at 600 kbit/s (r0 150 + r1 400 leave r2 less than its
    // 250 kbit/s floor), 15 s free again.
    let (free_before, capped, free_after) = (4, 10, 15);
    let mut trace: Vec<LayerSample> = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut bytes = mirror.media_bytes_delivered();
    let mut frames_before = layer_frames(&endpoint.connection(&id, 0).await);
    for second in 0..free_before + capped + free_after {
        let capped_now = (free_before..free_before + capped).contains(&second);
        mirror.cap(if capped_now { CAP_BPS } else { 0 });
        ticks.tick().await;
        let now_bytes = mirror.media_bytes_delivered();
        let frames = layer_frames(&endpoint.connection(&id, 0).await);
        let share = |rid: &str| metrics.simulcast_layer_bitrate.with_label_values(&[rid]).get() / 1000.0;
        trace.push(LayerSample {
            second,
            capped: capped_now,
            path_kbps: control.path().get().unwrap_or(0.0) / 1000.0,
            share_kbps: [share("r0"), share("r1"), share("r2")],
            delivered_kbps: (now_bytes - bytes) as f64 * 8.0 / 1000.0,
            frames: [0, 1, 2].map(|i| frames[i] - frames_before[i]),
        });
        bytes = now_bytes;
        frames_before = frames;
    }
    finish(&stop, &shutdown, publisher, source).await;

    let layers = endpoint.connection(&id, 0).await["video_layers"].clone();
    for l in layers.as_array().into_iter().flatten() {
        eprintln!(
            "endpoint layer {}: ssrc {} packets {} keyframes {} PLIs sent {}",
            l["rid"], l["ssrc"], l["packets"], l["keyframes_decoded"], l["plis_sent"]
        );
    }
    eprintln!(
        "relay: keyframe requests received {}",
        metrics.keyframe_requests.with_label_values(&["sora"]).get()
    );
    eprintln!("second  capped  path_kbps  share r0/r1/r2 kbps  delivered_kbps  frames r0/r1/r2");
    for t in &trace {
        eprintln!(
            "{:>6}  {:>6}  {:>9.0}  {:>5.0} {:>5.0} {:>5.0}  {:>14.0}  {:>4} {:>4} {:>4}",
            t.second,
            t.capped,
            t.path_kbps,
            t.share_kbps[0],
            t.share_kbps[1],
            t.share_kbps[2],
            t.delivered_kbps,
            t.frames[0],
            t.frames[1],
            t.frames[2]
        );
    }
    let frames_of = |from: usize, to: usize, layer: usize| -> Vec<u64> {
        trace[from..to].iter().map(|t| t.frames[layer]).collect()
    };
    // Free path: every layer arrives.
    for layer in 0..3 {
        assert!(
            frames_of(1, free_before, layer).iter().all(|&f| f > 0),
            "layer {layer} before the cap: {trace:?}"
        );
    }
    // The cap's second half (after the reaction): the top layer is suspended, the two smaller
    // ones keep decoding, and what is sent fits the path. Without padding probes, coming back
    // is the only way to find out whether the path has room again: at most one such probe
    // (a second of r2, a dip in r1) may fall into the window.
    let steady = free_before + capped / 2..free_before + capped;
    let r2_under_cap: u64 = frames_of(steady.start, steady.end, 2).iter().sum();
    assert!(r2_under_cap <= FPS, "r2 must be suspended under the cap: {trace:?}");
    assert!(
        frames_of(steady.start, steady.end, 0).iter().all(|&f| f >= FPS / 2),
        "r0 must keep decoding under the cap: {trace:?}"
    );
    assert!(
        frames_of(steady.start, steady.end, 1)
            .iter()
            .filter(|&&f| f >= FPS / 2)
            .count()
            >= steady.len() - 1,
        "r1 must keep decoding under the cap: {trace:?}"
    );
    let delivered: f64 = trace[steady.clone()].iter().map(|t| t.delivered_kbps).sum::<f64>() / steady.len() as f64;
    assert!(
        delivered <= CAP_BPS as f64 / 1000.0 * 1.3,
        "{delivered} kbit/s under the cap"
    );
    // Lifted: the estimate climbs and the top layer comes back.
    let after = free_before + capped;
    assert!(
        frames_of(after, trace.len(), 2).iter().rev().take(3).all(|&f| f > 0),
        "r2 must be back by the end: {trace:?}"
    );
}
