//! The reconcile loop: finalizer, ImageFlux channel, relay ConfigMap/Pod/Service/Ingress,
//! status, events. Everything it decides is computed by the pure modules (`objects`,
//! `relay_config`, `status`, `ports`); this module only sequences the I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, warn};

use crate::crd::{
    AdvertiseFrom, ChannelStatus, ImageFluxOutput, KeyRef, LiveFilterSession, LiveFilterSessionStatus, OutputKind,
    Phase, PortPolicy, PortsStatus,
};
use crate::imageflux::{Deleted, HlsAudio, HlsRenditionRequest, HlsVideo, ImageFluxClient, ImageFluxError};
use crate::metrics::Metrics;
use crate::objects::{
    self, FILTER_PARAMS_ANNOTATION, HASH_ANNOTATION, MANAGER, Names, PUBLIC_IP_ANNOTATION, RelayDefaults,
};
use crate::observer::{Observer, Target};
use crate::ports::{PortAllocator, PortError};
use crate::relay_config::{self, ConfigBuildError};
use crate::status::{self, Cond, PhaseInputs, condition};

/// The finalizer that keeps a session until its ImageFlux channel is deleted.
pub const FINALIZER: &str = "livefilter.dev/channel";

/// Provider names in `status.channel.provider`.
pub mod provider {
    /// A channel created (and deleted) by the operator.
    pub const IMAGEFLUX: &str = "ImageFlux";
    /// An existing Sora channel.
    pub const SORA: &str = "Sora";
    /// A WHIP endpoint.
    pub const WHIP: &str = "Whip";
}

/// Everything that can make a reconcile fail; each kind is a label of the failures counter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API server call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The ImageFlux API failed.
    #[error("ImageFlux API: {0}")]
    ImageFlux(#[from] ImageFluxError),
    /// A Secret (or its key) the spec names is missing.
    #[error("{0}")]
    Secret(String),
    /// No ports are left, or a recorded port is taken.
    #[error("{0}")]
    Ports(#[from] PortError),
    /// The objects could not be built.
    #[error("{0}")]
    Build(String),
    /// An object the operator would manage belongs to someone else.
    #[error("{kind} {name} exists and is not owned by this session; delete or rename it")]
    NotOwned {
        /// The kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// The owned-object caches did not fill (often missing RBAC for one of the kinds).
    #[error(
        "the caches of Pods, ConfigMaps, Services and Ingresses did not fill within {0:?}; check the operator's RBAC"
    )]
    CacheNotReady(Duration),
    /// Adding or removing the finalizer failed, or wraps the errors above.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The `error` label of the failures counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::ImageFlux(_) => "imageflux",
            Self::Secret(_) => "secret",
            Self::Ports(_) => "ports",
            Self::Build(_) => "build",
            Self::NotOwned { .. } => "not_owned",
            Self::CacheNotReady(_) => "cache",
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }
}

pub use crate::observer::{HttpRelayApi, RelayApi};

/// The caches of the objects sessions own, fed by watches (in tests, filled by hand).
#[derive(Clone)]
pub struct Stores {
    /// Relay Pods.
    pub pods: Store<Pod>,
    /// Relay ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// `/offer` Services.
    pub services: Store<Service>,
    /// `/offer` Ingresses.
    pub ingresses: Store<Ingress>,
}

impl Stores {
    /// Waits until every cache holds its initial list, so that "not in the cache" means "does
    /// not exist" rather than "not listed yet".
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        let all = async {
            // A dropped writer means the operator is shutting down; the reconcile fails soon anyway.
            let _ = self.pods.wait_until_ready().await;
            let _ = self.config_maps.wait_until_ready().await;
            let _ = self.services.wait_until_ready().await;
            let _ = self.ingresses.wait_until_ready().await;
        };
        tokio::time::timeout(limit, all)
            .await
            .map_err(|_| Error::CacheNotReady(limit))
    }
}

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default relay images and GPU resource.
    pub images: RelayDefaults,
    /// The ImageFlux token Secret of sessions that name none.
    pub default_token_secret: String,
    /// How often a ready relay's `/status` is read.
    pub status_interval: Duration,
    /// How soon a session that is still starting is looked at again.
    pub provisioning_interval: Duration,
    /// How long a relay that was ready may stay not ready before its Pod is replaced.
    pub not_ready_grace: Duration,
    /// Images sessions may name in `spec.relay.image` (a trailing `*` matches any suffix);
    /// the operator's own relay images are always allowed.
    pub allowed_images: Vec<String>,
    /// Delete ImageFlux channels no session records (the operator owns the account).
    pub delete_orphan_channels: bool,
    /// How often the channel sweep lists each ImageFlux account (a stray is reported on its
    /// second sighting, so within two of these).
    pub channel_sweep_interval: Duration,
}

