//! Sora signaling messages, as the official SDKs speak them: pure parsing and building.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::codec::VideoCodec;
use crate::publish::simulcast::{Encoding, parse_encodings};

/// The longest `channel_id`, `client_id` or `bundle_id` Sora accepts, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// What a publisher asks of Sora in its `connect` message.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectOptions {
    /// The channel to publish into.
    pub channel_id: String,
    /// Optional client id (shown to other participants, used by webhooks).
    pub client_id: Option<String>,
    /// Optional bundle id.
    pub bundle_id: Option<String>,
    /// Passed to the auth webhook; ImageFlux expects `{"access_token": "..."}`.
    pub metadata: Option<Value>,
    /// Passed to other participants in notifications.
    pub signaling_notify_metadata: Option<Value>,
    /// The video codec.
    pub codec: VideoCodec,
    /// Video bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Whether an Opus audio track is sent.
    pub audio: bool,
    /// Ask for simulcast (`"simulcast": true`): Sora's offer then says which layers to send.
    pub simulcast: bool,
}

/// Signaling input that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignalingError {
    /// An id is empty or too long.
    #[error("{field} must be 1..={MAX_ID_BYTES} bytes, got {len}")]
    BadId { field: &'static str, len: usize },
    /// A server message was not JSON.
    #[error("server message is not JSON ({detail}): {excerpt}")]
    NotJson { detail: String, excerpt: String },
    /// A server message had no `type`.
    #[error("server message has no \"type\": {excerpt}")]
    NoType { excerpt: String },
    /// A known message lacked a field it must have.
    #[error("server {message} lacks a valid {field}: {detail}")]
    MissingField {
        message: &'static str,
        field: &'static str,
        detail: String,
    },
}

impl ConnectOptions {
    /// Checks the ids against Sora's limits.
    pub fn validate(&self) -> Result<(), SignalingError> {
        check_id("channel_id", Some(&self.channel_id), false)?;
        check_id("client_id", self.client_id.as_deref(), true)?;
        check_id("bundle_id", self.bundle_id.as_deref(), true)
    }
}

fn check_id(field: &'static str, value: Option<&str>, optional: bool) -> Result<(), SignalingError> {
    match value {
        None if optional => Ok(()),
        None => Err(SignalingError::BadId { field, len: 0 }),
        Some(v) if v.is_empty() || v.len() > MAX_ID_BYTES => Err(SignalingError::BadId { field, len: v.len() }),
        Some(_) => Ok(()),
    }
}

/// The identification the relay sends as `sora_client` and `environment`.
pub fn client_identity() -> (String, String) {
    (
        format!("livefilter-relay {}", env!("CARGO_PKG_VERSION")),
        format!("[{}] {}", std::env::consts::ARCH, std::env::consts::OS),
    )
}

/// The `connect` message for a send-only publisher; `redirect` marks the re-connect after a
/// `redirect` message.
pub fn connect_message(opts: &ConnectOptions, redirect: bool) -> Value {
    let (sora_client, environment) = client_identity();
    let mut msg = json!({
        "type": "connect",
        "role": "sendonly",
        "channel_id": opts.channel_id,
        "sora_client": sora_client,
        "environment": environment,
        "libwebrtc": "webrtc-rs 0.21",
        "video": {"codec_type": opts.codec.sora_name(), "bit_rate": opts.bitrate_kbps},
        "audio": if opts.audio { json!({"codec_type": "OPUS"}) } else { json!(false) },
        "data_channel_signaling": false,
    });
    let obj = msg.as_object_mut().expect("json! object literal");
    for (key, value) in [
        ("client_id", opts.client_id.clone().map(Value::String)),
        ("bundle_id", opts.bundle_id.clone().map(Value::String)),
        ("metadata", opts.metadata.clone()),
        ("signaling_notify_metadata", opts.signaling_notify_metadata.clone()),
    ] {
        if let Some(v) = value {
            obj.insert(key.to_owned(), v);
        }
    }
    if opts.simulcast {
        obj.insert("simulcast".to_owned(), Value::Bool(true));
    }
    if redirect {
        obj.insert("redirect".to_owned(), Value::Bool(true));
    }
    msg
}

