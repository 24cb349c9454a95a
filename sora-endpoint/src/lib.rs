//! A small Sora-compatible endpoint for livefilter's tests: Sora WebSocket signaling and WHIP
//! ingest, receiving media with webrtc-rs (its own depacketizers) and decoding it with libvpx
//! and OpenH264 directly — no relay code, so that a relay bug cannot hide on both sides — with
//! an HTTP JSON API to inspect every connection. Not product code. See README.md.
#![deny(unsafe_code)]

pub mod api;
pub mod bandwidth;
pub mod codec;
pub mod decode;
pub mod dtls_setup;
pub mod frameid;
pub mod framestats;
pub mod ice_mode;
pub mod ids;
pub mod layers;
pub mod peer;
pub mod picture;
pub mod receive;
pub mod record;
pub mod session;
pub mod signaling;
pub mod simulcast;
pub mod whip;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use ice_mode::IceMode;
use record::Registry;

/// Endpoint settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP + WebSocket listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// Address the WebRTC UDP sockets bind to (and the only host candidate offered).
    pub ice_ip: IpAddr,
    /// ICE-lite (Sora's way, the default) or full ICE.
    pub ice_mode: IceMode,
    /// Interval between `ping`s; zero disables them.
    pub ping_interval: Duration,
    /// Ask for `stats` in pings.
    pub ping_stats: bool,
    /// Redirect new connects (without `redirect: true`) to this signaling URL.
    pub redirect_to: Option<String>,
    /// Required `metadata.access_token` in `connect`.
    pub access_token: Option<String>,
    /// Required WHIP bearer token.
    pub whip_token: Option<String>,
    /// Closed connections kept for inspection.
    pub max_closed: usize,
    /// Frame summaries kept per connection.
    pub frame_ring: usize,
    /// Video bitrate publishers are asked to keep to (kbit/s; `b=AS`/`b=TIAS` in the SDP the
    /// endpoint sends), as Sora holds them to the channel's bitrate. `None`: no limit.
    pub max_video_bitrate_kbps: Option<u32>,
    /// The `encodings` every simulcast offer carries (and so the rids asked for), replacing
    /// Sora's defaults derived from the connect's `video.bit_rate`.
    pub simulcast_encodings: Option<simulcast::Encodings>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ice_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ice_mode: IceMode::Lite,
            ping_interval: Duration::from_secs(5),
            ping_stats: false,
            redirect_to: None,
            access_token: None,
            whip_token: None,
            max_closed: 256,
            frame_ring: 600,
            max_video_bitrate_kbps: None,
            simulcast_encodings: None,
        }
    }
}

/// Shared state of the HTTP handlers and sessions.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// All connections.
    pub registry: Arc<Registry>,
    /// Cancelled on shutdown: sessions close their clients and peers.
    pub shutdown: CancellationToken,
    /// Session tasks, awaited on shutdown.
    pub tasks: TaskTracker,
}

impl AppState {
    /// Fresh state for `config`.
    pub fn new(config: Config) -> Self {
        let registry = Arc::new(Registry::new(config.max_closed, config.redirect_to.clone()));
        Self {
            config: Arc::new(config),
            registry,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }
}

async fn signaling_ws(State(app): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let tasks = app.tasks.clone();
    upgrade.on_upgrade(move |socket| tasks.track_future(session::run(socket, app)))
}

/// The endpoint's routes: `/signaling`, `/whip/...`, `/api/...`, `/healthz`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/signaling", get(signaling_ws))
        .route("/whip/{channel_id}", post(whip::post).patch(whip::patch))
        .route(
            "/whip/{channel_id}/{resource_id}",
            axum::routing::delete(whip::delete).patch(whip::patch),
        )
        .route("/healthz", get(api::healthz))
        .route("/api/connections", get(api::list))
        .route("/api/connections/{id}", get(api::detail))
        .route("/api/connections/{id}/frame.png", get(api::frame_png))
        .route("/api/connections/{id}/close", post(api::close))
        .route("/api/connections/{id}/re-offer", post(api::re_offer))
        .route("/api/wait", get(api::wait))
        .route("/api/redirect", get(api::get_redirect).put(api::put_redirect))
        .with_state(state)
}

/// How long shutdown waits for sessions to close their clients and peers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves on `listener` until `stop` resolves, then closes every session (bounded wait).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("shutting down: closing all sessions");
            shutdown.cancel();
        })
        .await;
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("sessions did not all finish within {SHUTDOWN_GRACE:?}");
    }
    result
}