impl Settings {
    /// Where a session's ImageFlux token is: its own reference, or the default Secret.
    pub fn imageflux_token_ref(&self, flux: &ImageFluxOutput) -> KeyRef {
        flux.token_secret_ref.clone().unwrap_or_else(|| KeyRef {
            name: self.default_token_secret.clone(),
            key: None,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            images: RelayDefaults::default(),
            default_token_secret: "imageflux".to_owned(),
            status_interval: Duration::from_secs(10),
            provisioning_interval: Duration::from_secs(5),
            not_ready_grace: Duration::from_secs(60),
            allowed_images: Vec::new(),
            delete_orphan_channels: false,
            channel_sweep_interval: Duration::from_secs(20),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The ImageFlux API.
    pub imageflux: ImageFluxClient,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Host ports.
    pub ports: Mutex<PortAllocator>,
    /// Owned-object caches.
    pub stores: Stores,
    /// Reads relays apart from the reconcile.
    pub observer: Arc<Observer>,
    /// Settings.
    pub settings: Settings,
    /// The time (tests pin it).
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Channels created in this process, by session uid: a reconcile that runs on a cached
    /// object older than its own status write must still never create a second channel.
    created_channels: Mutex<HashMap<String, ChannelStatus>>,
    /// Consecutive failures per session, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Sessions (by uid) whose cleanup finished: a reconcile on a stale cached copy after the
    /// finalizer went must not delete the channel again.
    cleaned: Mutex<HashSet<String>>,
    /// ImageFlux channels this process deleted.
    deleted_channels: Mutex<HashSet<String>>,
    /// CreateMultistreamChannel calls not yet answered: the sweep judges no account meanwhile,
    /// since a channel may exist that no one could record yet.
    creates_in_flight: AtomicUsize,
    /// Sessions (by uid) whose earlier channel request may have created a channel that was
    /// never recorded; the sweep reports what it finds on them.
    interrupted: Mutex<HashSet<String>>,
}

impl Context {
    /// A context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        imageflux: ImageFluxClient,
        recorder: Recorder,
        metrics: Metrics,
        ports: PortAllocator,
        stores: Stores,
        observer: Arc<Observer>,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            imageflux,
            recorder,
            metrics,
            ports: Mutex::new(ports),
            stores,
            observer,
            settings,
            clock: Arc::new(Timestamp::now),
            created_channels: Mutex::default(),
            failures: Mutex::default(),
            cleaned: Mutex::default(),
            deleted_channels: Mutex::default(),
            creates_in_flight: AtomicUsize::new(0),
            interrupted: Mutex::default(),
        }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The channel ids sessions created in this process and have not deleted.
    pub fn live_created_channels(&self) -> HashSet<String> {
        self.created_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|c| c.id.clone())
            .collect()
    }

    /// Whether a CreateMultistreamChannel call is waiting for its answer.
    pub fn creating_channels(&self) -> bool {
        self.creates_in_flight.load(Ordering::SeqCst) > 0
    }

    /// The sessions (by uid) whose earlier channel request was interrupted, taken out.
    pub fn take_interrupted(&self, uids: &HashSet<String>) -> HashSet<String> {
        let mut set = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        let taken: HashSet<String> = set.intersection(uids).cloned().collect();
        set.retain(|u| !taken.contains(u));
        taken
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, PortAllocator> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an Event about `session` (a failure to publish is logged, not returned).
    pub async fn event(&self, session: &LiveFilterSession, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &session.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// `namespace/name`, the key for ports, metrics and backoff.
pub fn session_key(s: &LiveFilterSession) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

/// Claims every session's recorded ports, oldest first, before the controller hands out new
/// ones. Returns the sessions whose recorded ports clashed (they get new ports on reconcile).
pub fn rebuild_ports(allocator: &mut PortAllocator, sessions: &[LiveFilterSession]) -> Vec<(String, PortError)> {
    let mut sorted: Vec<&LiveFilterSession> = sessions.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.creation_timestamp.clone().map(|t| t.0), session_key(s)));
    let mut clashes = Vec::new();
    for s in sorted {
        let recorded = match s.spec.network.ports.policy {
            PortPolicy::Static => s
                .spec
                .network
                .ports
                .http
                .zip(s.spec.network.ports.udp)
                .map(|(http, udp)| PortsStatus { http, udp }),
            PortPolicy::Dynamic => s.status.as_ref().and_then(|st| st.ports),
        };
        if let Some(p) = recorded
            && let Err(e) = allocator.claim(&session_key(s), p)
        {
            clashes.push((session_key(s), e));
        }
    }
    clashes
}

/// The controller's reconcile: the finalizer decides between apply and cleanup.
pub async fn reconcile(session: Arc<LiveFilterSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let ns = session
        .namespace()
        .ok_or_else(|| Error::Build("the session has no namespace".into()))?;
    let api: Api<LiveFilterSession> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", session = %session_key(&session));
    let uid = session.uid().unwrap_or_default();
    if session.metadata.deletion_timestamp.is_some()
        && ctx.cleaned.lock().unwrap_or_else(|p| p.into_inner()).contains(&uid)
    {
        // A stale cached copy after the cleanup: the channel is gone and the finalizer is
        // being (or was) removed; only a fresh read can say whether anything is left to do.
        let fresh = api.get_opt(&session.name_any()).await?;
        let ours = fresh.as_ref().filter(|f| f.uid().as_deref() == Some(uid.as_str()));
        if ours.is_none_or(|f| !f.finalizers().iter().any(|x| x == FINALIZER)) {
            return Ok(Action::await_change());
        }
    }
    finalizer(&api, FINALIZER, session, |event| async {
        match event {
            Finalized::Apply(s) => apply(s, &ctx).await,
            Finalized::Cleanup(s) => cleanup(s, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// After a failure: count it and retry with exponential backoff (5 s doubling to 5 min).
pub fn error_policy(session: Arc<LiveFilterSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.kind());
    let key = session_key(&session);
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n);
    warn!(session = %key, error = %error, attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The retry delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << n.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Reads the key `r` names (or `default_key`) of a Secret in `ns`, trimmed.
pub async fn read_secret(ctx: &Context, ns: &str, r: &crate::crd::KeyRef, default_key: &str) -> Result<String, Error> {
    let key = r.key_or(default_key);
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::Secret(format!("Secret {ns}/{} not found", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Error::Secret(format!("Secret {ns}/{} has no key {key:?}", r.name)))?;
    let text = String::from_utf8(bytes.0.clone())
        .map_err(|_| Error::Secret(format!("Secret {ns}/{} key {key:?} is not UTF-8", r.name)))?;
    Ok(text.trim().to_owned())
}

fn hls_renditions(s: &LiveFilterSession) -> Vec<HlsRenditionRequest> {
    let Some(flux) = &s.spec.output.imageflux else {
        return Vec::new();
    };
    if !flux.hls.enabled {
        return Vec::new();
    }
    let v = &s.spec.video;
    if flux.hls.renditions.is_empty() {
        return vec![HlsRenditionRequest {
            duration_seconds: 1,
            start_time_offset: -2,
            video: HlsVideo::new(
                v.width,
                v.height,
                v.fps.min(60),
                v.bitrate_kbps.saturating_mul(1000),
                Default::default(),
            ),
            audio: HlsAudio { bps: 96_000 },
        }];
    }
    flux.hls
        .renditions
        .iter()
        .map(|r| HlsRenditionRequest {
            duration_seconds: r.duration_seconds,
            start_time_offset: -2,
            video: HlsVideo::new(r.width, r.height, r.fps, r.video_bps, r.codec),
            audio: HlsAudio { bps: r.audio_bps },
        })
        .collect()
}

async fn patch_status(
    ctx: &Context,
    s: &LiveFilterSession,
    status: &LiveFilterSessionStatus,
) -> Result<LiveFilterSession, Error> {
    let ns = s.namespace().unwrap_or_default();
    let api: Api<LiveFilterSession> = Api::namespaced(ctx.client.clone(), &ns);
    // `metrics` belongs to the observer's field manager; leaving it out keeps it as written.
    let mut status = serde_json::to_value(status).unwrap_or_default();
    if let Some(m) = status.as_object_mut() {
        m.remove("metrics");
    }
    let patch = json!({
        "apiVersion": "livefilter.dev/v1alpha1",
        "kind": "LiveFilterSession",
        "status": status,
    });
    ctx.metrics.status_writes.with_label_values(&["reconcile"]).inc();
    Ok(api
        .patch_status(
            &s.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?)
}

/// What the channel step ended with.
struct ChannelStep {
    cond: Cond,
    permanent: bool,
    error: Option<Error>,
}

async fn ensure_channel(
    s: &LiveFilterSession,
    status: &mut LiveFilterSessionStatus,
    ctx: &Context,
) -> Result<ChannelStep, Error> {
    let ns = s.namespace().unwrap_or_default();
    let uid = s.uid().unwrap_or_default();
    let ok = |cond| ChannelStep {
        cond,
        permanent: false,
        error: None,
    };
    // The CRD forbids leaving a live ImageFlux channel behind by switching outputs; should the
    // rule not be enforced, never overwrite the record of a channel that still bills.
    if let Some(ch) = status
        .channel
        .as_ref()
        .filter(|c| c.provider == provider::IMAGEFLUX && c.id.is_some())
        && s.spec.output.kind() != Some(OutputKind::ImageFlux)
    {
        let id = ch.id.clone().unwrap_or_default();
        return Ok(ChannelStep {
            cond: Cond::no(
                "OutputChanged",
                format!("ImageFlux channel {id} still exists, so the output cannot change; delete the session instead"),
            ),
            permanent: true,
            error: None,
        });
    }
    match s.spec.output.kind() {
        None => Ok(ChannelStep {
            cond: Cond::no("NoOutput", "set one of output.imageflux, output.sora, output.whip"),
            permanent: true,
            error: None,
        }),
        Some(OutputKind::Sora) => {
            let sora = s
                .spec
                .output
                .sora
                .as_ref()
                .ok_or_else(|| Error::Build("output.sora vanished".into()))?;
            status.channel = Some(ChannelStatus {
                provider: provider::SORA.into(),
                id: Some(sora.channel_id.clone()),
                signaling_url: sora.signaling_urls.first().cloned(),
                hls_url: None,
            });
            Ok(ok(Cond::yes(
                "ExistingSora",
                format!("publishing into Sora channel {}", sora.channel_id),
            )))
        }
        Some(OutputKind::Whip) => {
            let whip = s
                .spec
                .output
                .whip
                .as_ref()
                .ok_or_else(|| Error::Build("output.whip vanished".into()))?;
            status.channel = Some(ChannelStatus {
                provider: provider::WHIP.into(),
                id: None,
                signaling_url: Some(whip.url.clone()),
                hls_url: None,
            });
            Ok(ok(Cond::yes("Whip", format!("publishing over WHIP to {}", whip.url))))
        }
        Some(OutputKind::ImageFlux) => {
            if let Some(ch) = status
                .channel
                .as_ref()
                .filter(|c| c.provider == provider::IMAGEFLUX && c.id.is_some())
            {
                let id = ch.id.clone().unwrap_or_default();
                return Ok(ok(Cond::yes("ChannelCreated", format!("ImageFlux channel {id}"))));
            }
            let remembered = ctx
                .created_channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&uid)
                .cloned();
            if let Some(ch) = remembered {
                let id = ch.id.clone().unwrap_or_default();
                status.channel = Some(ch);
                return Ok(ok(Cond::yes("ChannelCreated", format!("ImageFlux channel {id}"))));
            }
            let flux = s
                .spec
                .output
                .imageflux
                .as_ref()
                .ok_or_else(|| Error::Build("output.imageflux vanished".into()))?;
            let token = match read_secret(ctx, &ns, &ctx.settings.imageflux_token_ref(flux), "token").await {
                Ok(t) => t,
                Err(e @ Error::Secret(_)) => {
                    return Ok(ChannelStep {
                        cond: Cond::no("SecretNotFound", e.to_string()),
                        permanent: false,
                        error: Some(e),
                    });
                }
                Err(e) => return Err(e),
            };
            if status.channel_requested_at.is_some() {
                // A request of an earlier reconcile (or an earlier process) got no recorded
                // answer: it may have created a channel that now bills unrecorded.
                let first = ctx
                    .interrupted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid.clone());
                if first {
                    warn!(session = %session_key(s), "an earlier channel request was interrupted; the channel sweep accounts for what it may have created");
                    ctx.event(
                        s,
                        EventType::Warning,
                        "ChannelRequestInterrupted",
                        "an earlier CreateMultistreamChannel got no recorded answer and may have created a channel; the channel sweep reports it (and deletes it with --delete-orphan-channels)".into(),
                    )
                    .await;
                }
            }
            // The intent goes on record before the call, so that no crash can hide the call.
            status.channel_requested_at = Some(Time(ctx.now()));
            patch_status(ctx, s, status).await?;
            let created = {
                let _in_flight = InFlight::enter(&ctx.creates_in_flight);
                ctx.imageflux.create_channel(&token, &hls_renditions(s)).await
            };
            match created {
                Ok(created) => {
                    let ch = ChannelStatus {
                        provider: provider::IMAGEFLUX.into(),
                        id: Some(created.channel_id.clone()),
                        signaling_url: Some(created.sora_url.clone()),
                        hls_url: None,
                    };
                    ctx.created_channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(uid.clone(), ch.clone());
                    status.channel = Some(ch);
                    status.channel_requested_at = None;
                    let cond = Cond::yes("ChannelCreated", format!("ImageFlux channel {}", created.channel_id));
                    // Record the channel before anything else can fail, so that a restart finds
                    // it instead of creating a second one.
                    let now = ctx.now();
                    status::set_condition(
                        &mut status.conditions,
                        condition::CHANNEL_READY,
                        &cond,
                        s.metadata.generation,
                        now,
                    );
                    status.phase = Some(Phase::Provisioning);
                    if let Err(e) = patch_status(ctx, s, status).await {
                        warn!(channel = %created.channel_id, error = %e, "cannot record the new channel; deleting it so it does not leak");
                        if let Err(e2) = ctx.imageflux.delete_channel(&token, &created.channel_id).await {
                            warn!(channel = %created.channel_id, error = %e2, "cannot delete the unrecorded channel either; the next reconcile records it instead (delete it by hand if the operator stops first)");
                        } else {
                            ctx.created_channels
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&uid);
                        }
                        return Err(e);
                    }
                    info!(channel = %created.channel_id, url = %created.sora_url, "ImageFlux channel created");
                    ctx.event(
                        s,
                        EventType::Normal,
                        "ChannelCreated",
                        format!("ImageFlux channel {} at {}", created.channel_id, created.sora_url),
                    )
                    .await;
                    Ok(ok(cond))
                }
                Err(e) => {
                    if matches!(e.status(), Some(400..=499)) {
                        // ImageFlux refused: nothing was created. (A 5xx may come from a
                        // gateway that gave up on a call that went through.)
                        status.channel_requested_at = None;
                    } else {
                        // No answer (timeout, connection lost): the channel may exist.
                        ctx.interrupted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(uid.clone());
                    }
                    let cond = Cond::no("ImageFluxError", e.to_string());
                    let permanent = !e.is_transient();
                    Ok(ChannelStep {
                        cond,
                        permanent,
                        error: Some(Error::ImageFlux(e)),
                    })
                }
            }
        }
    }
}

/// Applies `obj` with server-side apply when its content hash differs from the cached copy.
async fn apply_if_changed<K>(
    ctx: &Context,
    store: &Store<K>,
    ns: &str,
    mut obj: K,
    session: &LiveFilterSession,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let hash = objects::stable_hash(&[&serde_json::to_vec(&obj).unwrap_or_default()]);
    if let Some(current) = store.get(&ObjectRef::new(&name).within(ns)) {
        if !objects::is_owned_by(current.as_ref(), session) {
            return Err(Error::NotOwned {
                kind: K::kind(&()).into_owned(),
                name,
            });
        }
        if current.annotations().get(HASH_ANNOTATION) == Some(&hash) {
            return Ok(false);
        }
    }
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.into(), hash);
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj))
        .await?;
    Ok(true)
}

/// What the Pod step saw.
struct PodStep {
    pod: Option<Pod>,
    requeue_soon: bool,
    /// Admission refused the Pod: the API's message.
    rejected: Option<String>,
}

/// Whether the error is the API refusing the object itself (admission, validation), which
/// retrying cannot fix.
fn rejected(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => Some(s.message.clone()),
        _ => None,
    }
}

/// How long the Pod has been not ready after being ready, if it is not ready now.
fn not_ready_for(pod: &Pod, now: Timestamp) -> Option<Duration> {
    let ready = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0;
    Duration::try_from(now.duration_since(since)).ok()
}

async fn ensure_pod(
    s: &LiveFilterSession,
    status: &mut LiveFilterSessionStatus,
    desired: Pod,
    was_ready: bool,
    ctx: &Context,
) -> Result<PodStep, Error> {
    let ns = s.namespace().unwrap_or_default();
    let name = Names::of(&s.name_any()).pod;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let want = desired.annotations().get(HASH_ANNOTATION).cloned();
    let current = ctx.stores.pods.get(&ObjectRef::new(&name).within(&ns));
    let Some(current) = current else {
        let created = match api
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if let Some(message) = rejected(&e) {
                    return Ok(PodStep {
                        pod: None,
                        requeue_soon: false,
                        rejected: Some(message),
                    });
                }
                return Err(e.into());
            }
        };
        let uid = created.uid();
        match (&status.relay_pod_uid, &uid) {
            (Some(old), Some(new)) if old != new => {
                ctx.event(
                    s,
                    EventType::Warning,
                    "RelayRecreated",
                    format!("the relay Pod {old} was gone; created {new} for the same channel"),
                )
                .await;
            }
            (None, Some(new)) => {
                ctx.event(
                    s,
                    EventType::Normal,
                    "RelayCreated",
                    format!("created relay Pod {name} ({new})"),
                )
                .await;
            }
            _ => {}
        }
        status.relay_pod_uid = uid;
        return Ok(PodStep {
            pod: Some(created),
            requeue_soon: false,
            rejected: None,
        });
    };
    if !objects::is_owned_by(current.as_ref(), s) {
        return Err(Error::NotOwned {
            kind: "Pod".into(),
            name,
        });
    }
    if current.metadata.deletion_timestamp.is_some() {
        return Ok(PodStep {
            pod: Some((*current).clone()),
            requeue_soon: true,
            rejected: None,
        });
    }
    let phase = current.status.as_ref().and_then(|st| st.phase.as_deref());
    let same_pod = current.uid().is_some() && current.uid() == status.relay_pod_uid;
    let not_ready = not_ready_for(&current, ctx.now()).filter(|_| was_ready && same_pod);
    let replace = if current.annotations().get(HASH_ANNOTATION) != want.as_ref() {
        Some((
            "RelayRolling",
            EventType::Normal,
            "the spec changed; replacing the relay Pod".to_owned(),
        ))
    } else if matches!(phase, Some("Failed" | "Succeeded")) {
        let why = current
            .status
            .as_ref()
            .and_then(|st| st.reason.clone())
            .unwrap_or_default();
        Some((
            "RelayFailed",
            EventType::Warning,
            format!(
                "the relay Pod ended ({}) {why}; recreating it",
                phase.unwrap_or_default()
            ),
        ))
    } else {
        not_ready.filter(|d| *d >= ctx.settings.not_ready_grace).map(|d| {
            (
                "RelayNotReady",
                EventType::Warning,
                format!("the relay has not been ready for {}s; replacing it", d.as_secs()),
            )
        })
    };
    if let Some((reason, type_, note)) = replace {
        // Old first, then new: two relays must never publish into one channel at once, and
        // the new Pod needs the same host ports.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: current.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.event(s, type_, reason, note).await;
        // A planned roll is a new start, not a degradation: the next Pod is created as a first
        // one. A failed or stuck relay stays Degraded, and its successor is a recreation.
        if reason == "RelayRolling" {
            status.relay_pod_uid = None;
        }
        return Ok(PodStep {
            pod: None,
            requeue_soon: true,
            rejected: None,
        });
    }
    status.relay_pod_uid = current.uid();
    let requeue_soon = not_ready.is_some();
    Ok(PodStep {
        pod: Some((*current).clone()),
        requeue_soon,
        rejected: None,
    })
}

