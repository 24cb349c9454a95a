//! Sora signaling messages: parsing what clients send, validating `connect`, and building what
//! the server sends. Pure: no I/O, every input error is a value.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::simulcast::{DEFAULT_BIT_RATE_KBPS, Encodings};

/// WebSocket close code for a message the server cannot read or did not expect.
pub const CLOSE_INVALID_MESSAGE: u16 = 4400;
/// WebSocket close code for a `connect` refused by authentication (`metadata.access_token`).
pub const CLOSE_AUTH_FAILED: u16 = 4401;
/// WebSocket close code when the client took too long to send `connect` or `answer`.
pub const CLOSE_TIMEOUT: u16 = 4408;
/// WebSocket close code when the server cannot set up the session (peer connection failure).
pub const CLOSE_INTERNAL_ERROR: u16 = 4500;
/// WebSocket close code when the server shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Longest `channel_id`, `client_id` or `bundle_id` Sora accepts, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// A message from a client, by `type`.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `connect`: the first message of a session.
    Connect(Box<ConnectMessage>),
    /// `answer` to the server's `offer`.
    Answer {
        /// SDP answer.
        sdp: String,
    },
    /// `re-answer` to the server's `re-offer`.
    ReAnswer {
        /// SDP answer.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate(CandidateMessage),
    /// Reply to `ping`.
    Pong {
        /// The client's `getStats()` report when the ping asked for it.
        stats: Option<Value>,
    },
    /// The client is leaving.
    Disconnect {
        /// Why (`NO-ERROR` normally).
        reason: Option<String>,
    },
    /// Any other `type`: logged and ignored.
    Other {
        /// The unknown type.
        message_type: String,
    },
}

/// The fields of `connect` the server acts on, plus the message as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectMessage {
    /// The whole message as the client sent it.
    pub raw: Value,
    /// `sendonly`, `recvonly` or `sendrecv`.
    pub role: String,
    /// The channel.
    pub channel_id: String,
    /// Optional client id.
    pub client_id: Option<String>,
    /// Optional bundle id.
    pub bundle_id: Option<String>,
    /// Free JSON; ImageFlux puts `{"access_token": ...}` here.
    pub metadata: Option<Value>,
    /// Set on the re-connect after a `redirect`.
    pub redirect: bool,
    /// Whether audio is wanted (`audio: false` turns it off).
    pub audio: bool,
    /// Whether video is wanted.
    pub video: bool,
    /// `video.codec_type`, when given.
    pub video_codec_type: Option<String>,
    /// `video.bit_rate` (kbit/s), when given.
    pub video_bit_rate: Option<u32>,
    /// `multistream` as sent.
    pub multistream: Option<bool>,
    /// `simulcast` as sent.
    pub simulcast: Option<bool>,
    /// `spotlight` as sent.
    pub spotlight: Option<bool>,
    /// `data_channel_signaling` as sent.
    pub data_channel_signaling: Option<bool>,
}

/// A `candidate` message, in either SDK's format.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CandidateMessage {
    /// `candidate:...` attribute string.
    pub candidate: String,
    /// JS SDK only: the m-line's mid.
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    /// JS SDK only: the m-line's index.
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
    /// JS SDK only: the ICE ufrag.
    #[serde(rename = "usernameFragment", default)]
    pub username_fragment: Option<String>,
}

impl CandidateMessage {
    /// True for the JS SDK's form (RTCIceCandidate.toJSON() fields present).
    pub fn is_browser_format(&self) -> bool {
        self.sdp_mid.is_some() || self.sdp_mline_index.is_some() || self.username_fragment.is_some()
    }
}

/// Why a client message could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not an object with a string `type`.
    #[error("message is not an object with a string \"type\"")]
    MissingType,
    /// A known type with a missing or wrongly typed field.
    #[error("{message_type}: {detail}")]
    BadField {
        /// The message type.
        message_type: String,
        /// What is wrong.
        detail: String,
    },
}

/// A refusal, sent as a WebSocket close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Close code (4xxx).
    pub code: u16,
    /// Close reason.
    pub reason: String,
}

