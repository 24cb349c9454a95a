//! A one-line summary every few seconds while a browser is live, so a person reading the log
//! sees whether the relay keeps up without scraping `/metrics`.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::time::Duration;

use livefilter_contract::status::{PublisherState, RelayStatus, SessionState};
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, relay_status};

/// How often the line is written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The line for the interval from `before` to `now`; `None` while no browser is live.
pub fn summary(before: &RelayStatus, now: &RelayStatus) -> Option<String> {
    let live = now.session.as_ref().is_some_and(|s| s.state == SessionState::Receiving);
    if !live {
        return None;
    }
    let decoded = now.frames.decoded.saturating_sub(before.frames.decoded);
    let dropped = now.frames.dropped_stale.saturating_sub(before.frames.dropped_stale);
    let (i, o, l) = (&now.input, &now.output, &now.latency_ms.total);
    let mut line = format!(
        "live: in {}x{} {:.1} fps, out {} {}x{} {:.1} fps, dropped {dropped} of {decoded} ({:.0} %), latency p50 {:.0} ms p95 {:.0} ms",
        i.width,
        i.height,
        i.fps,
        o.codec,
        o.width,
        o.height,
        o.fps,
        if decoded > 0 {
            dropped as f64 * 100.0 / decoded as f64
        } else {
            0.0
        },
        l.p50,
        l.p95,
    );
    for (name, p) in &now.publishers {
        let _ = write!(line, ", {name} {}", publisher_word(p.state));
        if let Some(v) = p.viewers {
            let _ = write!(line, " ({v} watching)");
        }
    }
    Some(line)
}

fn publisher_word(state: PublisherState) -> &'static str {
    match state {
        PublisherState::Starting => "starting",
        PublisherState::Idle => "idle",
        PublisherState::Connecting => "connecting",
        PublisherState::Connected => "connected",
        PublisherState::Backoff => "reconnecting",
        PublisherState::Stopped => "stopped",
        PublisherState::Unknown => "unknown",
    }
}

/// Writes the line every [`INTERVAL`] until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    let mut before = relay_status(&state);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let now = relay_status(&state);
                if let Some(line) = summary(&before, &now) {
                    tracing::info!("{line}");
                }
                before = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use livefilter_contract::status::{Frames, PublisherStatus, SessionView};

    use super::*;

    fn receiving(decoded: u64, dropped_stale: u64) -> RelayStatus {
        let mut s = RelayStatus {
            session: Some(SessionView {
                state: SessionState::Receiving,
                ..Default::default()
            }),
            frames: Frames {
                decoded,
                dropped_stale,
                ..Default::default()
            },
            ..Default::default()
        };
        s.input.width = 1280;
        s.input.height = 720;
        s.input.fps = 30.0;
        s.output.codec = "vp8".into();
        s.output.width = 1280;
        s.output.height = 720;
        s.output.fps = 20.0;
        s.latency_ms.total.p50 = 14.2;
        s.latency_ms.total.p95 = 31.0;
        s.publishers.insert(
            "sora".into(),
            PublisherStatus {
                state: PublisherState::Backoff,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn a_live_interval_reads_as_one_line_with_the_drops_of_that_interval() {
        let line = summary(&receiving(100, 10), &receiving(400, 110)).expect("live");

        assert_eq!(
            line,
            "live: in 1280x720 30.0 fps, out vp8 1280x720 20.0 fps, dropped 100 of 300 (33 %), latency p50 14 ms p95 31 ms, sora reconnecting"
        );
    }

    #[test]
    fn nothing_is_written_without_a_live_browser() {
        assert_eq!(summary(&RelayStatus::default(), &RelayStatus::default()), None);
    }
}
