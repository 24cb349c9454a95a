//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never reconcile
//! at once: the holder renews the Lease every `retry_period`; another replica takes it over only
//! after `lease_duration` without a renewal. A leader that cannot renew within `renew_deadline`
//! stops its work and reports the loss (the binary then exits, as client-go's leaders do).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// Lease timing and names.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// This replica (its Pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps working without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it (counting one more transition).
    Acquire {
        /// The new `leaseTransitions`.
        transitions: i32,
    },
    /// Someone else holds a live Lease.
    Wait {
        /// Its holder.
        holder: String,
    },
}

/// Decides from the Lease's spec (`None`: no Lease yet) what `me` may do at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp, default_duration: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire { transitions: 0 };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let next = spec.lease_transitions.unwrap_or(0).saturating_add(1);
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire { transitions: next };
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| SignedDuration::from_secs(i64::from(s)))
        .unwrap_or_else(|| SignedDuration::try_from(default_duration).unwrap_or(SignedDuration::from_secs(15)));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(t) if t.saturating_add(duration).is_ok_and(|expiry| expiry > now) => Decision::Wait {
            holder: holder.to_owned(),
        },
        _ => Decision::Acquire { transitions: next },
    }
}

/// The Lease spec after `decision` (not `Wait`) by `me` at `now`.
pub fn next_spec(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let mut spec = old.cloned().unwrap_or_default();
    if let Decision::Acquire { transitions } = decision {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(*transitions);
    }
    spec.holder_identity = Some(me.to_owned());
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(15));
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Why leading ended badly.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be renewed in time, or another replica took it.
    #[error("lost the leader Lease {0}; stopping so that only one replica reconciles")]
    Lost(String),
}

