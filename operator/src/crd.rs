//! The `LiveFilterSession` custom resource (`livefilter.dev/v1alpha1`): one live stream.
//!
//! The schema carries what the API server can check by itself (ranges, enums, defaults and CEL
//! rules), so a bad manifest is refused at `kubectl apply` instead of failing in a reconcile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "livefilter.dev";
/// The CRD's full name, as `kubectl get crd` shows it.
pub const CRD_NAME: &str = "livefiltersessions.livefilter.dev";
/// Session names are capped so that every derived object name (`<name>-relay-config`) and the
/// `livefilter.dev/session` label value stay within Kubernetes' 63-character limits.
pub const MAX_NAME_LEN: usize = 47;

/// One live stream: a browser sends its camera to `/offer`, the relay filters every frame and
/// publishes the result into ImageFlux, an existing Sora, or a WHIP endpoint.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "livefilter.dev",
    version = "v1alpha1",
    kind = "LiveFilterSession",
    namespaced,
    shortname = "lfs",
    category = "livefilter",
    status = "LiveFilterSessionStatus",
    derive = "PartialEq",
    doc = "One live stream: browser camera -> /offer -> AI filter on a GPU relay -> ImageFlux / Sora / WHIP.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Filter", type_ = "string", json_path = ".spec.filter.kind"),
    printcolumn(name = "Page URL", type_ = "string", json_path = ".status.pageUrl"),
    printcolumn(name = "HLS URL", type_ = "string", json_path = ".status.channel.hlsUrl"),
    printcolumn(name = "p95 (ms)", type_ = "number", json_path = ".status.metrics.latencyMs.total.p95"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,45}[a-z0-9])?$')")
        .message("the name must be a DNS label of at most 47 characters starting with a letter (it names the relay Pod, ConfigMap and Service)"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.channel) || oldSelf.status.channel.provider != 'ImageFlux' || (has(self.spec.output.imageflux) && self.spec.output.imageflux.hls == oldSelf.spec.output.imageflux.hls)")
        .message("the ImageFlux channel settings (output.imageflux.hls, the output kind) are immutable once the channel exists; create a new session instead")
        .field_path(".spec.output"),
    validation = Rule::new("!has(self.spec.video) || !has(self.spec.video.simulcast) || !self.spec.video.simulcast || !has(self.spec.output.whip)")
        .message("video.simulcast needs a Sora output (output.imageflux or output.sora): WHIP has no simulcast")
        .field_path(".spec.video.simulcast")
)]
#[serde(rename_all = "camelCase")]
pub struct LiveFilterSessionSpec {
    /// What the relay publishes: the browser's camera sent to `/offer` (default), or a
    /// generated test pattern with no browser at all (to check the output path).
    #[serde(default)]
    pub source: Source,
    /// The AI filter applied to every frame.
    #[serde(default)]
    pub filter: FilterSpec,
    /// The published video.
    #[serde(default)]
    pub video: VideoSpec,
    /// Where the filtered video goes: exactly one of `imageflux`, `sora`, `whip`.
    pub output: OutputSpec,
    /// The relay Pod.
    #[serde(default)]
    pub relay: RelaySpec,
    /// How browsers reach the relay's WebRTC port.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Who may call `/offer`, and how it is exposed.
    #[serde(default)]
    pub access: AccessSpec,
    /// The relay's local preview page (WHEP), for checking a stream without a player.
    #[serde(default)]
    pub preview: PreviewSpec,
}

// ---------------------------------------------------------------------------------------------
// filter

/// The filter and its parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("self.kind != 'onnx' || has(self.model)").message("filter.kind onnx needs filter.model"))]
#[serde(rename_all = "camelCase")]
pub struct FilterSpec {
    /// Which filter runs.
    #[serde(default)]
    pub kind: FilterKind,
    /// Filter-specific parameters, passed to the relay unchanged (e.g. `{radius: 12}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The ONNX model, for `kind: onnx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSource>,
    /// Where inference runs; `cuda` selects the CUDA relay image and requests a GPU.
    #[serde(default)]
    pub device: Device,
}

