//! `livefilter-relay`: the relay's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use livefilter_relay::codec::{self, VideoCodec};
use livefilter_relay::config::{RelayConfig, SoraOutput, WhipOutput};
use livefilter_relay::http::{self, AppState, RelayInfo};
use livefilter_relay::metrics::Metrics;
use livefilter_relay::pipeline::TestPatternPipeline;
use livefilter_relay::publish::sora::SoraPublisher;
use livefilter_relay::publish::whip::WhipPublisher;
use livefilter_relay::publish::{KeyframeRequest, PublisherHandle};
use livefilter_relay::testpattern::{self, TestPattern};

#[derive(Parser)]
#[command(name = "livefilter-relay", version, about = "livefilter relay: live video -> AI filter -> Sora / WHIP")]
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
    /// Measure encode time per frame for VP8 and H.264 on this machine.
    Bench(BenchArgs),
}

/// Output settings; each overrides the config file.
#[derive(Args, Default)]
struct OutputArgs {
    /// YAML config file (the flags below override it).
    #[arg(long, env = "LIVEFILTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address for /metrics, /healthz, /status.
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
    /// Sora metadata as JSON, e.g. '{"access_token":"..."}'.
    #[arg(long, env = "LIVEFILTER_SORA_METADATA")]
    metadata: Option<String>,
    /// WHIP endpoint URL.
    #[arg(long)]
    whip_url: Option<String>,
    /// WHIP bearer token.
    #[arg(long, env = "LIVEFILTER_WHIP_TOKEN")]
    whip_token: Option<String>,
    /// Video codec.
    #[arg(long)]
    codec: Option<VideoCodec>,
    /// Target bitrate in kbit/s.
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Keyframe at least every N seconds (0: only on request).
    #[arg(long)]
    keyframe_interval_secs: Option<f64>,
    /// Output width.
    #[arg(long)]
    width: Option<u32>,
    /// Output height.
    #[arg(long)]
    height: Option<u32>,
    /// Frames per second.
    #[arg(long)]
    fps: Option<u32>,
    /// Font file for the clock.
    #[arg(long)]
    font: Option<PathBuf>,
    /// Local UDP address for WebRTC (repeatable; default 0.0.0.0:0).
    #[arg(long = "udp-addr")]
    udp_addrs: Vec<String>,
    /// Address to advertise in ICE candidates instead of the local one (repeatable).
    #[arg(long = "public-ip")]
    public_ips: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Frames per codec.
    #[arg(long, default_value_t = 300)]
    frames: u64,
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Target bitrate in kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate_kbps: u32,
    /// Font file for the clock.
    #[arg(long)]
    font: Option<PathBuf>,
}

impl OutputArgs {
    /// The config file (if any) with every given flag applied on top.
    fn into_config(self) -> anyhow::Result<RelayConfig> {
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
        if !self.public_ips.is_empty() {
            cfg.ice.public_ips = self.public_ips;
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
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIVEFILTER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=warn,rtc=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::TestPattern(args) => runtime.block_on(test_pattern(args.into_config()?)),
        Command::Bench(args) => bench(args),
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

async fn test_pattern(cfg: RelayConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let keyframes = KeyframeRequest::default();
    let mut publishers = JoinSet::new();
    let mut handles = Vec::new();

    if let Some(sora) = cfg.sora_config()? {
        let (handle, rx) = PublisherHandle::new("sora", metrics.clone());
        let publisher = SoraPublisher::new(sora, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        publishers.spawn(publisher.run(rx).instrument(tracing::info_span!("publisher", name = "sora")));
        handles.push(handle);
    }
    if let Some(whip) = cfg.whip_config()? {
        let (handle, rx) = PublisherHandle::new("whip", metrics.clone());
        let publisher = WhipPublisher::new(whip, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        publishers.spawn(publisher.run(rx).instrument(tracing::info_span!("publisher", name = "whip")));
        handles.push(handle);
    }
    if handles.is_empty() {
        bail!("no output configured: give --sora-signaling-url and --channel-id, or --whip-url (or sora:/whip: in --config)");
    }

    let font_path = cfg.font.clone().unwrap_or_else(|| PathBuf::from(testpattern::DEFAULT_FONT_PATH));
    let font = testpattern::load_font(&font_path)?;
    let video = &cfg.video;
    let pattern = TestPattern::new(video.width, video.height, video.fps, font)?;
    let encoder = codec::new_encoder(&cfg.encoder_config())?;

    let listen = cfg.listen_addr();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let info = RelayInfo {
        mode: "test-pattern",
        codec: video.codec.to_string(),
        width: video.width,
        height: video.height,
        fps: video.fps,
        publishers: handles.iter().map(|h| h.name().to_owned()).collect(),
    };
    let app = http::app(AppState { info: info.into(), metrics: metrics.clone() });
    let http_shutdown = shutdown.clone();
    let server = tokio::spawn(
        async move { axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await }
            .instrument(tracing::info_span!("http", %listen)),
    );
    tracing::info!(%listen, "HTTP listening (/metrics, /healthz, /status)");

    let pipeline = TestPatternPipeline { pattern, encoder, publishers: handles, keyframes, metrics }
        .spawn(shutdown.clone())
        .context("starting the test-pattern thread")?;

    termination().await;
    shutdown.cancel();
    // Publishers say goodbye to their SFUs (bounded inside); give them a little more.
    let drained = tokio::time::timeout(Duration::from_secs(8), async {
        while publishers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("publishers did not stop in time");
    }
    if let Err(e) = tokio::task::spawn_blocking(move || pipeline.join()).await {
        tracing::warn!(error = %e, "test-pattern thread did not stop cleanly");
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server error"),
        Err(e) => tracing::warn!(error = %e, "HTTP task failed"),
    }
    tracing::info!("relay stopped");
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let font_path = args.font.unwrap_or_else(|| PathBuf::from(testpattern::DEFAULT_FONT_PATH));
    let font = testpattern::load_font(&font_path)?;
    let pattern = TestPattern::new(args.width, args.height, 30, font)?;
    println!("# encode benchmark: {} frames of the {}x{} test pattern, one thread", args.frames, args.width, args.height);
    for codec in [VideoCodec::Vp8, VideoCodec::H264] {
        let cfg = codec::EncoderConfig { codec, bitrate_kbps: args.bitrate_kbps, ..Default::default() };
        let report = livefilter_relay::bench::encode_bench(codec, args.width, args.height, args.frames, &cfg, &pattern)?;
        println!("{report}");
    }
    Ok(())
}
