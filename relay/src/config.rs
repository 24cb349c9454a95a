//! The relay's configuration: a YAML file (the operator writes one) with command-line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{EncoderConfig, VideoCodec};
use crate::filter::FilterConfig;
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
}

/// The whole relay configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// HTTP address for `/metrics`, `/healthz`, `/status` (and later `/offer`).
    pub listen: Option<SocketAddr>,
    /// Output video settings.
    pub video: VideoConfig,
    /// Publish into Sora (ImageFlux Live Streaming).
    pub sora: Option<SoraOutput>,
    /// Publish over WHIP.
    pub whip: Option<WhipOutput>,
    /// WebRTC network settings.
    pub ice: IceConfig,
    /// The test pattern's font (a TrueType/OpenType file).
    pub font: Option<PathBuf>,
    /// The filter (serve mode).
    pub filter: FilterConfig,
    /// Access to `/offer` (serve mode).
    pub offer: OfferConfig,
    /// What the relay accepts from the browser (serve mode).
    pub ingest: IngestSection,
    /// The built-in local preview (serve mode).
    pub preview: PreviewSection,
    /// Where viewers can watch over HLS, shown on the sender page.
    pub hls_url: Option<String>,
    /// Bounds of the HTTP listener.
    pub http: HttpSection,
}

/// Bounds of the HTTP listener against idle, slow or too many clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_connections_per_ip: usize,
    /// Seconds a client may take to send a request's headers.
    pub header_read_timeout_secs: f64,
    /// Seconds a connection may stay without reading or writing a byte.
    pub idle_timeout_secs: f64,
    /// Seconds a request may take, body included; longer ones are answered 408.
    pub request_timeout_secs: f64,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = crate::http::server::ServerLimits::default();
        Self {
            max_connections: d.max_connections,
            max_connections_per_ip: d.max_connections_per_ip,
            header_read_timeout_secs: d.header_read_timeout.as_secs_f64(),
            idle_timeout_secs: d.idle_timeout.as_secs_f64(),
            request_timeout_secs: d.request_timeout.as_secs_f64(),
        }
    }
}

/// Access to `/offer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfferConfig {
    /// Bearer token the sender must present.
    pub token: Option<String>,
    /// Read the token from this file instead (a mounted Secret).
    pub token_file: Option<PathBuf>,
    /// Origins allowed to call the API from other sites (CORS); empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// TLS certificate chain (PEM); with `tls_key`, the relay serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for OfferConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            allowed_origins: Vec::new(),
            max_body_bytes: 64 * 1024,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// What the relay accepts from the browser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// Video codecs, in preference order.
    pub codecs: Vec<VideoCodec>,
    /// The bitrate the browser starts at (kbit/s; 0 leaves the browser's default).
    pub start_bitrate_kbps: u32,
    /// Largest picture accepted from the browser (of a landscape picture; portrait pictures
    /// are measured turned): larger keyframes are refused before decoding and counted.
    pub max_width: u32,
    /// See `max_width`.
    pub max_height: u32,
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            codecs: vec![VideoCodec::Vp8, VideoCodec::H264],
            start_bitrate_kbps: 2000,
            max_width: 1920,
            max_height: 1080,
        }
    }
}

/// The built-in local preview.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreviewSection {
    /// Serve `/view` and `/whep`.
    pub enabled: bool,
    /// At most this many viewers at once.
    pub max_viewers: usize,
}

impl Default for PreviewSection {
    fn default() -> Self {
        Self {
            enabled: true,
            max_viewers: 4,
        }
    }
}

/// Video output settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoConfig {
    /// `vp8` or `h264`.
    pub codec: VideoCodec,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// A keyframe at least this often, in seconds (0: only when a viewer asks).
    pub keyframe_interval_secs: f64,
    /// Viewers' keyframe requests (PLI/FIR) are honoured at most once per this many
    /// milliseconds; requests in between wait for the next keyframe.
    pub keyframe_request_interval_ms: u32,
    /// Output width (test pattern size).
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Serve mode: encode at the browser's resolution as it changes (true), or scale every
    /// frame to `width`x`height` (false).
    pub follow_input: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            bitrate_kbps: 1000,
            keyframe_interval_secs: 2.0,
            keyframe_request_interval_ms: 500,
            width: 1280,
            height: 720,
            fps: 30,
            follow_input: true,
        }
    }
}

