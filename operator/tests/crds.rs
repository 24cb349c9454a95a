//! The checked-in CRD is what the types generate, and every example (and every mistake a user
//! is likely to make) gets the verdict the API server would give: the OpenAPI schema through a
//! JSON Schema validator, the `x-kubernetes-validations` CEL rules through kube's evaluator.

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use livefilter_operator::crd::{LiveFilterSession, crd_yaml};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const CRD_FILE: &str = "crds/livefiltersessions.livefilter.dev.yaml";

/// The openAPIV3Schema of the generated CRD.
fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every problem the API server would report, as text (empty: accepted).
fn verdict(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema();
    let structural = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(&schema)
        .unwrap();
    let mut problems: Vec<String> = structural
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(errors) = Validator::new().validate(&schema, object, old) {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    problems
}

fn session(spec: Value) -> Value {
    json!({"apiVersion": "livefilter.dev/v1alpha1", "kind": "LiveFilterSession", "metadata": {"name": "demo"}, "spec": spec})
}

fn imageflux() -> Value {
    json!({"imageflux": {"tokenSecretRef": {"name": "imageflux"}}})
}

#[test]
fn the_checked_in_crd_is_what_the_types_generate() {
    let path = repo().join(CRD_FILE);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();

    let generated = crd_yaml().unwrap();

    assert!(
        checked_in == generated,
        "{CRD_FILE} is stale: run `make crds` and commit the result"
    );
}

#[test]
fn every_example_is_accepted_and_reads_as_a_session() {
    let mut seen = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] != "LiveFilterSession" {
                continue;
            }
            let problems = verdict(&v, None);
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            let typed: LiveFilterSession = serde_json::from_value(v).unwrap();
            assert!(typed.spec.output.kind().is_some(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the examples under examples/, found {seen} sessions"
    );
}

#[test]
fn a_turn_server_with_a_shared_secret_is_accepted_and_reads_as_a_session() {
    let s = session(json!({"output": imageflux(), "network": {"turn": {
        "urls": ["turn:turn.example:3478?transport=udp", "turns:turn.example:5349?transport=tcp"],
        "authSecretRef": {"name": "turn", "key": "static-auth-secret"},
        "credentialTtlSeconds": 43200,
    }}}));

    let problems = verdict(&s, None);
    let typed: LiveFilterSession = serde_json::from_value(s).unwrap();

    assert_eq!(problems, Vec::<String>::new());
    let turn = typed.spec.network.turn.expect("network.turn");
    assert_eq!(turn.urls.len(), 2);
    assert_eq!(turn.auth_secret_ref.unwrap().key.as_deref(), Some("static-auth-secret"));
    assert_eq!(turn.credential_ttl_seconds, Some(43200));
}

#[test]
fn the_smallest_session_is_accepted() {
    assert_eq!(
        verdict(&session(json!({"output": imageflux()})), None),
        Vec::<String>::new()
    );
}

#[test]
fn mistakes_are_refused_with_a_message_naming_them() {
    let cases = [
        (
            json!({"output": {}}),
            "exactly one of output.imageflux, output.sora, output.whip",
        ),
        (
            json!({"output": {"imageflux": {"tokenSecretRef": {"name": "a"}}, "whip": {"url": "https://w"}}}),
            "exactly one of output.imageflux",
        ),
        (json!({"output": imageflux(), "video": {"width": 641}}), "must be even"),
        (
            json!({"output": imageflux(), "video": {"bitrateKbps": 10}}),
            "/spec/video/bitrateKbps",
        ),
        (
            json!({"output": imageflux(), "video": {"codec": "av1"}}),
            "/spec/video/codec",
        ),
        (json!({"output": imageflux(), "video": {"fps": 240}}), "/spec/video/fps"),
        (
            json!({"output": imageflux(), "filter": {"kind": "onnx"}}),
            "filter.kind onnx needs filter.model",
        ),
        (
            json!({"output": imageflux(), "filter": {"kind": "cartoon"}}),
            "/spec/filter/kind",
        ),
        (
            json!({"output": imageflux(), "network": {"advertise": {"from": "Explicit"}}}),
            "advertise.address",
        ),
        (
            json!({"output": imageflux(), "network": {"ports": {"policy": "Static", "http": 38000}}}),
            "network.ports.http and .udp",
        ),
        (
            json!({"output": imageflux(), "network": {"ports": {"policy": "Static", "http": 80, "udp": 40000}}}),
            "/spec/network/ports/http",
        ),
        (
            json!({"output": {"sora": {"signalingUrls": ["https://x"], "channelId": "c"}}}),
            "start with wss://",
        ),
        (
            json!({"output": {"sora": {"signalingUrls": [], "channelId": "c"}}}),
            "/spec/output/sora/signalingUrls",
        ),
        (
            json!({"output": {"whip": {"url": "ftp://x"}}}),
            "the WHIP URL starts with",
        ),
        (
            json!({"output": imageflux(), "network": {"turn": {"urls": ["turn:t:3478"], "username": "u",
                "credentialSecretRef": {"name": "a"}, "authSecretRef": {"name": "b"}}}}),
            "credentialSecretRef and authSecretRef exclude each other",
        ),
        (
            json!({"output": imageflux(), "network": {"turn": {"urls": ["turn:t:3478"], "credentialSecretRef": {"name": "a"}}}}),
            "credentialSecretRef needs username",
        ),
        (
            json!({"output": imageflux(), "network": {"turn": {"urls": []}}}),
            "/spec/network/turn/urls",
        ),
        (
            json!({"output": imageflux(), "network": {"turn": {"urls": ["turn:t:3478"], "authSecretRef": {"name": "b"},
                "credentialTtlSeconds": 5}}}),
            "/spec/network/turn/credentialTtlSeconds",
        ),
        (
            json!({"output": imageflux(), "access": {"service": {"type": "ExternalName"}}}),
            "/spec/access/service/type",
        ),
        (
            json!({"output": {"imageflux": {"tokenSecretRef": {"name": "a"}, "hls": {"enabled": true, "renditions": [{"width": 20, "height": 720}]}}}}),
            "/spec/output/imageflux/hls/renditions/0/width",
        ),
    ];
    for (spec, expected) in cases {
        let problems = verdict(&session(spec.clone()), None);

        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{spec}: expected {expected:?} in {problems:#?}"
        );
    }
}

#[test]
fn a_name_that_cannot_name_the_relay_objects_is_refused() {
    let mut s = session(json!({"output": imageflux()}));
    s["metadata"]["name"] = json!("a-very-long-session-name-that-goes-on-and-on-and-on");

    let problems = verdict(&s, None);

    assert!(
        problems.iter().any(|p| p.contains("at most 47 characters")),
        "{problems:#?}"
    );
}

#[test]
fn defaults_fill_what_the_user_left_out() {
    let schema = schema();
    let defaulted = kube::core::cel::apply_defaults(&schema, &session(json!({"output": imageflux()})));
    let spec = &defaulted["spec"];

    assert_eq!(
        spec["video"],
        json!({"codec": "vp8", "bitrateKbps": 1000, "width": 1280, "height": 720, "fps": 30, "keyframeIntervalSecs": 10})
    );
    assert_eq!(spec["filter"], json!({"kind": "passthrough", "device": "cpu"}));
    assert_eq!(spec["network"]["advertise"]["from"], "NodeInternalIP");
    assert_eq!(spec["network"]["ports"]["policy"], "Dynamic");
    assert_eq!(spec["access"]["service"], json!({"type": "ClusterIP", "port": 80}));
    assert_eq!(spec["output"]["imageflux"]["hls"]["enabled"], false);
}

fn with_channel(mut s: Value) -> Value {
    s["status"] = json!({"channel": {"provider": "ImageFlux", "id": "c0ffee", "signalingUrl": "wss://x/signaling"}});
    s
}

#[test]
fn the_channel_settings_are_frozen_once_the_channel_exists() {
    let hls = |enabled: bool| json!({"output": {"imageflux": {"tokenSecretRef": {"name": "imageflux"}, "hls": {"enabled": enabled}}}});
    let before = with_channel(session(hls(false)));
    let mut after = with_channel(session(hls(true)));
    after["status"] = before["status"].clone();

    let problems = verdict(&after, Some(&before));

    assert!(
        problems.iter().any(|p| p.contains("immutable once the channel exists")),
        "{problems:#?}"
    );
}

#[test]
fn the_channel_settings_may_change_before_the_channel_exists_and_the_rest_always() {
    let spec = |enabled: bool, bitrate: u32| json!({"output": {"imageflux": {"tokenSecretRef": {"name": "imageflux"}, "hls": {"enabled": enabled}}}, "video": {"bitrateKbps": bitrate}});
    let before = session(spec(false, 1000));
    let after = session(spec(true, 1000));
    assert_eq!(verdict(&after, Some(&before)), Vec::<String>::new());

    let before = with_channel(session(spec(true, 1000)));
    let after = with_channel(session(spec(true, 2500)));
    assert_eq!(verdict(&after, Some(&before)), Vec::<String>::new());
}

#[test]
fn the_output_cannot_switch_away_from_a_live_imageflux_channel() {
    let before = with_channel(session(json!({"output": imageflux()})));
    let mut after = session(json!({"output": {"whip": {"url": "https://whip.example/x"}}}));
    after["status"] = before["status"].clone();

    let problems = verdict(&after, Some(&before));

    assert!(
        problems.iter().any(|p| p.contains("immutable once the channel exists")),
        "{problems:#?}"
    );
}

/// Every schema node carrying CEL rules, with its path.
fn rule_nodes<'a>(node: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    if node.get("x-kubernetes-validations").is_some() {
        out.push((path.clone(), node));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            rule_nodes(v, format!("{path}.{k}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = node.get(key).filter(|v| v.is_object()) {
            rule_nodes(v, format!("{path}[]"), out);
        }
    }
}

#[test]
fn every_cel_rule_compiles_and_stays_within_the_api_servers_cost_budget() {
    use kube::core::cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};
    let schema = schema();
    let mut nodes = Vec::new();
    rule_nodes(&schema, "self".into(), &mut nodes);
    assert!(nodes.len() >= 8, "found only {} nodes with rules", nodes.len());

    for (path, node) in nodes {
        let compiled = compile_schema(node);
        assert!(!compiled.has_errors(), "{path}: {:?}", compiled.compilation_errors());
        for rule in node["x-kubernetes-validations"].as_array().unwrap() {
            let rule = rule["rule"].as_str().unwrap();
            let warnings = analyze_rule(rule, &compiled, ScopeContext::CrdValidation);
            // Scope warnings are skipped: the analyser mistakes macro variables (`u` in
            // `self.all(u, ...)`) for unknown globals.
            let over: Vec<_> = warnings
                .iter()
                .filter(|w| w.kind == WarningKind::CostExceeded)
                .collect();
            assert!(over.is_empty(), "{path}: {rule}: {over:#?}");
            for w in warnings.iter().filter(|w| w.kind == WarningKind::MissingBounds) {
                eprintln!("{path}: {}", w.message);
            }
        }
    }
}