#[derive(Deserialize)]
struct SdpOnly {
    sdp: String,
}

#[derive(Deserialize)]
struct PongFields {
    #[serde(default)]
    stats: Option<Value>,
}

#[derive(Deserialize)]
struct DisconnectFields {
    #[serde(default)]
    reason: Option<String>,
}

/// Parses one text frame from a client.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
    let message_type = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ParseError::MissingType)?
        .to_owned();
    let bad = |e: serde_json::Error| ParseError::BadField {
        message_type: message_type.clone(),
        detail: e.to_string(),
    };
    Ok(match message_type.as_str() {
        "connect" => ClientMessage::Connect(Box::new(parse_connect(value)?)),
        "answer" => ClientMessage::Answer {
            sdp: SdpOnly::deserialize(&value).map_err(bad)?.sdp,
        },
        "re-answer" => ClientMessage::ReAnswer {
            sdp: SdpOnly::deserialize(&value).map_err(bad)?.sdp,
        },
        "candidate" => ClientMessage::Candidate(CandidateMessage::deserialize(&value).map_err(bad)?),
        "pong" => ClientMessage::Pong {
            stats: PongFields::deserialize(&value).map_err(bad)?.stats,
        },
        "disconnect" => ClientMessage::Disconnect {
            reason: DisconnectFields::deserialize(&value).map_err(bad)?.reason,
        },
        _ => ClientMessage::Other { message_type },
    })
}

fn parse_connect(raw: Value) -> Result<ConnectMessage, ParseError> {
    let bad = |detail: &str| ParseError::BadField {
        message_type: "connect".into(),
        detail: detail.into(),
    };
    let string = |key: &str| -> Result<Option<String>, ParseError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("\"{key}\" must be a string"))),
        }
    };
    let boolean = |key: &str| -> Result<Option<bool>, ParseError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(&format!("\"{key}\" must be a boolean"))),
        }
    };
    // `audio` / `video`: absent or true = on, false = off, an object = on with parameters.
    let media = |key: &str| -> Result<bool, ParseError> {
        match raw.get(key) {
            None | Some(Value::Null) | Some(Value::Object(_)) => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(&format!("\"{key}\" must be a boolean or an object"))),
        }
    };
    let role = string("role")?.ok_or_else(|| bad("\"role\" is required"))?;
    let channel_id = string("channel_id")?.ok_or_else(|| bad("\"channel_id\" is required"))?;
    let video_codec_type = match raw.get("video").and_then(|v| v.get("codec_type")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("\"video.codec_type\" must be a string")),
    };
    let video_bit_rate = match raw.get("video").and_then(|v| v.get("bit_rate")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|kbps| u32::try_from(kbps).ok())
                .ok_or_else(|| bad("\"video.bit_rate\" must be a non-negative integer (kbit/s)"))?,
        ),
    };
    Ok(ConnectMessage {
        role,
        channel_id,
        client_id: string("client_id")?,
        bundle_id: string("bundle_id")?,
        metadata: raw.get("metadata").filter(|v| !v.is_null()).cloned(),
        redirect: boolean("redirect")?.unwrap_or(false),
        audio: media("audio")?,
        video: media("video")?,
        video_codec_type,
        video_bit_rate,
        multistream: boolean("multistream")?,
        simulcast: boolean("simulcast")?,
        spotlight: boolean("spotlight")?,
        data_channel_signaling: boolean("data_channel_signaling")?,
        raw,
    })
}

