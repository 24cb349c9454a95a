//! `livefilter-relay`: the relay's command line.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use livefilter_relay::codec::{self, VideoCodec};
use livefilter_relay::config::{IceServerConfig, RelayConfig, RelayConfigExt, SoraOutput, WhipOutput};
use livefilter_relay::filter::{FilterConfig, FilterConfigExt, FilterKind};
use livefilter_relay::infer::{Device, DeviceFallback};
use livefilter_relay::testpattern::{self, TestPattern};
use livefilter_relay::{logging, run};

#[derive(Parser)]
#[command(
    name = "livefilter-relay",
    version,
    about = "livefilter relay: live video -> AI filter -> Sora / WHIP"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "LIVEFILTER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a generated test pattern (hue-cycling background, elapsed-time clock).
    TestPattern(Box<OutputArgs>),
    /// Receive a browser's camera at /offer, filter it, publish it (and preview it at /view).
    Serve(Box<ServeArgs>),
    /// Measure encode time per frame (VP8, H.264), or with --input the whole per-frame path.
    Bench(Box<BenchArgs>),
    /// Make a y4m test clip from a still picture (PNG/JPEG), panned slowly.
    MakeClip(MakeClipArgs),
}

/// Output settings; each overrides the config file.
#[derive(Args, Default)]
struct OutputArgs {
    /// YAML config file (the flags below override it).
    #[arg(long, env = "LIVEFILTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address (default 127.0.0.1:8080): /metrics, /healthz, /status, and in serve mode
    /// the sender page, /offer, /filter and the preview.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Sora signaling URL (repeat for several; they are raced).
    #[arg(long = "sora-signaling-url")]
    sora_signaling_urls: Vec<String>,
    /// Sora channel id.
    #[arg(long)]
    channel_id: Option<String>,
    /// Sora client id.
    #[arg(long)]
    client_id: Option<String>,
    /// Ask Sora for simulcast and send the layers its offer describes.
    #[arg(long)]
    sora_simulcast: bool,
    /// Sora metadata as JSON, e.g. '{"access_token":"..."}'.
    #[arg(long, env = "LIVEFILTER_SORA_METADATA")]
    metadata: Option<String>,
    /// WHIP endpoint URL.
    #[arg(long)]
    whip_url: Option<String>,
    /// WHIP bearer token.
    #[arg(long, env = "LIVEFILTER_WHIP_TOKEN")]
    whip_token: Option<String>,
    /// Output video codec: vp8 (default) or h264.
    #[arg(long)]
    codec: Option<VideoCodec>,
    /// Target bitrate in kbit/s (default 1000; 50..=50000).
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Keyframe at least every N seconds (default 10; 0: only when a viewer asks).
    #[arg(long)]
    keyframe_interval_secs: Option<f64>,
    /// Output width (default 1280; serve mode follows the browser's size unless
    /// --scale-to-output).
    #[arg(long)]
    width: Option<u32>,
    /// Output height (default 720).
    #[arg(long)]
    height: Option<u32>,
    /// Frames per second (default 30).
    #[arg(long)]
    fps: Option<u32>,
    /// Font file for the test pattern's clock (test-pattern only; default DejaVu Sans Bold).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Local UDP address for WebRTC (repeatable; default 0.0.0.0:0).
    #[arg(long = "udp-addr")]
    udp_addrs: Vec<String>,
    /// Serve mode: also take the browser's ICE over TCP on this address (repeatable; e.g.
    /// 0.0.0.0:8443), for streamers whose networks block UDP.
    #[arg(long = "ice-tcp-addr")]
    ice_tcp_addrs: Vec<String>,
    /// Serve mode: the browser's session takes ICE over TCP only (--ice-tcp-addr), no UDP.
    #[arg(long)]
    ice_tcp_only: bool,
    /// Serve mode: bind the browser's session to the first free UDP port of FIRST-LAST.
    #[arg(long)]
    udp_port_range: Option<String>,
    /// Address to advertise in ICE candidates instead of the local one (repeatable).
    #[arg(long = "public-ip")]
    public_ips: Vec<String>,
}

