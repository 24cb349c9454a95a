//! The relay's YAML configuration file. The relay reads it (`relay --config`), the operator writes
//! it into each session's ConfigMap. Unknown keys are refused, every key has a default.
//!
//! Optional settings that are unset are left out when written, so a written file names only what
//! its writer chose.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The whole relay configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// HTTP address for `/metrics`, `/healthz`, `/status` and `/offer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Output video settings.
    pub video: VideoConfig,
    /// Publish into Sora (ImageFlux Live Streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sora: Option<SoraOutput>,
    /// Publish over WHIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whip: Option<WhipOutput>,
    /// WebRTC network settings.
    pub ice: IceConfig,
    /// The test pattern's font (a TrueType/OpenType file).
    #[serde(skip_serializing_if = "Option::is_none")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
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
        Self {
            max_connections: 256,
            max_connections_per_ip: 32,
            header_read_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            request_timeout_secs: 15.0,
        }
    }
}

/// Access to `/offer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfferConfig {
    /// Bearer token the sender must present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Read the token from this file instead (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Origins allowed to call the API from other sites (CORS); empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// TLS certificate chain (PEM); with `tls_key`, the relay serves HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// The lowest bitrate congestion control goes to by default, in kbit/s.
pub const DEFAULT_MIN_BITRATE_KBPS: u32 = 150;

/// The periodic keyframe's default interval, in seconds (see
/// [`VideoConfig::keyframe_interval_secs`]).
pub const DEFAULT_KEYFRAME_INTERVAL_SECS: f64 = 10.0;

impl VideoConfig {
    /// The congestion-control range `(min, start, max)` in kbit/s, defaults filled in.
    pub fn bitrate_range_kbps(&self) -> (u32, u32, u32) {
        let start = self.bitrate_kbps;
        let min = self.min_bitrate_kbps.unwrap_or(DEFAULT_MIN_BITRATE_KBPS.min(start));
        let max = self.max_bitrate_kbps.unwrap_or(start);
        (min, start, max)
    }
}

/// Video output settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoConfig {
    /// `vp8` or `h264`.
    pub codec: VideoCodec,
    /// Target bitrate in kbit/s: where the encoder starts, and its ceiling unless
    /// `max_bitrate_kbps` says otherwise.
    pub bitrate_kbps: u32,
    /// Congestion control never lowers the bitrate below this, in kbit/s (default
    /// [`DEFAULT_MIN_BITRATE_KBPS`], or `bitrate_kbps` if that is lower). Setting it to
    /// `bitrate_kbps` (with no higher maximum) fixes the bitrate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_bitrate_kbps: Option<u32>,
    /// Congestion control may raise the bitrate up to this, in kbit/s (default `bitrate_kbps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bitrate_kbps: Option<u32>,
    /// A keyframe at least this often, in seconds (0: only when a viewer asks). Viewers and
    /// SFUs ask (PLI/FIR) when they join or lose packets, so the periodic one is only a safety
    /// net: long, because every keyframe costs about two frames' encode time and several
    /// frames' bits at once (the official SDKs send none unasked).
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
    /// Serve mode with the passthrough filter: decode and re-encode the browser's frames even
    /// when it sends the output codec (by default they are forwarded as they are, the
    /// publishers' keyframe requests and bitrate passed back to the browser).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub passthrough_transcode: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            bitrate_kbps: 1000,
            min_bitrate_kbps: None,
            max_bitrate_kbps: None,
            keyframe_interval_secs: DEFAULT_KEYFRAME_INTERVAL_SECS,
            keyframe_request_interval_ms: 500,
            width: 1280,
            height: 720,
            fps: 30,
            follow_input: true,
            passthrough_transcode: false,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Optional bundle id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
    /// Sent as `metadata` (ImageFlux: `{"access_token": "..."}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Read `metadata` from this JSON file instead (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_file: Option<PathBuf>,
    /// Redirects followed in a row before they count as an error (and back off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_redirects: Option<u32>,
    /// Ask Sora for simulcast: the relay then sends the layers Sora's offer describes
    /// (`encodings`), each encoded from the same filtered picture.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulcast: bool,
}

/// Where to publish over WHIP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhipOutput {
    /// The endpoint URL.
    pub url: String,
    /// Bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Read the token from this file instead (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// WebRTC network settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// Local UDP sockets (`0.0.0.0:0` = every interface, ephemeral ports).
    pub udp_addrs: Vec<String>,
    /// Local TCP listeners for the browser's ICE over TCP (RFC 6544 passive candidates, e.g.
    /// `0.0.0.0:8443`), beside UDP: browsers on networks that let no UDP through (but allow
    /// TCP to the relay) still connect. None by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_addrs: Vec<String>,
    /// The browser's session takes ICE over TCP only (`tcp_addrs`), no UDP: for a relay whose
    /// network lets no UDP in. Outputs (Sora, WHIP, the preview) still use UDP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tcp_only: bool,
    /// Addresses to advertise instead (1:1 NAT, Kubernetes node IP).
    pub public_ips: Vec<String>,
    /// A file holding the address(es) to advertise, filled in by the platform after start
    /// (Kubernetes downward API); read for every browser offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ips_file: Option<PathBuf>,
    /// The browser's session binds the first free port of this range (`40000-40100`) on the
    /// `udp_addrs` IPs, instead of their own ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_port_range: Option<String>,
    /// Seconds an ICE `disconnected` may last (browser session and publishers) before the
    /// connection is given up, unless it comes back (or the page restarts ICE) first.
    pub disconnected_grace_secs: f64,
    /// Seconds the browser has to connect after its answer (or an ICE restart).
    pub connect_timeout_secs: f64,
    /// STUN/TURN servers handed to the sender page (`/api/info`), so that streamers whose
    /// networks block UDP reach the relay through TURN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<IceServerConfig>,
}

