//! Wiring of the relay's modes: publishers, pipeline thread, HTTP server, and an orderly
//! shutdown (publishers say goodbye to their SFUs, threads stop, the server drains).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec;
use crate::config::{ConfigError, RelayConfig};
use crate::filter::live::LiveParams;
use crate::http::{self, AppState, RelayInfo, ServeState};
use crate::metrics::Metrics;
use crate::pipeline::{EncodeStage, FilterPipeline, TestPatternPipeline};
use crate::publish::preview::{self, PreviewConfig, PreviewHub};
use crate::publish::sora::{SoraError, SoraPublisher};
use crate::publish::whip::{WhipError, WhipPublisher};
use crate::publish::{KeyframeRequest, PublisherHandle};
use crate::session::{IngestConfig, SessionManager};
use crate::slot::NewestSlot;
use crate::testpattern::{self, TestPattern, TestPatternError};

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
    /// The HTTP address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS files.
    #[error("cannot load TLS certificate {cert} / key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The filter could not start (runtime, model, parameters).
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    /// A thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

struct Publishers {
    tasks: JoinSet<()>,
    handles: Vec<PublisherHandle>,
}

fn start_publishers(
    cfg: &RelayConfig,
    audio: bool,
    metrics: &Metrics,
    keyframes: &KeyframeRequest,
    shutdown: &CancellationToken,
) -> Result<Publishers, RunError> {
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    if let Some(sora) = cfg.sora_config(audio)? {
        let (handle, inputs) = PublisherHandle::new("sora", metrics.clone());
        let publisher = SoraPublisher::new(sora, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        tasks.spawn(
            publisher
                .run(inputs)
                .instrument(tracing::info_span!("publisher", name = "sora")),
        );
        handles.push(handle);
    }
    if let Some(whip) = cfg.whip_config(audio)? {
        let (handle, inputs) = PublisherHandle::new("whip", metrics.clone());
        let publisher = WhipPublisher::new(whip, metrics.clone(), keyframes.clone(), shutdown.clone())?;
        tasks.spawn(
            publisher
                .run(inputs)
                .instrument(tracing::info_span!("publisher", name = "whip")),
        );
        handles.push(handle);
    }
    Ok(Publishers { tasks, handles })
}

async fn serve_http(
    cfg: &RelayConfig,
    app: axum::Router,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let addr = cfg.listen_addr();
    let listener = std::net::TcpListener::bind(addr).map_err(|source| RunError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| RunError::Listen { addr, source })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let service = app.into_make_service();
    let task = match (&cfg.offer.tls_cert, &cfg.offer.tls_key) {
        (Some(cert), Some(key)) => {
            // One process-wide choice; a second install (tests) is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| RunError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?;
            let server = axum_server::from_tcp_rustls(listener, tls)
                .map_err(|source| RunError::Listen { addr, source })?
                .handle(handle);
            tracing::info!(%addr, "HTTPS listening");
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
        _ => {
            let server = axum_server::from_tcp(listener)
                .map_err(|source| RunError::Listen { addr, source })?
                .handle(handle);
            tracing::info!(%addr, "HTTP listening");
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        }
    };
    Ok(task)
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
    let Publishers { tasks, handles } = start_publishers(&cfg, false, &metrics, &keyframes, &shutdown)?;
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
    });
    let server = serve_http(&cfg, app, shutdown.clone()).await?;
    let stage = EncodeStage::new(encoder, handles, keyframes, metrics);
    let thread = TestPatternPipeline { pattern, stage }
        .spawn(shutdown.clone())
        .map_err(|e| RunError::Thread("test-pattern", e))?;

    shutdown.cancelled().await;
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
    let Publishers { mut tasks, mut handles } = start_publishers(&cfg, true, &metrics, &keyframes, &shutdown)?;
    let preview = if cfg.preview.enabled {
        let hub = PreviewHub::new(
            PreviewConfig {
                codec: cfg.video.codec,
                max_viewers: cfg.preview.max_viewers,
                udp_addrs: crate::ice::ephemeral(&cfg.ice.udp_addrs),
                public_ips: cfg.ice.public_ips.clone(),
            },
            metrics.clone(),
            keyframes.clone(),
            shutdown.clone(),
        );
        let (handle, inputs) = PublisherHandle::new(preview::PUBLISHER, metrics.clone());
        tasks.spawn(
            Arc::clone(&hub)
                .run(inputs)
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
    let sessions = SessionManager::new(
        IngestConfig {
            codecs: cfg.ingest.codecs.clone(),
            udp_addrs: cfg.ice.udp_addrs.clone(),
            public_ips: cfg.ice.public_ips.clone(),
            public_ips_file: cfg.ice.public_ips_file.clone(),
            // Validated with the configuration.
            udp_port_range: cfg.ice.udp_port_range.as_deref().and_then(|r| r.parse().ok()),
            start_bitrate_kbps: cfg.ingest.start_bitrate_kbps,
        },
        Arc::clone(&slot),
        handles.clone(),
        metrics.clone(),
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
        sessions: Arc::clone(&sessions),
        preview,
        token: cfg.offer_token()?,
        hls_url: cfg.hls_url.clone(),
        max_body_bytes: cfg.offer.max_body_bytes,
        allowed_origins: cfg.offer.allowed_origins.clone(),
        filter: Some(live_params),
    };
    let app = http::app(AppState {
        info: info.into(),
        metrics: metrics.clone(),
        serve: Some(serve_state),
    });
    let server = serve_http(&cfg, app, shutdown.clone()).await?;
    let output_size = (!cfg.video.follow_input).then_some((cfg.video.width, cfg.video.height));
    let stage = EncodeStage::new(encoder, handles, keyframes, metrics);
    let thread = FilterPipeline {
        slot: Arc::clone(&slot),
        filter,
        params: Some(params_rx),
        output_size,
        stage,
    }
    .spawn()
    .map_err(|e| RunError::Thread("filter", e))?;
    tracing::info!(addr = %cfg.listen_addr(), "relay ready: open the sender page at / (preview at /view)");

    shutdown.cancelled().await;
    sessions.stop();
    slot.close();
    drain(tasks).await;
    if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
        tracing::warn!("filter thread did not stop cleanly");
    }
    let _ = server.await;
    Ok(())
}
