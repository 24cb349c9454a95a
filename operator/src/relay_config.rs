//! The relay's configuration file (`relay.yaml` in the session's ConfigMap), built from a spec.
//!
//! These structs mirror `livefilter_relay::config::RelayConfig` key by key (the operator does not
//! link the relay; a contract test parses this output with the relay's own parser). Secrets are
//! never written here: they are mounted as files and referenced by path.

use std::collections::BTreeMap;

use serde::Serialize;

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
    /// A model from a ConfigMap.
    pub const MODEL_DIR: &str = "/etc/livefilter/models";
    /// Downward-API files about the Pod (the advertised address once the operator knows it).
    pub const PODINFO_DIR: &str = "/etc/livefilter/podinfo";
    /// The advertised-address file inside [`PODINFO_DIR`].
    pub const PUBLIC_IP_FILE: &str = "public-ip";
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RelayConfigFile {
    /// HTTP address (`/offer`, `/status`, probes); every interface, on the allocated port.
    pub listen: String,
    /// The published video.
    pub video: VideoConfig,
    /// Publish into Sora (ImageFlux or an existing Sora).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sora: Option<SoraConfig>,
    /// Publish over WHIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whip: Option<WhipConfig>,
    /// WebRTC network settings.
    pub ice: IceConfig,
    /// The browser's `/offer` endpoint.
    pub offer: OfferConfig,
    /// The filter.
    pub filter: FilterConfig,
    /// The local preview.
    pub preview: PreviewConfig,
}

/// `video:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VideoConfig {
    /// `vp8` or `h264`.
    pub codec: &'static str,
    /// kbit/s.
    pub bitrate_kbps: u32,
    /// Seconds between forced keyframes.
    pub keyframe_interval_secs: f64,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Output frame rate.
    pub fps: u32,
}

/// `sora:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SoraConfig {
    /// Signaling URLs.
    pub signaling_urls: Vec<String>,
    /// The channel.
    pub channel_id: String,
    /// Optional client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Optional bundle id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
    /// The mounted `metadata` JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_file: Option<String>,
}

/// `whip:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhipConfig {
    /// The endpoint.
    pub url: String,
    /// The mounted bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// `ice:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IceConfig {
    /// The one UDP socket (`0.0.0.0:<allocated port>`).
    pub udp_addrs: Vec<String>,
    /// Addresses advertised instead of the local ones.
    pub public_ips: Vec<String>,
    /// A file holding the advertised address, re-read until it is non-empty (NodeExternalIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ips_file: Option<String>,
}

/// `offer:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OfferConfig {
    /// The mounted bearer token `/offer` requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// CORS origins.
    pub allowed_origins: Vec<String>,
}

/// `filter:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterConfig {
    /// The filter's name.
    pub kind: &'static str,
    /// Its parameters, unchanged.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The model file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `cuda`; absent means the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'static str>,
}

/// `preview:`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PreviewConfig {
    /// Serve it.
    pub enabled: bool,
    /// Viewer cap.
    pub max_viewers: u32,
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

impl RelayConfigFile {
    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        // Plain structs of strings and numbers always serialize.
        serde_yaml::to_string(self).unwrap_or_default()
    }
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
) -> Result<RelayConfigFile, ConfigBuildError> {
    let v = &spec.video;
    let (sora, whip) = match spec.output.kind().ok_or(ConfigBuildError::NoOutput)? {
        OutputKind::ImageFlux => {
            let ch = channel
                .filter(|c| c.provider == "ImageFlux")
                .ok_or(ConfigBuildError::NoChannel)?;
            let (Some(id), Some(url)) = (&ch.id, &ch.signaling_url) else {
                return Err(ConfigBuildError::NoChannel);
            };
            let sora = SoraConfig {
                signaling_urls: vec![url.clone()],
                channel_id: id.clone(),
                client_id: None,
                bundle_id: None,
                metadata_file: None,
            };
            (Some(sora), None)
        }
        OutputKind::Sora => {
            let s = spec.output.sora.as_ref().ok_or(ConfigBuildError::NoOutput)?;
            let sora = SoraConfig {
                signaling_urls: s.signaling_urls.clone(),
                channel_id: s.channel_id.clone(),
                client_id: s.client_id.clone(),
                bundle_id: s.bundle_id.clone(),
                metadata_file: s
                    .metadata_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/{}", paths::SORA_METADATA_DIR, paths::SORA_METADATA_FILE)),
            };
            (Some(sora), None)
        }
        OutputKind::Whip => {
            let w = spec.output.whip.as_ref().ok_or(ConfigBuildError::NoOutput)?;
            let whip = WhipConfig {
                url: w.url.clone(),
                token_file: w
                    .token_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/{}", paths::WHIP_TOKEN_DIR, paths::TOKEN_FILE)),
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
            Some(format!("{}/{}", paths::PODINFO_DIR, paths::PUBLIC_IP_FILE)),
        ),
    };
    Ok(RelayConfigFile {
        listen: format!("0.0.0.0:{}", ports.http),
        video: VideoConfig {
            codec: v.codec.as_str(),
            bitrate_kbps: v.bitrate_kbps,
            keyframe_interval_secs: f64::from(v.keyframe_interval_secs),
            width: v.width,
            height: v.height,
            fps: v.fps,
        },
        sora,
        whip,
        ice: IceConfig {
            udp_addrs: vec![format!("0.0.0.0:{}", ports.udp)],
            public_ips,
            public_ips_file,
        },
        offer: OfferConfig {
            token_file: spec
                .access
                .token_secret_ref
                .as_ref()
                .map(|_| format!("{}/{}", paths::OFFER_TOKEN_DIR, paths::TOKEN_FILE)),
            allowed_origins: spec.access.allowed_origins.clone(),
        },
        filter: FilterConfig {
            kind: spec.filter.kind.as_str(),
            params: spec.filter.params.clone(),
            model: spec.filter.model.as_ref().and_then(model_path),
            device: match spec.filter.device {
                crate::crd::Device::Cpu => None,
                crate::crd::Device::Cuda => Some("cuda"),
            },
        },
        preview: PreviewConfig {
            enabled: spec.preview.enabled,
            max_viewers: spec.preview.max_viewers,
        },
    })
}

#[cfg(test)]
mod tests {
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

        let yaml = build(&spec, Some(&channel()), PORTS).unwrap().to_yaml();

        assert_eq!(
            yaml,
            "\
listen: 0.0.0.0:38000
video:
  codec: vp8
  bitrate_kbps: 1000
  keyframe_interval_secs: 2.0
  width: 1280
  height: 720
  fps: 30
sora:
  signaling_urls:
  - wss://live-sora001.imageflux.jp/signaling
  channel_id: c0ffee
ice:
  udp_addrs:
  - 0.0.0.0:40000
  public_ips: []
offer:
  allowed_origins:
  - https://studio.example
filter:
  kind: background-blur
  params:
    radius: 12
preview:
  enabled: false
  max_viewers: 4
"
        );
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
            Some("/var/run/secrets/livefilter/sora/metadata.json")
        );
        assert_eq!(
            c.offer.token_file.as_deref(),
            Some("/var/run/secrets/livefilter/offer/token")
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
            Some("/var/run/secrets/livefilter/whip/token")
        );
        assert_eq!(c.sora, None);
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
            Some("/etc/livefilter/podinfo/public-ip")
        );
        assert!(c.ice.public_ips.is_empty());
    }
}
