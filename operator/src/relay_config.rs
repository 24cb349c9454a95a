//! The relay's configuration file (`relay.yaml` in the session's ConfigMap), built from a spec.
//!
//! The file is the contract crate's [`RelayConfig`], the very type the relay parses; a contract
//! test also runs the relay's own validation on every shape written. Secrets are never written
//! here: they are mounted as files and referenced by path.

use livefilter_contract::config::{
    Device, FilterConfig, FilterKind, IceConfig, IceServerConfig, OfferConfig, PreviewSection, RelayConfig, SoraOutput,
    VideoCodec, VideoConfig, WhipOutput,
};

use crate::crd::{AdvertiseFrom, ChannelStatus, LiveFilterSessionSpec, ModelSource, OutputKind, PortsStatus};

/// Where the relay's files live in the Pod.
pub mod paths {
    /// The ConfigMap mount.
    pub const CONFIG_DIR: &str = "/etc/livefilter";
    /// The config file name inside [`CONFIG_DIR`].
    pub const CONFIG_FILE: &str = "relay.yaml";
    /// The config file.
    pub const CONFIG_PATH: &str = "/etc/livefilter/relay.yaml";
    /// Sora `metadata` JSON (a Secret key).
    pub const SORA_METADATA_DIR: &str = "/var/run/secrets/livefilter/sora";
    /// The file inside [`SORA_METADATA_DIR`].
    pub const SORA_METADATA_FILE: &str = "metadata.json";
    /// The WHIP bearer token (a Secret key).
    pub const WHIP_TOKEN_DIR: &str = "/var/run/secrets/livefilter/whip";
    /// The `/offer` bearer token (a Secret key).
    pub const OFFER_TOKEN_DIR: &str = "/var/run/secrets/livefilter/offer";
    /// The file inside the token directories.
    pub const TOKEN_FILE: &str = "token";
    /// The TURN password or shared secret (a Secret key).
    pub const TURN_DIR: &str = "/var/run/secrets/livefilter/turn";
    /// The fixed TURN password inside [`TURN_DIR`].
    pub const TURN_CREDENTIAL_FILE: &str = "credential";
    /// The TURN shared secret inside [`TURN_DIR`].
    pub const TURN_AUTH_SECRET_FILE: &str = "auth-secret";
    /// A model from a ConfigMap.
    pub const MODEL_DIR: &str = "/etc/livefilter/models";
    /// Downward-API files about the Pod (the advertised address once the operator knows it).
    pub const PODINFO_DIR: &str = "/etc/livefilter/podinfo";
    /// The advertised-address file inside [`PODINFO_DIR`].
    pub const PUBLIC_IP_FILE: &str = "public-ip";
}

/// Why a config cannot be built yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigBuildError {
    /// The spec names no output.
    #[error("the spec names no output (set one of output.imageflux, output.sora, output.whip)")]
    NoOutput,
    /// An ImageFlux output without a channel in status yet.
    #[error("the ImageFlux channel does not exist yet")]
    NoChannel,
}

/// The YAML text of `config`.
pub fn to_yaml(config: &RelayConfig) -> String {
    // Plain structs of strings, numbers and paths always serialize.
    serde_yaml::to_string(config).unwrap_or_default()
}

/// The file a ConfigMap `model` key is mounted as.
pub fn model_path(model: &ModelSource) -> Option<String> {
    match (&model.path, &model.config_map) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(cm)) => Some(format!("{}/{}", paths::MODEL_DIR, cm.key_or("model.onnx"))),
        (None, None) => None,
    }
}

