//! Pure decisions about a session's status: the relay's `/status` read leniently, the four
//! conditions, and the phase they add up to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{LatencyStatus, Percentiles, Phase, RelayMetrics};

/// Condition types.
pub mod condition {
    /// The channel (ImageFlux, Sora, WHIP) is known.
    pub const CHANNEL_READY: &str = "ChannelReady";
    /// The relay Pod is bound to a node.
    pub const RELAY_SCHEDULED: &str = "RelayScheduled";
    /// The relay answers its readiness probe.
    pub const RELAY_READY: &str = "RelayReady";
    /// The relay is publishing filtered video.
    pub const PUBLISHING: &str = "Publishing";
}

/// A condition's value before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// For people.
    pub message: String,
}

impl Cond {
    /// A `True` condition.
    pub fn yes(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "True",
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
    /// A `False` condition.
    pub fn no(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "False",
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
    /// An `Unknown` condition.
    pub fn unknown(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "Unknown",
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
    fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Sets `type_` in `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, type_: &str, c: &Cond, generation: Option<i64>, now: Timestamp) {
    let transition = match conditions.iter().find(|x| x.type_ == type_) {
        Some(old) if old.status == c.status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: type_.to_owned(),
        status: c.status.to_owned(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|x| x.type_ == type_) {
        Some(slot) => *slot = new,
        None => conditions.push(new),
    }
}

/// The status of condition `type_`, if set.
pub fn condition_status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

// ---------------------------------------------------------------------------------------------
// the relay's /status

/// The relay's `/status`, the contract crate's type (lenient: added fields are ignored).
pub use livefilter_contract::status::RelayStatus;
use livefilter_contract::status::{OverallState, PublisherState, PublisherStatus, SessionState};

/// Latency figures are kept to a tenth of a millisecond: finer digits are noise in
/// `kubectl get` and would make every read a status change.
fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

fn percentiles(w: &livefilter_contract::status::Percentiles) -> Option<Percentiles> {
    (!w.is_empty()).then(|| Percentiles {
        p50: Some(round_ms(w.p50)),
        p95: Some(round_ms(w.p95)),
        p99: Some(round_ms(w.p99)),
    })
}

/// The status block of a relay read at `now`.
pub fn relay_metrics(s: &RelayStatus, now: Timestamp) -> RelayMetrics {
    let total = percentiles(&s.latency_ms.total);
    let stages: BTreeMap<String, Percentiles> = s
        .latency_ms
        .stages
        .iter()
        .filter_map(|(k, w)| Some((k.clone(), percentiles(w)?)))
        .collect();
    let latency = (total.is_some() || !stages.is_empty()).then_some(LatencyStatus { total, stages });
    let state = match s.session.as_ref().map(|x| x.state) {
        Some(SessionState::Receiving) if streaming(s, None) => "publishing",
        Some(SessionState::Receiving) => "receiving",
        Some(SessionState::Connecting) => "connecting",
        Some(SessionState::Idle) => "idle",
        Some(SessionState::Unknown) => "unknown",
        None if streaming(s, None) => "publishing",
        None => "idle",
    };
    RelayMetrics {
        state: Some(state.to_owned()),
        fps_in: (s.input.fps > 0.0).then_some(round_ms(s.input.fps)),
        fps_out: (s.output.fps > 0.0).then_some(round_ms(s.output.fps)),
        dropped_frames: Some(s.frames.dropped_stale),
        latency_ms: latency,
        publishers: s
            .publishers
            .iter()
            .map(|(k, p)| (k.clone(), p.state.as_str().to_owned()))
            .collect(),
        updated_at: Some(Time(now)),
    }
}

/// Publishers that feed the SFU; the local preview is not one of them.
fn outputs(s: &RelayStatus) -> impl Iterator<Item = (&String, &PublisherStatus)> {
    s.publishers.iter().filter(|(name, _)| *name != "preview")
}

fn any_output(s: &RelayStatus, state: PublisherState) -> bool {
    outputs(s).any(|(_, p)| p.state == state)
}

/// Whether filtered video flows out now. In serve mode only while the browser's video arrives
/// and either a publisher is connected or more frames were sent than at the previous read
/// (`previous_sent`): a publisher that connected at start-up is not streaming by itself. The
/// test pattern streams while a publisher is connected.
pub fn streaming(s: &RelayStatus, previous_sent: Option<u64>) -> bool {
    let connected = any_output(s, PublisherState::Connected)
        || (outputs(s).next().is_none() && s.state == OverallState::Publishing);
    match &s.session {
        Some(session) => {
            session.state == SessionState::Receiving
                && (connected || previous_sent.is_some_and(|before| s.frames.sent > before))
        }
        None => connected,
    }
}

// ---------------------------------------------------------------------------------------------
// conditions and phase

/// The relay Pod as the operator sees it.
pub fn relay_scheduled(pod: Option<&Pod>) -> Cond {
    let Some(pod) = pod else {
        return Cond::no("PodMissing", "the relay Pod does not exist yet");
    };
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        return Cond::yes("Scheduled", format!("on node {node}"));
    }
    match pod_condition(pod, "PodScheduled") {
        Some((_, reason, message)) => Cond::no(reason.unwrap_or("Pending"), message.unwrap_or_default()),
        None => Cond::no("Pending", "waiting for the scheduler"),
    }
}

/// Whether the relay answers its readiness probe; otherwise why not.
pub fn relay_ready(pod: Option<&Pod>) -> Cond {
    let Some(pod) = pod else {
        return Cond::no("PodMissing", "the relay Pod does not exist yet");
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Cond::no("Terminating", "the relay Pod is being replaced");
    }
    let status = pod.status.as_ref();
    if let Some(phase @ ("Failed" | "Succeeded")) = status.and_then(|s| s.phase.as_deref()) {
        let why = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return Cond::no(
            "PodFailed",
            format!("the relay Pod ended ({phase}) {why}").trim_end().to_owned(),
        );
    }
    if let Some((status, _, _)) = pod_condition(pod, "Ready")
        && status == "True"
    {
        return Cond::yes("Ready", "the relay answers /readyz");
    }
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref());
    match waiting {
        Some(w) => Cond::no(
            w.reason.as_deref().unwrap_or("ContainerWaiting"),
            w.message
                .clone()
                .unwrap_or_else(|| "the relay container is waiting".into()),
        ),
        None => Cond::no("NotReady", "the relay does not answer /readyz yet"),
    }
}

/// Whether filtered video is going out, from the relay's `/status` (`None`: not read);
/// `previous_sent` is `frames.sent` at the read before.
pub fn publishing(relay_ready: &Cond, relay: Option<&Result<RelayStatus, String>>, previous_sent: Option<u64>) -> Cond {
    if !relay_ready.is_true() {
        return Cond::no("RelayNotReady", "the relay is not ready");
    }
    let s = match relay {
        None => return Cond::unknown("StatusNotRead", "the relay's /status has not been read yet"),
        Some(Err(e)) => return Cond::unknown("StatusUnavailable", format!("cannot read the relay's /status: {e}")),
        Some(Ok(s)) => s,
    };
    if streaming(s, previous_sent) {
        let names: Vec<&str> = outputs(s)
            .filter(|(_, p)| p.state == PublisherState::Connected)
            .map(|(n, _)| n.as_str())
            .collect();
        return Cond::yes(
            "Publishing",
            if names.is_empty() {
                "frames are being sent".into()
            } else {
                format!("connected: {}", names.join(", "))
            },
        );
    }
    if any_output(s, PublisherState::Stopped) {
        return Cond::no("PublisherStopped", "a publisher gave up; the relay is replaced");
    }
    if any_output(s, PublisherState::Backoff) {
        return Cond::no("PublisherBackoff", "a publisher lost its connection and is retrying");
    }
    match s.session.as_ref().map(|x| x.state) {
        Some(SessionState::Receiving) => Cond::no(
            "Receiving",
            "receiving the browser's video; the publisher is connecting",
        ),
        Some(SessionState::Connecting) => Cond::no(
            "BrowserConnecting",
            "a browser's offer was answered; waiting for its media",
        ),
        Some(SessionState::Idle | SessionState::Unknown) => Cond::no("Idle", "waiting for a browser's offer"),
        None => Cond::no(
            "PublisherConnecting",
            "the test pattern waits for its publisher to connect",
        ),
    }
}

/// What the phase is decided from.
#[derive(Clone, Debug)]
pub struct PhaseInputs<'a> {
    /// The object is being deleted.
    pub deleting: bool,
    /// ChannelReady.
    pub channel: &'a Cond,
    /// Whether a not-ready channel needs a person (a 4xx from the API) rather than time.
    pub channel_failed_permanently: bool,
    /// RelayReady.
    pub relay_ready: &'a Cond,
    /// Publishing.
    pub publishing: &'a Cond,
    /// The same relay Pod was ready before (so not-ready now is a degradation, not a start).
    pub was_ready: bool,
}

/// The phase the conditions add up to.
pub fn phase(i: &PhaseInputs<'_>) -> Phase {
    if i.deleting {
        return Phase::Terminating;
    }
    if !i.channel.is_true() {
        return if i.channel_failed_permanently {
            Phase::Failed
        } else {
            Phase::Pending
        };
    }
    if !i.relay_ready.is_true() {
        return if i.was_ready {
            Phase::Degraded
        } else {
            Phase::Provisioning
        };
    }
    if i.publishing.is_true() {
        return Phase::Streaming;
    }
    if matches!(i.publishing.reason.as_str(), "PublisherBackoff" | "PublisherStopped") {
        return Phase::Degraded;
    }
    Phase::Ready
}

fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<(&'a str, Option<&'a str>, Option<String>)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.as_str(), c.reason.as_deref(), c.message.clone()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec, PodStatus,
    };
    use serde_json::json;

    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn pod_with(node: Option<&str>, status: PodStatus) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(status),
            ..Pod::default()
        }
    }

    fn cond(type_: &str, status: &str) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            ..PodCondition::default()
        }
    }

    fn read(v: serde_json::Value) -> RelayStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn relay_status_with_every_field_becomes_the_metrics_block_rounded_to_a_tenth() {
        let v = json!({
            "state": "publishing", "mode": "serve",
            "session": {"state": "receiving", "age_secs": 3.0, "codec": "vp8"},
            "input": {"width": 1280, "height": 720, "fps": 29.5},
            "output": {"codec": "vp8", "width": 1280, "height": 720, "fps": 30},
            "frames": {"received": 100, "dropped_stale": 3, "sent": 97},
            "latency_ms": {"total": {"p50": 20.0, "p95": 24.972347999999997, "p99": 50.0, "samples": 90},
                           "stages": {"filter": {"p50": 8.0, "p95": 12.0, "p99": 15.0, "samples": 90},
                                      "encode": {"p50": 0.0, "p95": 0.0, "p99": 0.0, "samples": 0}}},
            "publishers": {"sora": {"state": "connected", "frames_sent": 97}}
        });

        let m = relay_metrics(&read(v), t(1_700_000_000));

        assert_eq!(m.state.as_deref(), Some("publishing"));
        assert_eq!(m.fps_in, Some(29.5));
        assert_eq!(m.fps_out, Some(30.0));
        assert_eq!(m.dropped_frames, Some(3));
        let lat = m.latency_ms.unwrap();
        assert_eq!(
            lat.total,
            Some(Percentiles {
                p50: Some(20.0),
                p95: Some(25.0),
                p99: Some(50.0)
            })
        );
        assert_eq!(lat.stages["filter"].p95, Some(12.0));
        assert!(!lat.stages.contains_key("encode"), "an empty window says nothing");
        assert_eq!(m.publishers["sora"], "connected");
        assert_eq!(m.updated_at, Some(Time(t(1_700_000_000))));
    }

    #[test]
    fn a_relay_status_with_added_fields_and_states_is_still_read() {
        let v = json!({"state": "draining", "health": {"ok": true}, "publishers": {"sora": {"state": "paused"}}});

        let s: RelayStatus = serde_json::from_value(v).unwrap();

        assert_eq!(relay_metrics(&s, t(0)).latency_ms, None);
        assert_eq!(relay_metrics(&s, t(0)).publishers["sora"], "unknown");
    }

    #[test]
    fn set_condition_keeps_the_transition_time_while_the_status_holds() {
        let mut cs = Vec::new();
        set_condition(&mut cs, "RelayReady", &Cond::no("NotReady", "a"), Some(1), t(100));
        set_condition(
            &mut cs,
            "RelayReady",
            &Cond::no("ContainerCreating", "b"),
            Some(2),
            t(200),
        );
        assert_eq!(cs[0].last_transition_time, Time(t(100)));
        assert_eq!(cs[0].reason, "ContainerCreating");
        assert_eq!(cs[0].observed_generation, Some(2));

        set_condition(&mut cs, "RelayReady", &Cond::yes("Ready", "c"), Some(2), t(300));

        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, Time(t(300)));
        assert_eq!(cs[0].status, "True");
    }

    #[test]
    fn an_unschedulable_pod_reports_the_schedulers_reason() {
        let mut c = cond("PodScheduled", "False");
        c.reason = Some("Unschedulable".into());
        c.message = Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into());
        let pod = pod_with(
            None,
            PodStatus {
                conditions: Some(vec![c]),
                ..PodStatus::default()
            },
        );

        let r = relay_scheduled(Some(&pod));

        assert_eq!(
            r,
            Cond::no(
                "Unschedulable",
                "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            )
        );
    }

    #[test]
    fn a_crash_looping_relay_is_not_ready_with_the_kubelets_reason() {
        let cs = ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: Some("back-off 40s".into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let pod = pod_with(
            Some("gpu-1"),
            PodStatus {
                conditions: Some(vec![cond("Ready", "False")]),
                container_statuses: Some(vec![cs]),
                ..PodStatus::default()
            },
        );

        assert_eq!(relay_scheduled(Some(&pod)), Cond::yes("Scheduled", "on node gpu-1"));
        assert_eq!(relay_ready(Some(&pod)), Cond::no("CrashLoopBackOff", "back-off 40s"));
    }

    #[test]
    fn a_serve_relay_whose_publisher_connected_at_start_up_is_idle_until_a_browser_sends() {
        let ready = Cond::yes("Ready", "");
        let idle_connected = Ok(read(json!({
            "state": "idle", "mode": "serve", "session": {"state": "idle"},
            "frames": {"sent": 0}, "publishers": {"sora": {"state": "connected"}}
        })));
        let receiving = Ok(read(json!({
            "state": "publishing", "mode": "serve", "session": {"state": "receiving"},
            "frames": {"sent": 120}, "publishers": {"sora": {"state": "connected"}}
        })));
        let left = Ok(read(json!({
            "state": "idle", "mode": "serve", "session": {"state": "idle"},
            "frames": {"sent": 120}, "publishers": {"sora": {"state": "connected"}}
        })));

        assert_eq!(publishing(&ready, Some(&idle_connected), None).reason, "Idle");
        assert_eq!(
            publishing(&ready, Some(&receiving), Some(0)),
            Cond::yes("Publishing", "connected: sora")
        );
        assert_eq!(publishing(&ready, Some(&left), Some(120)).reason, "Idle");
    }

    #[test]
    fn publishing_follows_the_relay_state_and_publishers() {
        let ready = Cond::yes("Ready", "");
        let backoff = Ok(read(json!({
            "state": "receiving", "session": {"state": "receiving"},
            "publishers": {"sora": {"state": "backoff"}}
        })));
        let stopped = Ok(read(
            json!({"session": {"state": "idle"}, "publishers": {"sora": {"state": "stopped"}}}),
        ));
        let preview_only = Ok(read(json!({
            "state": "publishing", "session": {"state": "receiving"}, "frames": {"sent": 10},
            "publishers": {"sora": {"state": "connecting"}, "preview": {"state": "connected", "frames_sent": 10}}
        })));
        let test_pattern = Ok(read(json!({"state": "idle", "mode": "test-pattern", "session": null,
            "publishers": {"sora": {"state": "connecting"}}})));
        let test_pattern_live = Ok(read(
            json!({"state": "publishing", "mode": "test-pattern", "session": null,
            "publishers": {"sora": {"state": "connected"}}}),
        ));

        assert_eq!(publishing(&ready, Some(&backoff), None).reason, "PublisherBackoff");
        assert_eq!(publishing(&ready, Some(&stopped), None).reason, "PublisherStopped");
        assert_eq!(
            publishing(&ready, Some(&preview_only), Some(10)).reason,
            "Receiving",
            "a preview viewer is not the SFU"
        );
        assert_eq!(
            publishing(&ready, Some(&test_pattern), None).reason,
            "PublisherConnecting"
        );
        assert_eq!(publishing(&ready, Some(&test_pattern_live), None).status, "True");
        assert_eq!(publishing(&ready, Some(&Err("timeout".into())), None).status, "Unknown");
        assert_eq!(
            publishing(&Cond::no("NotReady", ""), Some(&test_pattern_live), None).reason,
            "RelayNotReady"
        );
    }

    #[test]
    fn frames_sent_increasing_while_receiving_is_streaming_without_a_named_publisher() {
        let s = read(json!({"session": {"state": "receiving"}, "frames": {"sent": 50}, "publishers": {}}));

        assert!(streaming(&s, Some(40)));
        assert!(!streaming(&s, Some(50)));
        assert!(!streaming(&s, None));
    }

    #[test]
    fn phase_is_decided_in_order_channel_relay_publishing() {
        let yes = Cond::yes("X", "");
        let no = Cond::no("X", "");
        let backoff = Cond::no("PublisherBackoff", "");
        let p = |channel: &Cond, permanent, relay: &Cond, publishing: &Cond, was_ready| {
            phase(&PhaseInputs {
                deleting: false,
                channel,
                channel_failed_permanently: permanent,
                relay_ready: relay,
                publishing,
                was_ready,
            })
        };

        assert_eq!(p(&no, false, &no, &no, false), Phase::Pending);
        assert_eq!(p(&no, true, &no, &no, false), Phase::Failed);
        assert_eq!(p(&yes, false, &no, &no, false), Phase::Provisioning);
        assert_eq!(p(&yes, false, &no, &no, true), Phase::Degraded);
        assert_eq!(p(&yes, false, &yes, &no, true), Phase::Ready);
        assert_eq!(p(&yes, false, &yes, &yes, true), Phase::Streaming);
        assert_eq!(p(&yes, false, &yes, &backoff, true), Phase::Degraded);
        let deleting = PhaseInputs {
            deleting: true,
            channel: &yes,
            channel_failed_permanently: false,
            relay_ready: &yes,
            publishing: &yes,
            was_ready: true,
        };
        assert_eq!(phase(&deleting), Phase::Terminating);
    }
}