/// The filters the relay knows.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    /// Frames pass unchanged (useful to measure the pipeline alone).
    #[default]
    Passthrough,
    /// Person segmentation; the background is blurred.
    BackgroundBlur,
    /// Person segmentation; the background is replaced.
    BackgroundReplace,
    /// Face detection; faces are blurred.
    FaceBlur,
    /// Pose keypoints drawn over the picture.
    Pose,
    /// A user-supplied ONNX model (`model`).
    Onnx,
}

impl FilterKind {
    /// The name used in the CRD and the relay config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::BackgroundBlur => "background-blur",
            Self::BackgroundReplace => "background-replace",
            Self::FaceBlur => "face-blur",
            Self::Pose => "pose",
            Self::Onnx => "onnx",
        }
    }
}

/// What the relay publishes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A browser's camera, sent to `/offer` (`livefilter-relay serve`).
    #[default]
    Browser,
    /// The generated test pattern: hue-cycling background and a clock (`livefilter-relay test-pattern`).
    TestPattern,
}

/// Where inference runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// ONNX Runtime on the CPU.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider (needs a GPU node).
    Cuda,
}

/// An ONNX model file: a path inside the relay image, or a key of a ConfigMap (binaryData, under
/// 1 MiB) mounted into the Pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.path) != has(self.configMap)").message("set exactly one of model.path, model.configMap"))]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// An absolute path inside the relay image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A ConfigMap key holding the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
}

/// A key of a named ConfigMap or Secret in the session's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key; each use documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl KeyRef {
    /// The key, or `default` when none is given.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

// ---------------------------------------------------------------------------------------------
// video

/// The published video.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.width % 2 == 0 && self.height % 2 == 0").message("video.width and video.height must be even (4:2:0 chroma)"))]
#[x_kube(validation = Rule::new("(!has(self.minBitrateKbps) || self.minBitrateKbps <= self.bitrateKbps) && (!has(self.maxBitrateKbps) || self.maxBitrateKbps >= self.bitrateKbps)").message("video.minBitrateKbps <= video.bitrateKbps <= video.maxBitrateKbps"))]
#[serde(rename_all = "camelCase")]
pub struct VideoSpec {
    /// The codec published to the SFU.
    #[serde(default)]
    pub codec: Codec,
    /// Target bitrate in kbit/s: where the encoder starts, and its ceiling unless
    /// maxBitrateKbps says otherwise.
    #[serde(default = "default_bitrate_kbps")]
    #[schemars(range(min = 50, max = 50000))]
    pub bitrate_kbps: u32,
    /// Congestion control never lowers the bitrate below this, in kbit/s (relay default: 150,
    /// or bitrateKbps if lower; equal to bitrateKbps fixes the bitrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 50000))]
    pub min_bitrate_kbps: Option<u32>,
    /// Congestion control may raise the bitrate up to this, in kbit/s (relay default:
    /// bitrateKbps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 50000))]
    pub max_bitrate_kbps: Option<u32>,
    /// Output width in pixels; input of another size is scaled.
    #[serde(default = "default_width")]
    #[schemars(range(min = 16, max = 4096))]
    pub width: u32,
    /// Output height in pixels.
    #[serde(default = "default_height")]
    #[schemars(range(min = 16, max = 4096))]
    pub height: u32,
    /// Output frames per second.
    #[serde(default = "default_fps")]
    #[schemars(range(min = 1, max = 120))]
    pub fps: u32,
    /// A keyframe at least this often, in seconds (0: only when a viewer asks; viewers ask
    /// when they join or lose packets, so this is only a safety net).
    #[serde(default = "default_keyframe_interval")]
    #[schemars(range(min = 0, max = 3600))]
    pub keyframe_interval_secs: u32,
    /// Publish simulcast layers into Sora (ImageFlux or Sora outputs): the relay asks for
    /// simulcast and sends the layers Sora's offer describes (by default a quarter, a half and
    /// the whole picture), each encoded from the same filtered frame. Costs two more encodes
    /// per frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulcast: bool,
}