/// Serve-mode settings, on top of the output settings.
#[derive(Args, Default)]
struct ServeArgs {
    #[command(flatten)]
    output: OutputArgs,
    /// Bearer token the sender must present on /offer.
    #[arg(long, env = "LIVEFILTER_OFFER_TOKEN")]
    offer_token: Option<String>,
    /// Origin allowed to call the API cross-site (repeatable; default: same origin only).
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Disable the local preview (/view, /whep).
    #[arg(long)]
    no_preview: bool,
    /// Most preview viewers at once (default 4).
    #[arg(long)]
    max_viewers: Option<usize>,
    /// Accept these browser codecs, in preference order (repeatable; vp8, h264; default both,
    /// VP8 first).
    #[arg(long = "input-codec")]
    input_codecs: Vec<VideoCodec>,
    /// Scale every frame to --width x --height instead of following the browser's size.
    #[arg(long)]
    scale_to_output: bool,
    /// With the passthrough filter, decode and re-encode the browser's frames even when it
    /// sends the output codec (by default they are forwarded as they are).
    #[arg(long)]
    transcode_passthrough: bool,
    /// TLS certificate chain (PEM); serves HTTPS with --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// HLS URL to show on the sender page.
    #[arg(long)]
    hls_url: Option<String>,
    #[command(flatten)]
    ice_servers: IceServerArgs,
    #[command(flatten)]
    filter: FilterArgs,
}

/// One STUN/TURN server entry for the sender page; replaces the config file's `ice.servers`.
#[derive(Args, Default)]
struct IceServerArgs {
    /// STUN/TURN URL handed to the sender page, e.g. turn:turn.example:3478?transport=udp
    /// (repeatable; all share the credentials below).
    #[arg(long = "ice-server")]
    urls: Vec<String>,
    /// TURN username (with --ice-auth-secret: the name after the expiry time).
    #[arg(long = "ice-username")]
    username: Option<String>,
    /// Fixed TURN password.
    #[arg(long = "ice-credential", env = "LIVEFILTER_ICE_CREDENTIAL")]
    credential: Option<String>,
    /// TURN shared secret (coturn use-auth-secret): each page gets time-limited credentials.
    #[arg(long = "ice-auth-secret", env = "LIVEFILTER_ICE_AUTH_SECRET")]
    auth_secret: Option<String>,
    /// Lifetime of time-limited credentials in seconds (default 86400).
    #[arg(long = "ice-credential-ttl-secs")]
    credential_ttl_secs: Option<u64>,
}

impl IceServerArgs {
    /// The entry the flags describe, if any URL is given.
    fn into_entry(self) -> Option<IceServerConfig> {
        (!self.urls.is_empty()).then(|| IceServerConfig {
            urls: self.urls,
            username: self.username,
            credential: self.credential,
            auth_secret: self.auth_secret,
            credential_ttl_secs: self.credential_ttl_secs,
            ..IceServerConfig::default()
        })
    }
}

/// Filter settings; each overrides the config file's `filter:` section.
#[derive(Args, Default)]
struct FilterArgs {
    /// The filter (default passthrough; `make run` starts background-blur).
    #[arg(long = "filter", value_enum)]
    kind: Option<FilterKind>,
    /// Filter parameters as a JSON object, e.g. '{"radius": 20}' (see docs/filters.md).
    #[arg(long)]
    filter_params: Option<String>,
    /// ONNX model file (required for --filter onnx; the others default to their shipped model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory of the shipped models (default: ./models, then next to the executable, then
    /// /usr/local/share/livefilter/models and /usr/share/livefilter/models).
    #[arg(long, env = "LIVEFILTER_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Inference device: cpu (default), cuda or cuda:N.
    #[arg(long)]
    device: Option<Device>,
    /// When CUDA is unusable: fail (default) or cpu (with a loud warning).
    #[arg(long, value_parser = parse_fallback)]
    device_fallback: Option<DeviceFallback>,
    /// Inference threads per model (default 1; 0: one per core).
    #[arg(long)]
    inference_threads: Option<usize>,
    /// Cap on the GPU memory ONNX Runtime's CUDA arena takes per model, in MiB (default: none),
    /// so several relays can share one GPU.
    #[arg(long)]
    gpu_mem_limit_mb: Option<u64>,
    /// The ONNX Runtime shared library (default: $ORT_DYLIB_PATH, else the first
    /// libonnxruntime.so in .cache/onnxruntime, next to the executable, or
    /// /usr/local/lib/livefilter and /usr/lib/livefilter, else the loader's search path).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Directory live changes (PATCH /filter) may take backdrop pictures from (default: none,
    /// so live changes cannot name pictures).
    #[arg(long)]
    assets_dir: Option<PathBuf>,
}

fn parse_fallback(s: &str) -> Result<DeviceFallback, String> {
    match s {
        "fail" => Ok(DeviceFallback::Fail),
        "cpu" => Ok(DeviceFallback::Cpu),
        other => Err(format!("{other:?} is not fail or cpu")),
    }
}

