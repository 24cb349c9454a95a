//! A publisher's media path goes silent for a few seconds and comes back: the Sora publisher
//! keeps its connection (the endpoint sees one connection throughout) and frames resume.
//!
//! Every media packet between the relay's publisher and the Sora-compatible endpoint goes
//! through a UDP proxy in the test: a small WebSocket proxy in front of the endpoint's
//! signaling rewrites each side's ICE candidates to a proxy socket standing in for it, so the
//! proxy is the only path either side knows. The proxy can then drop everything for a while.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use livefilter_relay::codec::{self, EncoderConfig, VideoCodec};
use livefilter_relay::metrics::Metrics;
use livefilter_relay::pipeline::{EncodeStage, TestPatternPipeline};
use livefilter_relay::publish::peer::LinkTiming;
use livefilter_relay::publish::sora::signaling::ConnectOptions;
use livefilter_relay::publish::sora::{SoraConfig, SoraPublisher};
use livefilter_relay::publish::{KeyframeRequest, PublisherHandle};
use livefilter_relay::testpattern::{self, TestPattern};
use support::udp_mirror::{UdpMirror, signaling_proxy};
use support::{Endpoint, WAIT};
use tokio_util::sync::CancellationToken;

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
            simulcast: false,
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