fn default_bitrate_kbps() -> u32 {
    1000
}
fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    30
}
fn default_keyframe_interval() -> u32 {
    livefilter_contract::config::DEFAULT_KEYFRAME_INTERVAL_SECS as u32
}

impl Default for VideoSpec {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            bitrate_kbps: default_bitrate_kbps(),
            min_bitrate_kbps: None,
            max_bitrate_kbps: None,
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            keyframe_interval_secs: default_keyframe_interval(),
            simulcast: false,
        }
    }
}

/// Video codecs the relay encodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// VP8 (libvpx).
    #[default]
    Vp8,
    /// H.264 (OpenH264).
    H264,
}

impl Codec {
    /// The name used in the CRD and the relay config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vp8 => "vp8",
            Self::H264 => "h264",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// output

/// Where the filtered video is published.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("(has(self.imageflux) ? 1 : 0) + (has(self.sora) ? 1 : 0) + (has(self.whip) ? 1 : 0) == 1").message("set exactly one of output.imageflux, output.sora, output.whip"))]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// A new ImageFlux Live Streaming channel, created for this session and deleted with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imageflux: Option<ImageFluxOutput>,
    /// An existing Sora channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sora: Option<SoraOutput>,
    /// A WHIP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whip: Option<WhipOutput>,
}

/// Which kind of output a spec names.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A channel this operator created through the ImageFlux API.
    ImageFlux,
    /// An existing Sora channel.
    Sora,
    /// A WHIP endpoint.
    Whip,
}

impl OutputSpec {
    /// The output kind; the CEL rule guarantees exactly one, the first wins otherwise.
    pub fn kind(&self) -> Option<OutputKind> {
        if self.imageflux.is_some() {
            Some(OutputKind::ImageFlux)
        } else if self.sora.is_some() {
            Some(OutputKind::Sora)
        } else if self.whip.is_some() {
            Some(OutputKind::Whip)
        } else {
            None
        }
    }
}

/// An ImageFlux channel created for this session.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageFluxOutput {
    /// The Secret holding the ImageFlux API token (key default `token`); default: the
    /// operator's `--default-imageflux-token-secret` (chart value
    /// `sessionDefaults.imagefluxTokenSecretName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<KeyRef>,
    /// HLS output of the channel (immutable once the channel exists).
    #[serde(default)]
    pub hls: HlsSpec,
}

/// HLS renditions of an ImageFlux channel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HlsSpec {
    /// Create the channel with HLS (CreateMultistreamChannelWithHLS).
    #[serde(default)]
    pub enabled: bool,
    /// One entry per ABR rendition; empty means one rendition matching `video`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub renditions: Vec<HlsRendition>,
}

/// One HLS rendition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HlsRendition {
    /// Width in pixels.
    #[schemars(range(min = 36, max = 4096))]
    pub width: u32,
    /// Height in pixels.
    #[schemars(range(min = 36, max = 4096))]
    pub height: u32,
    /// Frames per second.
    #[serde(default = "default_fps")]
    #[schemars(range(min = 1, max = 60))]
    pub fps: u32,
    /// Video bitrate in bit/s.
    #[serde(default = "default_hls_video_bps")]
    #[schemars(range(min = 100000, max = 20000000))]
    pub video_bps: u32,
    /// H.264 profile of the rendition.
    #[serde(default)]
    pub codec: HlsCodec,
    /// Audio bitrate in bit/s (ImageFlux accepts a fixed list between 32000 and 320000).
    #[serde(default = "default_hls_audio_bps")]
    #[schemars(range(min = 32000, max = 320000))]
    pub audio_bps: u32,
    /// Segment length in seconds.
    #[serde(default = "default_hls_duration")]
    #[schemars(range(min = 1, max = 10))]
    pub duration_seconds: u32,
}

fn default_hls_video_bps() -> u32 {
    1_000_000
}
fn default_hls_audio_bps() -> u32 {
    96_000
}
fn default_hls_duration() -> u32 {
    1
}

