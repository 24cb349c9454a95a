//! What wakes the reconcile: a watch event passes only when a field the reconcile decides on
//! changed. The operator's own status writes (and the observer's) change none of them, so they
//! never trigger a reconcile; the finalizer it adds does, as the finalizer helper expects.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::watcher;

use crate::crd::LiveFilterSession;
use crate::objects::HASH_ANNOTATION;

fn digest(parts: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// A session wakes the reconcile on a spec change (generation), on deletion, and when its
/// finalizers change; never on a status write.
pub fn session_relevance(s: &LiveFilterSession) -> u64 {
    let m = &s.metadata;
    digest(&(m.generation, m.deletion_timestamp.is_some(), &m.finalizers))
}

/// A relay Pod wakes the reconcile when what the conditions and the phase are made of changes.
pub fn pod_relevance(p: &Pod) -> u64 {
    let status = p.status.as_ref();
    let conditions: Vec<(&str, &str, Option<&str>)> = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready" || c.type_ == "PodScheduled")
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
        .collect();
    let waiting: Vec<Option<&str>> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .collect();
    digest(&(
        p.metadata.deletion_timestamp.is_some(),
        status.and_then(|s| s.phase.as_deref()),
        conditions,
        waiting,
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        status.and_then(|s| s.host_ip.as_deref()),
        status.and_then(|s| s.pod_ip.as_deref()),
        p.metadata.annotations.as_ref().and_then(|a| a.get(HASH_ANNOTATION)),
    ))
}

/// Other children (ConfigMap, Service, Ingress) wake it when they appear, are replaced or are
/// deleted; their content is the operator's own and compared by hash during the reconcile.
pub fn child_relevance<K: Resource>(k: &K) -> u64 {
    digest(&(k.meta().deletion_timestamp.is_some(), &k.meta().uid))
}

/// Passes an object on when its relevance changed since it was last seen, and always on
/// deletion; watch restarts re-list without re-triggering unchanged objects.
pub fn relevant<K, S>(events: S, relevance: fn(&K) -> u64) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut seen: HashMap<(Option<String>, String), u64> = HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(k) | watcher::Event::InitApply(k)) => {
                let key = (k.meta().namespace.clone(), k.meta().name.clone().unwrap_or_default());
                let h = relevance(&k);
                (seen.insert(key, h) != Some(h)).then_some(Ok(k))
            }
            Ok(watcher::Event::Delete(k)) => {
                seen.remove(&(k.meta().namespace.clone(), k.meta().name.clone().unwrap_or_default()));
                Some(Ok(k))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        std::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;
    use crate::crd::LiveFilterSessionStatus;

    fn session() -> LiveFilterSession {
        let spec: crate::crd::LiveFilterSessionSpec = serde_json::from_value(
            serde_json::json!({"output": {"sora": {"signalingUrls": ["wss://a/signaling"], "channelId": "c"}}}),
        )
        .unwrap();
        let mut s = LiveFilterSession::new("demo", spec);
        s.metadata.generation = Some(1);
        s.metadata.finalizers = Some(vec!["livefilter.dev/channel".into()]);
        s
    }

    #[test]
    fn a_status_write_does_not_wake_the_reconcile_but_a_spec_change_or_deletion_does() {
        let before = session();
        let mut status_written = before.clone();
        status_written.status = Some(LiveFilterSessionStatus::default());
        status_written.metadata.resource_version = Some("9".into());
        let mut spec_changed = before.clone();
        spec_changed.metadata.generation = Some(2);
        let mut deleting = before.clone();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        ));

        assert_eq!(session_relevance(&status_written), session_relevance(&before));
        assert_ne!(session_relevance(&spec_changed), session_relevance(&before));
        assert_ne!(session_relevance(&deleting), session_relevance(&before));
    }

    #[test]
    fn a_pod_becoming_ready_wakes_the_reconcile_but_an_annotation_from_the_operator_does_not() {
        let pending = Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ready = pending.clone();
        ready.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut annotated = ready.clone();
        annotated.metadata.annotations = Some([("livefilter.dev/filter-params".to_owned(), "{}".to_owned())].into());

        assert_ne!(pod_relevance(&pending), pod_relevance(&ready));
        assert_eq!(pod_relevance(&ready), pod_relevance(&annotated));
    }

    #[tokio::test]
    async fn only_relevant_changes_and_deletions_pass() {
        let a = session();
        let mut a_status = a.clone();
        a_status.status = Some(LiveFilterSessionStatus::default());
        let mut a_spec = a.clone();
        a_spec.metadata.generation = Some(2);
        let events = futures_util::stream::iter(vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(a.clone())),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(a_status)),
            Ok(watcher::Event::Apply(a_spec)),
            Ok(watcher::Event::Delete(a.clone())),
        ]);

        let passed: Vec<Option<i64>> = relevant(events, session_relevance)
            .map(|r| r.map(|s| s.metadata.generation).unwrap_or_default())
            .collect()
            .await;

        assert_eq!(passed, vec![Some(1), Some(2), Some(1)]);
    }
}