/// One STUN/TURN server from the offer's `config.iceServers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs (a single string is accepted too).
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(default)]
    pub username: String,
    /// TURN credential.
    #[serde(default)]
    pub credential: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The server's `offer`.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    /// The SDP offer (already with the server's ICE credentials and candidates).
    pub sdp: String,
    /// This client's connection id.
    pub connection_id: String,
    /// STUN/TURN servers to use.
    pub ice_servers: Vec<IceServer>,
    /// `config.iceTransportPolicy == "relay"`.
    pub relay_only: bool,
    /// The simulcast `encodings`, when the server sent them.
    pub encodings: Option<Vec<Encoding>>,
}

/// A message from the server, as far as a publisher cares.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// The SDP offer that starts the media session.
    Offer(Offer),
    /// A renegotiation offer; answer with `re-answer`. `encodings` replace the simulcast
    /// layers' settings when present.
    ReOffer {
        sdp: String,
        encodings: Option<Vec<Encoding>>,
    },
    /// Keep-alive; answer with `pong` (with stats when asked).
    Ping { stats: bool },
    /// An event; `connection.created` with our own id means we are live.
    Notify {
        event_type: String,
        connection_id: Option<String>,
    },
    /// Application data; informational.
    Push { data: Value },
    /// Reconnect at `location`.
    Redirect { location: String },
    /// Any other type; logged and ignored.
    Unknown { message_type: String },
}

/// Characters of a bad message quoted in an error.
const MAX_EXCERPT_CHARS: usize = 200;

fn excerpt(text: &str) -> String {
    text.chars().take(MAX_EXCERPT_CHARS).collect()
}

fn str_field(v: &Value, message: &'static str, field: &'static str) -> Result<String, SignalingError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SignalingError::MissingField {
            message,
            field,
            detail: format!(
                "got {}",
                v.get(field).map_or("nothing".to_owned(), |f| excerpt(&f.to_string()))
            ),
        })
}

/// The message's `encodings`, if it has any.
fn encodings_field(v: &Value, message: &'static str) -> Result<Option<Vec<Encoding>>, SignalingError> {
    match v.get("encodings") {
        None | Some(Value::Null) => Ok(None),
        Some(list) => parse_encodings(list)
            .map(Some)
            .map_err(|e| SignalingError::MissingField {
                message,
                field: "encodings",
                detail: excerpt(&e.to_string()),
            }),
    }
}

/// Parses one server text frame.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, SignalingError> {
    let v: Value = serde_json::from_str(text).map_err(|e| SignalingError::NotJson {
        detail: excerpt(&e.to_string()),
        excerpt: excerpt(text),
    })?;
    let Some(message_type) = v.get("type").and_then(Value::as_str) else {
        return Err(SignalingError::NoType { excerpt: excerpt(text) });
    };
    Ok(match message_type {
        "offer" => {
            let config = v.get("config").cloned().unwrap_or(Value::Null);
            let ice_servers = match config.get("iceServers") {
                None | Some(Value::Null) => Vec::new(),
                Some(list) => serde_json::from_value(list.clone()).map_err(|e| SignalingError::MissingField {
                    message: "offer",
                    field: "config.iceServers",
                    // serde quotes the offending value whole.
                    detail: excerpt(&e.to_string()),
                })?,
            };
            ServerMessage::Offer(Offer {
                sdp: str_field(&v, "offer", "sdp")?,
                connection_id: str_field(&v, "offer", "connection_id")?,
                ice_servers,
                relay_only: config.get("iceTransportPolicy").and_then(Value::as_str) == Some("relay"),
                encodings: encodings_field(&v, "offer")?,
            })
        }
        "re-offer" => ServerMessage::ReOffer {
            sdp: str_field(&v, "re-offer", "sdp")?,
            encodings: encodings_field(&v, "re-offer")?,
        },
        "ping" => ServerMessage::Ping {
            stats: v.get("stats").and_then(Value::as_bool).unwrap_or(false),
        },
        "notify" => ServerMessage::Notify {
            event_type: v
                .get("event_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            connection_id: v.get("connection_id").and_then(Value::as_str).map(str::to_owned),
        },
        "push" => ServerMessage::Push {
            data: v.get("data").cloned().unwrap_or(Value::Null),
        },
        "redirect" => ServerMessage::Redirect {
            location: str_field(&v, "redirect", "location")?,
        },
        other => ServerMessage::Unknown {
            message_type: other.to_owned(),
        },
    })
}

/// `{"type":"answer"}` to the offer.
pub fn answer_message(sdp: &str) -> Value {
    json!({"type": "answer", "sdp": sdp})
}

/// `{"type":"re-answer"}` to a re-offer.
pub fn reanswer_message(sdp: &str) -> Value {
    json!({"type": "re-answer", "sdp": sdp})
}

