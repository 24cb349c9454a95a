//! WHIP ingest: request validation, and a full publish from a webrtc-rs client sending VP8
//! encoded by the relay's own encoder, decoded and checked by the endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livefilter_relay::codec::{EncoderConfig, VideoCodec, new_encoder};
use livefilter_relay::frame::{I420Frame, rgb_to_yuv};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::Value;
use sora_endpoint::{AppState, Config};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCSessionDescription, Registry, register_default_interceptors,
};

const TOKEN: &str = "whip-secret";
const STEP: Duration = Duration::from_secs(20);

async fn start() -> String {
    start_with_cap(None).await
}

/// An endpoint asking publishers for at most `max_video_bitrate_kbps`.
async fn start_with_cap(max_video_bitrate_kbps: Option<u32>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = AppState::new(Config {
        whip_token: Some(TOKEN.into()),
        max_video_bitrate_kbps,
        ..Config::default()
    });
    tokio::spawn(sora_endpoint::serve(listener, state, std::future::pending()));
    format!("http://{addr}")
}

async fn post_offer(
    base: &str,
    channel: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/whip/{channel}"))
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("POST")
}

#[tokio::test]
async fn whip_requests_are_validated() {
    let base = start().await;
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
    assert_eq!(
        post_offer(&base, "ch", None, "application/sdp", sdp).await.status(),
        401
    );
    assert_eq!(
        post_offer(&base, "ch", Some("wrong"), "application/sdp", sdp)
            .await
            .status(),
        401
    );
    assert_eq!(
        post_offer(&base, "ch", Some(TOKEN), "application/json", sdp)
            .await
            .status(),
        415
    );
    let garbage = post_offer(&base, "ch", Some(TOKEN), "application/sdp", "hello").await;
    assert_eq!(garbage.status(), 400);
    assert!(!garbage.text().await.expect("body").is_empty(), "a 400 says why");
    let broken = post_offer(&base, "ch", Some(TOKEN), "application/sdp", sdp).await;
    assert_eq!(
        broken.status(),
        400,
        "an offer without ICE/DTLS attributes cannot be answered"
    );
    assert!(broken.text().await.expect("body").contains("cannot answer"));
    let client = reqwest::Client::new();
    let unknown = client
        .delete(format!("{base}/whip/ch/NOPE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(unknown.status(), 404);
    let patch = client
        .patch(format!("{base}/whip/ch/NOPE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("PATCH");
    assert_eq!(patch.status(), 405);
}

struct ClientHandler {
    gathered: mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }
}

async fn wait_json(base: &str, query: &str) -> Value {
    let response = reqwest::get(format!("{base}/api/wait?{query}&timeout_ms=20000"))
        .await
        .expect("GET");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{query}: {body:#}");
    body
}

#[tokio::test]
async fn webrtc_rs_client_publishes_vp8_over_whip_within_the_offered_bitrate_cap() {
    // A cap far above what the test sends: the answer carries it, the publish is unaffected.
    let base = start_with_cap(Some(5000)).await;

    // A sendonly webrtc-rs client with one VP8 track.
    let vp8 = RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8.clone(),
                payload_type: 96,
            },
            RtpCodecKind::Video,
        )
        .expect("codec");
    let registry = register_default_interceptors(Registry::new(), &mut engine).expect("interceptors");
    let (gathered_tx, mut gathered) = mpsc::channel(1);
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(ClientHandler { gathered: gathered_tx }) as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("client pc");
    let ssrc = rand::random::<u32>();
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "whip-test".into(),
                "whip-test-video".into(),
                "whip-test-video".into(),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: vp8,
                    ..Default::default()
                }],
            ),
        )
        .expect("track"),
    );
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .expect("add track");
    let offer = pc.create_offer(None).await.expect("offer");
    pc.set_local_description(offer).await.expect("set local");
    tokio::time::timeout(STEP, gathered.recv())
        .await
        .expect("gathering completes");
    let offer_sdp = pc.local_description().await.expect("local description").sdp;

    let response = post_offer(&base, "whip-ch", Some(TOKEN), "application/sdp", &offer_sdp).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["content-type"], "application/sdp");
    let location = response.headers()["location"].to_str().expect("location").to_owned();
    assert!(location.starts_with("/whip/whip-ch/"), "{location}");
    let resource = location.rsplit('/').next().expect("resource id").to_owned();
    let answer = response.text().await.expect("answer");
    assert!(
        answer.contains("a=candidate") && answer.contains("127.0.0.1"),
        "non-trickle answer: {answer}"
    );
    let video = answer.split_once("m=video").expect("a video m-line").1;
    assert!(
        video.contains("\r\nb=AS:5000\r\nb=TIAS:5000000\r\n"),
        "the cap: {answer}"
    );
    pc.set_remote_description(RTCSessionDescription::answer(answer).expect("answer sdp"))
        .await
        .expect("set remote");
    wait_json(&base, &format!("connection_id={resource}&state=connected")).await;

    // Publish a solid colour, 320x240, until the endpoint decoded 15 frames (bounded).
    let payload_type = sender.get_parameters().await.expect("params").rtp_parameters.codecs[0].payload_type;
    let mut encoder = new_encoder(&EncoderConfig {
        codec: VideoCodec::Vp8,
        ..EncoderConfig::default()
    })
    .expect("encoder");
    let picture = I420Frame::filled(320, 240, rgb_to_yuv([30, 90, 220])).expect("frame");
    let publish = async {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        for i in 0..600u32 {
            tick.tick().await;
            let pts = Duration::from_millis(33) * i;
            if let Some(encoded) = encoder.encode(&picture, pts, i == 0).expect("encode") {
                let sample = Sample {
                    data: encoded.data,
                    duration: Duration::from_millis(33),
                    ..Sample::new(Instant::now())
                };
                track
                    .sample_writer(ssrc, payload_type)
                    .write_sample(&sample)
                    .await
                    .expect("write sample");
            }
        }
    };
    let decoded = async { wait_json(&base, &format!("connection_id={resource}&min_frames=15")).await };
    let c = tokio::select! {
        c = decoded => c,
        _ = publish => panic!("endpoint did not decode 15 frames"),
    };
    assert_eq!(c["transport"], "whip");
    assert_eq!(c["video"]["codec"], "vp8");
    assert_eq!(
        (c["video"]["width"].as_u64(), c["video"]["height"].as_u64()),
        (Some(320), Some(240))
    );
    let rgb: Vec<i64> = c["video"]["last_frame"]["patch_rgb"]
        .as_array()
        .expect("rgb")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    for (got, want) in rgb.iter().zip([30, 90, 220]) {
        assert!((got - want).abs() <= 12, "decoded colour {rgb:?}");
    }

    let client = reqwest::Client::new();
    let delete = client
        .delete(format!("{base}{location}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), 200);
    let closed = wait_json(&base, &format!("connection_id={resource}&state=closed")).await;
    assert_eq!(closed["close"]["reason"], "WHIP-DELETE");
    assert_eq!(closed["close"]["by"], "client");
    let again = client
        .delete(format!("{base}{location}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(again.status(), 404);
    pc.close().await.expect("close");
}