/// What a live filter change came to.
enum LiveFilter {
    /// The relay runs the spec's parameters.
    Current,
    /// The relay cannot be reached now; try again soon.
    Retry,
    /// The relay refused them: the Pod must be replaced.
    Refused(String),
}

/// Sends changed filter parameters to the running relay (`PATCH /filter`, RFC 7396: removed
/// keys as `null`) and records them on the Pod.
async fn apply_filter_params(
    s: &LiveFilterSession,
    pod: &Pod,
    ports: PortsStatus,
    params: &serde_json::Map<String, serde_json::Value>,
    ctx: &Context,
) -> Result<LiveFilter, Error> {
    let want = objects::filter_params_json(params);
    let running = pod
        .annotations()
        .get(FILTER_PARAMS_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if running == want {
        return Ok(LiveFilter::Current);
    }
    let Some(base) = relay_base(pod, ports) else {
        return Ok(LiveFilter::Retry);
    };
    let old: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&running).unwrap_or_default();
    let mut patch: serde_json::Map<String, serde_json::Value> = old
        .keys()
        .filter(|k| !params.contains_key(*k))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    patch.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ns = s.namespace().unwrap_or_default();
    let token = match &s.spec.access.token_secret_ref {
        Some(r) => Some(read_secret(ctx, &ns, r, "token").await?),
        None => None,
    };
    match ctx
        .observer
        .relays
        .patch_filter(base, token, serde_json::Value::Object(patch))
        .await
    {
        Ok(()) => {
            let annotate = json!({"metadata": {"annotations": {FILTER_PARAMS_ANNOTATION: want}}});
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&annotate))
                .await?;
            info!("filter parameters changed live");
            ctx.event(
                s,
                EventType::Normal,
                "FilterChanged",
                "filter parameters applied to the running relay".into(),
            )
            .await;
            Ok(LiveFilter::Current)
        }
        Err(crate::observer::FilterPatchError::Unreachable(e)) => {
            warn!(error = %e, "cannot send the filter change yet");
            Ok(LiveFilter::Retry)
        }
        Err(e @ crate::observer::FilterPatchError::Refused { .. }) => Ok(LiveFilter::Refused(e.to_string())),
    }
}