/// Builds the relay's config from the spec, the channel in status, and the allocated ports.
pub fn build(
    spec: &LiveFilterSessionSpec,
    channel: Option<&ChannelStatus>,
    ports: PortsStatus,
) -> Result<RelayConfig, ConfigBuildError> {
    let v = &spec.video;
    let (sora, whip) = match spec.output.kind().ok_or(ConfigBuildError::NoOutput)? {
        OutputKind::ImageFlux => {
            let ch = channel
                .filter(|c| c.provider == "ImageFlux")
                .ok_or(ConfigBuildError::NoChannel)?;
            let (Some(id), Some(url)) = (&ch.id, &ch.signaling_url) else {
                return Err(ConfigBuildError::NoChannel);
            };
            let sora = SoraOutput {
                signaling_urls: vec![url.clone()],
                channel_id: id.clone(),
                simulcast: spec.video.simulcast,
                ..SoraOutput::default()
            };
            (Some(sora), None)
        }
        OutputKind::Sora => {
            let s = spec.output.sora.as_ref().ok_or(ConfigBuildError::NoOutput)?;
            let sora = SoraOutput {
                signaling_urls: s.signaling_urls.clone(),
                channel_id: s.channel_id.clone(),
                client_id: s.client_id.clone(),
                bundle_id: s.bundle_id.clone(),
                metadata: None,
                metadata_file: s
                    .metadata_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/{}", paths::SORA_METADATA_DIR, paths::SORA_METADATA_FILE).into()),
                simulcast: spec.video.simulcast,
                ..SoraOutput::default()
            };
            (Some(sora), None)
        }
        OutputKind::Whip => {
            let w = spec.output.whip.as_ref().ok_or(ConfigBuildError::NoOutput)?;
            let whip = WhipOutput {
                url: w.url.clone(),
                token: None,
                token_file: w
                    .token_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/{}", paths::WHIP_TOKEN_DIR, paths::TOKEN_FILE).into()),
            };
            (None, Some(whip))
        }
    };
    let advertise = &spec.network.advertise;
    let (public_ips, public_ips_file) = match advertise.from {
        AdvertiseFrom::Explicit => (advertise.address.iter().cloned().collect(), None),
        // The Pod passes `--public-ip=$(LIVEFILTER_HOST_IP)` (downward API status.hostIP).
        AdvertiseFrom::NodeInternalIP => (Vec::new(), None),
        AdvertiseFrom::NodeExternalIP => (
            Vec::new(),
            Some(format!("{}/{}", paths::PODINFO_DIR, paths::PUBLIC_IP_FILE).into()),
        ),
    };
    Ok(RelayConfig {
        listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], ports.http))),
        video: VideoConfig {
            codec: match v.codec {
                crate::crd::Codec::Vp8 => VideoCodec::Vp8,
                crate::crd::Codec::H264 => VideoCodec::H264,
            },
            bitrate_kbps: v.bitrate_kbps,
            min_bitrate_kbps: v.min_bitrate_kbps,
            max_bitrate_kbps: v.max_bitrate_kbps,
            keyframe_interval_secs: f64::from(v.keyframe_interval_secs),
            width: v.width,
            height: v.height,
            fps: v.fps,
            ..VideoConfig::default()
        },
        sora,
        whip,
        ice: IceConfig {
            udp_addrs: vec![format!("0.0.0.0:{}", ports.udp)],
            tcp_addrs: if spec.network.ice_tcp {
                vec![format!("0.0.0.0:{}", ports.udp)]
            } else {
                Vec::new()
            },
            public_ips,
            public_ips_file,
            servers: spec.network.turn.as_ref().map(ice_server).into_iter().collect(),
            ..IceConfig::default()
        },
        offer: OfferConfig {
            token_file: spec
                .access
                .token_secret_ref
                .as_ref()
                .map(|_| format!("{}/{}", paths::OFFER_TOKEN_DIR, paths::TOKEN_FILE).into()),
            allowed_origins: spec.access.allowed_origins.clone(),
            ..OfferConfig::default()
        },
        filter: FilterConfig {
            kind: filter_kind(spec.filter.kind),
            params: spec.filter.params.clone().into_iter().collect(),
            model: spec.filter.model.as_ref().and_then(model_path).map(Into::into),
            device: match spec.filter.device {
                crate::crd::Device::Cpu => Device::Cpu,
                crate::crd::Device::Cuda => Device::Cuda(0),
            },
            gpu_mem_limit_mb: spec.relay.gpu.memory_limit_mib.map(u64::from),
            ..FilterConfig::default()
        },
        preview: PreviewSection {
            enabled: spec.preview.enabled,
            max_viewers: spec.preview.max_viewers as usize,
        },
        ..RelayConfig::default()
    })
}

