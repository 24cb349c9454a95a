//! Contract: the relay accepts the config file the operator writes (the `livefilter-contract`
//! types), reads every key of it with the value written, and finds it valid (the relay is a
//! dev-dependency only; the operator binary never links it).

use livefilter_operator::crd::{
    AdvertiseFrom, AdvertiseSpec, ChannelStatus, Codec, FilterKind, ImageFluxOutput, KeyRef, LiveFilterSessionSpec,
    ModelSource, OutputSpec, PortsStatus, SoraOutput, WhipOutput,
};
use livefilter_operator::relay_config::{build, to_yaml};
use livefilter_relay::config::{RelayConfig, RelayConfigExt};
use serde_json::Value;

const PORTS: PortsStatus = PortsStatus {
    http: 38000,
    udp: 40000,
};

fn base() -> LiveFilterSessionSpec {
    LiveFilterSessionSpec {
        source: Default::default(),
        output: OutputSpec {
            imageflux: Some(ImageFluxOutput {
                token_secret_ref: Some(KeyRef {
                    name: "imageflux".into(),
                    key: None,
                }),
                hls: Default::default(),
            }),
            ..OutputSpec::default()
        },
        filter: Default::default(),
        video: Default::default(),
        relay: Default::default(),
        network: Default::default(),
        access: Default::default(),
        preview: Default::default(),
    }
}

fn channel() -> ChannelStatus {
    ChannelStatus {
        provider: "ImageFlux".into(),
        id: Some("c0ffee".into()),
        signaling_url: Some("wss://live-sora001.imageflux.jp/signaling".into()),
        hls_url: None,
    }
}

/// Every shape of spec the operator supports, each producing one relay.yaml.
fn specs() -> Vec<(&'static str, LiveFilterSessionSpec)> {
    let mut h264 = base();
    h264.video.codec = Codec::H264;
    h264.video.bitrate_kbps = 2500;
    h264.video.width = 1920;
    h264.video.height = 1080;
    h264.video.keyframe_interval_secs = 0;
    // Congestion control's range around the start.
    h264.video.min_bitrate_kbps = Some(400);
    h264.video.max_bitrate_kbps = Some(4000);

    // Only a floor: the ceiling stays the relay's default (the start).
    let mut floor_only = base();
    floor_only.video.min_bitrate_kbps = Some(300);

    // A fixed bitrate.
    let mut fixed = base();
    fixed.video.min_bitrate_kbps = Some(fixed.video.bitrate_kbps);
    fixed.video.max_bitrate_kbps = Some(fixed.video.bitrate_kbps);

    let mut sora = base();
    sora.output = OutputSpec {
        sora: Some(SoraOutput {
            signaling_urls: vec!["wss://a.example/signaling".into(), "wss://b.example/signaling".into()],
            channel_id: "room".into(),
            client_id: Some("relay-1".into()),
            bundle_id: Some("b".into()),
            metadata_secret_ref: Some(KeyRef {
                name: "meta".into(),
                key: None,
            }),
        }),
        ..OutputSpec::default()
    };
    sora.network.advertise = AdvertiseSpec {
        from: AdvertiseFrom::Explicit,
        address: Some("203.0.113.7".into()),
    };

    let mut whip = base();
    whip.output = OutputSpec {
        whip: Some(WhipOutput {
            url: "https://whip.example/whip/c".into(),
            token_secret_ref: Some(KeyRef {
                name: "w".into(),
                key: None,
            }),
        }),
        ..OutputSpec::default()
    };
    whip.access.token_secret_ref = Some(KeyRef {
        name: "offer".into(),
        key: None,
    });
    whip.access.allowed_origins = vec!["https://studio.example".into()];
    whip.preview.enabled = true;
    whip.network.turn = Some(livefilter_operator::crd::TurnSpec {
        urls: vec!["turn:turn.example:3478?transport=tcp".into()],
        username: Some("relay".into()),
        credential_secret_ref: Some(KeyRef {
            name: "turn".into(),
            key: None,
        }),
        ..Default::default()
    });

    let mut turn_rest = base();
    turn_rest.network.turn = Some(livefilter_operator::crd::TurnSpec {
        urls: vec![
            "turn:turn.example:3478?transport=udp".into(),
            "turns:turn.example:5349?transport=tcp".into(),
        ],
        auth_secret_ref: Some(KeyRef {
            name: "turn".into(),
            key: Some("static-auth-secret".into()),
        }),
        credential_ttl_seconds: Some(43200),
        ..Default::default()
    });

    let mut cuda_blur = base();
    cuda_blur.filter.kind = FilterKind::BackgroundBlur;
    cuda_blur.filter.device = livefilter_operator::crd::Device::Cuda;
    cuda_blur.relay.gpu.memory_limit_mib = Some(2048);

    let mut onnx = base();
    onnx.filter.kind = FilterKind::Onnx;
    onnx.filter.model = Some(ModelSource {
        path: Some("/models/style.onnx".into()),
        config_map: None,
    });
    onnx.filter.params.insert("layout".into(), serde_json::json!("nhwc"));
    onnx.filter.params.insert("output".into(), serde_json::json!("mask"));
    onnx.filter.params.insert("radius".into(), serde_json::json!(20));
    onnx.network.advertise = AdvertiseSpec {
        from: AdvertiseFrom::NodeExternalIP,
        address: None,
    };

    vec![
        ("imageflux", base()),
        ("h264-1080p", h264),
        ("bitrate-floor-only", floor_only),
        ("bitrate-fixed", fixed),
        ("sora", sora),
        ("whip", whip),
        ("cuda-blur", cuda_blur),
        ("onnx-external-ip", onnx),
        ("turn-rest", turn_rest),
    ]
}

