//! The objects a session owns, built from its spec alone (no I/O): the relay Pod, its
//! ConfigMap, the `/offer` Service and the optional Ingress.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{AdvertiseFrom, Device, LiveFilterSession, PortsStatus, ServiceType, Source};
use crate::relay_config::{self, paths};
use livefilter_contract::config::RelayConfig;

/// Label naming the owning session (selects the relay Pod for the Service).
pub const SESSION_LABEL: &str = "livefilter.dev/session";
/// Annotation holding the hash of everything the relay Pod was built from; a different hash
/// means the Pod must be replaced.
pub const HASH_ANNOTATION: &str = "livefilter.dev/spec-hash";
/// Annotation with the filter parameters the relay Pod runs with (changed live through `/filter`).
pub const FILTER_PARAMS_ANNOTATION: &str = "livefilter.dev/filter-params";
/// Annotation the operator sets on the Pod to the node's ExternalIP (`NodeExternalIP`); the
/// downward API projects it into the Pod as a file.
pub const PUBLIC_IP_ANNOTATION: &str = "livefilter.dev/public-ip";
/// `app.kubernetes.io/managed-by` value; also the operator's field manager.
pub const MANAGER: &str = "livefilter-operator";
/// The env var holding the node's InternalIP (downward API `status.hostIP`).
pub const HOST_IP_ENV: &str = "LIVEFILTER_HOST_IP";
/// The relay container's UID and GID (distroless `nonroot`).
pub const RELAY_UID: i64 = 65532;

/// The relay images the operator defaults to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayDefaults {
    /// Image for `device: cpu`.
    pub cpu: String,
    /// Image for `device: cuda`.
    pub cuda: String,
    /// The GPU extended resource when a session names none.
    pub gpu_resource_name: String,
}

impl Default for RelayDefaults {
    fn default() -> Self {
        let v = env!("CARGO_PKG_VERSION");
        Self {
            cpu: format!("ghcr.io/livefilter/livefilter-relay:{v}"),
            cuda: format!("ghcr.io/livefilter/livefilter-relay-cuda:{v}"),
            gpu_resource_name: "nvidia.com/gpu".to_owned(),
        }
    }
}

/// Why an object cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The session has no uid or namespace yet (not read from the API server).
    #[error("the session has no {0} (was it read from the API server?)")]
    MissingMeta(&'static str),
}

/// The names of a session's objects.
pub struct Names {
    /// The relay Pod.
    pub pod: String,
    /// The relay's ConfigMap.
    pub config_map: String,
    /// The `/offer` Service and Ingress.
    pub service: String,
}

impl Names {
    /// The names derived from a session name.
    pub fn of(session: &str) -> Self {
        Self {
            pod: format!("{session}-relay"),
            config_map: format!("{session}-relay-config"),
            service: format!("{session}-offer"),
        }
    }
}

/// The labels on every object of a session.
pub fn labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "livefilter-relay".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), session.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), MANAGER.to_owned()),
        (SESSION_LABEL.to_owned(), session.to_owned()),
    ])
}

fn owner(session: &LiveFilterSession) -> Result<OwnerReference, BuildError> {
    let mut o = session
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMeta("uid"))?;
    // Foreground deletion of a session waits for its relay to be gone.
    o.block_owner_deletion = Some(true);
    Ok(o)
}

fn meta(session: &LiveFilterSession, name: String) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(session.namespace().ok_or(BuildError::MissingMeta("namespace"))?),
        labels: Some(labels(&session.name_any())),
        owner_references: Some(vec![owner(session)?]),
        ..ObjectMeta::default()
    })
}

/// A stable 64-bit FNV-1a hash, hex: unlike `DefaultHasher` it does not change between Rust
/// releases, so upgrading the operator does not restart every relay.
pub fn stable_hash(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The relay's ConfigMap.
pub fn config_map(session: &LiveFilterSession, config: &RelayConfig) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: meta(session, Names::of(&session.name_any()).config_map)?,
        data: Some(BTreeMap::from([(
            paths::CONFIG_FILE.to_owned(),
            relay_config::to_yaml(config),
        )])),
        ..ConfigMap::default()
    })
}

