//! The relay's configuration: a YAML file (the operator writes one) with command-line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::EncoderConfig;
use crate::filter::FilterConfigExt;
use crate::publish::congestion::BitrateLimits;
use crate::publish::sora::SoraConfig;
use crate::publish::sora::signaling::ConnectOptions;
use crate::publish::whip::WhipConfig;

/// Problems with the configuration, each naming the setting and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config file {path} is invalid: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// A setting is out of range.
    #[error("{setting} = {value} is out of range ({expected})")]
    OutOfRange {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A required setting is missing.
    #[error("{0}")]
    Missing(String),
    /// A value could not be parsed.
    #[error("{setting}: {detail}")]
    Invalid { setting: &'static str, detail: String },
    /// The filter section (parameters, a missing `onnx` model).
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    /// An `ice.servers` entry.
    #[error(transparent)]
    IceServer(#[from] crate::ice_servers::IceServerError),
}

pub use livefilter_contract::config::{
    DEFAULT_LISTEN, HttpSection, IceConfig, IceServerConfig, IngestSection, OfferConfig, PreviewSection, RelayConfig,
    SoraOutput, VideoConfig, WhipOutput,
};

/// What the relay does with its configuration: read it, check it, and derive each part's
/// settings from it. The types are the contract crate's, shared with the operator that writes
/// the file.
pub trait RelayConfigExt: Sized {
    /// Reads a YAML file.
    fn from_file(path: &Path) -> Result<Self, ConfigError>;
    /// Parses YAML text.
    fn from_yaml(text: &str) -> Result<Self, String>;
    /// The HTTP listen address.
    fn listen_addr(&self) -> SocketAddr;
    /// Checks every range; the first problem is returned.
    fn validate(&self) -> Result<(), ConfigError>;
    /// The HTTP listener's bounds.
    fn server_limits(&self) -> crate::http::server::ServerLimits;
    /// The browser session's timers.
    fn session_timers(&self) -> crate::session::SessionTimers;
    /// The encoder settings derived from `video`.
    fn encoder_config(&self) -> EncoderConfig;
    /// The range congestion control keeps every output's bitrate within.
    fn bitrate_limits(&self) -> BitrateLimits;
    /// The `/offer` bearer token, reading the token file if one is given.
    fn offer_token(&self) -> Result<Option<String>, ConfigError>;
    /// The STUN/TURN servers for the sender page, reading their secret files.
    fn ice_servers(&self) -> Result<crate::ice_servers::IceServers, ConfigError>;
    /// The Sora publisher settings, reading the metadata file if one is given; `audio` when the
    /// browser's audio is forwarded (serve mode).
    fn sora_config(&self, audio: bool) -> Result<Option<SoraConfig>, ConfigError>;
    /// The WHIP publisher settings, reading the token file if one is given; `audio` when the
    /// browser's audio is forwarded (serve mode).
    fn whip_config(&self, audio: bool) -> Result<Option<WhipConfig>, ConfigError>;
}

impl RelayConfigExt for RelayConfig {
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|detail| ConfigError::Parse {
            path: path.to_owned(),
            detail,
        })
    }

    fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.filter.validate()?;
        let v = &self.video;
        range("video.width", v.width, 16, 4096, "16..=4096, even")?;
        range("video.height", v.height, 16, 4096, "16..=4096, even")?;
        if !v.width.is_multiple_of(2) || !v.height.is_multiple_of(2) {
            return Err(ConfigError::OutOfRange {
                setting: "video.width/height",
                value: format!("{}x{}", v.width, v.height),
                expected: "even numbers (4:2:0 chroma)",
            });
        }
        range("video.fps", v.fps, 1, 120, "1..=120")?;
        range(
            "video.keyframe_request_interval_ms",
            v.keyframe_request_interval_ms,
            0,
            10_000,
            "0..=10000",
        )?;
        range("ingest.max_width", self.ingest.max_width, 16, 8192, "16..=8192")?;
        range("ingest.max_height", self.ingest.max_height, 16, 8192, "16..=8192")?;
        range("video.bitrate_kbps", v.bitrate_kbps, 50, 50_000, "50..=50000")?;
        if let Some(mb) = self.filter.gpu_mem_limit_mb {
            range("filter.gpu_mem_limit_mb", mb, 64, 1 << 20, "64..=1048576 (MiB)")?;
        }
        let (min, start, max) = v.bitrate_range_kbps();
        range("video.min_bitrate_kbps", min, 50, start, "50..=video.bitrate_kbps")?;
        range(
            "video.max_bitrate_kbps",
            max,
            start,
            50_000,
            "video.bitrate_kbps..=50000",
        )?;
        if !(0.0..=3600.0).contains(&v.keyframe_interval_secs) {
            return Err(ConfigError::OutOfRange {
                setting: "video.keyframe_interval_secs",
                value: v.keyframe_interval_secs.to_string(),
                expected: "0..=3600",
            });
        }
        if let Some(sora) = &self.sora {
            if sora.signaling_urls.is_empty() {
                return Err(ConfigError::Missing(
                    "sora.signaling_urls needs at least one ws:// or wss:// URL".into(),
                ));
            }
            if sora.channel_id.is_empty() {
                return Err(ConfigError::Missing("sora.channel_id is required".into()));
            }
        }
        if let Some(whip) = &self.whip
            && whip.url.is_empty()
        {
            return Err(ConfigError::Missing("whip.url is required".into()));
        }
        if !(1024..=1024 * 1024).contains(&self.offer.max_body_bytes) {
            return Err(ConfigError::OutOfRange {
                setting: "offer.max_body_bytes",
                value: self.offer.max_body_bytes.to_string(),
                expected: "1024..=1048576",
            });
        }
        if self.ingest.codecs.is_empty() {
            return Err(ConfigError::Missing(
                "ingest.codecs needs at least one of vp8, h264".into(),
            ));
        }
        if self.preview.max_viewers > 64 {
            return Err(ConfigError::OutOfRange {
                setting: "preview.max_viewers",
                value: self.preview.max_viewers.to_string(),
                expected: "0..=64",
            });
        }
        if let Some(range) = &self.ice.udp_port_range {
            range
                .parse::<crate::ice::PortRange>()
                .map_err(|detail| ConfigError::Invalid {
                    setting: "ice.udp_port_range",
                    detail,
                })?;
        }
        for addr in &self.ice.tcp_addrs {
            addr.parse::<std::net::SocketAddr>().map_err(|e| ConfigError::Invalid {
                setting: "ice.tcp_addrs",
                detail: format!("{addr:?} is not an IP address and port: {e}"),
            })?;
        }
        if self.ice.tcp_only && self.ice.tcp_addrs.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "ice.tcp_only",
                detail: "needs ice.tcp_addrs (--ice-tcp-addr): the TCP address to take ICE on".into(),
            });
        }
        crate::ice_servers::validate(&self.ice.servers)?;
        crate::ice::parse_public_ips(&self.ice.public_ips).map_err(|detail| ConfigError::Invalid {
            setting: "ice.public_ips",
            detail,
        })?;
        if self.offer.tls_cert.is_some() != self.offer.tls_key.is_some() {
            return Err(ConfigError::Missing(
                "offer.tls_cert and offer.tls_key go together".into(),
            ));
        }
        let seconds = |setting: &'static str, value: f64, low: f64, high: f64, expected: &'static str| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    setting,
                    value: value.to_string(),
                    expected,
                })
            }
        };
        seconds(
            "ice.disconnected_grace_secs",
            self.ice.disconnected_grace_secs,
            0.0,
            300.0,
            "0..=300",
        )?;
        seconds(
            "ice.connect_timeout_secs",
            self.ice.connect_timeout_secs,
            1.0,
            300.0,
            "1..=300",
        )?;
        let h = &self.http;
        seconds(
            "http.header_read_timeout_secs",
            h.header_read_timeout_secs,
            0.5,
            300.0,
            "0.5..=300",
        )?;
        seconds("http.idle_timeout_secs", h.idle_timeout_secs, 1.0, 3600.0, "1..=3600")?;
        seconds(
            "http.request_timeout_secs",
            h.request_timeout_secs,
            0.01,
            600.0,
            "0.01..=600",
        )?;
        range("http.max_connections", h.max_connections, 4, 100_000, "4..=100000")?;
        range(
            "http.max_connections_per_ip",
            h.max_connections_per_ip,
            1,
            h.max_connections.max(1),
            "1..=http.max_connections",
        )?;
        Ok(())
    }

    fn server_limits(&self) -> crate::http::server::ServerLimits {
        crate::http::server::ServerLimits::from(&self.http)
    }

    fn session_timers(&self) -> crate::session::SessionTimers {
        crate::session::SessionTimers {
            connect: Duration::from_secs_f64(self.ice.connect_timeout_secs),
            disconnected_grace: Duration::from_secs_f64(self.ice.disconnected_grace_secs),
            ..crate::session::SessionTimers::default()
        }
    }

    fn encoder_config(&self) -> EncoderConfig {
        let v = &self.video;
        EncoderConfig {
            codec: v.codec,
            fps: v.fps,
            bitrate_kbps: v.bitrate_kbps,
            keyframe_interval: Duration::from_secs_f64(v.keyframe_interval_secs),
            threads: 1,
        }
    }

    fn bitrate_limits(&self) -> BitrateLimits {
        let (min, start, max) = self.video.bitrate_range_kbps();
        BitrateLimits::from_kbps(min, start, max)
    }

    fn offer_token(&self) -> Result<Option<String>, ConfigError> {
        match &self.offer.token_file {
            Some(path) => Ok(Some(read_secret(path)?)),
            None => Ok(self.offer.token.clone()),
        }
    }

    fn ice_servers(&self) -> Result<crate::ice_servers::IceServers, ConfigError> {
        Ok(crate::ice_servers::IceServers::load(&self.ice.servers)?)
    }

    fn sora_config(&self, audio: bool) -> Result<Option<SoraConfig>, ConfigError> {
        let Some(sora) = &self.sora else { return Ok(None) };
        let metadata = match &sora.metadata_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    detail: e.to_string(),
                })?)
            }
            None => sora.metadata.clone(),
        };
        let mut config = SoraConfig::new(
            sora.signaling_urls.clone(),
            ConnectOptions {
                channel_id: sora.channel_id.clone(),
                client_id: sora.client_id.clone(),
                bundle_id: sora.bundle_id.clone(),
                metadata,
                signaling_notify_metadata: None,
                codec: self.video.codec,
                bitrate_kbps: self.video.bitrate_kbps,
                audio,
                simulcast: sora.simulcast,
            },
        );
        config.udp_addrs = crate::ice::ephemeral(&self.ice.udp_addrs);
        config.public_ips = self.ice.public_ips.clone();
        config.link.disconnect_grace = Duration::from_secs_f64(self.ice.disconnected_grace_secs);
        config.bitrate = self.bitrate_limits();
        if let Some(n) = sora.max_redirects {
            config.max_redirects = n;
        }
        Ok(Some(config))
    }

    fn whip_config(&self, audio: bool) -> Result<Option<WhipConfig>, ConfigError> {
        let Some(whip) = &self.whip else { return Ok(None) };
        let token = match &whip.token_file {
            Some(path) => Some(read_secret(path)?),
            None => whip.token.clone(),
        };
        let mut config = WhipConfig::new(whip.url.clone(), token, self.video.codec);
        config.udp_addrs = crate::ice::ephemeral(&self.ice.udp_addrs);
        config.public_ips = self.ice.public_ips.clone();
        config.request_timeout = Duration::from_secs(10);
        config.audio = audio;
        config.link.disconnect_grace = Duration::from_secs_f64(self.ice.disconnected_grace_secs);
        config.bitrate = self.bitrate_limits();
        Ok(Some(config))
    }
}

