//! Wiring of the relay's modes: publishers, pipeline thread, HTTP server, and an orderly
//! shutdown (publishers say goodbye to their SFUs, threads stop, the server drains).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec;
use crate::config::{ConfigError, RelayConfig, RelayConfigExt};
use crate::feed::{Forwarding, MediaSinks};
use crate::filter::FilterConfigExt;
use crate::filter::live::LiveParams;
use crate::health::{Health, Unhealthy, publisher_stage, supervise};
use crate::http::{self, AppState, RelayInfo, ServeState};
use crate::ingest::VideoIngestConfig;
use crate::layers::LayerEncoders;
use crate::metrics::Metrics;
use crate::pipeline::{EncodeStage, FilterPipeline, TestPatternPipeline};
use crate::publish::congestion::{BitrateEstimate, EncoderBitrate};
use crate::publish::preview::{self, PreviewConfig, PreviewHub};
use crate::publish::simulcast::SimulcastControl;
use crate::publish::sora::{SoraError, SoraPublisher};
use crate::publish::whip::{WhipError, WhipPublisher};
use crate::publish::{KeyframeRequest, PublisherHandle};
use crate::session::{IngestConfig, Sessions};
use crate::slot::NewestSlot;
use crate::testpattern::{self, TestPattern, TestPatternError};
use livefilter_contract::config::FilterKind;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A publisher's settings.
    #[error(transparent)]
    Sora(#[from] SoraError),
    /// A publisher's settings.
    #[error(transparent)]
    Whip(#[from] WhipError),
    /// The test pattern (font, size).
    #[error(transparent)]
    TestPattern(#[from] TestPatternError),
    /// The encoder.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// Nothing to publish to.
    #[error(
        "no output configured: give --sora-signaling-url and --channel-id, or --whip-url (or sora:/whip: in --config)"
    )]
    NoOutput,
    /// The HTTP listener (address, TLS files).
    #[error(transparent)]
    Server(#[from] http::server::ServerError),
    /// The filter could not start (runtime, model, parameters).
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    /// A thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// A media stage died (a panic): the process exits non-zero so it is restarted.
    #[error(transparent)]
    StageDied(Unhealthy),
}

struct Publishers {
    tasks: JoinSet<()>,
    handles: Vec<PublisherHandle>,
    /// The estimates of the publishers the encoder's bitrate follows (Sora, WHIP).
    estimates: Vec<BitrateEstimate>,
    /// The Sora publisher's simulcast layers, when there is a Sora publisher.
    simulcast: Option<SimulcastControl>,
}

/// Whether the browser's frames may skip decode and encode: the passthrough filter, the
/// output following the browser's size, no simulcast layers to encode, and not switched off.
fn forwarding(cfg: &RelayConfig, keyframes: &KeyframeRequest, estimates: &[BitrateEstimate]) -> Option<Forwarding> {
    let simulcast = cfg.sora.as_ref().is_some_and(|s| s.simulcast);
    (cfg.filter.kind == FilterKind::Passthrough
        && cfg.video.follow_input
        && !simulcast
        && !cfg.video.passthrough_transcode)
        .then(|| Forwarding {
            codec: cfg.video.codec,
            keyframes: keyframes.clone(),
            estimates: estimates.to_vec(),
            limits: cfg.bitrate_limits(),
        })
}

/// Adds the encoding of the simulcast layers a Sora session asks for (when there is a Sora
/// publisher) to `stage`.
fn with_simulcast_layers(
    stage: EncodeStage,
    simulcast: Option<SimulcastControl>,
    cfg: &RelayConfig,
    metrics: &Metrics,
) -> EncodeStage {
    match simulcast {
        Some(control) => stage.with_simulcast(LayerEncoders::new(control, cfg.encoder_config(), metrics.clone())),
        None => stage,
    }
}

fn start_publishers(
    cfg: &RelayConfig,
    audio: bool,
    metrics: &Metrics,
    keyframes: &KeyframeRequest,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<Publishers, RunError> {
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    let mut estimates = Vec::new();
    let estimate = |name: &str| BitrateEstimate::exported(metrics.publisher_target_bitrate.with_label_values(&[name]));
    let mut simulcast = None;
    if let Some(mut sora) = cfg.sora_config(audio)? {
        sora.estimate = estimate("sora");
        estimates.push(sora.estimate.clone());
        sora.simulcast = SimulcastControl::new(sora.estimate.clone());
        simulcast = Some(sora.simulcast.clone());
        let (handle, inputs) = PublisherHandle::new("sora", metrics.clone());
        let publisher = SoraPublisher::new(sora, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        tasks.spawn(
            supervise(health.clone(), publisher_stage("sora"), publisher.run(inputs))
                .instrument(tracing::info_span!("publisher", name = "sora")),
        );
        handles.push(handle);
    }
    if let Some(mut whip) = cfg.whip_config(audio)? {
        whip.estimate = estimate("whip");
        estimates.push(whip.estimate.clone());
        let (handle, inputs) = PublisherHandle::new("whip", metrics.clone());
        let publisher = WhipPublisher::new(whip, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        tasks.spawn(
            supervise(health.clone(), publisher_stage("whip"), publisher.run(inputs))
                .instrument(tracing::info_span!("publisher", name = "whip")),
        );
        handles.push(handle);
    }
    Ok(Publishers {
        tasks,
        handles,
        estimates,
        simulcast,
    })
}

fn listen(cfg: &RelayConfig) -> http::server::Listen {
    http::server::Listen {
        addr: cfg.listen_addr(),
        tls: cfg.offer.tls_cert.clone().zip(cfg.offer.tls_key.clone()),
        limits: cfg.server_limits(),
    }
}

async fn drain(mut publishers: JoinSet<()>) {
    // Publishers say goodbye to their SFUs (bounded inside); give them a little more.
    let drained = tokio::time::timeout(Duration::from_secs(8), async {
        while publishers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("publishers did not stop in time");
    }
}

/// Publishes the test pattern until `shutdown`.
pub async fn test_pattern(cfg: RelayConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let keyframes = KeyframeRequest::default();
    let health = Health::default();
    let Publishers {
        tasks,
        handles,
        estimates,
        simulcast,
    } = start_publishers(&cfg, false, &metrics, &keyframes, &shutdown, &health)?;
    if handles.is_empty() {
        return Err(RunError::NoOutput);
    }
    let font = testpattern::load_font(
        cfg.font
            .clone()
            .unwrap_or_else(|| PathBuf::from(testpattern::DEFAULT_FONT_PATH)),
    )?;
    let video = &cfg.video;
    let pattern = TestPattern::new(video.width, video.height, video.fps, font)?;
    let encoder = codec::new_encoder(&cfg.encoder_config())?;
    let info = RelayInfo {
        mode: "test-pattern",
        codec: video.codec.to_string(),
        width: video.width,
        height: video.height,
        fps: video.fps,
        publishers: handles.iter().map(|h| h.name().to_owned()).collect(),
        filter: "none".into(),
    };
    let app = http::app(AppState {
        info: info.into(),
        metrics: metrics.clone(),
        serve: None,
        health: health.clone(),
    });
    let server = http::server::serve(listen(&cfg), app, metrics.clone(), shutdown.clone()).await?;
    let stage = EncodeStage::new(encoder, handles, keyframes, metrics.clone())
        .with_keyframe_request_interval(Duration::from_millis(u64::from(cfg.video.keyframe_request_interval_ms)))
        .with_bitrate_control(EncoderBitrate::new(estimates, cfg.bitrate_limits()));
    let stage = with_simulcast_layers(stage, simulcast, &cfg, &metrics);
    let thread = TestPatternPipeline { pattern, stage }
        .spawn(shutdown.clone())
        .map_err(|e| RunError::Thread("test-pattern", e))?;

    tokio::select! {
        _ = shutdown.cancelled() => {}
        death = health.died() => return Err(RunError::StageDied(death)),
    }
    drain(tasks).await;
    if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
        tracing::warn!("test-pattern thread did not stop cleanly");
    }
    let _ = server.await;
    Ok(())
}

/// Serves browsers: `/offer` ingest → filter → encode → publishers (and the preview), until
/// `shutdown`.
pub async fn serve(cfg: RelayConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let metrics = Metrics::new();
    // The filter first: a missing or wrong model stops the relay before anything connects.
    let filter_cfg = cfg.filter.clone();
    let (filter, resolved) = tokio::task::spawn_blocking(move || {
        let resolved = filter_cfg.resolved_params()?;
        filter_cfg.build_with(&resolved).map(|f| (f, resolved))
    })
    .await
    .map_err(|e| RunError::Thread("filter setup", std::io::Error::other(e.to_string())))??;
    let requested = cfg.filter.device;
    let device = filter.device();
    if let Some(d) = device {
        metrics
            .filter_device
            .with_label_values(&[filter.name(), &requested.to_string(), &d.to_string()])
            .set(1);
    }
    let (live_params, params_rx) = LiveParams::new(&cfg.filter, resolved, device);
    let keyframes = KeyframeRequest::default();
    let health = Health::default();
    let Publishers {
        mut tasks,
        mut handles,
        estimates,
        simulcast,
    } = start_publishers(&cfg, true, &metrics, &keyframes, &shutdown, &health)?;
    let preview = if cfg.preview.enabled {
        let hub = PreviewHub::new(
            PreviewConfig {
                codec: cfg.video.codec,
                max_viewers: cfg.preview.max_viewers,
                udp_addrs: crate::ice::ephemeral(&cfg.ice.udp_addrs),
                public_ips: cfg.ice.public_ips.clone(),
                bitrate: cfg.bitrate_limits(),
            },
            metrics.clone(),
            keyframes.clone(),
            shutdown.clone(),
        );
        let (handle, inputs) = PublisherHandle::new(preview::PUBLISHER, metrics.clone());
        tasks.spawn(
            supervise(
                health.clone(),
                publisher_stage(preview::PUBLISHER),
                Arc::clone(&hub).run(inputs),
            )
            .instrument(tracing::info_span!("publisher", name = "preview")),
        );
        handles.push(handle);
        Some(hub)
    } else {
        None
    };
    if handles.is_empty() {
        return Err(RunError::NoOutput);
    }
    let filter_name = filter.name().to_owned();
    let encoder = codec::new_encoder(&cfg.encoder_config())?;
    let slot = Arc::new(NewestSlot::new());
    let mut sinks = MediaSinks::new(Arc::clone(&slot), handles.clone(), metrics.clone());
    if let Some(forwarding) = forwarding(&cfg, &keyframes, &estimates) {
        tracing::info!(codec = %forwarding.codec, "passthrough: a browser sending the output codec is forwarded without transcoding");
        sinks = sinks.with_forwarding(forwarding);
    }
    let (sessions, sessions_task) = Sessions::start(
        IngestConfig {
            codecs: cfg.ingest.codecs.clone(),
            // TCP only: the session binds no UDP at all.
            udp_addrs: if cfg.ice.tcp_only {
                Vec::new()
            } else {
                cfg.ice.udp_addrs.clone()
            },
            tcp_addrs: cfg.ice.tcp_addrs.clone(),
            public_ips: cfg.ice.public_ips.clone(),
            public_ips_file: cfg.ice.public_ips_file.clone(),
            // Validated with the configuration.
            udp_port_range: cfg
                .ice
                .udp_port_range
                .as_deref()
                .filter(|_| !cfg.ice.tcp_only)
                .and_then(|r| r.parse().ok()),
            start_bitrate_kbps: cfg.ingest.start_bitrate_kbps,
            timers: cfg.session_timers(),
            video: VideoIngestConfig {
                health: Some(health.clone()),
                max_size: crate::ingest::SizeLimit {
                    max_width: cfg.ingest.max_width,
                    max_height: cfg.ingest.max_height,
                },
                ..VideoIngestConfig::default()
            },
        },
        sinks,
        keyframes.clone(),
        shutdown.clone(),
    );
    let info = RelayInfo {
        mode: "serve",
        codec: cfg.video.codec.to_string(),
        width: cfg.video.width,
        height: cfg.video.height,
        fps: cfg.video.fps,
        publishers: handles.iter().map(|h| h.name().to_owned()).collect(),
        filter: filter_name,
    };
    let serve_state = ServeState {
        sessions: sessions.clone(),
        preview,
        token: cfg.offer_token()?,
        hls_url: cfg.hls_url.clone(),
        max_body_bytes: cfg.offer.max_body_bytes,
        allowed_origins: cfg.offer.allowed_origins.clone(),
        filter: Some(live_params),
        ice_servers: Arc::new(cfg.ice_servers()?),
    };
    let app_state = AppState {
        info: info.into(),
        metrics: metrics.clone(),
        serve: Some(serve_state),
        health: health.clone(),
    };
    tokio::spawn(
        crate::stats_line::run(app_state.clone(), shutdown.clone()).instrument(tracing::info_span!("stats-line")),
    );
    let app = http::app(app_state);
    let server = http::server::serve(listen(&cfg), app, metrics.clone(), shutdown.clone()).await?;
    let output_size = (!cfg.video.follow_input).then_some((cfg.video.width, cfg.video.height));
    let stage = EncodeStage::new(encoder, handles, keyframes, metrics.clone())
        .with_keyframe_request_interval(Duration::from_millis(u64::from(cfg.video.keyframe_request_interval_ms)))
        .with_bitrate_control(EncoderBitrate::new(estimates, cfg.bitrate_limits()));
    let stage = with_simulcast_layers(stage, simulcast, &cfg, &metrics);
    let thread = FilterPipeline {
        slot: Arc::clone(&slot),
        filter,
        params: Some(params_rx),
        output_size,
        stage,
        health: health.clone(),
    }
    .spawn()
    .map_err(|e| RunError::Thread("filter", e))?;
    tracing::info!(addr = %cfg.listen_addr(), "relay ready: open the sender page at / (preview at /view)");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        // A dead media stage leaves a silent relay: exit non-zero and be restarted instead.
        death = health.died() => return Err(RunError::StageDied(death)),
    }
    // The session actor closes the live session (its peer, its tasks) as it stops.
    if tokio::time::timeout(Duration::from_secs(5), sessions_task)
        .await
        .is_err()
    {
        tracing::warn!("the browser session did not close in time");
    }
    slot.close();
    drain(tasks).await;
    if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
        tracing::warn!("filter thread did not stop cleanly");
    }
    let _ = server.await;
    Ok(())
}
