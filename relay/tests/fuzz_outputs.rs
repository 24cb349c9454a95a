//! Property tests (stable Rust, a fixed case budget per run) for what the relay's outputs parse
//! from the network and from `PATCH /filter`: Sora signaling messages, WHIP 201 responses and
//! filter patches. Each property drives the same `fuzz_*` entry point a cargo-fuzz target can
//! call, with inputs shaped like the real thing as well as arbitrary bytes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use livefilter_relay::filter::FilterKind;
use livefilter_relay::filter::params::{FilterParams, ParamsError, fuzz_patch_bytes};
use livefilter_relay::publish::sora::signaling::{
    MAX_ERROR_CHARS, ServerMessage, SignalingError, fuzz_server_bytes, parse_server_message,
};
use livefilter_relay::publish::whip::{answer_sdp, fuzz_created_response, resource_url};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};

/// Cases per property and run for byte and string inputs.
const CASES: u32 = 20_000;
/// Cases per property and run for structured JSON inputs (ten times dearer to generate).
const STRUCTURED_CASES: u32 = 10_000;

/// How often each outcome came up, so a property proves it reached every branch it checks.
#[derive(Default)]
struct Outcomes(Mutex<BTreeMap<&'static str, u32>>);

impl Outcomes {
    fn saw(&self, outcome: &'static str) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }

    fn assert_saw(&self, expected: &[&str]) {
        let seen = self.0.lock().unwrap();
        for outcome in expected {
            assert!(
                seen.get(outcome).is_some_and(|&n| n > 0),
                "never saw {outcome}: {seen:?}"
            );
        }
    }
}

/// A runner with a fixed seed: the same cases on every run, so CI is reproducible.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        (-5.0f64..300.0).prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        "#[0-9a-fA-F]{6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object whose keys are mostly ones the parser knows, with any values.
fn object_with_keys(keys: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => "\\PC{0,10}",
    ];
    // Strings are what most known keys take: favour them so valid messages come up too.
    let value = prop_oneof![
        2 => "\\PC{0,24}".prop_map(Value::String),
        1 => json_value(),
    ];
    prop::collection::btree_map(key, value, 0..8).prop_map(|m| m.into_iter().collect())
}

const SIGNALING_TYPES: &[&str] = &[
    "offer", "re-offer", "ping", "notify", "push", "redirect", "switched", "close", "",
];
const SIGNALING_KEYS: &[&str] = &[
    "type",
    "sdp",
    "connection_id",
    "config",
    "iceServers",
    "urls",
    "username",
    "credential",
    "iceTransportPolicy",
    "stats",
    "event_type",
    "data",
    "location",
];

/// A signaling message shaped like a server's: a known (or unknown) type and mostly known keys.
fn signaling_message() -> impl Strategy<Value = Value> {
    (prop::sample::select(SIGNALING_TYPES), object_with_keys(SIGNALING_KEYS)).prop_map(|(t, mut m)| {
        if !m.contains_key("type") || !t.is_empty() {
            m.insert("type".into(), json!(t));
        }
        Value::Object(m)
    })
}

#[test]
fn any_bytes_from_a_sora_server_never_panic_and_refusals_stay_short() {
    runner(CASES)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            fuzz_server_bytes(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn server_shaped_sora_messages_parse_to_their_type_or_a_named_error() {
    let outcomes = Outcomes::default();
    runner(STRUCTURED_CASES)
        .run(&signaling_message(), |msg| {
            let text = msg.to_string();
            fuzz_server_bytes(text.as_bytes());
            let message_type = msg["type"].as_str().unwrap_or_default().to_owned();
            match parse_server_message(&text) {
                Ok(parsed) => {
                    let matches = match &parsed {
                        ServerMessage::Offer(o) => {
                            message_type == "offer" && Some(o.sdp.as_str()) == msg["sdp"].as_str()
                        }
                        ServerMessage::ReOffer { .. } => message_type == "re-offer",
                        ServerMessage::Ping { .. } => message_type == "ping",
                        ServerMessage::Notify { .. } => message_type == "notify",
                        ServerMessage::Push { .. } => message_type == "push",
                        ServerMessage::Redirect { location } => {
                            message_type == "redirect" && Some(location.as_str()) == msg["location"].as_str()
                        }
                        // Unknown types are tolerated, not refused.
                        ServerMessage::Unknown { message_type: t } => *t == message_type,
                    };
                    outcomes.saw(match parsed {
                        ServerMessage::Offer(_) => "offer",
                        ServerMessage::Redirect { .. } => "redirect",
                        ServerMessage::Unknown { .. } => "unknown",
                        _ => "other",
                    });
                    prop_assert!(matches, "{text} parsed as {parsed:?}");
                }
                Err(e) => {
                    prop_assert!(e.to_string().chars().count() <= MAX_ERROR_CHARS);
                    // Only a message without a string type, or one of those with required
                    // fields, can be refused, and the error names which.
                    let named = match &e {
                        SignalingError::NoType { .. } => !msg["type"].is_string(),
                        SignalingError::MissingField { .. } => {
                            matches!(message_type.as_str(), "offer" | "re-offer" | "redirect")
                        }
                        _ => false,
                    };
                    prop_assert!(named, "{text}: {e}");
                    outcomes.saw(match e {
                        SignalingError::NoType { .. } => "no type",
                        _ => "missing field",
                    });
                }
            }
            Ok(())
        })
        .unwrap();
    outcomes.assert_saw(&["offer", "redirect", "unknown", "other", "no type", "missing field"]);
}

#[test]
fn any_whip_location_and_answer_bytes_never_panic() {
    runner(CASES)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            fuzz_created_response(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn whip_locations_that_look_like_urls_resolve_only_to_http_resources() {
    let location = prop_oneof![
        "(https?|ftp|javascript|data|file|ws)://[a-z.]{0,12}(:[0-9]{1,6})?/[a-zA-Z0-9/._%?=-]{0,24}",
        "/?[a-zA-Z0-9/._%?=#-]{0,32}",
        "[a-z]{1,10}:[^ ]{0,20}",
        "\\PC{0,40}",
    ];
    let endpoint = url::Url::parse("https://sfu.example/whip/channel").unwrap();
    runner(CASES)
        .run(&location, |l| {
            if let Ok(resource) = resource_url(&endpoint, Some(l.as_bytes())) {
                prop_assert!(matches!(resource.scheme(), "http" | "https"), "{l:?} -> {resource}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn whip_answers_are_taken_only_when_they_are_sdp_text() {
    let body = prop_oneof![
        "v=0\r\n(\\PC{0,20}\r\n){0,8}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
    ];
    runner(CASES)
        .run(&body, |b| {
            let text = String::from_utf8(b.clone()).ok();
            match answer_sdp(b) {
                Ok(sdp) => prop_assert_eq!(Some(sdp), text),
                Err(e) => prop_assert!(e.starts_with("the answer is not")),
            }
            Ok(())
        })
        .unwrap();
}

const PARAM_KEYS: &[&str] = &[
    "radius",
    "smoothing",
    "feather",
    "threshold",
    "color",
    "image",
    "mode",
    "strength",
    "padding",
    "minScore",
    "holdFrames",
    "lineWidth",
    "pointColor",
    "layout",
    "colorOrder",
    "width",
    "height",
    "inputRange",
    "mean",
    "std",
    "output",
    "outputRange",
    "background",
];

const KINDS: [FilterKind; 6] = [
    FilterKind::Passthrough,
    FilterKind::BackgroundBlur,
    FilterKind::BackgroundReplace,
    FilterKind::FaceBlur,
    FilterKind::Pose,
    FilterKind::Onnx,
];

#[test]
fn any_filter_patch_body_never_panics() {
    runner(CASES)
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            fuzz_patch_bytes(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn filter_patches_are_accepted_whole_or_refused_with_a_named_error() {
    let case = (
        prop::sample::select(KINDS.to_vec()),
        object_with_keys(PARAM_KEYS),
        object_with_keys(PARAM_KEYS),
    );
    let outcomes = Outcomes::default();
    runner(STRUCTURED_CASES)
        .run(&case, |(kind, current, patch)| {
            fuzz_patch_bytes(Value::Object(patch.clone()).to_string().as_bytes());
            match FilterParams::merge_live(kind, &current, &patch) {
                Ok((merged, parsed)) => {
                    // Null removes a key; everything else in the patch is in the result.
                    for (k, v) in &patch {
                        prop_assert_eq!(merged.get(k), (!v.is_null()).then_some(v));
                    }
                    prop_assert_eq!(FilterParams::parse(kind, &merged), Ok(parsed));
                    outcomes.saw("accepted");
                }
                Err(ParamsError::Invalid { filter, detail }) => {
                    prop_assert_eq!(filter, kind.as_str());
                    prop_assert!(!detail.is_empty());
                    outcomes.saw("invalid");
                }
                Err(ParamsError::NotLive { key, .. }) => {
                    prop_assert_eq!(kind, FilterKind::Onnx);
                    prop_assert!(patch.contains_key(&key));
                    outcomes.saw("not live");
                }
                Err(ParamsError::NoneTaken { .. }) => {
                    prop_assert_eq!(kind, FilterKind::Passthrough);
                    outcomes.saw("none taken");
                }
            }
            Ok(())
        })
        .unwrap();
    outcomes.assert_saw(&["accepted", "invalid", "not live", "none taken"]);
}