/// Where and how to publish into Sora.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoraOutput {
    /// `wss://.../signaling` URLs, raced in parallel.
    pub signaling_urls: Vec<String>,
    /// The channel.
    pub channel_id: String,
    /// Optional client id.
    pub client_id: Option<String>,
    /// Optional bundle id.
    pub bundle_id: Option<String>,
    /// Sent as `metadata` (ImageFlux: `{"access_token": "..."}`).
    pub metadata: Option<serde_json::Value>,
    /// Read `metadata` from this JSON file instead (a mounted Secret).
    pub metadata_file: Option<PathBuf>,
    /// Redirects followed in a row before they count as an error (and back off).
    pub max_redirects: Option<u32>,
}

/// Where to publish over WHIP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhipOutput {
    /// The endpoint URL.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Read the token from this file instead (a mounted Secret).
    pub token_file: Option<PathBuf>,
}

/// WebRTC network settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// Local UDP sockets (`0.0.0.0:0` = every interface, ephemeral ports).
    pub udp_addrs: Vec<String>,
    /// Addresses to advertise instead (1:1 NAT, Kubernetes node IP).
    pub public_ips: Vec<String>,
    /// A file holding the address(es) to advertise, filled in by the platform after start
    /// (Kubernetes downward API); read for every browser offer.
    pub public_ips_file: Option<PathBuf>,
    /// The browser's session binds the first free port of this range (`40000-40100`) on the
    /// `udp_addrs` IPs, instead of their own ports.
    pub udp_port_range: Option<String>,
    /// Seconds an ICE `disconnected` may last (browser session and publishers) before the
    /// connection is given up, unless it comes back (or the page restarts ICE) first.
    pub disconnected_grace_secs: f64,
    /// Seconds the browser has to connect after its answer (or an ICE restart).
    pub connect_timeout_secs: f64,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            public_ips: Vec::new(),
            public_ips_file: None,
            udp_port_range: None,
            disconnected_grace_secs: 5.0,
            connect_timeout_secs: 20.0,
        }
    }
}

/// The default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl RelayConfig {
    /// Reads a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|detail| ConfigError::Parse {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// The HTTP listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"))
    }

    /// Checks every range; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
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

    /// The HTTP listener's bounds.
    pub fn server_limits(&self) -> crate::http::server::ServerLimits {
        crate::http::server::ServerLimits {
            max_connections: self.http.max_connections,
            max_connections_per_ip: self.http.max_connections_per_ip,
            header_read_timeout: Duration::from_secs_f64(self.http.header_read_timeout_secs),
            idle_timeout: Duration::from_secs_f64(self.http.idle_timeout_secs),
            request_timeout: Duration::from_secs_f64(self.http.request_timeout_secs),
        }
    }

    /// The browser session's timers.
    pub fn session_timers(&self) -> crate::session::SessionTimers {
        crate::session::SessionTimers {
            connect: Duration::from_secs_f64(self.ice.connect_timeout_secs),
            disconnected_grace: Duration::from_secs_f64(self.ice.disconnected_grace_secs),
            ..crate::session::SessionTimers::default()
        }
    }

    /// The encoder settings derived from `video`.
    pub fn encoder_config(&self) -> EncoderConfig {
        let v = &self.video;
        EncoderConfig {
            codec: v.codec,
            fps: v.fps,
            bitrate_kbps: v.bitrate_kbps,
            keyframe_interval: Duration::from_secs_f64(v.keyframe_interval_secs),
            threads: 1,
        }
    }

    /// The `/offer` bearer token, reading the token file if one is given.
    pub fn offer_token(&self) -> Result<Option<String>, ConfigError> {
        match &self.offer.token_file {
            Some(path) => Ok(Some(read_secret(path)?)),
            None => Ok(self.offer.token.clone()),
        }
    }

    /// The Sora publisher settings, reading the metadata file if one is given; `audio` when the
    /// browser's audio is forwarded (serve mode).
    pub fn sora_config(&self, audio: bool) -> Result<Option<SoraConfig>, ConfigError> {
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
            },
        );
        config.udp_addrs = crate::ice::ephemeral(&self.ice.udp_addrs);
        config.public_ips = self.ice.public_ips.clone();
        config.link.disconnect_grace = Duration::from_secs_f64(self.ice.disconnected_grace_secs);
        if let Some(n) = sora.max_redirects {
            config.max_redirects = n;
        }
        Ok(Some(config))
    }

    /// The WHIP publisher settings, reading the token file if one is given; `audio` when the
    /// browser's audio is forwarded (serve mode).
    pub fn whip_config(&self, audio: bool) -> Result<Option<WhipConfig>, ConfigError> {
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
        assert_eq!(cfg.encoder_config().keyframe_interval, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = RelayConfig::from_yaml("video: {codec: vp8, bitrat_kbps: 5}").unwrap_err();
        assert!(err.contains("bitrat_kbps"), "{err}");
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