/// The relay's `ice.servers` entry for the CRD's TURN server: its secrets are mounted files.
pub fn ice_server(turn: &crate::crd::TurnSpec) -> IceServerConfig {
    let file = |name: &str| Some(format!("{}/{name}", paths::TURN_DIR).into());
    IceServerConfig {
        urls: turn.urls.clone(),
        username: turn.username.clone(),
        credential_file: turn
            .credential_secret_ref
            .as_ref()
            .and_then(|_| file(paths::TURN_CREDENTIAL_FILE)),
        auth_secret_file: turn
            .auth_secret_ref
            .as_ref()
            .and_then(|_| file(paths::TURN_AUTH_SECRET_FILE)),
        credential_ttl_secs: turn.credential_ttl_seconds,
        ..IceServerConfig::default()
    }
}

/// The relay's name for the CRD's filter kind.
pub fn filter_kind(kind: crate::crd::FilterKind) -> FilterKind {
    use crate::crd::FilterKind as K;
    match kind {
        K::Passthrough => FilterKind::Passthrough,
        K::BackgroundBlur => FilterKind::BackgroundBlur,
        K::BackgroundReplace => FilterKind::BackgroundReplace,
        K::FaceBlur => FilterKind::FaceBlur,
        K::Pose => FilterKind::Pose,
        K::Onnx => FilterKind::Onnx,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::crd::{AdvertiseSpec, ImageFluxOutput, KeyRef, OutputSpec, SoraOutput, WhipOutput};

    const PORTS: PortsStatus = PortsStatus {
        http: 38000,
        udp: 40000,
    };

    fn imageflux() -> LiveFilterSessionSpec {
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

    #[test]
    fn an_imageflux_session_becomes_exactly_this_yaml() {
        let mut spec = imageflux();
        spec.filter.kind = crate::crd::FilterKind::BackgroundBlur;
        spec.filter.params.insert("radius".into(), serde_json::json!(12));
        spec.access.allowed_origins = vec!["https://studio.example".into()];

        let yaml = to_yaml(&build(&spec, Some(&channel()), PORTS).unwrap());

        assert_eq!(
            yaml,
            "\
listen: 0.0.0.0:38000
video:
  codec: vp8
  bitrate_kbps: 1000
  keyframe_interval_secs: 10.0
  keyframe_request_interval_ms: 500
  width: 1280
  height: 720
  fps: 30
  follow_input: true
sora:
  signaling_urls:
  - wss://live-sora001.imageflux.jp/signaling
  channel_id: c0ffee
ice:
  udp_addrs:
  - 0.0.0.0:40000
  public_ips: []
  disconnected_grace_secs: 5.0
  connect_timeout_secs: 20.0
filter:
  kind: background-blur
  params:
    radius: 12
  device: cpu
  device_fallback: fail
  threads: 1
  image_limits:
    max_bytes: 16777216
    max_width: 4096
    max_height: 4096
offer:
  allowed_origins:
  - https://studio.example
  max_body_bytes: 65536
ingest:
  codecs:
  - vp8
  - h264
  start_bitrate_kbps: 2000
  max_width: 1920
  max_height: 1080
preview:
  enabled: false
  max_viewers: 4
http:
  max_connections: 256
  max_connections_per_ip: 32
  header_read_timeout_secs: 10.0
  idle_timeout_secs: 60.0
  request_timeout_secs: 15.0
"
        );
    }

    #[test]
    fn ice_over_tcp_listens_on_the_webrtc_ports_number() {
        let mut spec = imageflux();
        spec.network.ice_tcp = true;

        let config = build(&spec, Some(&channel()), PORTS).unwrap();

        assert_eq!(config.ice.tcp_addrs, ["0.0.0.0:40000"]);
        assert_eq!(config.ice.udp_addrs, ["0.0.0.0:40000"]);
        assert!(!config.ice.tcp_only);
    }

    #[test]
    fn simulcast_in_the_video_spec_reaches_the_relays_sora_output() {
        let mut spec = imageflux();
        spec.video.simulcast = true;

        let config = build(&spec, Some(&channel()), PORTS).unwrap();

        assert!(config.sora.as_ref().unwrap().simulcast);
        assert!(to_yaml(&config).contains("\n  simulcast: true\n"));
    }

    #[test]
    fn an_imageflux_session_without_its_channel_cannot_be_configured_yet() {
        assert_eq!(build(&imageflux(), None, PORTS), Err(ConfigBuildError::NoChannel));
    }

    #[test]
    fn secrets_appear_only_as_file_paths() {
        let mut spec = imageflux();
        spec.output = OutputSpec {
            sora: Some(SoraOutput {
                signaling_urls: vec!["wss://a/signaling".into(), "wss://b/signaling".into()],
                channel_id: "room".into(),
                client_id: Some("relay".into()),
                bundle_id: None,
                metadata_secret_ref: Some(KeyRef {
                    name: "meta".into(),
                    key: None,
                }),
            }),
            ..OutputSpec::default()
        };
        spec.access.token_secret_ref = Some(KeyRef {
            name: "offer".into(),
            key: None,
        });

        let c = build(&spec, None, PORTS).unwrap();

        let sora = c.sora.unwrap();
        assert_eq!(sora.signaling_urls.len(), 2);
        assert_eq!(
            sora.metadata_file.as_deref(),
            Some(Path::new("/var/run/secrets/livefilter/sora/metadata.json"))
        );
        assert_eq!(
            c.offer.token_file.as_deref(),
            Some(Path::new("/var/run/secrets/livefilter/offer/token"))
        );

        spec.output = OutputSpec {
            whip: Some(WhipOutput {
                url: "https://whip.example/c".into(),
                token_secret_ref: Some(KeyRef {
                    name: "w".into(),
                    key: None,
                }),
            }),
            ..OutputSpec::default()
        };
        let c = build(&spec, None, PORTS).unwrap();
        assert_eq!(
            c.whip.unwrap().token_file.as_deref(),
            Some(Path::new("/var/run/secrets/livefilter/whip/token"))
        );
        assert_eq!(c.sora, None);
    }

    #[test]
    fn a_turn_server_reaches_the_relay_with_its_secret_as_a_file() {
        let mut spec = imageflux();
        spec.network.turn = Some(crate::crd::TurnSpec {
            urls: vec!["turn:turn.example:3478?transport=tcp".into()],
            username: Some("studio".into()),
            auth_secret_ref: Some(KeyRef {
                name: "turn".into(),
                key: Some("static-auth-secret".into()),
            }),
            credential_ttl_seconds: Some(7200),
            ..Default::default()
        });

        let c = build(&spec, Some(&channel()), PORTS).unwrap();

        assert_eq!(
            c.ice.servers,
            vec![IceServerConfig {
                urls: vec!["turn:turn.example:3478?transport=tcp".into()],
                username: Some("studio".into()),
                auth_secret_file: Some("/var/run/secrets/livefilter/turn/auth-secret".into()),
                credential_ttl_secs: Some(7200),
                ..IceServerConfig::default()
            }]
        );
        assert!(
            !to_yaml(&c).contains("static-auth-secret"),
            "only the file path is written"
        );
    }

    #[test]
    fn the_advertised_address_follows_the_network_spec() {
        let mut spec = imageflux();
        spec.network.advertise = AdvertiseSpec {
            from: AdvertiseFrom::Explicit,
            address: Some("203.0.113.7".into()),
        };
        let c = build(&spec, Some(&channel()), PORTS).unwrap();
        assert_eq!(
            (c.ice.public_ips, c.ice.public_ips_file),
            (vec!["203.0.113.7".to_owned()], None)
        );

        spec.network.advertise = AdvertiseSpec {
            from: AdvertiseFrom::NodeExternalIP,
            address: None,
        };
        let c = build(&spec, Some(&channel()), PORTS).unwrap();
        assert_eq!(
            c.ice.public_ips_file.as_deref(),
            Some(Path::new("/etc/livefilter/podinfo/public-ip"))
        );
        assert!(c.ice.public_ips.is_empty());
    }
}
