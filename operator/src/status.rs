//! Pure decisions about a session's status: the relay's `/status` read leniently, the four
//! conditions, and the phase they add up to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

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

/// What the relay's `/status` said, every field optional: an older or newer relay must never
/// break the operator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayStatus {
    /// `idle`, `receiving`, `publishing`.
    pub state: Option<String>,
    /// Input frame rate.
    pub fps_in: Option<f64>,
    /// Output frame rate.
    pub fps_out: Option<f64>,
    /// Frames dropped as stale.
    pub dropped: Option<u64>,
    /// Total latency.
    pub total: Option<Percentiles>,
    /// Per-stage latency.
    pub stages: BTreeMap<String, Percentiles>,
    /// Publisher name to state (`connecting`, `connected`, `backoff`, `stopped`).
    pub publishers: BTreeMap<String, String>,
}

impl RelayStatus {
    /// Reads the JSON leniently: a missing or mistyped field is simply absent.
    pub fn from_json(v: &Value) -> Self {
        let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
        let percentiles = |v: &Value| -> Option<Percentiles> {
            let p = Percentiles {
                p50: v.get("p50").and_then(Value::as_f64),
                p95: v.get("p95").and_then(Value::as_f64),
                p99: v.get("p99").and_then(Value::as_f64),
            };
            (p != Percentiles::default()).then_some(p)
        };
        let stages = v
            .pointer("/latency_ms/stages")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), percentiles(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let publishers = v
            .get("publishers")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.get("state")?.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            state: v.get("state").and_then(Value::as_str).map(str::to_owned),
            fps_in: f("/input/fps"),
            fps_out: f("/output/fps"),
            dropped: v.pointer("/frames/dropped_stale").and_then(Value::as_u64),
            total: v.pointer("/latency_ms/total").and_then(percentiles),
            stages,
            publishers,
        }
    }

    /// The status block, stamped with when it was read.
    pub fn to_metrics(&self, now: Timestamp) -> RelayMetrics {
        let latency = (self.total.is_some() || !self.stages.is_empty()).then(|| LatencyStatus {
            total: self.total,
            stages: self.stages.clone(),
        });
        RelayMetrics {
            state: self.state.clone(),
            fps_in: self.fps_in,
            fps_out: self.fps_out,
            dropped_frames: self.dropped,
            latency_ms: latency,
            publishers: self.publishers.clone(),
            updated_at: Some(Time(now)),
        }
    }

    /// Publishers that feed the SFU; the local preview is not one of them.
    fn outputs(&self) -> impl Iterator<Item = (&String, &String)> {
        self.publishers.iter().filter(|(name, _)| *name != "preview")
    }

    fn publishing(&self) -> bool {
        match self.outputs().count() {
            0 => self.state.as_deref() == Some("publishing"),
            _ => self.outputs().any(|(_, s)| s == "connected"),
        }
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

/// Whether filtered video is going out, from the relay's `/status` (`None`: not read).
pub fn publishing(relay_ready: &Cond, relay: Option<&Result<RelayStatus, String>>) -> Cond {
    if !relay_ready.is_true() {
        return Cond::no("RelayNotReady", "the relay is not ready");
    }
    match relay {
        None => Cond::unknown("StatusNotRead", "the relay's /status has not been read yet"),
        Some(Err(e)) => Cond::unknown("StatusUnavailable", format!("cannot read the relay's /status: {e}")),
        Some(Ok(s)) if s.publishing() => {
            let names: Vec<&str> = s
                .outputs()
                .filter(|(_, st)| *st == "connected")
                .map(|(n, _)| n.as_str())
                .collect();
            Cond::yes(
                "Publishing",
                if names.is_empty() {
                    "publishing".into()
                } else {
                    format!("connected: {}", names.join(", "))
                },
            )
        }
        Some(Ok(s)) if s.outputs().any(|(_, st)| st == "backoff") => {
            Cond::no("PublisherBackoff", "a publisher lost its connection and is retrying")
        }
        Some(Ok(s)) if matches!(s.state.as_deref(), Some("receiving" | "publishing")) => Cond::no(
            "Receiving",
            "receiving the browser's video; the publisher is connecting",
        ),
        Some(Ok(_)) => Cond::no("Idle", "waiting for a browser's offer"),
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
    if i.publishing.reason == "PublisherBackoff" {
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

    #[test]
    fn relay_status_with_every_field_becomes_the_metrics_block() {
        let v = json!({
            "state": "publishing", "mode": "serve",
            "input": {"width": 1280, "height": 720, "fps": 29.5},
            "output": {"codec": "vp8", "width": 1280, "height": 720, "fps": 30},
            "frames": {"received": 100, "dropped_stale": 3},
            "latency_ms": {"total": {"p50": 20.0, "p95": 35.5, "p99": 50.0},
                           "stages": {"filter": {"p50": 8.0, "p95": 12.0, "p99": 15.0}}},
            "publishers": {"sora": {"state": "connected", "frames_sent": 97}}
        });

        let m = RelayStatus::from_json(&v).to_metrics(t(1_700_000_000));

        assert_eq!(m.state.as_deref(), Some("publishing"));
        assert_eq!(m.fps_in, Some(29.5));
        assert_eq!(m.fps_out, Some(30.0));
        assert_eq!(m.dropped_frames, Some(3));
        let lat = m.latency_ms.unwrap();
        assert_eq!(
            lat.total,
            Some(Percentiles {
                p50: Some(20.0),
                p95: Some(35.5),
                p99: Some(50.0)
            })
        );
        assert_eq!(lat.stages["filter"].p95, Some(12.0));
        assert_eq!(m.publishers["sora"], "connected");
        assert_eq!(m.updated_at, Some(Time(t(1_700_000_000))));
    }

    #[test]
    fn relay_status_with_missing_or_mistyped_fields_is_read_as_far_as_it_goes() {
        let v = json!({"state": 7, "input": "x", "frames": {"dropped_stale": "many"}, "publishers": {"sora": 1}});

        let s = RelayStatus::from_json(&v);

        assert_eq!(s, RelayStatus::default());
        assert_eq!(s.to_metrics(t(0)).latency_ms, None);
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
    fn publishing_follows_the_relay_state_and_publishers() {
        let ready = Cond::yes("Ready", "");
        let idle = Ok(RelayStatus {
            state: Some("idle".into()),
            ..RelayStatus::default()
        });
        let backoff = Ok(RelayStatus {
            state: Some("receiving".into()),
            publishers: BTreeMap::from([("sora".into(), "backoff".into())]),
            ..RelayStatus::default()
        });
        let live = Ok(RelayStatus {
            state: Some("publishing".into()),
            publishers: BTreeMap::from([("sora".into(), "connected".into())]),
            ..RelayStatus::default()
        });

        assert_eq!(publishing(&ready, Some(&idle)).reason, "Idle");
        assert_eq!(publishing(&ready, Some(&backoff)).reason, "PublisherBackoff");
        assert_eq!(
            publishing(&ready, Some(&live)),
            Cond::yes("Publishing", "connected: sora")
        );
        let preview_only = Ok(RelayStatus {
            state: Some("publishing".into()),
            publishers: BTreeMap::from([
                ("sora".into(), "connecting".into()),
                ("preview".into(), "connected".into()),
            ]),
            ..RelayStatus::default()
        });
        assert_eq!(
            publishing(&ready, Some(&preview_only)).reason,
            "Receiving",
            "a preview viewer is not the SFU"
        );
        assert_eq!(publishing(&ready, Some(&Err("timeout".into()))).status, "Unknown");
        assert_eq!(
            publishing(&Cond::no("NotReady", ""), Some(&live)).reason,
            "RelayNotReady"
        );
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
