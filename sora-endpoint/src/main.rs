//! `sora-endpoint`: a local Sora-compatible signaling + WHIP endpoint for tests.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sora_endpoint::simulcast::Encodings;
use sora_endpoint::{AppState, Config, IceMode};

/// A local Sora-compatible endpoint (WebSocket signaling, WHIP) that decodes what it receives
/// and reports it over an HTTP JSON API.
#[derive(Debug, Parser)]
#[command(name = "sora-endpoint", version)]
struct Args {
    /// HTTP + WebSocket listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7000", env = "SORA_ENDPOINT_LISTEN")]
    listen: SocketAddr,
    /// Address the WebRTC UDP sockets bind to (the only ICE host candidate offered).
    #[arg(long, default_value = "127.0.0.1")]
    ice_ip: IpAddr,
    /// `lite`: ICE-lite like Sora (`a=ice-lite`, host candidates only, the client controls).
    /// `full`: full ICE (for comparing official SDK runs). Either way the endpoint is the DTLS
    /// server and refuses an answer with `a=setup:passive`.
    #[arg(long, default_value_t = IceMode::Lite, env = "SORA_ENDPOINT_ICE_MODE")]
    ice_mode: IceMode,
    /// Seconds between signaling pings (0 disables them).
    #[arg(long, default_value_t = 5)]
    ping_interval_secs: u64,
    /// Ask clients for stats in pings (`"stats": true`).
    #[arg(long)]
    ping_stats: bool,
    /// Redirect every connect without `redirect: true` to this signaling URL.
    #[arg(long)]
    redirect_to: Option<String>,
    /// Refuse connects whose `metadata.access_token` differs (close 4401).
    #[arg(long)]
    require_access_token: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on WHIP requests.
    #[arg(long)]
    whip_token: Option<String>,
    /// Closed connections kept for inspection.
    #[arg(long, default_value_t = 256)]
    max_closed: usize,
    /// Per-frame summaries kept per connection.
    #[arg(long, default_value_t = 600)]
    frame_ring: usize,
    /// Ask publishers to keep video within this many kbit/s (`b=AS` and `b=TIAS` in every video
    /// m-section of the offer, re-offer and WHIP answer), as Sora holds them to the channel's
    /// bitrate. Without it the SDP carries no limit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(30..=100_000))]
    max_bitrate_kbps: Option<u32>,
    /// The `encodings` of every simulcast offer, lowest layer first, as a JSON array of objects
    /// with a string `rid` (e.g. `[{"rid":"r0","scaleResolutionDownBy":4,"maxBitrate":150000},
    /// ...]`); sent verbatim, and the rids asked for in the SDP in that order. Without it, Sora's
    /// defaults: r0/r1/r2 at 1/4, 1/2, 1 of the resolution with 15/30/55 % of the connect's
    /// `video.bit_rate` (or the cap, or 1000 kbit/s).
    #[arg(long, env = "SORA_ENDPOINT_SIMULCAST_ENCODINGS", value_name = "JSON", value_parser = parse_encodings)]
    simulcast_encodings: Option<Encodings>,
}

fn parse_encodings(text: &str) -> Result<Encodings, String> {
    Encodings::parse(text).map_err(|err| err.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT"),
        _ = term => tracing::info!("SIGTERM"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,rtc=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        ice_ip: args.ice_ip,
        ice_mode: args.ice_mode,
        ping_interval: Duration::from_secs(args.ping_interval_secs),
        ping_stats: args.ping_stats,
        redirect_to: args.redirect_to,
        access_token: args.require_access_token,
        whip_token: args.whip_token,
        max_closed: args.max_closed,
        frame_ring: args.frame_ring,
        max_video_bitrate_kbps: args.max_bitrate_kbps,
        simulcast_encodings: args.simulcast_encodings,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no local address")?;
    // Tests read this line to learn the port.
    println!("sora-endpoint listening on http://{addr} (signaling ws://{addr}/signaling)");
    tracing::info!(%addr, ice_ip = %config.ice_ip, ice_mode = %config.ice_mode, "sora-endpoint started");
    let state = AppState::new(config);
    sora_endpoint::serve(listener, state, shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("sora-endpoint stopped");
    Ok(())
}