/// H.264 profiles ImageFlux encodes HLS in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HlsCodec {
    /// High profile (ImageFlux's default).
    #[default]
    #[serde(rename = "h264_high")]
    H264High,
    /// Main profile.
    #[serde(rename = "h264_main")]
    H264Main,
    /// Baseline profile.
    #[serde(rename = "h264_baseline")]
    H264Baseline,
}

impl HlsCodec {
    /// The name the ImageFlux API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H264High => "h264_high",
            Self::H264Main => "h264_main",
            Self::H264Baseline => "h264_baseline",
        }
    }
}

/// An existing Sora channel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SoraOutput {
    /// `wss://.../signaling` URLs, raced by the relay.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = Rule::new("self.all(u, u.startsWith('wss://') || u.startsWith('ws://'))").message("signaling URLs start with wss:// or ws://"))]
    pub signaling_urls: Vec<String>,
    /// The channel id.
    #[schemars(length(min = 1, max = 255))]
    pub channel_id: String,
    /// Optional client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub client_id: Option<String>,
    /// Optional bundle id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub bundle_id: Option<String>,
    /// A Secret key holding the `metadata` JSON (e.g. `{"access_token": "..."}`; key default
    /// `metadata.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_secret_ref: Option<KeyRef>,
}

/// A WHIP endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WhipOutput {
    /// The endpoint URL.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("the WHIP URL starts with https:// or http://"))]
    pub url: String,
    /// A Secret key holding the bearer token (key default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<KeyRef>,
}

// ---------------------------------------------------------------------------------------------
// relay pod

/// Scheduling and resources of the relay Pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// The relay image; default: the operator's CPU or CUDA image, by `filter.device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory requests and limits (the GPU is set by `gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The GPU limit.
    #[serde(default)]
    pub gpu: GpuSpec,
    /// Node labels the Pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// RuntimeClass (e.g. `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// The GPU the relay asks for.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// The extended resource name; default: the operator's `--default-gpu-resource-name`
    /// (chart value `sessionDefaults.gpuResourceName`, `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub resource_name: Option<String>,
    /// How many; default 1 with `filter.device: cuda`, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 8))]
    pub count: Option<u32>,
    /// The most GPU memory the relay's model may take, in MiB (ONNX Runtime's CUDA
    /// `gpu_mem_limit`), so several relays fit on one time-sliced GPU; none: unbounded. A MIG
    /// slice bounds memory by itself.
    #[serde(default, rename = "memoryLimitMiB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 1048576))]
    pub memory_limit_mib: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// network

/// How browsers reach the relay over UDP.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The address advertised in ICE candidates.
    #[serde(default)]
    pub advertise: AdvertiseSpec,
    /// The relay's HTTP and UDP ports on the node.
    #[serde(default)]
    pub ports: PortsSpec,
    /// A TURN (or STUN) server handed to the sender page, for streamers whose networks block
    /// UDP: the browser reaches the TURN server (over TCP or TLS if need be), which relays to
    /// the relay's UDP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnSpec>,
    /// Also take the browser's ICE over TCP, on the WebRTC port's number (TCP), for streamers
    /// whose networks block UDP but let TCP out: the Pod declares that TCP host port too. The
    /// HTTP and UDP port ranges are disjoint, so it never clashes with another relay's HTTP
    /// port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ice_tcp: bool,
}

