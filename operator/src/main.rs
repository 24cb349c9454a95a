//! `livefilter-operator`: turns LiveFilterSession objects into ImageFlux channels, relay Pods,
//! Services and Ingresses. `livefilter-operator crd` prints the CRD.
#![forbid(unsafe_code)]

mod bench;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::api::{Api, ListParams};
use livefilter_operator::controller::{HttpRelayApi, Settings};
use livefilter_operator::crd::{CRD_NAME, LiveFilterSession, crd_yaml};
use livefilter_operator::imageflux::{DEFAULT_BASE_URL, ImageFluxClient};
use livefilter_operator::leader::{LeaderElector, LeaseSettings};
use livefilter_operator::metrics::Metrics;
use livefilter_operator::objects::RelayDefaults;
use livefilter_operator::observer::ObserverSettings;
use livefilter_operator::ports::PortRange;
use livefilter_operator::runner::{self, RunConfig};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

#[derive(Parser)]
#[command(name = "livefilter-operator", version, about = "livefilter Kubernetes operator")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "LIVEFILTER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the LiveFilterSession CustomResourceDefinition (YAML).
    Crd,
    /// Run the controller against the in-memory API double with many streaming sessions and
    /// print reconcile latency, API requests, status writes and memory.
    Bench(bench::BenchArgs),
    /// The bench's API double, served on a free loopback port (printed on stdout).
    #[command(hide = true)]
    BenchApiDouble(bench::DoubleArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The ImageFlux Live Streaming API endpoint.
    #[arg(long, env = "LIVEFILTER_IMAGEFLUX_API_URL", default_value = DEFAULT_BASE_URL)]
    imageflux_api_url: String,
    /// Relay image for `device: cpu` (default ghcr.io/livefilter/livefilter-relay:<version>).
    #[arg(long, env = "LIVEFILTER_RELAY_IMAGE")]
    relay_image: Option<String>,
    /// Relay image for `device: cuda` (default ghcr.io/livefilter/livefilter-relay-cuda:<version>).
    #[arg(long, env = "LIVEFILTER_RELAY_CUDA_IMAGE")]
    relay_cuda_image: Option<String>,
    /// GPU extended resource for sessions that name none.
    #[arg(long, env = "LIVEFILTER_DEFAULT_GPU_RESOURCE_NAME", default_value = "nvidia.com/gpu")]
    default_gpu_resource_name: String,
    /// Secret (in the session's namespace, key `token`) with the ImageFlux API token, for
    /// sessions that name none.
    #[arg(long, env = "LIVEFILTER_DEFAULT_IMAGEFLUX_TOKEN_SECRET", default_value = "imageflux")]
    default_imageflux_token_secret: String,
    /// Host ports handed out for the relays' HTTP (`/offer`, `/status`).
    #[arg(long, env = "LIVEFILTER_HTTP_PORT_RANGE", default_value = "38000-38999")]
    http_port_range: PortRange,
    /// Host ports handed out for the relays' WebRTC UDP (open these in the node firewall).
    #[arg(long, env = "LIVEFILTER_UDP_PORT_RANGE", default_value = "40000-40999")]
    udp_port_range: PortRange,
    /// Seconds between reads of a ready relay's `/status`.
    #[arg(long, env = "LIVEFILTER_STATUS_INTERVAL_SECS", default_value_t = 10)]
    status_interval_secs: u64,
    /// Milliseconds between two reads of one ready relay's `/status` (the figures are written
    /// at most once per status interval; phase changes show within about this long).
    #[arg(long, env = "LIVEFILTER_OBSERVE_INTERVAL_MS", default_value_t = 1000)]
    observe_interval_ms: u64,
    /// Seconds a relay that was ready may stay not ready before its Pod is replaced.
    #[arg(long, env = "LIVEFILTER_RELAY_NOT_READY_GRACE_SECS", default_value_t = 60)]
    relay_not_ready_grace_secs: u64,
    /// Images sessions may name in `spec.relay.image`, comma-separated; a trailing `*` matches
    /// any suffix (`registry.example/livefilter/*`). The operator's own relay images are always
    /// allowed; with none given, only they are.
    #[arg(long, env = "LIVEFILTER_ALLOWED_RELAY_IMAGES", value_delimiter = ',')]
    allowed_relay_images: Vec<String>,
    /// Delete ImageFlux channels that no session records (only when this operator owns the
    /// ImageFlux account); without it they are reported.
    #[arg(long, env = "LIVEFILTER_DELETE_ORPHAN_CHANNELS", default_value_t = false, action = clap::ArgAction::Set)]
    delete_orphan_channels: bool,
    /// Seconds between two listings of each ImageFlux account by the channel sweep (a channel
    /// no session records is reported at its second sighting).
    #[arg(long, env = "LIVEFILTER_CHANNEL_SWEEP_INTERVAL_SECS", default_value_t = 20)]
    channel_sweep_interval_secs: u64,
    /// At most this many `/status` reads at once, across all sessions.
    #[arg(long, env = "LIVEFILTER_STATUS_CONCURRENCY", default_value_t = 16)]
    status_concurrency: usize,
    /// At most this many reconciles at once.
    #[arg(long, env = "LIVEFILTER_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "LIVEFILTER_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "LIVEFILTER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease (turn off only with a single replica).
    #[arg(long, env = "LIVEFILTER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The Lease's namespace (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "livefilter-system")]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, env = "LIVEFILTER_LEASE_NAME", default_value = "livefilter-operator")]
    lease_name: String,
    /// This replica's identity (its Pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

impl Default for RunArgs {
    fn default() -> Self {
        // Flags and env vars, as if `run` had been given with nothing else.
        match Cli::try_parse_from(["livefilter-operator", "run"]).map(|c| c.command) {
            Ok(Some(Command::Run(args))) => *args,
            _ => unreachable!("`run` parses"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Before anything else runs code compiled for those features.
    if let Some(why) = livefilter_contract::cpu::unsupported("livefilter-operator") {
        anyhow::bail!(why);
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd_yaml().context("cannot render the CRD")?);
            Ok(())
        }
        Some(Command::Run(args)) => start(cli.log_format, *args),
        Some(Command::Bench(args)) => bench::main(&args),
        Some(Command::BenchApiDouble(args)) => bench::serve_double(&args),
        None => start(cli.log_format, RunArgs::default()),
    }
}

fn start(format: LogFormat, args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIVEFILTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()).instrument(tracing::info_span!("signals")));

    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let metrics = Metrics::new();

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--metrics-addr)", args.metrics_addr))?;
    let http = {
        let app = livefilter_operator::http::app(metrics.clone());
        let stop = shutdown.clone();
        tokio::spawn(
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
            .instrument(tracing::info_span!("http", addr = %args.metrics_addr)),
        )
    };
    info!(addr = %args.metrics_addr, "serving /metrics and /healthz");

    check_crd(&client, args.watch_namespace.as_deref()).await?;

    let result = if args.leader_elect {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        let settings = LeaseSettings::new(args.lease_name.clone(), args.lease_namespace.clone(), identity);
        let elector = LeaderElector::new(client.clone(), settings);
        let led = elector
            .lead(shutdown.clone(), |token| {
                controller(client.clone(), &args, metrics.clone(), token)
            })
            .await;
        match led {
            Ok(Some(r)) => r,
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        }
    } else {
        controller(client.clone(), &args, metrics.clone(), shutdown.clone()).await
    };

    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(5), http).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "the HTTP server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "the HTTP server task failed"),
        Err(_) => warn!("the HTTP server did not stop within 5 s"),
        Ok(Ok(Ok(()))) => {}
    }
    info!("stopped");
    result
}

fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("livefilter-operator-{}", std::process::id()))
}

async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
            () = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
}

fn sessions_api(client: &Client, namespace: Option<&str>) -> Api<LiveFilterSession> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Fails with a clear message when the CRD is missing.
async fn check_crd(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    match sessions_api(client, namespace)
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the CustomResourceDefinition {CRD_NAME} is not installed; install it with \
             `kubectl apply -f crds/` (or `livefilter-operator crd | kubectl apply -f -`) and start the operator again"
        ),
        Err(e) => Err(e).context(format!("cannot list {CRD_NAME} (is the operator's RBAC installed?)")),
    }
}

async fn controller(client: Client, args: &RunArgs, metrics: Metrics, token: CancellationToken) -> anyhow::Result<()> {
    let mut images = RelayDefaults::default();
    if let Some(i) = &args.relay_image {
        images.cpu = i.clone();
    }
    if let Some(i) = &args.relay_cuda_image {
        images.cuda = i.clone();
    }
    images.gpu_resource_name = args.default_gpu_resource_name.clone();
    let status_interval = Duration::from_secs(args.status_interval_secs.max(1));
    let settings = Settings {
        images,
        default_token_secret: args.default_imageflux_token_secret.clone(),
        status_interval,
        not_ready_grace: Duration::from_secs(args.relay_not_ready_grace_secs),
        allowed_images: args
            .allowed_relay_images
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        delete_orphan_channels: args.delete_orphan_channels,
        channel_sweep_interval: Duration::from_secs(args.channel_sweep_interval_secs.max(1)),
        ..Settings::default()
    };
    let imageflux = ImageFluxClient::new(args.imageflux_api_url.clone(), Some(metrics.imageflux_calls.clone()))
        .context("cannot build the ImageFlux HTTP client")?;
    let relays = Arc::new(HttpRelayApi::new().context("cannot build the relay HTTP client")?);
    let config = RunConfig {
        namespace: args.watch_namespace.clone(),
        concurrency: args.concurrency,
        http_ports: args.http_port_range,
        udp_ports: args.udp_port_range,
        settings,
        observer: ObserverSettings {
            read_interval: Duration::from_millis(args.observe_interval_ms.max(100)),
            write_interval: status_interval,
            concurrency: args.status_concurrency,
        },
        instance: args.identity.clone(),
    };
    runner::run(client, imageflux, relays, metrics, config, token).await?;
    Ok(())
}