/// `http://ip:port` of the relay Pod.
fn relay_base(pod: &Pod, ports: PortsStatus) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    Some(format!("http://{host}:{}", ports.http))
}

/// Whether `image` may run: the operator's own relay images, or one the allowlist names.
pub fn image_allowed(image: &str, settings: &Settings) -> bool {
    image == settings.images.cpu
        || image == settings.images.cuda
        || settings
            .allowed_images
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => image.starts_with(prefix),
                None => image == pattern,
            })
}

/// The advertised address and, for NodeExternalIP, the Pod annotation that carries it.
async fn resolve_address(s: &LiveFilterSession, pod: Option<&Pod>, ctx: &Context) -> Result<Option<String>, Error> {
    let adv = &s.spec.network.advertise;
    match adv.from {
        AdvertiseFrom::Explicit => Ok(adv.address.clone()),
        AdvertiseFrom::NodeInternalIP => Ok(pod.and_then(|p| p.status.as_ref()?.host_ip.clone())),
        AdvertiseFrom::NodeExternalIP => {
            let Some(pod) = pod else { return Ok(None) };
            if let Some(ip) = pod.annotations().get(PUBLIC_IP_ANNOTATION) {
                return Ok(Some(ip.clone()));
            }
            let Some(node_name) = pod.spec.as_ref().and_then(|sp| sp.node_name.clone()) else {
                return Ok(None);
            };
            let node = Api::<Node>::all(ctx.client.clone()).get(&node_name).await?;
            let external = node
                .status
                .as_ref()
                .and_then(|st| st.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "ExternalIP"))
                .map(|a| a.address.clone());
            let Some(ip) = external else {
                ctx.event(
                    s,
                    EventType::Warning,
                    "NoExternalIP",
                    format!("node {node_name} has no ExternalIP; browsers outside the cluster cannot reach the relay"),
                )
                .await;
                return Ok(None);
            };
            let ns = s.namespace().unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {PUBLIC_IP_ANNOTATION: ip}}});
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(Some(ip))
        }
    }
}