/// Checks a `connect` against what this endpoint accepts; `access_token` is the required
/// `metadata.access_token`, if any.
pub fn validate_connect(connect: &ConnectMessage, access_token: Option<&str>) -> Result<(), Rejection> {
    let invalid = |reason: String| {
        Err(Rejection {
            code: CLOSE_INVALID_MESSAGE,
            reason,
        })
    };
    if !matches!(connect.role.as_str(), "sendonly" | "recvonly" | "sendrecv") {
        return invalid(format!("INVALID-ROLE: {:?}", connect.role));
    }
    if connect.channel_id.is_empty() || connect.channel_id.len() > MAX_ID_BYTES {
        return invalid("INVALID-CHANNEL-ID".into());
    }
    for (name, id) in [("CLIENT-ID", &connect.client_id), ("BUNDLE-ID", &connect.bundle_id)] {
        if id.as_ref().is_some_and(|id| id.len() > MAX_ID_BYTES) {
            return invalid(format!("INVALID-{name}"));
        }
    }
    if connect.data_channel_signaling == Some(true) {
        return invalid("DATA-CHANNEL-SIGNALING-NOT-SUPPORTED".into());
    }
    if let Some(codec) = &connect.video_codec_type
        && !matches!(codec.as_str(), "VP8" | "H264")
    {
        return invalid(format!(
            "UNSUPPORTED-VIDEO-CODEC: {codec} (this endpoint decodes VP8 and H264)"
        ));
    }
    if let Some(expected) = access_token {
        let given = connect
            .metadata
            .as_ref()
            .and_then(|m| m.get("access_token"))
            .and_then(Value::as_str);
        if given != Some(expected) {
            return Err(Rejection {
                code: CLOSE_AUTH_FAILED,
                reason: "AUTHENTICATION-FAILED: invalid access_token".into(),
            });
        }
    }
    Ok(())
}

/// Identifiers the server assigns to one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionIds {
    /// 26-character connection id.
    pub connection_id: String,
    /// 26-character session id (one per channel session in Sora; one per connection here).
    pub session_id: String,
    /// The client id: the client's, or the connection id when it sent none.
    pub client_id: String,
    /// The bundle id: the client's, or the client id.
    pub bundle_id: String,
}

/// Which m-line carries which kind, as put into `offer.mid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mids {
    /// mid of the audio m-line.
    pub audio: Option<String>,
    /// mid of the video m-line.
    pub video: Option<String>,
}

/// Reads the mid of the first audio and the first video m-line from an SDP.
pub fn mids_from_sdp(sdp: &str) -> Mids {
    let mut mids = Mids::default();
    let mut kind: Option<&str> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            kind = rest.split(' ').next();
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            match kind {
                Some("audio") if mids.audio.is_none() => mids.audio = Some(mid.to_owned()),
                Some("video") if mids.video.is_none() => mids.video = Some(mid.to_owned()),
                _ => {}
            }
        }
    }
    mids
}

/// The version string this endpoint reports in `offer`.
pub const SERVER_VERSION: &str = "livefilter-sora-endpoint";

/// Builds the `offer` message; `encodings` (simulcast connections only) makes it a simulcast
/// offer carrying them.
pub fn offer_message(
    connect: &ConnectMessage,
    ids: &SessionIds,
    sdp: &str,
    mids: &Mids,
    encodings: Option<&Encodings>,
) -> Value {
    let mut mid = serde_json::Map::new();
    if let Some(a) = &mids.audio {
        mid.insert("audio".into(), json!(a));
    }
    if let Some(v) = &mids.video {
        mid.insert("video".into(), json!(v));
    }
    let mut offer = json!({
        "type": "offer",
        "sdp": sdp,
        "version": SERVER_VERSION,
        "connection_id": ids.connection_id,
        "session_id": ids.session_id,
        "client_id": ids.client_id,
        "bundle_id": ids.bundle_id,
        "channel_id": connect.channel_id,
        "config": {"iceServers": [], "iceTransportPolicy": "all"},
        "mid": mid,
        "multistream": connect.multistream.unwrap_or(true),
        "simulcast": encodings.is_some(),
        "spotlight": false,
    });
    if let Some(obj) = offer.as_object_mut() {
        if let Some(metadata) = &connect.metadata {
            obj.insert("metadata".into(), metadata.clone());
        }
        if let Some(encodings) = encodings {
            obj.insert("encodings".into(), encodings.to_json());
        }
    }
    offer
}