/// The relay Pod. Its [`HASH_ANNOTATION`] covers the Pod spec and the config text.
pub fn relay_pod(
    session: &LiveFilterSession,
    ports: PortsStatus,
    config: &RelayConfig,
    images: &RelayDefaults,
) -> Result<Pod, BuildError> {
    let spec = &session.spec;
    let names = Names::of(&session.name_any());
    let relay = &spec.relay;
    let cuda = spec.filter.device == Device::Cuda;

    let image = relay
        .image
        .clone()
        .unwrap_or_else(|| if cuda { images.cuda.clone() } else { images.cpu.clone() });

    let mode = match spec.source {
        Source::Browser => "serve",
        Source::TestPattern => "test-pattern",
    };
    let mut args = vec![mode.to_owned(), "--config".to_owned(), paths::CONFIG_PATH.to_owned()];
    if spec.network.advertise.from == AdvertiseFrom::NodeInternalIP {
        // The kubelet expands $(VAR) in args from the container's env.
        args.push(format!("--public-ip=$({HOST_IP_ENV})"));
    }

    let env = vec![
        field_env(HOST_IP_ENV, "status.hostIP"),
        field_env("LIVEFILTER_NODE_NAME", "spec.nodeName"),
        EnvVar {
            name: "LIVEFILTER_LOG_FORMAT".into(),
            value: Some("json".into()),
            ..EnvVar::default()
        },
    ];

    let mut resources = relay.resources.clone().unwrap_or_default();
    let gpus = relay.gpu.count.unwrap_or(u32::from(cuda));
    if gpus > 0 {
        // Extended resources are set as limits; the API server copies them to requests.
        resources.limits.get_or_insert_with(BTreeMap::new).insert(
            relay
                .gpu
                .resource_name
                .clone()
                .unwrap_or_else(|| images.gpu_resource_name.clone()),
            Quantity(gpus.to_string()),
        );
    }

    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                ..Default::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..Default::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("config", paths::CONFIG_DIR),
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let mut secret = |name: &str, secret: &crate::crd::KeyRef, default_key: &str, file: &str, dir: &str| {
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key_or(default_key).to_owned(),
                    path: file.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(mount(name, dir));
    };
    if let Some(s) = spec.output.sora.as_ref().and_then(|s| s.metadata_secret_ref.as_ref()) {
        secret(
            "sora-metadata",
            s,
            "metadata.json",
            paths::SORA_METADATA_FILE,
            paths::SORA_METADATA_DIR,
        );
    }
    if let Some(s) = spec.output.whip.as_ref().and_then(|w| w.token_secret_ref.as_ref()) {
        secret("whip-token", s, "token", paths::TOKEN_FILE, paths::WHIP_TOKEN_DIR);
    }
    if let Some(s) = &spec.access.token_secret_ref {
        secret("offer-token", s, "token", paths::TOKEN_FILE, paths::OFFER_TOKEN_DIR);
    }
    // The CRD lets only one of the two be set: one volume at the TURN directory.
    if let Some(turn) = &spec.network.turn {
        if let Some(s) = &turn.credential_secret_ref {
            secret("turn", s, "credential", paths::TURN_CREDENTIAL_FILE, paths::TURN_DIR);
        } else if let Some(s) = &turn.auth_secret_ref {
            secret("turn", s, "auth-secret", paths::TURN_AUTH_SECRET_FILE, paths::TURN_DIR);
        }
    }
    if let Some(cm) = spec.filter.model.as_ref().and_then(|m| m.config_map.as_ref()) {
        let key = cm.key_or("model.onnx").to_owned();
        volumes.push(Volume {
            name: "model".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.name.clone(),
                items: Some(vec![KeyToPath {
                    key: key.clone(),
                    path: key,
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("model", paths::MODEL_DIR));
    }
    if spec.network.advertise.from == AdvertiseFrom::NodeExternalIP {
        volumes.push(Volume {
            name: "podinfo".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: paths::PUBLIC_IP_FILE.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{PUBLIC_IP_ANNOTATION}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("podinfo", paths::PODINFO_DIR));
    }

    let mut container_ports = vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(ports.http),
            host_port: Some(i32::from(ports.http)),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("webrtc".into()),
            container_port: i32::from(ports.udp),
            host_port: Some(i32::from(ports.udp)),
            protocol: Some("UDP".into()),
            ..ContainerPort::default()
        },
    ];
    if spec.network.ice_tcp {
        // Declared so the scheduler keeps another user of this TCP port off the node.
        container_ports.push(ContainerPort {
            name: Some("webrtc-tcp".into()),
            container_port: i32::from(ports.udp),
            host_port: Some(i32::from(ports.udp)),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let container = Container {
        name: "relay".into(),
        image: Some(image),
        image_pull_policy: relay.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(args),
        env: Some(env),
        ports: Some(container_ports),
        resources: Some(ResourceRequirements { ..resources }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        // Started means the HTTP server is up (a large model may take a while to load).
        startup_probe: Some(probe("/healthz", ports.http, 0, 2, 60)),
        liveness_probe: Some(probe("/healthz", ports.http, 0, 10, 3)),
        readiness_probe: Some(probe("/readyz", ports.http, 0, 5, 2)),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        host_network: Some(true),
        dns_policy: Some("ClusterFirstWithHostNet".into()),
        restart_policy: Some("Always".into()),
        // The relay never calls the API server.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(15),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            fs_group: Some(RELAY_UID),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        node_selector: (!relay.node_selector.is_empty()).then(|| relay.node_selector.clone()),
        tolerations: (!relay.tolerations.is_empty()).then(|| relay.tolerations.clone()),
        affinity: relay.affinity.clone(),
        runtime_class_name: relay.runtime_class_name.clone(),
        priority_class_name: relay.priority_class_name.clone(),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };

    let spec_json = serde_json::to_vec(&pod_spec).unwrap_or_default();
    // The filter's parameters change live through the relay's `/filter`, so they are not part
    // of what makes a new process necessary; the Pod records the ones it runs with.
    let mut without_params = config.clone();
    without_params.filter.params.clear();
    let hash = stable_hash(&[&spec_json, relay_config::to_yaml(&without_params).as_bytes()]);
    let mut metadata = meta(session, names.pod)?;
    metadata.annotations = Some(BTreeMap::from([
        (HASH_ANNOTATION.to_owned(), hash),
        (
            FILTER_PARAMS_ANNOTATION.to_owned(),
            filter_params_json(&config.filter.params),
        ),
    ]));
    Ok(Pod {
        metadata,
        spec: Some(pod_spec),
        status: None,
    })
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn probe(path: &str, port: u16, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: (initial_delay > 0).then_some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The filter parameters as the Pod annotation records them (stable key order).
pub fn filter_params_json(params: &serde_json::Map<String, serde_json::Value>) -> String {
    let sorted: BTreeMap<&String, &serde_json::Value> = params.iter().collect();
    serde_json::to_string(&sorted).unwrap_or_default()
}

/// The `/offer` Service: the session's port in front of the relay's allocated HTTP port; none
/// for a test-pattern session, which takes no browser.
pub fn offer_service(session: &LiveFilterSession, ports: PortsStatus) -> Result<Option<Service>, BuildError> {
    if session.spec.source == crate::crd::Source::TestPattern {
        return Ok(None);
    }
    let name = session.name_any();
    let svc = &session.spec.access.service;
    let mut metadata = meta(session, Names::of(&name).service)?;
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    Ok(Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().to_owned()),
            selector: Some(BTreeMap::from([(SESSION_LABEL.to_owned(), name)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(svc.port),
                target_port: Some(IntOrString::Int(i32::from(ports.http))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }))
}

/// What the session's Ingress makes public: the sender page and what it calls (its info, the
/// offer and its session, the live filter change, the relay's figures it shows). `/metrics`,
/// `/healthz`, `/readyz` and the preview stay inside the cluster.
pub const PUBLIC_PATHS: [(&str, &str); 6] = [
    ("/", "Exact"),
    ("/index.html", "Exact"),
    ("/api/info", "Exact"),
    ("/offer", "Prefix"),
    ("/filter", "Exact"),
    ("/status", "Exact"),
];

/// The session's Ingress (the sender page and `/offer`), when the spec asks for one.
pub fn offer_ingress(session: &LiveFilterSession) -> Result<Option<Ingress>, BuildError> {
    let Some(ing) = &session.spec.access.ingress else {
        return Ok(None);
    };
    let names = Names::of(&session.name_any());
    let mut metadata = meta(session, names.service.clone())?;
    if !ing.annotations.is_empty() {
        metadata.annotations = Some(ing.annotations.clone());
    }
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: names.service,
            port: Some(ServiceBackendPort {
                number: Some(i32::from(session.spec.access.service.port)),
                name: None,
            }),
        }),
        resource: None,
    };
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: ing.class_name.clone(),
            tls: ing.tls_secret_name.as_ref().map(|s| {
                vec![IngressTLS {
                    hosts: Some(vec![ing.host.clone()]),
                    secret_name: Some(s.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(ing.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: PUBLIC_PATHS
                        .iter()
                        .map(|(path, path_type)| HTTPIngressPath {
                            path: Some((*path).into()),
                            path_type: (*path_type).into(),
                            backend: backend.clone(),
                        })
                        .collect(),
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    }))
}

/// Where a streamer opens the sender page (the relay's base URL), when that is known.
pub fn page_url(session: &LiveFilterSession, service: Option<&Service>, node_address: Option<&str>) -> Option<String> {
    offer_url(session, service, node_address).and_then(|u| u.strip_suffix("offer").map(str::to_owned))
}

/// Where a browser posts its offer, when that is known: the Ingress, a load balancer's address,
/// a node port on the relay's node, or the in-cluster Service name.
pub fn offer_url(session: &LiveFilterSession, service: Option<&Service>, node_address: Option<&str>) -> Option<String> {
    let access = &session.spec.access;
    if let Some(ing) = &access.ingress {
        let scheme = if ing.tls_secret_name.is_some() { "https" } else { "http" };
        return Some(format!("{scheme}://{}/offer", ing.host));
    }
    let port = access.service.port;
    match access.service.type_ {
        ServiceType::ClusterIP => {
            let ns = session.namespace()?;
            Some(format!(
                "http://{}.{ns}.svc:{port}/offer",
                Names::of(&session.name_any()).service
            ))
        }
        ServiceType::LoadBalancer => {
            let ingress = service?
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = ingress.hostname.clone().or_else(|| ingress.ip.clone())?;
            Some(format!("http://{}:{port}/offer", host_for_url(&host)))
        }
        ServiceType::NodePort => {
            let node_port = service?.spec.as_ref()?.ports.as_ref()?.first()?.node_port?;
            Some(format!("http://{}:{node_port}/offer", host_for_url(node_address?)))
        }
    }
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Whether the object carries the session's owner reference (so it may be replaced or deleted).
pub fn is_owned_by<K: Resource>(obj: &K, session: &LiveFilterSession) -> bool {
    let Some(uid) = session.meta().uid.as_deref() else {
        return false;
    };
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus, Toleration};

    use super::*;
    use crate::crd::{
        AdvertiseSpec, ChannelStatus, FilterSpec, ImageFluxOutput, IngressSpec, KeyRef, LiveFilterSessionSpec,
        ModelSource, OutputSpec, WhipOutput,
    };

    const PORTS: PortsStatus = PortsStatus {
        http: 38001,
        udp: 40001,
    };

    fn spec() -> LiveFilterSessionSpec {
        LiveFilterSessionSpec {
            source: Default::default(),
            output: OutputSpec {
                imageflux: Some(ImageFluxOutput {
                    token_secret_ref: Some(KeyRef {
                        name: "imageflux".into(),
                        key: None,
                    }),
                    hls: Default::default(),
                }),
                ..OutputSpec::default()
            },
            filter: FilterSpec::default(),
            video: Default::default(),
            relay: Default::default(),
            network: Default::default(),
            access: Default::default(),
            preview: Default::default(),
        }
    }

    fn session(spec: LiveFilterSessionSpec) -> LiveFilterSession {
        let mut s = LiveFilterSession::new("demo", spec);
        s.metadata.namespace = Some("media".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    fn channel() -> ChannelStatus {
        ChannelStatus {
            provider: "ImageFlux".into(),
            id: Some("c0ffee".into()),
            signaling_url: Some("wss://live-sora001.imageflux.jp/signaling".into()),
            hls_url: None,
        }
    }

    fn pod_of(s: &LiveFilterSession) -> Pod {
        let config = relay_config::build(&s.spec, Some(&channel()), PORTS).unwrap();
        relay_pod(s, PORTS, &config, &RelayDefaults::default()).unwrap()
    }

    fn container(p: &Pod) -> &Container {
        &p.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn the_relay_pod_runs_on_the_host_network_with_its_allocated_ports() {
        let p = pod_of(&session(spec()));
        let ps = p.spec.as_ref().unwrap();

        assert_eq!(p.metadata.name.as_deref(), Some("demo-relay"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("media"));
        assert_eq!(ps.host_network, Some(true));
        assert_eq!(ps.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        let ports: Vec<_> = container(&p)
            .ports
            .iter()
            .flatten()
            .map(|cp| {
                (
                    cp.name.as_deref(),
                    cp.container_port,
                    cp.host_port,
                    cp.protocol.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("http"), 38001, Some(38001), Some("TCP")),
                (Some("webrtc"), 40001, Some(40001), Some("UDP"))
            ]
        );
        assert_eq!(
            container(&p).args.as_deref().unwrap(),
            [
                "serve",
                "--config",
                "/etc/livefilter/relay.yaml",
                "--public-ip=$(LIVEFILTER_HOST_IP)"
            ]
        );
        let env = container(&p).env.as_ref().unwrap();
        let host_ip = env.iter().find(|e| e.name == "LIVEFILTER_HOST_IP").unwrap();
        assert_eq!(
            host_ip
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.hostIP"
        );
    }

    #[test]
    fn a_test_pattern_session_runs_the_relay_in_test_pattern_mode() {
        let mut s = spec();
        s.source = Source::TestPattern;

        let p = pod_of(&session(s));

        assert_eq!(
            container(&p).args.as_deref().unwrap()[..3],
            ["test-pattern", "--config", "/etc/livefilter/relay.yaml"]
        );
    }

    #[test]
    fn the_relay_pod_is_locked_down() {
        let p = pod_of(&session(spec()));
        let ps = p.spec.as_ref().unwrap();
        let sc = container(&p).security_context.as_ref().unwrap();

        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let psc = ps.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.fs_group, Some(RELAY_UID));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(ps.automount_service_account_token, Some(false));
    }

    #[test]
    fn with_ice_over_tcp_the_pod_also_holds_the_webrtc_ports_number_as_a_tcp_host_port() {
        let mut s = spec();
        s.network.ice_tcp = true;

        let p = pod_of(&session(s));

        let tcp: Vec<_> = container(&p)
            .ports
            .iter()
            .flatten()
            .filter(|cp| cp.protocol.as_deref() == Some("TCP"))
            .map(|cp| (cp.name.as_deref(), cp.container_port, cp.host_port))
            .collect();
        assert_eq!(
            tcp,
            [
                (Some("http"), 38001, Some(38001)),
                (Some("webrtc-tcp"), 40001, Some(40001))
            ]
        );
    }

    #[test]
    fn probes_hit_the_relays_endpoints_on_its_http_port() {
        let p = pod_of(&session(spec()));
        let c = container(&p);
        let target = |probe: &Option<Probe>| {
            let g = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            (g.path.clone().unwrap(), g.port.clone())
        };

        assert_eq!(target(&c.readiness_probe), ("/readyz".into(), IntOrString::Int(38001)));
        assert_eq!(target(&c.liveness_probe), ("/healthz".into(), IntOrString::Int(38001)));
        assert_eq!(target(&c.startup_probe), ("/healthz".into(), IntOrString::Int(38001)));
    }

    #[test]
    fn every_object_is_owned_by_the_session_as_controller() {
        let s = session(spec());
        let mut with_ingress = spec();
        with_ingress.access.ingress = Some(IngressSpec {
            host: "live.example.com".into(),
            ..Default::default()
        });
        let si = session(with_ingress);
        let config = relay_config::build(&s.spec, Some(&channel()), PORTS).unwrap();
        let metas = [
            pod_of(&s).metadata,
            config_map(&s, &config).unwrap().metadata,
            offer_service(&s, PORTS).unwrap().unwrap().metadata,
            offer_ingress(&si).unwrap().unwrap().metadata,
        ];

        for m in metas {
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (
                    o.api_version.as_str(),
                    o.kind.as_str(),
                    o.name.as_str(),
                    o.uid.as_str(),
                    o.controller,
                    o.block_owner_deletion
                ),
                (
                    "livefilter.dev/v1alpha1",
                    "LiveFilterSession",
                    "demo",
                    "uid-1",
                    Some(true),
                    Some(true)
                ),
                "{:?}",
                m.name
            );
            assert_eq!(m.labels.as_ref().unwrap()[SESSION_LABEL], "demo");
        }
    }

    #[test]
    fn a_cuda_filter_gets_the_cuda_image_and_one_gpu_with_the_users_resources_kept() {
        let mut sp = spec();
        sp.filter.device = Device::Cuda;
        sp.relay.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("2Gi".into()))])),
            ..Default::default()
        });
        sp.relay.tolerations = vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        sp.relay.node_selector = BTreeMap::from([("gpu".to_owned(), "h100".to_owned())]);
        sp.relay.runtime_class_name = Some("nvidia".into());
        let p = pod_of(&session(sp));
        let ps = p.spec.as_ref().unwrap();
        let limits = container(&p).resources.as_ref().unwrap().limits.as_ref().unwrap();

        assert_eq!(
            container(&p).image.as_deref(),
            Some(RelayDefaults::default().cuda.as_str())
        );
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(limits["memory"], Quantity("2Gi".into()));
        assert_eq!(
            ps.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        assert_eq!(ps.node_selector.as_ref().unwrap()["gpu"], "h100");
        assert_eq!(ps.runtime_class_name.as_deref(), Some("nvidia"));
    }

    #[test]
    fn a_cpu_filter_asks_for_no_gpu_unless_told() {
        let p = pod_of(&session(spec()));
        assert_eq!(
            container(&p).image.as_deref(),
            Some(RelayDefaults::default().cpu.as_str())
        );
        assert_eq!(container(&p).resources.as_ref().unwrap().limits, None);

        let mut sp = spec();
        sp.relay.gpu.count = Some(2);
        sp.relay.gpu.resource_name = Some("amd.com/gpu".into());
        let p = pod_of(&session(sp));
        assert_eq!(
            container(&p).resources.as_ref().unwrap().limits.as_ref().unwrap()["amd.com/gpu"],
            Quantity("2".into())
        );
    }

    #[test]
    fn a_session_naming_no_gpu_resource_gets_the_operators_default() {
        let mut sp = spec();
        sp.relay.gpu.count = Some(1);
        let s = session(sp);
        let config = relay_config::build(&s.spec, Some(&channel()), PORTS).unwrap();
        let defaults = RelayDefaults {
            gpu_resource_name: "gpu.intel.com/i915".into(),
            ..RelayDefaults::default()
        };

        let p = relay_pod(&s, PORTS, &config, &defaults).unwrap();

        let limits = container(&p).resources.as_ref().unwrap().limits.clone().unwrap();
        assert_eq!(limits.keys().collect::<Vec<_>>(), ["gpu.intel.com/i915"]);
    }

    #[test]
    fn secrets_are_mounted_as_files_never_written_into_the_config() {
        let mut sp = spec();
        sp.output = OutputSpec {
            whip: Some(WhipOutput {
                url: "https://whip.example/c".into(),
                token_secret_ref: Some(KeyRef {
                    name: "whip".into(),
                    key: Some("bearer".into()),
                }),
            }),
            ..OutputSpec::default()
        };
        sp.access.token_secret_ref = Some(KeyRef {
            name: "offer".into(),
            key: None,
        });
        let p = pod_of(&session(sp));
        let vols = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let secret = |n: &str| vols.iter().find(|v| v.name == n).unwrap().secret.clone().unwrap();

        let whip = secret("whip-token");
        assert_eq!(whip.secret_name.as_deref(), Some("whip"));
        assert_eq!(
            whip.items.unwrap()[0],
            KeyToPath {
                key: "bearer".into(),
                path: "token".into(),
                mode: None
            }
        );
        let offer = secret("offer-token");
        assert_eq!(offer.items.unwrap()[0].key, "token");
        let mounts = container(&p).volume_mounts.as_ref().unwrap();
        let at = |n: &str| {
            mounts
                .iter()
                .find(|m| m.name == n)
                .map(|m| (m.mount_path.clone(), m.read_only))
        };
        assert_eq!(
            at("whip-token"),
            Some(("/var/run/secrets/livefilter/whip".into(), Some(true)))
        );
        assert_eq!(
            at("offer-token"),
            Some(("/var/run/secrets/livefilter/offer".into(), Some(true)))
        );
        assert_eq!(at("config"), Some(("/etc/livefilter".into(), Some(true))));
    }

    #[test]
    fn a_turn_shared_secret_is_mounted_where_the_config_points() {
        let mut sp = spec();
        sp.network.turn = Some(crate::crd::TurnSpec {
            urls: vec!["turn:turn.example:3478".into()],
            auth_secret_ref: Some(KeyRef {
                name: "coturn".into(),
                key: Some("static-auth-secret".into()),
            }),
            ..Default::default()
        });
        let s = session(sp);
        let config = relay_config::build(&s.spec, Some(&channel()), PORTS).unwrap();

        let p = pod_of(&s);

        let vols = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let turn = vols.iter().find(|v| v.name == "turn").unwrap().secret.clone().unwrap();
        assert_eq!(turn.secret_name.as_deref(), Some("coturn"));
        let item = &turn.items.unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("static-auth-secret", "auth-secret")
        );
        let mount = container(&p)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "turn")
            .unwrap()
            .clone();
        let mounted_file = format!("{}/{}", mount.mount_path, item.path);
        assert_eq!(
            config.ice.servers[0].auth_secret_file.as_deref(),
            Some(std::path::Path::new(&mounted_file))
        );
    }

    #[test]
    fn a_configmap_model_is_mounted_where_the_config_points() {
        let mut sp = spec();
        sp.filter.kind = crate::crd::FilterKind::Onnx;
        sp.filter.model = Some(ModelSource {
            path: None,
            config_map: Some(KeyRef {
                name: "models".into(),
                key: Some("style.onnx".into()),
            }),
        });
        let s = session(sp);
        let config = relay_config::build(&s.spec, Some(&channel()), PORTS).unwrap();
        let p = relay_pod(&s, PORTS, &config, &RelayDefaults::default()).unwrap();

        assert_eq!(
            config.filter.model.as_deref(),
            Some(std::path::Path::new("/etc/livefilter/models/style.onnx"))
        );
        let vol = p
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "model")
            .unwrap();
        assert_eq!(vol.config_map.unwrap().name, "models");
    }

    #[test]
    fn an_external_ip_session_reads_its_address_from_a_downward_api_file() {
        let mut sp = spec();
        sp.network.advertise = AdvertiseSpec {
            from: AdvertiseFrom::NodeExternalIP,
            address: None,
        };
        let p = pod_of(&session(sp));
        let vol = p
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "podinfo")
            .unwrap();
        let item = &vol.downward_api.as_ref().unwrap().items.as_ref().unwrap()[0];

        assert_eq!(item.path, "public-ip");
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['livefilter.dev/public-ip']"
        );
        assert!(
            !container(&p)
                .args
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a.starts_with("--public-ip"))
        );
    }

    #[test]
    fn the_pod_hash_changes_with_the_spec_and_with_the_config_only() {
        let s = session(spec());
        let hash = |p: &Pod| p.metadata.annotations.as_ref().unwrap()[HASH_ANNOTATION].clone();
        let a = pod_of(&s);
        let again = pod_of(&s);
        let mut changed = s.clone();
        changed.spec.video.bitrate_kbps = 3000;
        let b = pod_of(&changed);

        assert_eq!(hash(&a), hash(&again));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn the_service_fronts_the_relays_http_port() {
        let mut sp = spec();
        sp.access.service.type_ = ServiceType::LoadBalancer;
        sp.access.service.port = 443;
        let svc = offer_service(&session(sp), PORTS).unwrap().unwrap();
        let ss = svc.spec.unwrap();

        assert_eq!(svc.metadata.name.as_deref(), Some("demo-offer"));
        assert_eq!(ss.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            ss.selector.unwrap(),
            BTreeMap::from([(SESSION_LABEL.to_owned(), "demo".to_owned())])
        );
        let port = &ss.ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (443, Some(IntOrString::Int(38001)))
        );
    }

    #[test]
    fn the_ingress_exposes_only_offer_with_tls() {
        let mut sp = spec();
        sp.access.ingress = Some(IngressSpec {
            host: "live.example.com".into(),
            tls_secret_name: Some("live-tls".into()),
            class_name: Some("nginx".into()),
            annotations: BTreeMap::from([("cert-manager.io/cluster-issuer".to_owned(), "le".to_owned())]),
        });
        let s = session(sp);
        let ing = offer_ingress(&s).unwrap().unwrap();
        let is = ing.spec.unwrap();
        let rule = &is.rules.unwrap()[0];
        let paths = &rule.http.as_ref().unwrap().paths;
        let path = paths.iter().find(|p| p.path.as_deref() == Some("/offer")).unwrap();

        assert_eq!(is.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(is.tls.unwrap()[0].secret_name.as_deref(), Some("live-tls"));
        assert_eq!(rule.host.as_deref(), Some("live.example.com"));
        assert_eq!(
            (path.path.as_deref(), path.path_type.as_str()),
            (Some("/offer"), "Prefix")
        );
        assert_eq!(path.backend.service.as_ref().unwrap().name, "demo-offer");
        assert_eq!(
            ing.metadata.annotations.unwrap()["cert-manager.io/cluster-issuer"],
            "le"
        );
        assert_eq!(
            offer_url(&s, None, None).as_deref(),
            Some("https://live.example.com/offer")
        );
        assert_eq!(page_url(&s, None, None).as_deref(), Some("https://live.example.com/"));
        let public: Vec<&str> = paths.iter().filter_map(|p| p.path.as_deref()).collect();
        assert_eq!(
            public,
            ["/", "/index.html", "/api/info", "/offer", "/filter", "/status"],
            "the page and what it calls, never /metrics or the preview"
        );
    }

    #[test]
    fn the_offer_url_follows_the_service_type() {
        let s = session(spec());
        assert_eq!(
            offer_url(&s, None, None).as_deref(),
            Some("http://demo-offer.media.svc:80/offer")
        );

        let mut lb = spec();
        lb.access.service.type_ = ServiceType::LoadBalancer;
        let lb = session(lb);
        let mut svc = offer_service(&lb, PORTS).unwrap().unwrap();
        assert_eq!(offer_url(&lb, Some(&svc), None), None, "no address yet");
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        assert_eq!(
            offer_url(&lb, Some(&svc), None).as_deref(),
            Some("http://203.0.113.9:80/offer")
        );
    }

    #[test]
    fn stable_hash_separates_parts_and_never_changes() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[b"livefilter"]), stable_hash(&[b"livefilter"]));
        assert_eq!(stable_hash(&[]), "cbf29ce484222325");
    }
}