/// A TURN server for the sender page, with fixed or time-limited credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!(has(self.credentialSecretRef) && has(self.authSecretRef))").message("network.turn.credentialSecretRef and authSecretRef exclude each other"))]
#[x_kube(validation = Rule::new("!has(self.credentialSecretRef) || has(self.username)").message("network.turn.credentialSecretRef needs username"))]
#[x_kube(validation = Rule::new("!has(self.credentialTtlSeconds) || has(self.authSecretRef)").message("network.turn.credentialTtlSeconds applies only with authSecretRef"))]
#[x_kube(validation = Rule::new("!self.urls.exists(u, u.startsWith('turn:') || u.startsWith('turns:')) || has(self.credentialSecretRef) || has(self.authSecretRef)").message("network.turn: turn: and turns: URLs need credentials: username with credentialSecretRef, or authSecretRef"))]
#[x_kube(validation = Rule::new("self.urls.all(u, u.startsWith('stun:') || u.startsWith('stuns:') || u.startsWith('turn:') || u.startsWith('turns:'))").message("network.turn.urls must start with stun:, stuns:, turn: or turns:"))]
#[serde(rename_all = "camelCase")]
pub struct TurnSpec {
    /// `turn:host:3478?transport=udp`, `turn:host:3478?transport=tcp`,
    /// `turns:host:5349?transport=tcp` (or `stun:` URLs); all share the credentials.
    #[schemars(length(min = 1, max = 8))]
    pub urls: Vec<String>,
    /// The fixed TURN username; with `authSecretRef`, the name after the expiry time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// A Secret key holding the fixed TURN password (key default `credential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<KeyRef>,
    /// A Secret key holding the TURN server's shared secret (coturn `static-auth-secret`, key
    /// default `auth-secret`): every page gets its own time-limited credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<KeyRef>,
    /// How long time-limited credentials last (default 86400); must outlast a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub credential_ttl_seconds: Option<u64>,
}

/// The advertised ICE address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("(self.from == 'Explicit') == has(self.address)").message("network.advertise.address is set exactly when from is Explicit"))]
#[serde(rename_all = "camelCase")]
pub struct AdvertiseSpec {
    /// Where the address comes from.
    #[serde(default)]
    pub from: AdvertiseFrom,
    /// The address, for `from: Explicit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub address: Option<String>,
}

/// Sources of the advertised address.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdvertiseFrom {
    /// The node's InternalIP (downward API `status.hostIP`).
    #[default]
    NodeInternalIP,
    /// The node's ExternalIP, looked up by the operator once the Pod is scheduled.
    NodeExternalIP,
    /// `address`, as given.
    Explicit,
}

/// Port policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("self.policy == 'Static' ? (has(self.http) && has(self.udp)) : (!has(self.http) && !has(self.udp))").message("network.ports.http and .udp are set exactly when policy is Static"))]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    /// `Dynamic`: allocated from the operator's range; `Static`: `http` and `udp` as given.
    #[serde(default)]
    pub policy: PortPolicy,
    /// The HTTP port (`/offer`, `/status`), for `Static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub http: Option<u16>,
    /// The WebRTC UDP port, for `Static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub udp: Option<u16>,
}

/// Port policies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortPolicy {
    /// The operator allocates a free pair from its range.
    #[default]
    Dynamic,
    /// The spec names the ports.
    Static,
}

// ---------------------------------------------------------------------------------------------
// access

/// Access to `/offer`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// A Secret key holding the bearer token `/offer` requires (key default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<KeyRef>,
    /// Origins allowed to call `/offer` from a browser (CORS); empty: same origin only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_origins: Vec<String>,
    /// The Service in front of `/offer`.
    #[serde(default)]
    pub service: ServiceSpec,
    /// An optional Ingress for `/offer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

/// The `/offer` Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The Service port.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Extra annotations (e.g. a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_port() -> u16 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Service types.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// In-cluster only (put an Ingress or a proxy in front).
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The `/offer` Ingress.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The host name.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// A TLS Secret for `host`; without it the URL is plain http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// The IngressClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Extra annotations (e.g. cert-manager's issuer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The relay's local preview (WHEP) page.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviewSpec {
    /// Serve the preview.
    #[serde(default)]
    pub enabled: bool,
    /// At most this many preview viewers at once.
    #[serde(default = "default_max_viewers")]
    #[schemars(range(min = 1, max = 64))]
    pub max_viewers: u32,
}

fn default_max_viewers() -> u32 {
    4
}