/// Acquires, renews and releases one Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    /// An elector for `settings`.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// Takes or renews the Lease; `Ok(false)` when another replica holds it or won a race.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let s = &self.settings;
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            let decision = Decision::Acquire { transitions: 0 };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(next_spec(None, &decision, &s.identity, now, s.lease_duration)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let decision = decide(lease.spec.as_ref(), &s.identity, now, s.lease_duration);
        if let Decision::Wait { .. } = decision {
            return Ok(false);
        }
        lease.spec = Some(next_spec(
            lease.spec.as_ref(),
            &decision,
            &s.identity,
            now,
            s.lease_duration,
        ));
        // `replace` carries the resourceVersion read above: a concurrent writer makes it fail
        // with 409 instead of both replicas believing they lead.
        match self.api.replace(&s.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (if still ours) so a standby replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let s = &self.settings;
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Renews every `retry_period` until `token` is cancelled or the Lease is lost. Each
    /// attempt is bounded by what is left of the renew deadline since the last successful
    /// renewal began (client-go semantics), so a hanging API server cannot stretch it; the
    /// deadline is shorter than the Lease, so the work stops before anyone else can lead.
    /// Returns `true` when the Lease was lost, `false` when `token` ended the renewing.
    pub async fn keep_renewing(&self, token: &CancellationToken) -> bool {
        let s = &self.settings;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = token.cancelled() => return false,
                () = tokio::time::sleep(s.retry_period) => {}
            }
            let started = tokio::time::Instant::now();
            let left = s.renew_deadline.saturating_sub(last_ok.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_ok = started,
                Ok(Ok(false)) => {
                    warn!(lease = %s.name, "another replica holds the Lease now");
                    return true;
                }
                Ok(Err(e)) if last_ok.elapsed() < s.renew_deadline => {
                    warn!(error = %e, "cannot renew the Lease; retrying");
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot renew the Lease before the deadline");
                    return true;
                }
                Err(_) => {
                    warn!(deadline = ?s.renew_deadline, "renewing the Lease did not finish before the renew deadline");
                    return true;
                }
            }
        }
    }

    /// Waits to lead, then runs `work` with a token that is cancelled when `shutdown` is or when
    /// the Lease is lost. Returns `Ok(None)` when shut down before leading.
    pub async fn lead<F, Fut, T>(&self, shutdown: CancellationToken, work: F) -> Result<Option<T>, LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let s = self.settings.clone();
        let mut standing_by = false;
        loop {
            match tokio::time::timeout(s.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => break,
                // Said once at INFO; every retry after that is DEBUG.
                Ok(Ok(false)) if !standing_by => {
                    standing_by = true;
                    info!(lease = %s.name, "another replica leads; standing by");
                }
                Ok(Ok(false)) => debug!(lease = %s.name, "another replica still leads"),
                Ok(Err(e)) => warn!(lease = %s.name, error = %e, "cannot read or take the Lease"),
                Err(_) => warn!(lease = %s.name, "reading the Lease timed out"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(s.retry_period) => {}
            }
        }
        info!(lease = %s.name, identity = %s.identity, "became the leader");

        let token = shutdown.child_token();
        let lost = CancellationToken::new();
        let renewer = {
            let elector = self.clone();
            let token = token.clone();
            let lost = lost.clone();
            tokio::spawn(
                async move {
                    if elector.keep_renewing(&token).await {
                        lost.cancel();
                        token.cancel();
                    }
                }
                .instrument(tracing::info_span!("lease-renewer")),
            )
        };

        // Losing the Lease drops the work at once (in-flight reconciles included): waiting for
        // it to wind down could outlast the Lease, and another replica may already lead.
        let out = tokio::select! {
            out = work(token.clone()) => Some(out),
            () = lost.cancelled() => None,
        };
        token.cancel();
        if let Err(e) = renewer.await {
            warn!(error = %e, "the Lease renewer ended abnormally");
        }
        let Some(out) = out.filter(|_| !lost.is_cancelled()) else {
            return Err(LeaderError::Lost(s.name));
        };
        match self.release().await {
            Ok(()) => info!(lease = %s.name, "released the Lease"),
            Err(e) => {
                warn!(lease = %s.name, error = %e, "cannot release the Lease; the next leader waits for it to expire")
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_yet_is_acquired() {
        assert_eq!(decide(None, "a", t(100), D), Decision::Acquire { transitions: 0 });
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(decide(Some(&held_by("a", 90)), "a", t(100), D), Decision::Renew);
    }

    #[test]
    fn a_live_lease_of_another_replica_is_left_alone() {
        assert_eq!(
            decide(Some(&held_by("b", 90)), "a", t(104), D),
            Decision::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over_with_one_more_transition() {
        assert_eq!(
            decide(Some(&held_by("b", 90)), "a", t(105), D),
            Decision::Acquire { transitions: 4 }
        );
        let mut released = held_by("b", 99);
        released.holder_identity = None;
        assert_eq!(
            decide(Some(&released), "a", t(100), D),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn taking_over_stamps_holder_times_and_transitions() {
        let old = held_by("b", 90);
        let spec = next_spec(Some(&old), &Decision::Acquire { transitions: 4 }, "a", t(200), D);

        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(200))));
        assert_eq!(spec.renew_time, Some(MicroTime(t(200))));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(15));

        let renewed = next_spec(Some(&spec), &Decision::Renew, "a", t(202), D);
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(200))));
        assert_eq!(renewed.renew_time, Some(MicroTime(t(202))));
        assert_eq!(renewed.lease_transitions, Some(4));
    }

    mod api {
        use http::{Method, Request, Response};
        use kube::client::Body;
        use serde_json::{Value, json};

        use super::super::*;

        async fn next(
            handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
        ) -> (Method, String, Value, tower_test::mock::SendResponse<Response<Body>>) {
            let (req, send) = handle.next_request().await.expect("a request");
            let (method, uri) = (req.method().clone(), req.uri().to_string());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (method, uri, body, send)
        }

        fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(body).unwrap()))
                    .unwrap(),
            );
        }

        #[tokio::test]
        async fn the_first_replica_creates_the_lease_naming_itself() {
            let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let elector = LeaderElector::new(
                kube::Client::new(svc, "default"),
                LeaseSettings::new("livefilter-operator", "livefilter-system", "op-a"),
            );
            let server = tokio::spawn(async move {
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri.as_str()),
                    (
                        Method::GET,
                        "/apis/coordination.k8s.io/v1/namespaces/livefilter-system/leases/livefilter-operator"
                    )
                );
                reply(
                    send,
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                );
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri.as_str()),
                    (
                        Method::POST,
                        "/apis/coordination.k8s.io/v1/namespaces/livefilter-system/leases?"
                    )
                );
                assert_eq!(body["spec"]["holderIdentity"], "op-a");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                reply(send, 201, &body);
            });

            let led = elector.try_acquire_or_renew().await.unwrap();

            server.await.unwrap();
            assert!(led);
        }

        #[tokio::test]
        async fn a_replica_that_loses_the_replace_race_does_not_lead() {
            let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let elector = LeaderElector::new(
                kube::Client::new(svc, "default"),
                LeaseSettings::new("livefilter-operator", "livefilter-system", "op-a"),
            );
            let server = tokio::spawn(async move {
                let (_, _, _, send) = next(&mut handle).await;
                reply(
                    send,
                    200,
                    &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": "livefilter-operator", "namespace": "livefilter-system", "resourceVersion": "7"},
                            "spec": {"holderIdentity": "op-b", "leaseDurationSeconds": 15, "renewTime": "2000-01-01T00:00:00.000000Z"}}),
                );
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, Method::PUT);
                assert_eq!(body["metadata"]["resourceVersion"], "7");
                assert_eq!(body["spec"]["holderIdentity"], "op-a");
                reply(
                    send,
                    409,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
                );
            });

            let led = elector.try_acquire_or_renew().await.unwrap();

            server.await.unwrap();
            assert!(!led);
        }

        #[tokio::test(start_paused = true)]
        async fn a_hanging_api_server_ends_the_leadership_within_the_renew_deadline() {
            let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let settings = LeaseSettings::new("livefilter-operator", "livefilter-system", "op-a");
            let elector = LeaderElector::new(kube::Client::new(svc, "default"), settings.clone());
            // The API server accepts every request and never answers.
            let swallow = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some((_, send)) = handle.next_request().await {
                    held.push(send);
                }
            });
            let token = CancellationToken::new();
            let started = tokio::time::Instant::now();

            let lost = elector.keep_renewing(&token).await;

            assert!(lost, "a Lease that cannot be renewed is lost");
            let waited = started.elapsed();
            assert!(
                waited <= settings.renew_deadline,
                "gave up after {waited:?} (virtual), deadline {:?}",
                settings.renew_deadline
            );
            assert!(
                waited < settings.lease_duration,
                "must stop before the Lease can expire"
            );
            swallow.abort();
        }
    }
}
