//! `livefilter-operator bench`: the real controller loop against the API double (in a process
//! of its own, over loopback HTTP) with many streaming sessions (Sora output, so no ImageFlux
//! calls), reporting reconcile latency, API requests per minute in steady state, status writes
//! per session per minute and the operator's RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures_util::future::BoxFuture;
use livefilter_contract::status::RelayStatus;
use livefilter_operator::apidouble::ApiDouble;
use livefilter_operator::controller::Settings;
use livefilter_operator::imageflux::ImageFluxClient;
use livefilter_operator::metrics::Metrics;
use livefilter_operator::observer::{FilterPatchError, ObserverSettings, RelayApi};
use livefilter_operator::ports::PortRange;
use livefilter_operator::runner::{self, RunConfig};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// Bench settings.
#[derive(Args)]
pub struct BenchArgs {
    /// Sessions to create.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// The status interval (seconds).
    #[arg(long, default_value_t = 10)]
    status_interval_secs: u64,
    /// Steady-state status intervals to measure.
    #[arg(long, default_value_t = 3)]
    intervals: u32,
}

/// Relays that all stream: frames keep flowing, latency wanders a little.
struct StreamingRelays {
    reads: AtomicU64,
}

impl RelayApi for StreamingRelays {
    fn fetch(&self, _base: String) -> BoxFuture<'static, Result<RelayStatus, String>> {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        // Latency wanders by more than the write tolerance, so every interval has news.
        let jitter = (n / 3 % 2) as f64 * 12.0;
        let doc = json!({
            "state": "publishing", "mode": "serve",
            "session": {"state": "receiving", "age_secs": 10.0, "codec": "vp8"},
            "input": {"width": 1280, "height": 720, "fps": 30.0},
            "output": {"codec": "vp8", "width": 1280, "height": 720, "fps": 30.0},
            "frames": {"received": n, "decoded": n, "filtered": n, "encoded": n, "sent": n},
            "latency_ms": {"total": {"p50": 20.0 + jitter, "p95": 30.0 + jitter, "p99": 40.0, "samples": 300}},
            "publishers": {"sora": {"state": "connected", "frames_sent": n}}
        });
        Box::pin(async move { serde_json::from_value(doc).map_err(|e| e.to_string()) })
    }

    fn patch_filter(
        &self,
        _base: String,
        _token: Option<String>,
        _patch: serde_json::Value,
    ) -> BoxFuture<'static, Result<(), FilterPatchError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Runs the bench and prints its figures.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

fn session(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "livefilter.dev/v1alpha1", "kind": "LiveFilterSession",
        "metadata": {"name": format!("s{i:04}"), "namespace": "bench"},
        "spec": {"output": {"sora": {"signalingUrls": ["wss://sora.example/signaling"], "channelId": format!("room-{i}")}}}
    })
}

/// The resident memory of process `pid`, from `/proc`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Quantile `q` of a histogram (seconds), interpolated linearly inside the bucket that holds
/// it (as Prometheus' `histogram_quantile` does), with that bucket's bounds.
fn quantile(h: &prometheus::Histogram, q: f64) -> (f64, f64, f64) {
    let metric = prometheus::core::Metric::metric(h);
    let hist = metric.get_histogram();
    let rank = q * hist.get_sample_count() as f64;
    let (mut lower, mut below) = (0.0, 0.0);
    for b in hist.get_bucket() {
        let count = b.cumulative_count() as f64;
        if count >= rank {
            let inside = count - below;
            let at = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return (lower + (b.upper_bound() - lower) * at, lower, b.upper_bound());
        }
        (lower, below) = (b.upper_bound(), count);
    }
    (f64::INFINITY, lower, f64::INFINITY)
}

/// Settings of the API double's own process.
#[derive(Args)]
pub struct DoubleArgs {
    /// Sessions it starts with.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
}

/// `livefilter-operator bench-api-double`: the API double with `sessions` sessions, served on a
/// free loopback port (printed first on stdout) until killed. The bench runs it beside itself so
/// that the operator's memory is measured without the double's.
pub fn serve_double(args: &DoubleArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let api = ApiDouble::new();
        for i in 0..args.sessions {
            api.put("livefiltersessions", session(i));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the API double")?;
        println!("{}", listener.local_addr()?.port());
        api.serve(listener).await.context("the API double stopped")
    })
}