/// Where `read` lacks or differs from a value of `wrote` (the relay may add defaults of its own).
fn first_difference(read: &Value, wrote: &Value, at: &str) -> Option<String> {
    match (read, wrote) {
        (Value::Object(r), Value::Object(w)) => w.iter().find_map(|(k, wv)| match r.get(k) {
            Some(rv) => first_difference(rv, wv, &format!("{at}.{k}")),
            None if wv.is_null() => None,
            None => Some(format!("{at}.{k}")),
        }),
        (r, w) if r == w => None,
        // Numbers may come back as another type of number (u32 as f64).
        (Value::Number(r), Value::Number(w)) if r.as_f64() == w.as_f64() => None,
        _ => Some(at.to_owned()),
    }
}

#[test]
fn the_relay_parses_and_validates_every_config_the_operator_writes() {
    for (name, spec) in specs() {
        let written = build(&spec, Some(&channel()), PORTS).unwrap();
        let yaml = to_yaml(&written);

        let parsed = RelayConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{name}: the relay rejects\n{yaml}\n{e}"));
        parsed
            .validate()
            .unwrap_or_else(|e| panic!("{name}: the relay finds\n{yaml}\ninvalid: {e}"));

        let (read, wrote) = (
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&written).unwrap(),
        );
        if let Some(path) = first_difference(&read, &wrote, "") {
            panic!("{name}: the relay reads {path} otherwise than written\n{yaml}");
        }
        assert_eq!(parsed.listen_addr().port(), 38000, "{name}");
        assert_eq!(parsed.ice.udp_addrs, vec!["0.0.0.0:40000".to_owned()], "{name}");
        assert_eq!(parsed.video.bitrate_kbps, spec.video.bitrate_kbps, "{name}");
        assert_eq!(parsed.video.min_bitrate_kbps, spec.video.min_bitrate_kbps, "{name}");
        assert_eq!(parsed.video.max_bitrate_kbps, spec.video.max_bitrate_kbps, "{name}");
        assert_eq!(parsed.filter.kind.as_str(), spec.filter.kind.as_str(), "{name}");
        assert_eq!(
            parsed.filter.gpu_mem_limit_mb,
            spec.relay.gpu.memory_limit_mib.map(u64::from),
            "{name}"
        );
        assert_eq!(
            parsed.filter.params,
            spec.filter
                .params
                .clone()
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
            "{name}"
        );
    }
}

#[test]
fn a_passthrough_cpu_session_writes_no_filter_extras() {
    let written = to_yaml(&build(&base(), Some(&channel()), PORTS).unwrap());

    let parsed = RelayConfig::from_yaml(&written).unwrap_or_else(|e| panic!("{written}\n{e}"));

    parsed.validate().unwrap();
    assert!(
        !parsed.preview.enabled,
        "the operator turns the preview off unless asked"
    );
}