/// One STUN/TURN server entry for the browser, as `RTCIceServer` takes it: the credentials
/// apply to every URL of the entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:host:port`, `turn:host:port?transport=udp|tcp` or `turns:host:port?transport=tcp`.
    pub urls: Vec<String>,
    /// Fixed TURN username; with an auth secret, the name after the expiry time instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Fixed TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Read the fixed TURN password from this file instead (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<PathBuf>,
    /// The TURN server's shared secret (coturn `use-auth-secret`, the TURN REST API): every
    /// page gets its own time-limited username and password made from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_secret: Option<String>,
    /// Read the shared secret from this file instead (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_secret_file: Option<PathBuf>,
    /// How long time-limited credentials stay valid, in seconds (the TURN server refuses
    /// refreshes after that, so it bounds a stream's length through TURN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_ttl_secs: Option<u64>,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            tcp_addrs: Vec::new(),
            tcp_only: false,
            public_ips: Vec::new(),
            public_ips_file: None,
            udp_port_range: None,
            disconnected_grace_secs: 5.0,
            connect_timeout_secs: 20.0,
            servers: Vec::new(),
        }
    }
}

/// The filter configuration (`filter:`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Which filter.
    pub kind: FilterKind,
    /// Its parameters (camelCase keys; see docs/filters.md).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// The model file; the built-in filters default to their model in `models_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Where the shipped models are; default `$LIVEFILTER_MODELS_DIR`, else `models`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Device,
    /// When CUDA is unusable: `fail` (default) or `cpu` (with a loud warning).
    pub device_fallback: DeviceFallback,
    /// Inference threads per model (0: one per core). One by default: a session's other work
    /// (decode, compositing, encode) keeps the cores busy, extra inference threads measured
    /// more CPU per frame and no lower latency on two cores, and "one per core" counts the
    /// node's cores, not the pod's CPU limit.
    pub threads: usize,
    /// The most GPU memory ONNX Runtime's CUDA arena may take per model, in MiB (none: as much as
    /// it wants). Lets several relays share one GPU (time-slicing, MPS) without one starving the
    /// others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_mem_limit_mb: Option<u64>,
    /// The ONNX Runtime library; default `$ORT_DYLIB_PATH`, else `libonnxruntime.so`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<PathBuf>,
    /// Where live changes (`PATCH /filter`) may take backdrop pictures from; none: they may
    /// not name pictures. Relative paths in the startup parameters are inside it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assets_dir: Option<PathBuf>,
    /// How large a backdrop picture may be.
    pub image_limits: ImageLimits,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            kind: FilterKind::default(),
            params: Map::new(),
            model: None,
            models_dir: None,
            device: Device::default(),
            device_fallback: DeviceFallback::default(),
            threads: 1,
            gpu_mem_limit_mb: None,
            onnxruntime: None,
            assets_dir: None,
            image_limits: ImageLimits::default(),
        }
    }
}

/// How large a backdrop picture may be (`filter.image_limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Widest picture, in pixels.
    pub max_width: u32,
    /// Tallest picture, in pixels.
    pub max_height: u32,
}

impl ImageLimits {
    /// The default largest file: a 4K PNG fits, a runaway file does not.
    pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
    /// The default widest and tallest picture.
    pub const DEFAULT_MAX_EDGE: u32 = 4096;
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_width: Self::DEFAULT_MAX_EDGE,
            max_height: Self::DEFAULT_MAX_EDGE,
        }
    }
}

/// Which filter to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    /// No change.
    #[default]
    Passthrough,
    /// Person segmentation; the background is blurred.
    BackgroundBlur,
    /// Person segmentation; the background becomes a colour or a picture.
    BackgroundReplace,
    /// Face detection; faces are pixelated or blurred.
    FaceBlur,
    /// Pose keypoints drawn as a skeleton.
    Pose,
    /// A user's ONNX model (`filter.model`) with the contract in `filter.params`.
    Onnx,
}

impl FilterKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterKind::Passthrough => "passthrough",
            FilterKind::BackgroundBlur => "background-blur",
            FilterKind::BackgroundReplace => "background-replace",
            FilterKind::FaceBlur => "face-blur",
            FilterKind::Pose => "pose",
            FilterKind::Onnx => "onnx",
        }
    }
}