/// The double's `/_double/stats`.
async fn stats(url: &str) -> anyhow::Result<serde_json::Value> {
    let stats = reqwest::get(format!("{url}/_double/stats"))
        .await
        .context("GET /_double/stats")?
        .json()
        .await
        .context("/_double/stats is not JSON")?;
    Ok(stats)
}

fn count(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // The API double runs in a process of its own: this one's memory is the operator's.
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut double = tokio::process::Command::new(exe)
        .args(["bench-api-double", "--sessions", &args.sessions.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the API double")?;
    let stdout = double.stdout.take().context("the API double's stdout")?;
    let port: u16 = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .context("the API double printed no port")?
        .trim()
        .parse()
        .context("the API double printed no port")?;
    let url = format!("http://127.0.0.1:{port}");
    let mut kube_config = kube::Config::new(url.parse().context("API double URL")?);
    kube_config.default_namespace = "bench".into();
    let client = kube::Client::try_from(kube_config).context("API client")?;

    let rss_before = rss_mib(std::process::id());
    let metrics = Metrics::new();
    let interval = Duration::from_secs(args.status_interval_secs.max(1));
    let config = RunConfig {
        namespace: Some("bench".into()),
        concurrency: 16,
        http_ports: "38000-39999".parse::<PortRange>().map_err(anyhow::Error::msg)?,
        udp_ports: "40000-41999".parse::<PortRange>().map_err(anyhow::Error::msg)?,
        settings: Settings {
            status_interval: interval,
            ..Settings::default()
        },
        observer: ObserverSettings {
            read_interval: Duration::from_secs(1),
            write_interval: interval,
            concurrency: 64,
        },
        instance: Some("bench".into()),
    };
    let imageflux = ImageFluxClient::new("http://127.0.0.1:9", None).context("ImageFlux client")?;
    let relays = Arc::new(StreamingRelays {
        reads: AtomicU64::new(0),
    });
    let token = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let loop_task = tokio::spawn(runner::run(
        client,
        imageflux,
        relays,
        metrics.clone(),
        config,
        token.clone(),
    ));

    loop {
        let streaming = count(&stats(&url).await?, "streaming");
        if streaming >= args.sessions as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {streaming} of {} sessions streaming after 10 min", args.sessions);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = started.elapsed();
    let before = stats(&url).await?;
    let steady = interval * args.intervals;
    tokio::time::sleep(steady).await;
    let after = stats(&url).await?;
    let requests = count(&after, "requests") - count(&before, "requests");
    let writes = count(&after, "status_writes") - count(&before, "status_writes");
    let rss = rss_mib(std::process::id());
    let rss_double = double.id().and_then(rss_mib);
    token.cancel();
    loop_task.await.context("the controller task")??;
    let _ = double.kill().await;

    let minutes = steady.as_secs_f64() / 60.0;
    println!("sessions:                         {}", args.sessions);
    println!("all Streaming after:              {:.1} s", converged.as_secs_f64());
    println!("reconciles:                       {}", metrics.reconcile_runs.get());
    for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
        let (at, low, high) = quantile(&metrics.reconcile_duration, q);
        println!(
            "reconcile {name}:                    {:.1} ms (interpolated in the bucket {:.1}-{:.1} ms)",
            at * 1000.0,
            low * 1000.0,
            high * 1000.0
        );
    }
    println!(
        "steady state measured:            {:.0} s ({} status intervals of {} s)",
        steady.as_secs_f64(),
        args.intervals,
        interval.as_secs()
    );
    println!("API requests per minute (steady): {:.0}", requests as f64 / minutes);
    println!(
        "status writes per session per minute (steady): {:.2} (limit {:.2})",
        writes as f64 / args.sessions as f64 / minutes,
        60.0 / interval.as_secs_f64()
    );
    let mib = |v: Option<f64>| v.map_or_else(|| "unknown".to_owned(), |m| format!("{m:.1} MiB"));
    println!(
        "RSS of the operator:              {} (before it started: {})",
        mib(rss),
        mib(rss_before)
    );
    println!(
        "RSS of the API double:            {} (its own process)",
        mib(rss_double)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_interpolated_inside_its_bucket() {
        let h = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t").buckets(vec![0.01, 0.1]))
            .expect("histogram");
        for _ in 0..50 {
            h.observe(0.005);
            h.observe(0.05);
        }

        let (p50, ..) = quantile(&h, 0.50);
        let (p99, low, high) = quantile(&h, 0.99);

        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        assert!((p99 - 0.0982).abs() < 1e-9, "{p99}");
        assert_eq!((low, high), (0.01, 0.1));
    }
}