async fn apply(s: Arc<LiveFilterSession>, ctx: &Context) -> Result<Action, Error> {
    ctx.stores.wait_ready(Duration::from_secs(30)).await?;
    let s = s.as_ref();
    let key = session_key(s);
    let ns = s.namespace().unwrap_or_default();
    let generation = s.metadata.generation;
    let old = s.status.clone().unwrap_or_default();
    let mut st = old.clone();

    // Ports first, so the first status write (with the channel) carries them too.
    let ports = match s.spec.network.ports.policy {
        PortPolicy::Static => {
            let p = s
                .spec
                .network
                .ports
                .http
                .zip(s.spec.network.ports.udp)
                .map(|(http, udp)| PortsStatus { http, udp })
                .ok_or_else(|| Error::Build("network.ports.policy Static needs http and udp".into()))?;
            // A static port another session holds is the user's choice; the scheduler keeps
            // the two Pods on different nodes.
            if let Err(e) = ctx.ports().claim(&key, p) {
                warn!(error = %e, "static ports overlap another session");
            }
            Ok(p)
        }
        PortPolicy::Dynamic => {
            let mut alloc = ctx.ports();
            match st.ports {
                Some(p) if alloc.claim(&key, p).is_ok() => Ok(p),
                _ => alloc.allocate(&key),
            }
        }
    };
    let ports = match ports {
        Ok(p) => p,
        Err(e) => {
            let cond = Cond::no("PortsExhausted", e.to_string());
            status::set_condition(
                &mut st.conditions,
                condition::RELAY_SCHEDULED,
                &cond,
                generation,
                ctx.now(),
            );
            st.phase = Some(Phase::Pending);
            finish(s, &old, st, ctx).await?;
            return Err(e.into());
        }
    };
    st.ports = Some(ports);

    let channel = ensure_channel(s, &mut st, ctx).await?;
    let now = ctx.now();
    status::set_condition(
        &mut st.conditions,
        condition::CHANNEL_READY,
        &channel.cond,
        generation,
        now,
    );
    if let Some(err) = channel.error {
        st.phase = Some(if channel.permanent {
            Phase::Failed
        } else {
            Phase::Pending
        });
        st.observed_generation = generation;
        finish(s, &old, st, ctx).await?;
        if let Error::ImageFlux(e) = &err {
            ctx.event(s, EventType::Warning, "ChannelFailed", e.to_string()).await;
        }
        return Err(err);
    }
    if channel.cond.status != "True" {
        st.phase = Some(Phase::Failed);
        finish(s, &old, st, ctx).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    // Children.
    let was_ready =
        matches!(old.phase, Some(Phase::Ready | Phase::Streaming | Phase::Degraded)) && old.relay_pod_uid.is_some();
    if let Some(image) = s.spec.relay.image.as_deref()
        && !image_allowed(image, &ctx.settings)
    {
        let cond = Cond::no(
            "ImageNotAllowed",
            format!("image {image} is not in the operator's --allowed-relay-images; ask an administrator to allow it"),
        );
        return refuse_relay(s, &old, st, cond, "RelayImageNotAllowed", ctx).await;
    }
    let config = match relay_config::build(&s.spec, st.channel.as_ref(), ports) {
        Ok(c) => c,
        Err(e @ (ConfigBuildError::NoChannel | ConfigBuildError::NoOutput)) => return Err(Error::Build(e.to_string())),
    };
    let build = |e: objects::BuildError| Error::Build(e.to_string());
    let cm = objects::config_map(s, &config).map_err(build)?;
    apply_if_changed(ctx, &ctx.stores.config_maps, &ns, cm, s).await?;
    let desired_pod = objects::relay_pod(s, ports, &config, &ctx.settings.images).map_err(build)?;
    let mut pod_step = ensure_pod(s, &mut st, desired_pod, was_ready, ctx).await?;
    if let Some(message) = pod_step.rejected.take() {
        let cond = Cond::no("AdmissionRejected", message);
        return refuse_relay(s, &old, st, cond, "RelayRejected", ctx).await;
    }
    let names = Names::of(&s.name_any());
    match objects::offer_service(s, ports).map_err(build)? {
        Some(svc) => {
            apply_if_changed(ctx, &ctx.stores.services, &ns, svc, s).await?;
        }
        None => delete_owned(ctx, &ctx.stores.services, &ns, &names.service, s).await?,
    }
    match objects::offer_ingress(s).map_err(build)? {
        Some(ing) => {
            apply_if_changed(ctx, &ctx.stores.ingresses, &ns, ing, s).await?;
        }
        None => delete_owned(ctx, &ctx.stores.ingresses, &ns, &names.service, s).await?,
    }

    // Live filter parameters.
    if let Some(p) = pod_step
        .pod
        .as_ref()
        .filter(|p| status::relay_ready(Some(p)).status == "True")
    {
        match apply_filter_params(s, p, ports, &config.filter.params, ctx).await? {
            LiveFilter::Current => {}
            LiveFilter::Retry => pod_step.requeue_soon = true,
            LiveFilter::Refused(why) => {
                ctx.event(
                    s,
                    EventType::Normal,
                    "RelayRolling",
                    format!("{why}; replacing the relay Pod"),
                )
                .await;
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: p.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                    .delete(&names.pod, &params)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                st.relay_pod_uid = None;
                pod_step = PodStep {
                    pod: None,
                    requeue_soon: true,
                    rejected: None,
                };
            }
        }
    }

    // Observe: the observer reads the relay; the reconcile uses its latest word.
    let key_owned = key.clone();
    let pod = pod_step.pod.as_ref();
    st.node_name = pod.and_then(|p| p.spec.as_ref()?.node_name.clone());
    st.address = resolve_address(s, pod, ctx).await?;
    let scheduled = status::relay_scheduled(pod);
    let ready = status::relay_ready(pod);
    let observed = match (pod, ready.status == "True") {
        (Some(p), true) => {
            let uid = p.uid().unwrap_or_default();
            if let Some(base) = relay_base(p, ports) {
                ctx.observer.watch(
                    &key_owned,
                    Target {
                        namespace: ns.clone(),
                        name: s.name_any(),
                        base,
                        pod_uid: uid.clone(),
                    },
                );
            }
            ctx.observer.observation(&key_owned, &uid)
        }
        _ => {
            ctx.observer.forget(&key_owned);
            None
        }
    };
    let publishing = match (&observed, ready.status == "True") {
        (Some(o), true) => o.publishing.clone(),
        (None, true) => Cond::unknown("StatusNotRead", "the relay's /status has not been read yet"),
        _ => status::publishing(&ready, None, None),
    };

    // HLS: the playlist exists only once publishing has started.
    if publishing.status == "True"
        && let (Some(flux), Some(ch)) = (&s.spec.output.imageflux, st.channel.as_mut())
        && flux.hls.enabled
        && ch.hls_url.is_none()
        && let Some(id) = ch.id.clone()
    {
        let listed = match read_secret(ctx, &ns, &ctx.settings.imageflux_token_ref(flux), "token").await {
            Ok(token) => ctx.imageflux.list_playlist_urls(&token, &id).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        match listed {
            Ok(urls) => ch.hls_url = urls.into_iter().next().map(|u| u.playlist_url),
            Err(e) => warn!(error = %e, "cannot list HLS playlists yet"),
        }
    }

    let service = ctx.stores.services.get(&ObjectRef::new(&names.service).within(&ns));
    st.offer_url = objects::offer_url(s, service.as_deref(), st.address.as_deref());
    st.page_url = objects::page_url(s, service.as_deref(), st.address.as_deref());

    let was_ready = was_ready && old.relay_pod_uid == st.relay_pod_uid;
    let phase = status::phase(&PhaseInputs {
        deleting: false,
        channel: &channel.cond,
        channel_failed_permanently: false,
        relay_ready: &ready,
        publishing: &publishing,
        was_ready,
    });
    status::set_condition(
        &mut st.conditions,
        condition::RELAY_SCHEDULED,
        &scheduled,
        generation,
        now,
    );
    status::set_condition(&mut st.conditions, condition::RELAY_READY, &ready, generation, now);
    status::set_condition(&mut st.conditions, condition::PUBLISHING, &publishing, generation, now);
    st.phase = Some(phase);
    st.observed_generation = generation;
    // The observer owns the figures; the reconcile never writes them.
    st.metrics = old.metrics.clone();
    finish(s, &old, st, ctx).await?;
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);

    // Ready and streaming sessions are woken by the observer and their objects' events; the
    // periodic look is only a safety net.
    let interval = match phase {
        _ if pod_step.requeue_soon => Duration::from_secs(2),
        Phase::Ready | Phase::Streaming => ctx.settings.status_interval.saturating_mul(30),
        _ => ctx.settings.provisioning_interval,
    };
    Ok(Action::requeue(interval))
}

/// The relay cannot be started as specified (admission refused the Pod, or its image is not
/// allowed): condition, `Failed`, a Warning event; retried slowly in case the cause goes away.
async fn refuse_relay(
    s: &LiveFilterSession,
    old: &LiveFilterSessionStatus,
    mut st: LiveFilterSessionStatus,
    cond: Cond,
    event_reason: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let now = ctx.now();
    let generation = s.metadata.generation;
    warn!(reason = %cond.reason, message = %cond.message, "the relay Pod cannot be created");
    let changed = st
        .conditions
        .iter()
        .find(|c| c.type_ == condition::RELAY_SCHEDULED)
        .is_none_or(|c| c.message != cond.message);
    status::set_condition(&mut st.conditions, condition::RELAY_SCHEDULED, &cond, generation, now);
    status::set_condition(
        &mut st.conditions,
        condition::RELAY_READY,
        &Cond::no(&cond.reason, "the relay Pod does not exist"),
        generation,
        now,
    );
    st.phase = Some(Phase::Failed);
    st.observed_generation = generation;
    st.relay_pod_uid = None;
    ctx.observer.forget(&session_key(s));
    if changed {
        ctx.event(s, EventType::Warning, event_reason, cond.message.clone())
            .await;
    }
    finish(s, old, st, ctx).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Deletes a child the spec no longer asks for.
async fn delete_owned<K>(
    ctx: &Context,
    store: &Store<K>,
    ns: &str,
    name: &str,
    s: &LiveFilterSession,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(old) = store.get(&ObjectRef::new(name).within(ns))
        && objects::is_owned_by(old.as_ref(), s)
    {
        match Api::<K>::namespaced(ctx.client.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes the status when it changed, and publishes an event when the phase changed.
async fn finish(
    s: &LiveFilterSession,
    old: &LiveFilterSessionStatus,
    new: LiveFilterSessionStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let phase = new.phase;
    if &new != old {
        patch_status(ctx, s, &new).await?;
    }
    if let Some(p) = phase {
        ctx.metrics.set_phase(&session_key(s), p);
        if old.phase != Some(p) {
            let from = old.phase.map_or("New", Phase::as_str);
            let type_ = if matches!(p, Phase::Degraded | Phase::Failed) {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let why = summary(&new);
            ctx.event(s, type_, p.as_str(), format!("{from} -> {}: {why}", p.as_str()))
                .await;
        }
    }
    Ok(())
}

/// The message of the first condition that is not True (or the last one), for events.
fn summary(st: &LiveFilterSessionStatus) -> String {
    let order = [
        condition::CHANNEL_READY,
        condition::RELAY_SCHEDULED,
        condition::RELAY_READY,
        condition::PUBLISHING,
    ];
    let conds: Vec<_> = order
        .iter()
        .filter_map(|t| st.conditions.iter().find(|c| c.type_ == *t))
        .collect();
    conds
        .iter()
        .find(|c| c.status != "True")
        .or(conds.last())
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

async fn cleanup(s: Arc<LiveFilterSession>, ctx: &Context) -> Result<Action, Error> {
    let s = s.as_ref();
    let key = session_key(s);
    let ns = s.namespace().unwrap_or_default();
    let old = s.status.clone().unwrap_or_default();
    if old.phase != Some(Phase::Terminating) {
        let mut st = old.clone();
        st.phase = Some(Phase::Terminating);
        patch_status(ctx, s, &st).await?;
        ctx.metrics.set_phase(&key, Phase::Terminating);
    }
    let uid = s.uid().unwrap_or_default();
    let remembered = ctx
        .created_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .cloned();
    let channel = old
        .channel
        .clone()
        .filter(|c| c.provider == provider::IMAGEFLUX)
        .or(remembered);
    let already = |id: &String| {
        ctx.deleted_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    };
    if let Some(id) = channel.and_then(|c| c.id).filter(|id| !already(id)) {
        let Some(flux) = &s.spec.output.imageflux else {
            return Err(Error::Build(format!(
                "ImageFlux channel {id} exists but output.imageflux is gone; cannot find its token"
            )));
        };
        let token = match read_secret(ctx, &ns, &ctx.settings.imageflux_token_ref(flux), "token").await {
            Ok(t) => t,
            Err(e) => {
                ctx.event(
                    s,
                    EventType::Warning,
                    "ChannelDeleteBlocked",
                    format!("cannot delete ImageFlux channel {id}: {e}. Restore the Secret (the channel keeps billing) or remove the finalizer {FINALIZER} by hand"),
                )
                .await;
                return Err(e);
            }
        };
        match delete_with_retries(&ctx.imageflux, &token, &id).await {
            Ok(outcome) => {
                let note = match outcome {
                    Deleted::Deleted => format!("deleted ImageFlux channel {id}"),
                    Deleted::AlreadyGone => format!("ImageFlux channel {id} was already gone"),
                };
                info!(channel = %id, ?outcome, "ImageFlux channel removed");
                ctx.deleted_channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                ctx.event(s, EventType::Normal, "ChannelDeleted", note).await;
            }
            Err(e) => {
                ctx.event(s, EventType::Warning, "ChannelDeleteFailed", e.to_string())
                    .await;
                return Err(e.into());
            }
        }
    }
    ctx.created_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    ctx.ports().release(&key);
    ctx.observer.forget(&key);
    ctx.metrics.forget(&key);
    ctx.cleaned.lock().unwrap_or_else(|p| p.into_inner()).insert(uid);
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    Ok(Action::await_change())
}

/// Counts a call in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// DeleteChannel, retried a few times on transient errors before the controller's own backoff.
pub async fn delete_with_retries(client: &ImageFluxClient, token: &str, id: &str) -> Result<Deleted, ImageFluxError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match client.delete_channel(token, id).await {
            Err(e) if e.is_transient() && attempt < 3 => {
                warn!(channel = %id, error = %e, attempt, "DeleteChannel failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();

        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
