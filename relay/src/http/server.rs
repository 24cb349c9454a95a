//! The HTTP(S) listener around the router, bounded against what a network may do: at most
//! `max_connections` open connections (and `max_connections_per_ip` from one address; more are
//! closed at once and counted), request headers within `header_read_timeout`, and a connection
//! that neither reads nor writes for `idle_timeout` is closed. A slowloris or a crowd of idle
//! sockets can therefore never starve `/healthz` or the streamer's `/offer`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Limits of the HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_connections_per_ip: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a connection may stay without reading or writing a byte.
    pub idle_timeout: Duration,
    /// How long a request may take, body included (an offer waits for ICE gathering, a few
    /// seconds at most); longer ones are answered 408 and their handler dropped.
    pub request_timeout: Duration,
}

impl From<&livefilter_contract::config::HttpSection> for ServerLimits {
    fn from(h: &livefilter_contract::config::HttpSection) -> Self {
        Self {
            max_connections: h.max_connections,
            max_connections_per_ip: h.max_connections_per_ip,
            header_read_timeout: Duration::from_secs_f64(h.header_read_timeout_secs),
            idle_timeout: Duration::from_secs_f64(h.idle_timeout_secs),
            request_timeout: Duration::from_secs_f64(h.request_timeout_secs),
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from(&livefilter_contract::config::HttpSection::default())
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address.
    #[error("cannot listen on {addr}: {source}{hint}", hint = listen_hint(source))]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TLS files.
    #[error("cannot load TLS certificate {cert} / key {key}: {source}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What to do about a listen error a person can fix.
fn listen_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process holds this port: stop it, e.g. find it with `ss -ltnp`, or choose another address with --listen)"
        }
        io::ErrorKind::AddrNotAvailable => {
            " (no interface of this machine has this address: use 0.0.0.0 or one of `ip -br addr`)"
        }
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: choose a port of 1024 or more)",
        _ => "",
    }
}

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds.
    pub limits: ServerLimits,
}

/// Serves `app` until `shutdown` (then drains for up to 5 s); returns the server's task.
pub async fn serve(
    listen: Listen,
    app: axum::Router,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let addr = listen.addr;
    let listener = std::net::TcpListener::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Listen { addr, source })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let app = app.layer(axum::middleware::from_fn_with_state(
        (metrics.clone(), listen.limits.request_timeout),
        time_limit,
    ));
    let guard = ConnectionGuard::new(listen.limits, metrics);
    let service = app.into_make_service();
    let task = match listen.tls {
        Some((cert, key)) => {
            // One process-wide choice; a second install (tests) is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|source| ServerError::Tls { cert, key, source })?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(listen.limits.header_read_timeout)
                .acceptor(guard);
            let mut server = axum_server::from_tcp(listener)
                .map_err(|source| ServerError::Listen { addr, source })?
                .acceptor(acceptor)
                .handle(handle);
            configure(server.http_builder(), &listen.limits);
            tracing::info!(%addr, "HTTPS listening");
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
        None => {
            let mut server = axum_server::from_tcp(listener)
                .map_err(|source| ServerError::Listen { addr, source })?
                .acceptor(guard)
                .handle(handle);
            configure(server.http_builder(), &listen.limits);
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

/// Bounds every request, body included. Dropping a handler half-way is harmless: state
/// changes are commands to the session actor, which finishes or undoes them itself.
async fn time_limit(
    axum::extract::State((metrics, limit)): axum::extract::State<(Metrics, Duration)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => super::refuse(
            &metrics,
            if path == "/offer" { "offer" } else { "other" },
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!("the request to {path} took longer than {:.1} s", limit.as_secs_f64()),
        ),
    }
}

fn configure(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &ServerLimits,
) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.header_read_timeout);
}

/// Counts open connections, in total and per address, and refuses those over the limits.
#[derive(Clone)]
pub struct ConnectionGuard {
    limits: ServerLimits,
    open: Arc<Mutex<Open>>,
    metrics: Metrics,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this address.
    PerIp,
}

impl ConnectionGuard {
    /// A guard enforcing `limits`.
    pub fn new(limits: ServerLimits, metrics: Metrics) -> Self {
        Self {
            limits,
            open: Arc::new(Mutex::new(Open::default())),
            metrics,
        }
    }

    /// Takes a place for a connection from `ip`; the place is freed when the permit drops.
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let from_ip = open.per_ip.entry(ip).or_default();
        if *from_ip >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        *from_ip += 1;
        open.total += 1;
        self.metrics.http_connections.set(open.total as i64);
        Ok(Permit {
            guard: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

/// One admitted connection's place.
pub struct Permit {
    guard: ConnectionGuard,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.guard.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
        self.guard.metrics.http_connections.set(open.total as i64);
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for ConnectionGuard {
    type Stream = Guarded<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = match stream.peer_addr() {
            Ok(addr) => addr.ip(),
            Err(e) => return std::future::ready(Err(e)),
        };
        let admitted = self.admit(ip).map_err(|refusal| {
            let reason = match refusal {
                Refusal::Total => "max_connections",
                Refusal::PerIp => "max_connections_per_ip",
            };
            self.metrics.http_connections_refused.with_label_values(&[reason]).inc();
            tracing::warn!(%ip, reason, "HTTP connection refused");
            io::Error::new(io::ErrorKind::ConnectionRefused, reason)
        });
        std::future::ready(admitted.map(|permit| {
            let _ = stream.set_nodelay(true);
            (Guarded::new(stream, permit, self.limits.idle_timeout), service)
        }))
    }
}

/// A stream that holds its connection's place and fails once idle for too long.
pub struct Guarded<S> {
    inner: S,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _permit: Permit,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: Permit, idle_timeout: Duration) -> Self {
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            _permit: permit,
        }
    }

    fn touched(&mut self) {
        let next = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(next);
    }

    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.touched();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.touched();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(total: usize, per_ip: usize) -> ConnectionGuard {
        ConnectionGuard::new(
            ServerLimits {
                max_connections: total,
                max_connections_per_ip: per_ip,
                ..ServerLimits::default()
            },
            Metrics::new(),
        )
    }

    #[test]
    fn connections_beyond_the_per_address_limit_are_refused_and_places_come_back_on_drop() {
        let g = guard(10, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();

        let first = g.admit(a).unwrap();
        let _second = g.admit(a).unwrap();
        let third = g.admit(a);
        let other = g.admit(b);
        drop(first);
        let again = g.admit(a);

        assert_eq!(third.err(), Some(Refusal::PerIp));
        assert!(other.is_ok());
        assert!(again.is_ok());
        assert_eq!(g.open(), 3);
    }

    #[test]
    fn connections_beyond_the_total_limit_are_refused() {
        let g = guard(2, 10);
        let ips: Vec<IpAddr> = (1..=3).map(|i| format!("192.0.2.{i}").parse().unwrap()).collect();

        let _p1 = g.admit(ips[0]).unwrap();
        let _p2 = g.admit(ips[1]).unwrap();
        let refused = g.admit(ips[2]);

        assert_eq!(refused.err(), Some(Refusal::Total));
        assert_eq!(g.open(), 2);
    }
}