/// Builds the `notify` `connection.created` message for the connection itself.
pub fn connection_created_message(connect: &ConnectMessage, ids: &SessionIds) -> Value {
    let (send, recv) = match connect.role.as_str() {
        "sendonly" => (1, 0),
        "recvonly" => (0, 1),
        _ => (0, 0),
    };
    json!({
        "type": "notify",
        "event_type": "connection.created",
        "role": connect.role,
        "channel_id": connect.channel_id,
        "session_id": ids.session_id,
        "client_id": ids.client_id,
        "bundle_id": ids.bundle_id,
        "connection_id": ids.connection_id,
        "audio": connect.audio,
        "video": connect.video,
        "minutes": 0,
        "channel_connections": 1,
        "channel_sendrecv_connections": if connect.role == "sendrecv" { 1 } else { 0 },
        "channel_sendonly_connections": send,
        "channel_recvonly_connections": recv,
        "turn_transport_type": "udp",
        "data": [{
            "connection_id": ids.connection_id,
            "client_id": ids.client_id,
            "role": connect.role,
        }],
    })
}

/// Builds a `ping`.
pub fn ping_message(stats: bool) -> Value {
    json!({"type": "ping", "stats": stats})
}

/// Builds a `re-offer`; a simulcast connection's carries its `encodings` again.
pub fn re_offer_message(sdp: &str, encodings: Option<&Encodings>) -> Value {
    let mut message = json!({"type": "re-offer", "sdp": sdp});
    if let (Some(encodings), Some(obj)) = (encodings, message.as_object_mut()) {
        obj.insert("encodings".into(), encodings.to_json());
    }
    message
}

/// Whether a `connect` asks to publish simulcast video (`simulcast: true`, a sending role, video
/// on).
pub fn wants_simulcast(connect: &ConnectMessage) -> bool {
    connect.simulcast == Some(true) && connect.video && matches!(connect.role.as_str(), "sendonly" | "sendrecv")
}

/// The video bitrate (kbit/s) Sora's default simulcast encodings share: the `connect`'s
/// `video.bit_rate`, held to the endpoint's cap when there is one.
pub fn simulcast_bit_rate_kbps(connect: &ConnectMessage, cap_kbps: Option<u32>) -> u32 {
    match (connect.video_bit_rate.filter(|&kbps| kbps > 0), cap_kbps) {
        (Some(kbps), Some(cap)) => kbps.min(cap),
        (Some(kbps), None) => kbps,
        (None, Some(cap)) => cap,
        (None, None) => DEFAULT_BIT_RATE_KBPS,
    }
}