/// A token from a mounted Secret file, without the trailing newline editors and `echo` add.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

fn range<T: PartialOrd + ToString>(
    setting: &'static str,
    value: T,
    min: T,
    max: T,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            value: value.to_string(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::VideoCodec;

    #[test]
    fn yaml_file_with_sora_output_parses_and_validates() {
        let cfg = RelayConfig::from_yaml(
            r#"
listen: 0.0.0.0:9000
video: {codec: h264, bitrate_kbps: 2500, width: 1920, height: 1080, fps: 30}
sora:
  signaling_urls: [wss://a/signaling, wss://b/signaling]
  channel_id: ch
  metadata: {access_token: secret}
ice: {udp_addrs: ["0.0.0.0:40000"], public_ips: [203.0.113.7]}
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.listen_addr().port(), 9000);
        let sora = cfg.sora_config(false).unwrap().unwrap();
        assert_eq!(sora.signaling_urls.len(), 2);
        assert_eq!(sora.connect.codec, VideoCodec::H264);
        assert_eq!(
            sora.connect.metadata,
            Some(serde_json::json!({"access_token": "secret"}))
        );
        assert_eq!(sora.public_ips, vec!["203.0.113.7".to_owned()]);
        assert_eq!(cfg.encoder_config().keyframe_interval, Duration::from_secs(10));
    }

    #[test]
    fn odd_sizes_and_zero_fps_are_out_of_range() {
        let mut cfg = RelayConfig::default();
        cfg.video.width = 641;
        assert!(cfg.validate().unwrap_err().to_string().contains("641x720"));
        cfg.video.width = 640;
        cfg.video.fps = 0;
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "video.fps = 0 is out of range (1..=120)"
        );
    }

    #[test]
    fn a_gpu_memory_cap_below_what_a_model_needs_is_out_of_range() {
        let mut cfg = RelayConfig::default();
        cfg.filter.gpu_mem_limit_mb = Some(16);

        let err = cfg.validate().unwrap_err().to_string();

        assert_eq!(err, "filter.gpu_mem_limit_mb = 16 is out of range (64..=1048576 (MiB))");
        cfg.filter.gpu_mem_limit_mb = Some(2048);
        cfg.validate().unwrap();
        assert_eq!(
            crate::filter::FilterConfigExt::runtime_options(&cfg.filter).gpu_mem_limit_bytes,
            Some(2048 * 1024 * 1024)
        );
    }

    #[test]
    fn sora_without_urls_is_missing_them() {
        let cfg = RelayConfig {
            sora: Some(SoraOutput {
                channel_id: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("signaling_urls"));
    }

    #[test]
    fn a_turn_server_without_credentials_fails_validation_naming_the_entry() {
        let cfg = RelayConfig::from_yaml(
            "ice: {servers: [{urls: [\"stun:s:3478\"]}, {urls: [\"turn:t:3478?transport=udp\"]}]}",
        )
        .unwrap();

        let err = cfg.validate().unwrap_err().to_string();

        assert_eq!(
            err,
            "ice.servers[1]: turn: URLs need credentials (username with credential, or auth_secret)"
        );
    }

    #[test]
    fn ice_over_tcp_only_needs_a_tcp_address_and_addresses_must_parse() {
        let only = RelayConfig::from_yaml("ice: {tcp_only: true}").unwrap();
        let bad = RelayConfig::from_yaml("ice: {tcp_addrs: [\"relay:8443\"]}").unwrap();
        let good = RelayConfig::from_yaml("ice: {tcp_addrs: [\"0.0.0.0:8443\"], tcp_only: true}").unwrap();

        assert_eq!(
            only.validate().unwrap_err().to_string(),
            "ice.tcp_only: needs ice.tcp_addrs (--ice-tcp-addr): the TCP address to take ICE on"
        );
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("ice.tcp_addrs: \"relay:8443\" is not an IP address and port"),
        );
        assert!(good.validate().is_ok());
    }

    #[test]
    fn whip_token_is_read_from_a_file_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("lf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "abc\n").unwrap();
        let cfg = RelayConfig {
            whip: Some(WhipOutput {
                url: "http://x/whip/c".into(),
                token: None,
                token_file: Some(path),
            }),
            ..Default::default()
        };
        assert_eq!(cfg.whip_config(false).unwrap().unwrap().token.as_deref(), Some("abc"));
    }
}