/// A trickled local candidate, in the C++/Python SDK form.
pub fn candidate_message(candidate: &str) -> Value {
    json!({"type": "candidate", "candidate": candidate})
}

/// The answer to `ping`; `stats` is included when the server asked for it.
pub fn pong_message(stats: Option<Value>) -> Value {
    match stats {
        Some(s) => json!({"type": "pong", "stats": s}),
        None => json!({"type": "pong"}),
    }
}

/// The polite goodbye before closing.
pub fn disconnect_message() -> Value {
    json!({"type": "disconnect", "reason": "NO-ERROR"})
}

/// How a WebSocket close from the server should be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// 1000: the session ended normally (`TYPE-DISCONNECT`, `DISCONNECTED-API`,
    /// `LIFETIME-EXPIRED`); the publisher stops.
    Normal { reason: String },
    /// Any other code: an error; the publisher reconnects with backoff.
    Error { code: u16, reason: String },
}

/// Classifies a close frame (`None`: the connection dropped without one).
pub fn classify_close(code: Option<u16>, reason: &str) -> CloseKind {
    match code {
        Some(1000) => CloseKind::Normal {
            reason: reason.to_owned(),
        },
        Some(code) => CloseKind::Error {
            code,
            reason: reason.to_owned(),
        },
        None => CloseKind::Error {
            code: 1006,
            reason: "connection closed without a close frame".to_owned(),
        },
    }
}

/// The longest text a [`SignalingError`] may have: inputs are quoted only in excerpts.
pub const MAX_ERROR_CHARS: usize = 1024;

