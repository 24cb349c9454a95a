//! The session actor in-process, alone in its test binary so this process's UDP sockets can be
//! counted: an offer whose request is dropped while the relay is answering it (a client that
//! reloads, a request timeout, a shutdown) leaves the relay idle and every socket closed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use livefilter_relay::codec::VideoCodec;
use livefilter_relay::feed::MediaSinks;
use livefilter_relay::ingest::VideoIngestConfig;
use livefilter_relay::metrics::Metrics;
use livefilter_relay::publish::KeyframeRequest;
use livefilter_relay::publish::peer::{PeerEvent, PeerOptions, SendPeer};
use livefilter_relay::session::{IngestConfig, SessionTimers, Sessions};
use livefilter_relay::slot::NewestSlot;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// UDP sockets this process holds.
fn udp_sockets() -> usize {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned)
        })
        .collect();
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

async fn wait_for_udp_sockets(expected: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while udp_sockets() != expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} UDP sockets open, expected {expected}", udp_sockets()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_dropped_while_it_is_being_answered_leaves_the_relay_idle_with_its_sockets_closed() {
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let (sessions, actor) = Sessions::start(
        IngestConfig {
            codecs: vec![VideoCodec::Vp8],
            udp_addrs: vec!["127.0.0.1:0".into()],
            tcp_addrs: vec![],
            public_ips: vec![],
            public_ips_file: None,
            udp_port_range: None,
            start_bitrate_kbps: 0,
            timers: SessionTimers::default(),
            video: VideoIngestConfig::default(),
        },
        MediaSinks::new(Arc::new(NewestSlot::new()), vec![], metrics.clone()),
        KeyframeRequest::default(),
        shutdown.clone(),
    );
    let (tx, mut events) = mpsc::channel(64);
    let options = PeerOptions::loopback(VideoCodec::Vp8);
    let sender = SendPeer::new(&options, tx, KeyframeRequest::default(), || {})
        .await
        .expect("sender");
    sender.offer().await.expect("offer");
    while let Some(e) = events.recv().await {
        if matches!(e, PeerEvent::GatheringComplete) {
            break;
        }
    }
    let offer = sender.local_sdp().await.expect("offer sdp");
    let before = udp_sockets();

    let mut abandoned = 0u64;
    for round in 1..=20 {
        let mut accept = Box::pin(sessions.accept("offer", offer.clone()));
        // The request goes away as soon as the relay has taken it up (answering). Now and then
        // the answer is already through by then: that request was served, not abandoned.
        let served = tokio::select! {
            biased;
            // The answer may be delivered in the very turn that shows the relay busy.
            _ = sessions.busy() => (&mut accept).now_or_never(),
            r = &mut accept => Some(r),
        };
        if let Some(r) = served {
            let accepted = r.expect("a good offer is answered");
            assert!(sessions.stop_session(&accepted.session).await, "round {round}");
            tokio::time::timeout(Duration::from_secs(5), sessions.idle())
                .await
                .expect("idle after stop");
            continue;
        }
        drop(accept);
        abandoned += 1;

        tokio::time::timeout(Duration::from_secs(5), sessions.idle())
            .await
            .expect("idle again after the abandoned request");
        let ended = metrics.sessions_ended.with_label_values(&["abandoned"]).get();
        assert_eq!(
            ended, abandoned,
            "round {round}: every abandoned request ended its session"
        );
        wait_for_udp_sockets(before).await;
        if abandoned == 5 {
            break;
        }
    }
    assert_eq!(abandoned, 5, "too few requests were dropped mid-way to prove anything");

    shutdown.cancel();
    actor.await.expect("the actor stops at shutdown");
}