/// A video codec the relay can encode and decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 via libvpx.
    Vp8,
    /// H.264 constrained baseline via OpenH264, packetization-mode 1.
    H264,
}

impl VideoCodec {
    /// The RTP MIME type (`video/VP8`, `video/H264`).
    pub fn mime_type(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "video/VP8",
            VideoCodec::H264 => "video/H264",
        }
    }

    /// The name Sora's `connect` message uses in `video.codec_type`.
    pub fn sora_name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::H264 => "H264",
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoCodec::Vp8 => "vp8",
            VideoCodec::H264 => "h264",
        })
    }
}

/// A codec name that is neither VP8 nor H.264.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown video codec {0:?} (expected vp8 or h264)")]
pub struct UnknownCodec(pub String);

impl FromStr for VideoCodec {
    type Err = UnknownCodec;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "vp8" | "video/vp8" => Ok(VideoCodec::Vp8),
            "h264" | "video/h264" => Ok(VideoCodec::H264),
            _ => Err(UnknownCodec(s.to_owned())),
        }
    }
}

/// Where inference runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU `N`.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device string that is neither `cpu`, `cuda` nor `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0:?} is not one of cpu, cuda, cuda:N")]
pub struct DeviceParseError(pub String);

impl FromStr for Device {
    type Err = DeviceParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_owned())),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What to do when CUDA is asked for but cannot be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceFallback {
    /// Refuse to start (the default: a GPU session silently on the CPU would miss its targets).
    #[default]
    Fail,
    /// Run on the CPU and warn loudly (logs, `/status`, `livefilter_filter_device`).
    Cpu,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_configuration() {
        let cfg: RelayConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(cfg, RelayConfig::default());
        assert_eq!(cfg.ingest.codecs, vec![VideoCodec::Vp8, VideoCodec::H264]);
        assert_eq!(cfg.offer.max_body_bytes, 65536);
    }

    #[test]
    fn a_written_configuration_reads_back_equal() {
        let mut params = Map::new();
        params.insert("radius".into(), Value::from(12));
        let cfg = RelayConfig {
            listen: Some("0.0.0.0:38000".parse().unwrap()),
            sora: Some(SoraOutput {
                signaling_urls: vec!["wss://a/signaling".into()],
                channel_id: "c".into(),
                metadata_file: Some("/m.json".into()),
                ..SoraOutput::default()
            }),
            filter: FilterConfig {
                kind: FilterKind::BackgroundBlur,
                params,
                device: Device::Cuda(1),
                ..FilterConfig::default()
            },
            ..RelayConfig::default()
        };

        let yaml = serde_yaml::to_string(&cfg).unwrap();
        let back: RelayConfig = serde_yaml::from_str(&yaml).unwrap();

        assert_eq!(back, cfg);
        assert!(yaml.contains("device: cuda:1"), "{yaml}");
        assert!(!yaml.contains("null"), "unset options are left out: {yaml}");
    }

    #[test]
    fn ice_servers_parse_with_fixed_or_time_limited_credentials() {
        let cfg: RelayConfig = serde_yaml::from_str(
            r#"
ice:
  servers:
    - urls: ["turn:turn.example:3478?transport=udp", "turn:turn.example:3478?transport=tcp"]
      username: alice
      credential_file: /secrets/turn/password
    - urls: ["turns:turn.example:5349?transport=tcp"]
      auth_secret_file: /secrets/turn/secret
      credential_ttl_secs: 7200
"#,
        )
        .unwrap();

        let servers = &cfg.ice.servers;
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls[1], "turn:turn.example:3478?transport=tcp");
        assert_eq!(servers[0].username.as_deref(), Some("alice"));
        assert_eq!(
            servers[0].credential_file,
            Some(PathBuf::from("/secrets/turn/password"))
        );
        assert_eq!(servers[1].auth_secret_file, Some(PathBuf::from("/secrets/turn/secret")));
        assert_eq!(servers[1].credential_ttl_secs, Some(7200));
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        assert_eq!(serde_yaml::from_str::<RelayConfig>(&yaml).unwrap(), cfg);
        assert!(!yaml.contains("null"), "{yaml}");
        let default = serde_yaml::to_string(&RelayConfig::default()).unwrap();
        assert!(!default.contains("servers"), "no servers, no key: {default}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = serde_yaml::from_str::<RelayConfig>("video: {codec: vp8, bitrat_kbps: 5}").unwrap_err();
        assert!(err.to_string().contains("bitrat_kbps"), "{err}");
    }

    #[test]
    fn codec_and_device_names_parse_as_configured() {
        assert_eq!("VP8".parse::<VideoCodec>(), Ok(VideoCodec::Vp8));
        assert_eq!("video/H264".parse::<VideoCodec>(), Ok(VideoCodec::H264));
        assert_eq!("av1".parse::<VideoCodec>(), Err(UnknownCodec("av1".into())));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!(
            "gpu".parse::<Device>().unwrap_err().to_string(),
            "device \"gpu\" is not one of cpu, cuda, cuda:N"
        );
    }
}