/// Fuzz entry point: any bytes a server might send as a text frame (and as a close frame's
/// code and reason) are parsed without a panic, and a refusal quotes only a bounded excerpt.
pub fn fuzz_server_bytes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse_server_message(&text) {
        let len = e.to_string().chars().count();
        assert!(
            len <= MAX_ERROR_CHARS,
            "a {len}-character error for {} input bytes",
            data.len()
        );
    }
    let code = match data {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    };
    let _ = classify_close(code, &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConnectOptions {
        ConnectOptions {
            channel_id: "ch".into(),
            client_id: Some("relay-1".into()),
            bundle_id: None,
            metadata: Some(json!({"access_token": "t"})),
            signaling_notify_metadata: None,
            codec: VideoCodec::H264,
            bitrate_kbps: 1500,
            audio: false,
            simulcast: false,
        }
    }

    #[test]
    fn connect_message_carries_role_codec_and_metadata_like_the_official_sdks() {
        let msg = connect_message(&options(), false);
        assert_eq!(msg["type"], "connect");
        assert_eq!(msg["role"], "sendonly");
        assert_eq!(msg["channel_id"], "ch");
        assert_eq!(msg["client_id"], "relay-1");
        assert_eq!(msg["metadata"], json!({"access_token": "t"}));
        assert_eq!(msg["video"], json!({"codec_type": "H264", "bit_rate": 1500}));
        assert_eq!(msg["audio"], json!(false));
        assert_eq!(msg["data_channel_signaling"], json!(false));
        assert!(msg["sora_client"].as_str().unwrap().starts_with("livefilter-relay "));
        assert!(msg.get("redirect").is_none());
        assert!(msg.get("bundle_id").is_none());
    }

    #[test]
    fn reconnect_after_redirect_says_so() {
        assert_eq!(connect_message(&options(), true)["redirect"], json!(true));
    }

    #[test]
    fn ids_longer_than_255_bytes_are_rejected() {
        let mut o = options();
        o.channel_id = "x".repeat(256);
        assert_eq!(
            o.validate(),
            Err(SignalingError::BadId {
                field: "channel_id",
                len: 256
            })
        );
        o.channel_id = String::new();
        assert_eq!(
            o.validate(),
            Err(SignalingError::BadId {
                field: "channel_id",
                len: 0
            })
        );
    }

    #[test]
    fn offer_with_turn_servers_and_relay_policy_parses() {
        let text = r#"{"type":"offer","sdp":"v=0","connection_id":"C1","config":{"iceServers":[{"urls":["turn:t.example:3478?transport=udp"],"username":"u","credential":"p"}],"iceTransportPolicy":"relay"}}"#;
        let ServerMessage::Offer(offer) = parse_server_message(text).unwrap() else {
            panic!("not an offer")
        };
        assert_eq!(offer.connection_id, "C1");
        assert!(offer.relay_only);
        assert_eq!(
            offer.ice_servers,
            vec![IceServer {
                urls: vec!["turn:t.example:3478?transport=udp".into()],
                username: "u".into(),
                credential: "p".into()
            }]
        );
    }

    #[test]
    fn simulcast_is_asked_for_only_when_configured() {
        let mut o = options();
        assert!(connect_message(&o, false).get("simulcast").is_none());

        o.simulcast = true;

        assert_eq!(connect_message(&o, false)["simulcast"], json!(true));
    }

    #[test]
    fn the_offers_and_re_offers_simulcast_encodings_parse() {
        let offer = r#"{"type":"offer","sdp":"v=0","connection_id":"C1","simulcast":true,
            "encodings":[{"rid":"r0","active":true,"scaleResolutionDownBy":4.0,"maxBitrate":150000},
                         {"rid":"r1","active":false,"maxFramerate":15}]}"#;
        let re_offer = r#"{"type":"re-offer","sdp":"v=0","encodings":[{"rid":"r0","maxBitrate":90000}]}"#;

        let ServerMessage::Offer(offer) = parse_server_message(offer).unwrap() else {
            panic!("not an offer")
        };
        let ServerMessage::ReOffer { encodings, .. } = parse_server_message(re_offer).unwrap() else {
            panic!("not a re-offer")
        };

        let offered = offer.encodings.unwrap();
        assert_eq!(offered.len(), 2);
        assert_eq!(
            (offered[0].rid.as_str(), offered[0].max_bitrate_bps),
            ("r0", Some(150_000))
        );
        assert_eq!((offered[1].active, offered[1].max_framerate), (false, Some(15.0)));
        assert_eq!(encodings.unwrap()[0].max_bitrate_bps, Some(90_000));
    }

    #[test]
    fn malformed_encodings_are_an_error_naming_the_field_and_the_encoding() {
        let err = parse_server_message(r#"{"type":"offer","sdp":"v=0","connection_id":"C","encodings":[{"rid":7}]}"#)
            .unwrap_err();

        assert!(
            matches!(err, SignalingError::MissingField { field: "encodings", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("encodings[0]: rid must be"), "{err}");
    }

    #[test]
    fn offer_without_connection_id_is_an_error_naming_the_field() {
        let err = parse_server_message(r#"{"type":"offer","sdp":"v=0"}"#).unwrap_err();
        assert!(
            matches!(
                err,
                SignalingError::MissingField {
                    field: "connection_id",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_types_are_reported_not_rejected() {
        assert_eq!(
            parse_server_message(r#"{"type":"switched"}"#).unwrap(),
            ServerMessage::Unknown {
                message_type: "switched".into()
            }
        );
    }

    #[test]
    fn non_json_and_typeless_messages_are_errors() {
        assert!(matches!(
            parse_server_message("{not json"),
            Err(SignalingError::NotJson { .. })
        ));
        assert!(matches!(
            parse_server_message(r#"{"sdp":"x"}"#),
            Err(SignalingError::NoType { .. })
        ));
    }

    #[test]
    fn ping_notify_push_redirect_parse() {
        assert_eq!(
            parse_server_message(r#"{"type":"ping","stats":true}"#).unwrap(),
            ServerMessage::Ping { stats: true }
        );
        assert_eq!(
            parse_server_message(r#"{"type":"ping"}"#).unwrap(),
            ServerMessage::Ping { stats: false }
        );
        assert_eq!(
            parse_server_message(r#"{"type":"notify","event_type":"connection.created","connection_id":"C1"}"#)
                .unwrap(),
            ServerMessage::Notify {
                event_type: "connection.created".into(),
                connection_id: Some("C1".into())
            }
        );
        assert_eq!(
            parse_server_message(r#"{"type":"redirect","location":"wss://b/signaling"}"#).unwrap(),
            ServerMessage::Redirect {
                location: "wss://b/signaling".into()
            }
        );
    }

    #[test]
    fn close_1000_is_normal_and_anything_else_an_error() {
        assert_eq!(
            classify_close(Some(1000), "TYPE-DISCONNECT"),
            CloseKind::Normal {
                reason: "TYPE-DISCONNECT".into()
            }
        );
        assert_eq!(
            classify_close(Some(4490), "AUTH-WEBHOOK-ERROR"),
            CloseKind::Error {
                code: 4490,
                reason: "AUTH-WEBHOOK-ERROR".into()
            }
        );
        assert!(matches!(classify_close(None, ""), CloseKind::Error { code: 1006, .. }));
    }
}