impl Default for PreviewSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            max_viewers: default_max_viewers(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// status

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LiveFilterSessionStatus {
    /// The summary state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// ChannelReady, RelayScheduled, RelayReady, Publishing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The channel the relay publishes into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelStatus>,
    /// When the operator asked ImageFlux for a channel whose answer it has not recorded yet.
    /// Written before the call, so a crash or a timeout mid-call leaves a trace: the channel
    /// sweep then accounts for the channel that call may have created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_requested_at: Option<Time>,
    /// Where a browser sends its offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_url: Option<String>,
    /// Where a streamer opens the sender page (served by the relay next to `/offer`). Browsers
    /// only open the camera on an `https://` page (or localhost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
    /// The node running the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The address advertised in ICE candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The relay's ports on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortsStatus>,
    /// The relay Pod this status was observed on (a new uid means it was recreated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_pod_uid: Option<String>,
    /// Per-frame metrics read from the relay's `/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RelayMetrics>,
}

/// The summary state of a session.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Waiting for something outside the operator (a Secret, the ImageFlux API).
    Pending,
    /// The channel exists; the relay is being scheduled or started.
    Provisioning,
    /// The relay is ready for a browser's offer.
    Ready,
    /// The relay is publishing filtered video.
    Streaming,
    /// It was ready, and now something is wrong (relay not ready, publisher reconnecting).
    Degraded,
    /// An error the operator cannot fix by retrying soon (it still retries, with backoff).
    Failed,
    /// Deleted; the channel is being removed.
    Terminating,
}

impl Phase {
    /// Every phase, for the sessions-by-phase gauge.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Streaming,
        Phase::Degraded,
        Phase::Failed,
        Phase::Terminating,
    ];

    /// The name, as in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Streaming => "Streaming",
            Self::Degraded => "Degraded",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
        }
    }
}

/// The channel the relay publishes into.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// `ImageFlux` (created and deleted by the operator), `Sora` or `Whip` (given in the spec).
    pub provider: String,
    /// The channel id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The Sora signaling URL (WHIP: the endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling_url: Option<String>,
    /// The HLS playlist, once ImageFlux has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls_url: Option<String>,
}

/// The relay's ports on its node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PortsStatus {
    /// HTTP (`/offer`, `/status`, probes).
    pub http: u16,
    /// WebRTC UDP.
    pub udp: u16,
}

/// Per-frame metrics read from the relay.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelayMetrics {
    /// The relay's state: idle, receiving, publishing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Input frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps_in: Option<f64>,
    /// Output frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps_out: Option<f64>,
    /// Frames dropped because a newer one arrived first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_frames: Option<u64>,
    /// Latency percentiles in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencyStatus>,
    /// Each publisher's connection state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub publishers: BTreeMap<String, String>,
    /// When the relay was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// Total and per-stage latency.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencyStatus {
    /// From receipt to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Percentiles>,
    /// Per stage: decode, filter, encode, send.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, Percentiles>,
}

/// Latency percentiles in milliseconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct Percentiles {
    /// Median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// 95th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    /// 99th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

/// A JSON object the API server keeps as given.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Drops schemars' `uint16`/`uint32`/`uint64` formats: the API server knows only the OpenAPI
/// formats and warns about these on every install; `minimum: 0` already says "unsigned".
fn strip_unknown_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("format")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|f| f.starts_with("uint"))
            {
                m.remove("format");
            }
            m.values_mut().for_each(strip_unknown_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_unknown_formats),
        _ => {}
    }
}

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let mut crd =
        serde_json::to_value(LiveFilterSession::crd()).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    strip_unknown_formats(&mut crd);
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `livefilter-operator crd` (make crds); do not edit.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_uses_only_formats_the_api_server_knows() {
        let yaml = crd_yaml().unwrap();

        assert!(
            !yaml.contains("format: uint"),
            "schemars' uint formats make the API server warn"
        );
        assert!(yaml.contains("format: double"), "standard formats stay");
    }

    #[test]
    fn root_level_rules_about_a_field_name_that_field() {
        let yaml = crd_yaml().unwrap();

        assert!(
            yaml.contains("fieldPath: .spec.output"),
            "a root-level rule without fieldPath reports the field as <nil>"
        );
    }
}