impl FilterArgs {
    /// Applies the given flags on top of `cfg`.
    fn apply(self, cfg: &mut FilterConfig) -> anyhow::Result<()> {
        if let Some(kind) = self.kind {
            if kind != cfg.kind {
                // Another filter's parameters would not fit.
                cfg.params.clear();
            }
            cfg.kind = kind;
        }
        if let Some(json) = self.filter_params {
            match serde_json::from_str(&json).with_context(|| format!("--filter-params is not JSON: {json}"))? {
                serde_json::Value::Object(map) => cfg.params = map,
                other => anyhow::bail!("--filter-params must be a JSON object, got {other}"),
            }
        }
        if self.model.is_some() {
            cfg.model = self.model;
        }
        if self.models_dir.is_some() {
            cfg.models_dir = self.models_dir;
        }
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(f) = self.device_fallback {
            cfg.device_fallback = f;
        }
        if let Some(t) = self.inference_threads {
            cfg.threads = t;
        }
        if self.gpu_mem_limit_mb.is_some() {
            cfg.gpu_mem_limit_mb = self.gpu_mem_limit_mb;
        }
        if self.onnxruntime.is_some() {
            cfg.onnxruntime = self.onnxruntime;
        }
        if self.assets_dir.is_some() {
            cfg.assets_dir = self.assets_dir;
        }
        Ok(())
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<RelayConfig> {
        let Self {
            output,
            offer_token,
            allowed_origins,
            no_preview,
            max_viewers,
            input_codecs,
            scale_to_output,
            transcode_passthrough,
            tls_cert,
            tls_key,
            hls_url,
            ice_servers,
            filter,
        } = self;
        let mut cfg = output.into_config_unvalidated()?;
        filter.apply(&mut cfg.filter)?;
        if offer_token.is_some() {
            cfg.offer.token = offer_token;
        }
        if !allowed_origins.is_empty() {
            cfg.offer.allowed_origins = allowed_origins;
        }
        if no_preview {
            cfg.preview.enabled = false;
        }
        if let Some(n) = max_viewers {
            cfg.preview.max_viewers = n;
        }
        if !input_codecs.is_empty() {
            cfg.ingest.codecs = input_codecs;
        }
        if scale_to_output {
            cfg.video.follow_input = false;
        }
        if transcode_passthrough {
            cfg.video.passthrough_transcode = true;
        }
        if tls_cert.is_some() {
            cfg.offer.tls_cert = tls_cert;
        }
        if tls_key.is_some() {
            cfg.offer.tls_key = tls_key;
        }
        if hls_url.is_some() {
            cfg.hls_url = hls_url;
        }
        if let Some(entry) = ice_servers.into_entry() {
            cfg.ice.servers = vec![entry];
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args)]
struct MakeClipArgs {
    /// The picture.
    #[arg(long)]
    image: PathBuf,
    /// The clip to write.
    #[arg(long)]
    out: PathBuf,
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frames.
    #[arg(long, default_value_t = 150)]
    frames: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Hold the picture still instead of panning over it (a camera on a tripod).
    #[arg(long)]
    still: bool,
    /// With --still: sensor noise, the standard deviation in 8-bit levels (e.g. 2.5).
    #[arg(long, default_value_t = 0.0)]
    noise: f32,
}

fn make_clip(args: MakeClipArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.width >= 16 && args.height >= 16 && args.width.is_multiple_of(2) && args.height.is_multiple_of(2),
        "--width and --height must be even and at least 16"
    );
    use livefilter_relay::filter::assets::{Assets, ImageLimits, Origin};
    let picture = Assets::new(None, ImageLimits::default()).load(&args.image, Origin::Config)?;
    let rgb = picture.rgb();
    anyhow::ensure!((0.0..=64.0).contains(&args.noise), "--noise must be 0..=64 levels");
    anyhow::ensure!(args.still || args.noise == 0.0, "--noise needs --still");
    let (w, h) = (rgb.width(), rgb.height());
    let frames = if args.still {
        livefilter_relay::bench::clip::still(rgb.as_raw(), w, h, args.width, args.height, args.frames, args.noise)?
    } else {
        livefilter_relay::bench::clip::panned(rgb.as_raw(), w, h, args.width, args.height, args.frames)?
    };
    let tmp = args.out.with_extension("y4m.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    livefilter_relay::y4m::write(std::io::BufWriter::new(file), args.fps, frames)?;
    std::fs::rename(&tmp, &args.out)?;
    println!(
        "{}: {} frames {}x{} @ {} fps",
        args.out.display(),
        args.frames,
        args.width,
        args.height,
        args.fps
    );
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    /// Run the whole per-frame path (decode, filter, encode) on this y4m clip instead of the
    /// encoder alone.
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: the browser's and the output codec.
    #[arg(long, default_value_t = VideoCodec::Vp8)]
    codec: VideoCodec,
    /// With --input: frames not measured first (model warm-up).
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    #[command(flatten)]
    filter: FilterArgs,
    /// Frames per codec; with --input, frames measured (the clip loops; default: the clip once).
    #[arg(long)]
    frames: Option<u64>,
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Target bitrate in kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate_kbps: u32,
    /// Font file for the test pattern's clock (test-pattern only; default DejaVu Sans Bold).
    #[arg(long)]
    font: Option<PathBuf>,
    /// With --input: VP8 `cpu-used`, -16 (fastest) ..= 16 (default: the relay's).
    #[arg(long, allow_hyphen_values = true)]
    vp8_cpu_used: Option<i32>,
    /// With --input: a periodic keyframe every this many seconds of media time (0: only the
    /// first; default: the relay's `video.keyframe_interval_secs`).
    #[arg(long)]
    keyframe_interval_secs: Option<f64>,
    /// With --input: decode the output and print its luma PSNR, and the filter's mask flicker or
    /// keypoint jitter from frame to frame (then CPU is not measured).
    #[arg(long)]
    quality: bool,
    /// With --input: sleep this many ms in every filter call, standing in for a filter slower
    /// than the frame rate (the newest-frame slot then drops frames; the figures show what
    /// that does to latency).
    #[arg(long, default_value_t = 0)]
    filter_delay_ms: u64,
}

impl OutputArgs {
    /// The config file (if any) with every given flag applied on top, validated.
    fn into_config(self) -> anyhow::Result<RelayConfig> {
        let cfg = self.into_config_unvalidated()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn into_config_unvalidated(self) -> anyhow::Result<RelayConfig> {
        let mut cfg = match &self.config {
            Some(path) => RelayConfig::from_file(path)?,
            None => RelayConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen = Some(v);
        }
        if let Some(v) = self.codec {
            cfg.video.codec = v;
        }
        if let Some(v) = self.bitrate_kbps {
            cfg.video.bitrate_kbps = v;
        }
        if let Some(v) = self.keyframe_interval_secs {
            cfg.video.keyframe_interval_secs = v;
        }
        if let Some(v) = self.width {
            cfg.video.width = v;
        }
        if let Some(v) = self.height {
            cfg.video.height = v;
        }
        if let Some(v) = self.fps {
            cfg.video.fps = v;
        }
        if self.font.is_some() {
            cfg.font = self.font;
        }
        if !self.udp_addrs.is_empty() {
            cfg.ice.udp_addrs = self.udp_addrs;
        }
        if !self.ice_tcp_addrs.is_empty() {
            cfg.ice.tcp_addrs = self.ice_tcp_addrs;
        }
        if self.ice_tcp_only {
            cfg.ice.tcp_only = true;
        }
        if !self.public_ips.is_empty() {
            cfg.ice.public_ips = self.public_ips;
        }
        if self.udp_port_range.is_some() {
            cfg.ice.udp_port_range = self.udp_port_range;
        }
        if !self.sora_signaling_urls.is_empty() || self.channel_id.is_some() {
            let sora = cfg.sora.get_or_insert_with(SoraOutput::default);
            if !self.sora_signaling_urls.is_empty() {
                sora.signaling_urls = self.sora_signaling_urls;
            }
            if let Some(v) = self.channel_id {
                sora.channel_id = v;
            }
        }
        if let Some(sora) = cfg.sora.as_mut() {
            if let Some(v) = self.client_id {
                sora.client_id = Some(v);
            }
            if self.sora_simulcast {
                sora.simulcast = true;
            }
            if let Some(m) = self.metadata {
                sora.metadata = Some(serde_json::from_str(&m).with_context(|| format!("--metadata is not JSON: {m}"))?);
            }
        }
        if let Some(url) = self.whip_url {
            let whip = cfg.whip.get_or_insert_with(WhipOutput::default);
            whip.url = url;
        }
        if let (Some(whip), Some(token)) = (cfg.whip.as_mut(), self.whip_token) {
            whip.token = Some(token);
        }
        Ok(cfg)
    }
}

fn init_logging(format: LogFormat) {
    let relay = std::env::var("LIVEFILTER_LOG").ok();
    let stack = std::env::var("LIVEFILTER_STACK_LOG").ok();
    let directives = logging::directives(relay.as_deref(), stack.as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("warning: LIVEFILTER_LOG={directives:?} is not a log filter ({e}); logging at info");
        tracing_subscriber::EnvFilter::new(logging::directives(None, None))
    });
    let ansi = logging::use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // Before anything else runs code compiled for those features.
    if let Some(why) = livefilter_contract::cpu::unsupported("livefilter-relay") {
        eprintln!("error: {why}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format);
    match run_command(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in one line, with the fix where the error knows it (no "Caused by" repeats).
            let line = logging::error_line(e.as_ref());
            match log_format {
                LogFormat::Text => eprintln!("error: {line}"),
                LogFormat::Json => tracing::error!(error = %line, "the relay stopped"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match command {
        Command::TestPattern(args) => {
            let cfg = args.into_config()?;
            runtime.block_on(until_terminated(|shutdown| run::test_pattern(cfg, shutdown)))
        }
        Command::Serve(args) => {
            let cfg = args.into_config()?;
            runtime.block_on(until_terminated(|shutdown| run::serve(cfg, shutdown)))
        }
        Command::Bench(args) => bench(*args),
        Command::MakeClip(args) => make_clip(args),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the relay");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs a mode until SIGINT/SIGTERM, then shuts it down in order.
async fn until_terminated<F, Fut>(mode: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), run::RunError>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(mode(shutdown.clone()));
    tokio::select! {
        r = &mut task => return Ok(r??),
        _ = termination() => {}
    }
    shutdown.cancel();
    task.await??;
    tracing::info!("relay stopped");
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(input) = &args.input {
        let mut filter = FilterConfig::default();
        args.filter.apply(&mut filter)?;
        filter.validate()?;
        let defaults = livefilter_relay::bench::pipeline::PipelineBenchOptions::new(filter, args.codec);
        let keyframe_interval = match args.keyframe_interval_secs {
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!("--keyframe-interval-secs must be 0 or more, got {s}"),
            None => defaults.keyframe_interval,
        };
        let options = livefilter_relay::bench::pipeline::PipelineBenchOptions {
            bitrate_kbps: args.bitrate_kbps,
            frames: args.frames,
            warmup: args.warmup,
            vp8_cpu_used: args.vp8_cpu_used,
            keyframe_interval,
            quality: args.quality,
            filter_delay: Duration::from_millis(args.filter_delay_ms),
            ..defaults
        };
        let report = livefilter_relay::bench::pipeline::pipeline_bench(input, &options)?;
        println!("{report}");
        return Ok(());
    }
    let frames = args.frames.unwrap_or(300);
    let font_path = args
        .font
        .unwrap_or_else(|| PathBuf::from(testpattern::DEFAULT_FONT_PATH));
    let font = testpattern::load_font(&font_path)?;
    let pattern = TestPattern::new(args.width, args.height, 30, font)?;
    println!(
        "# encode benchmark: {} frames of the {}x{} test pattern, one thread",
        frames, args.width, args.height
    );
    for codec in [VideoCodec::Vp8, VideoCodec::H264] {
        let cfg = codec::EncoderConfig {
            codec,
            bitrate_kbps: args.bitrate_kbps,
            ..Default::default()
        };
        let report = livefilter_relay::bench::encode_bench(codec, args.width, args.height, frames, &cfg, &pattern)?;
        println!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_config(args: &[&str]) -> anyhow::Result<RelayConfig> {
        let cli = Cli::try_parse_from([&["livefilter-relay", "serve"], args].concat())?;
        match cli.command {
            Command::Serve(serve) => serve.into_config(),
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn ice_server_flags_become_one_entry_with_shared_credentials() {
        let cfg = serve_config(&[
            "--ice-server",
            "turn:turn.example:3478?transport=udp",
            "--ice-server",
            "turn:turn.example:3478?transport=tcp",
            "--ice-username",
            "alice",
            "--ice-credential",
            "pw",
        ])
        .unwrap();

        assert_eq!(
            cfg.ice.servers,
            vec![IceServerConfig {
                urls: vec![
                    "turn:turn.example:3478?transport=udp".into(),
                    "turn:turn.example:3478?transport=tcp".into()
                ],
                username: Some("alice".into()),
                credential: Some("pw".into()),
                ..IceServerConfig::default()
            }]
        );
    }

    #[test]
    fn a_turn_url_without_credentials_is_refused_at_startup() {
        let err = serve_config(&["--ice-server", "turn:turn.example:3478"]).unwrap_err();

        assert!(err.to_string().contains("turn: URLs need credentials"), "{err}");
    }
}
