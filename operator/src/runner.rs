//! The controller loop as the binary runs it (and the tests and the bench, against the API
//! double): port allocation rebuilt from existing sessions, watches whose events are filtered to
//! what the reconcile decides on, the observer beside it, and the reconcile itself.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::controller::{Context, Settings, Stores, error_policy, rebuild_ports, reconcile};
use crate::crd::LiveFilterSession;
use crate::imageflux::ImageFluxClient;
use crate::metrics::Metrics;
use crate::objects::MANAGER;
use crate::observer::{Observer, ObserverSettings, RelayApi};
use crate::ports::{PortAllocator, PortError, PortRange};
use crate::sweep;
use crate::triggers::{child_relevance, pod_relevance, relevant, session_relevance};

/// Why the loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Listing the existing sessions failed.
    #[error("cannot list sessions: {0}")]
    List(#[source] kube::Error),
    /// The port ranges are unusable.
    #[error(transparent)]
    Ports(#[from] PortError),
}

/// Everything the loop is configured with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Watch only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// Reconciles at once.
    pub concurrency: u16,
    /// Host ports for the relays' HTTP.
    pub http_ports: PortRange,
    /// Host ports for the relays' UDP.
    pub udp_ports: PortRange,
    /// Reconcile settings.
    pub settings: Settings,
    /// Observer settings.
    pub observer: ObserverSettings,
    /// The Events reporter instance (this replica).
    pub instance: Option<String>,
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A store of the operator's children of kind `K`, and the filtered trigger stream that fills it.
fn owned<K>(
    client: &Client,
    namespace: Option<&str>,
    relevance: fn(&K) -> u64,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let (store, writer) = reflector::store();
    let events = watcher(scoped::<K>(client, namespace), config)
        .default_backoff()
        .reflect(writer);
    (store, relevant(events, relevance))
}

/// Runs the controller until `token` is cancelled; returns the shared context when it stops.
pub async fn run(
    client: Client,
    imageflux: ImageFluxClient,
    relays: Arc<dyn RelayApi>,
    metrics: Metrics,
    config: RunConfig,
    token: CancellationToken,
) -> Result<Arc<Context>, RunError> {
    let ns = config.namespace.as_deref();
    let sessions: Api<LiveFilterSession> = scoped(&client, ns);

    // Rebuild the port allocation before anything can hand a port out.
    let existing = sessions.list(&ListParams::default()).await.map_err(RunError::List)?;
    let mut ports = PortAllocator::new(config.http_ports, config.udp_ports)?;
    for (session, e) in rebuild_ports(&mut ports, &existing.items) {
        warn!(%session, error = %e, "recorded ports clash; the session gets new ones");
    }
    info!(
        sessions = existing.items.len(),
        "port allocation rebuilt from existing sessions"
    );

    let (pods, pod_events) = owned::<Pod>(&client, ns, pod_relevance);
    let (config_maps, cm_events) = owned::<ConfigMap>(&client, ns, child_relevance);
    let (services, svc_events) = owned::<Service>(&client, ns, child_relevance);
    let (ingresses, ing_events) = owned::<Ingress>(&client, ns, child_relevance);

    let (observer, mut woken) = Observer::new(client.clone(), relays, metrics.clone(), config.observer);
    let observer = Arc::new(observer);
    let observing = tokio::spawn(
        observer
            .clone()
            .run(token.clone())
            .instrument(tracing::info_span!("observer")),
    );

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: config.instance.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        imageflux,
        Recorder::new(client.clone(), reporter),
        metrics,
        ports,
        Stores {
            pods,
            config_maps,
            services,
            ingresses,
        },
        observer,
        config.settings.clone(),
    ));

    let (session_store, session_writer) = reflector::store();
    let sweeping = tokio::spawn(
        sweep::run(ctx.clone(), session_store.clone(), token.clone()).instrument(tracing::info_span!("channel_sweep")),
    );
    let session_events = watcher(sessions, watcher::Config::default())
        .default_backoff()
        .reflect(session_writer);
    info!("controller running");
    Controller::for_stream(relevant(session_events, session_relevance), session_store)
        .owns_stream(pod_events)
        .owns_stream(cm_events)
        .owns_stream(svc_events)
        .owns_stream(ing_events)
        .reconcile_on(futures_util::stream::poll_fn(move |cx| woken.poll_recv(cx)))
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(token.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .instrument(tracing::info_span!("controller"))
        .await;
    token.cancel();
    if let Err(e) = observing.await {
        warn!(error = %e, "the observer ended abnormally");
    }
    if let Err(e) = sweeping.await {
        warn!(error = %e, "the channel sweep ended abnormally");
    }
    info!("controller stopped");
    Ok(ctx)
}