/// Builds a `redirect`.
pub fn redirect_message(location: &str) -> Value {
    json!({"type": "redirect", "location": location})
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY_CONNECT: &str = r#"{"type":"connect","role":"sendonly","channel_id":"mock-channel","sora_client":"Sora Python SDK 2025.4.0","environment":"[x86_64] Debian GNU/Linux 12 (bookworm)","client_id":"relay-1","metadata":{"access_token":"dummy"},"video":{"codec_type":"VP8","bit_rate":1000},"audio":false}"#;

    fn connect(text: &str) -> ConnectMessage {
        match parse_client_message(text).unwrap() {
            ClientMessage::Connect(c) => *c,
            other => panic!("not a connect: {other:?}"),
        }
    }

    #[test]
    fn parses_the_python_sdk_connect() {
        let c = connect(PY_CONNECT);
        assert_eq!(c.role, "sendonly");
        assert_eq!(c.channel_id, "mock-channel");
        assert_eq!(c.client_id.as_deref(), Some("relay-1"));
        assert_eq!(c.video_codec_type.as_deref(), Some("VP8"));
        assert!(c.video && !c.audio && !c.redirect);
        assert_eq!(c.metadata, Some(json!({"access_token": "dummy"})));
        assert_eq!(c.raw["sora_client"], "Sora Python SDK 2025.4.0");
        assert_eq!(validate_connect(&c, Some("dummy")), Ok(()));
    }

    #[test]
    fn wrong_or_missing_access_token_is_refused_with_4401() {
        let c = connect(PY_CONNECT);
        let err = validate_connect(&c, Some("other")).unwrap_err();
        assert_eq!(err.code, CLOSE_AUTH_FAILED);
        let c = connect(r#"{"type":"connect","role":"sendonly","channel_id":"x"}"#);
        assert_eq!(validate_connect(&c, Some("t")).unwrap_err().code, CLOSE_AUTH_FAILED);
        assert_eq!(validate_connect(&c, None), Ok(()));
    }

    #[test]
    fn invalid_connects_are_refused_with_4400() {
        let long = "x".repeat(256);
        for text in [
            r#"{"type":"connect","role":"publisher","channel_id":"x"}"#.to_owned(),
            r#"{"type":"connect","role":"sendonly","channel_id":""}"#.to_owned(),
            format!(r#"{{"type":"connect","role":"sendonly","channel_id":"{long}"}}"#),
            r#"{"type":"connect","role":"sendonly","channel_id":"x","video":{"codec_type":"AV1"}}"#.to_owned(),
            r#"{"type":"connect","role":"sendonly","channel_id":"x","data_channel_signaling":true}"#.to_owned(),
        ] {
            assert_eq!(
                validate_connect(&connect(&text), None).unwrap_err().code,
                CLOSE_INVALID_MESSAGE,
                "{text}"
            );
        }
    }

    #[test]
    fn connect_with_wrong_field_types_is_a_parse_error() {
        for text in [
            r#"{"type":"connect","channel_id":"x"}"#,
            r#"{"type":"connect","role":"sendonly"}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":5}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":"x","redirect":"yes"}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":"x","video":3}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":"x","video":{"codec_type":1}}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":"x","video":{"bit_rate":"fast"}}"#,
            r#"{"type":"connect","role":"sendonly","channel_id":"x","video":{"bit_rate":-1}}"#,
        ] {
            assert!(
                matches!(parse_client_message(text), Err(ParseError::BadField { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn both_candidate_formats_parse() {
        let plain = r#"{"type":"candidate","candidate":"candidate:1 1 udp 2122194687 192.0.2.2 34240 typ host"}"#;
        let ClientMessage::Candidate(c) = parse_client_message(plain).unwrap() else {
            panic!()
        };
        assert!(!c.is_browser_format());
        let js = r#"{"type":"candidate","candidate":"candidate:2 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"1","sdpMLineIndex":0,"usernameFragment":"abcd"}"#;
        let ClientMessage::Candidate(c) = parse_client_message(js).unwrap() else {
            panic!()
        };
        assert!(c.is_browser_format());
        assert_eq!((c.sdp_mid.as_deref(), c.sdp_mline_index), (Some("1"), Some(0)));
    }

    #[test]
    fn other_messages_parse_and_unknown_types_are_kept_by_name() {
        assert_eq!(
            parse_client_message(r#"{"type":"answer","sdp":"v=0"}"#),
            Ok(ClientMessage::Answer { sdp: "v=0".into() })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"re-answer","sdp":"v=0"}"#),
            Ok(ClientMessage::ReAnswer { sdp: "v=0".into() })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"pong"}"#),
            Ok(ClientMessage::Pong { stats: None })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"pong","stats":[{"type":"codec"}]}"#),
            Ok(ClientMessage::Pong {
                stats: Some(json!([{"type":"codec"}]))
            })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"disconnect","reason":"NO-ERROR"}"#),
            Ok(ClientMessage::Disconnect {
                reason: Some("NO-ERROR".into())
            })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"stats","reports":[]}"#),
            Ok(ClientMessage::Other {
                message_type: "stats".into()
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "{",
            "[]",
            "null",
            "42",
            r#"{"type":1}"#,
            r#"{"type":"answer"}"#,
            r#"{"type":"answer","sdp":7}"#,
            "\u{0}",
        ] {
            assert!(parse_client_message(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn offer_carries_what_the_official_sdks_require() {
        let c = connect(PY_CONNECT);
        let ids = SessionIds {
            connection_id: "C".repeat(26),
            session_id: "S".repeat(26),
            client_id: "relay-1".into(),
            bundle_id: "relay-1".into(),
        };
        let mids = Mids {
            audio: None,
            video: Some("0".into()),
        };
        let offer = offer_message(&c, &ids, "v=0\r\n", &mids, None);
        assert_eq!(offer["type"], "offer");
        assert_eq!(offer["connection_id"], ids.connection_id);
        assert_eq!(offer["config"], json!({"iceServers": [], "iceTransportPolicy": "all"}));
        assert_eq!(offer["mid"], json!({"video": "0"}));
        assert_eq!(offer["metadata"], json!({"access_token": "dummy"}));
        assert_eq!(offer["simulcast"], false);
        assert!(offer.get("encodings").is_none(), "{offer:#}");
        let created = connection_created_message(&c, &ids);
        assert_eq!(created["event_type"], "connection.created");
        assert_eq!(created["connection_id"], ids.connection_id);
    }

    fn test_ids() -> SessionIds {
        SessionIds {
            connection_id: "C".repeat(26),
            session_id: "S".repeat(26),
            client_id: "c".into(),
            bundle_id: "c".into(),
        }
    }

    #[test]
    fn a_simulcast_offer_carries_the_encodings_lowest_layer_first() {
        let c = connect(
            r#"{"type":"connect","role":"sendonly","channel_id":"x","simulcast":true,"video":{"codec_type":"VP8","bit_rate":2000}}"#,
        );
        assert!(wants_simulcast(&c));
        assert_eq!(c.video_bit_rate, Some(2000));
        let encodings = Encodings::sora_default(simulcast_bit_rate_kbps(&c, None));
        let offer = offer_message(&c, &test_ids(), "v=0\r\n", &Mids::default(), Some(&encodings));
        assert_eq!(offer["simulcast"], true);
        assert_eq!(
            offer["encodings"],
            json!([
                {"rid": "r0", "active": true, "scaleResolutionDownBy": 4.0, "maxBitrate": 300_000},
                {"rid": "r1", "active": true, "scaleResolutionDownBy": 2.0, "maxBitrate": 600_000},
                {"rid": "r2", "active": true, "scaleResolutionDownBy": 1.0, "maxBitrate": 1_100_000},
            ])
        );
        let re_offer = re_offer_message("v=0\r\n", Some(&encodings));
        assert_eq!(re_offer["encodings"], offer["encodings"], "a re-offer repeats them");
        assert!(re_offer_message("v=0\r\n", None).get("encodings").is_none());
    }

    #[test]
    fn simulcast_is_only_for_senders_with_video() {
        let with = |fields: &str| connect(&format!(r#"{{"type":"connect","channel_id":"x",{fields}}}"#));
        assert!(wants_simulcast(&with(r#""role":"sendrecv","simulcast":true"#)));
        assert!(!wants_simulcast(&with(r#""role":"recvonly","simulcast":true"#)));
        assert!(!wants_simulcast(&with(
            r#""role":"sendonly","simulcast":true,"video":false"#
        )));
        assert!(!wants_simulcast(&with(r#""role":"sendonly","simulcast":false"#)));
        assert!(!wants_simulcast(&with(r#""role":"sendonly""#)));
    }

    #[test]
    fn the_default_encodings_share_the_connect_bitrate_held_to_the_cap_or_1000_kbps() {
        let c = |video: &str| {
            connect(&format!(
                r#"{{"type":"connect","role":"sendonly","channel_id":"x","video":{video}}}"#
            ))
        };
        assert_eq!(simulcast_bit_rate_kbps(&c(r#"{"bit_rate":2000}"#), None), 2000);
        assert_eq!(simulcast_bit_rate_kbps(&c(r#"{"bit_rate":2000}"#), Some(800)), 800);
        assert_eq!(simulcast_bit_rate_kbps(&c(r#"{"bit_rate":500}"#), Some(800)), 500);
        assert_eq!(simulcast_bit_rate_kbps(&c("true"), Some(800)), 800);
        assert_eq!(simulcast_bit_rate_kbps(&c("true"), None), 1000);
        assert_eq!(simulcast_bit_rate_kbps(&c(r#"{"bit_rate":0}"#), None), 1000);
    }

    #[test]
    fn mids_are_read_per_kind() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        assert_eq!(
            mids_from_sdp(sdp),
            Mids {
                audio: Some("0".into()),
                video: Some("1".into())
            }
        );
        assert_eq!(mids_from_sdp("garbage"), Mids::default());
    }
}
