//! Simulcast as Sora asks for it: the `encodings` an `offer` carries (lowest layer first), the
//! receive rids the endpoint adds to its offer's video m-section, and the rids the client's
//! answer sends. Pure text and JSON: no I/O, every input error is a value.

use serde_json::{Map, Value, json};

/// Header extensions a simulcast video m-section must carry, so that each layer's packets can be
/// told apart by their rid before any SSRC is known.
pub const REQUIRED_EXTENSIONS: [&str; 3] = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
];

/// Video bitrate (kbit/s) the default encodings share when neither the `connect` nor the
/// endpoint's cap gives one.
pub const DEFAULT_BIT_RATE_KBPS: u32 = 1000;

/// Sora's default layers: rid, `scaleResolutionDownBy`, share of the video bitrate (percent).
const DEFAULT_LAYERS: [(&str, f64, u64); 3] = [("r0", 4.0, 15), ("r1", 2.0, 30), ("r2", 1.0, 55)];

/// Why a `--simulcast-encodings` value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodingsError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not a non-empty array.
    #[error("must be a non-empty JSON array of encodings")]
    NotANonEmptyArray,
    /// An element is not an object.
    #[error("encoding {0} is not an object")]
    NotAnObject(usize),
    /// An element has no string `rid`.
    #[error("encoding {0} has no string \"rid\"")]
    MissingRid(usize),
    /// A rid that cannot go into an SDP `a=rid` line (RFC 8851: letters, digits, `-`, `_`).
    #[error("encoding {index}: rid {rid:?} must be 1 to 16 letters, digits, '-' or '_'")]
    InvalidRid {
        /// Position in the array.
        index: usize,
        /// The rid given.
        rid: String,
    },
    /// Two encodings with the same rid.
    #[error("rid {0:?} appears twice")]
    DuplicateRid(String),
    /// A known field of the wrong type or range.
    #[error("encoding {index}: \"{field}\" {expected}")]
    BadField {
        /// Position in the array.
        index: usize,
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

/// The `encodings` of a simulcast `offer`, lowest layer first, each with a `rid`.
#[derive(Clone, Debug, PartialEq)]
pub struct Encodings(Vec<Map<String, Value>>);

fn rid_is_valid(rid: &str) -> bool {
    (1..=16).contains(&rid.len()) && rid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Encodings {
    /// Reads a JSON array of encodings (as `--simulcast-encodings` takes it): objects with a
    /// distinct string `rid`; the optional fields libwebrtc knows are type-checked, the rest
    /// passed on as they are.
    pub fn parse(text: &str) -> Result<Self, EncodingsError> {
        let value: Value = serde_json::from_str(text).map_err(|e| EncodingsError::InvalidJson(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(EncodingsError::NotANonEmptyArray);
        };
        if items.is_empty() {
            return Err(EncodingsError::NotANonEmptyArray);
        }
        let mut encodings = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(encoding) = item else {
                return Err(EncodingsError::NotAnObject(index));
            };
            let rid = encoding
                .get("rid")
                .and_then(Value::as_str)
                .ok_or(EncodingsError::MissingRid(index))?;
            if !rid_is_valid(rid) {
                return Err(EncodingsError::InvalidRid {
                    index,
                    rid: rid.to_owned(),
                });
            }
            check_fields(index, &encoding)?;
            encodings.push(encoding);
        }
        let parsed = Self(encodings);
        let rids = parsed.rids();
        if let Some((_, rid)) = rids.iter().enumerate().find(|(i, rid)| rids[..*i].contains(rid)) {
            return Err(EncodingsError::DuplicateRid((*rid).to_owned()));
        }
        Ok(parsed)
    }

    /// Sora's defaults for a video bitrate of `bit_rate_kbps`: r0, r1, r2 at 1/4, 1/2 and full
    /// resolution with 15 %, 30 % and 55 % of the bitrate.
    pub fn sora_default(bit_rate_kbps: u32) -> Self {
        let encodings = DEFAULT_LAYERS
            .iter()
            .map(|&(rid, scale, percent)| {
                let max_bitrate = u64::from(bit_rate_kbps) * 1000 * percent / 100;
                let value = json!({
                    "rid": rid,
                    "active": true,
                    "scaleResolutionDownBy": scale,
                    "maxBitrate": max_bitrate,
                });
                match value {
                    Value::Object(map) => map,
                    _ => Map::new(),
                }
            })
            .collect();
        Self(encodings)
    }

    /// The rids, in the encodings' order.
    pub fn rids(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|e| e.get("rid").and_then(Value::as_str))
            .collect()
    }

    /// The JSON array the `offer` carries.
    pub fn to_json(&self) -> Value {
        Value::Array(self.0.iter().cloned().map(Value::Object).collect())
    }
}

fn check_fields(index: usize, encoding: &Map<String, Value>) -> Result<(), EncodingsError> {
    let bad = |field, expected| Err(EncodingsError::BadField { index, field, expected });
    let positive = |v: &Value| v.as_f64().is_some_and(|n| n > 0.0);
    if encoding.get("active").is_some_and(|v| !v.is_boolean()) {
        return bad("active", "must be a boolean");
    }
    if encoding
        .get("scaleResolutionDownBy")
        .is_some_and(|v| !v.as_f64().is_some_and(|n| n >= 1.0))
    {
        return bad("scaleResolutionDownBy", "must be a number >= 1");
    }
    if encoding
        .get("maxBitrate")
        .is_some_and(|v| v.as_u64().is_none_or(|n| n == 0))
    {
        return bad("maxBitrate", "must be a positive integer (bit/s)");
    }
    if encoding.get("maxFramerate").is_some_and(|v| !positive(v)) {
        return bad("maxFramerate", "must be a positive number");
    }
    if let Some(to) = encoding.get("scaleResolutionDownTo") {
        let sized = |key| to.get(key).is_some_and(|v| v.as_u64().is_some_and(|n| n > 0));
        if !to.is_object() || !sized("maxWidth") || !sized("maxHeight") {
            return bad(
                "scaleResolutionDownTo",
                "must be {\"maxWidth\": N, \"maxHeight\": N} with positive integers",
            );
        }
    }
    Ok(())
}

/// Why the endpoint's own offer could not be made a simulcast one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The offer has no video m-section.
    #[error("the offer has no video m-section")]
    NoVideoSection,
    /// The media engine did not put a header extension simulcast needs into the offer.
    #[error("the offer's video m-section lacks the header extension {0}")]
    MissingExtension(&'static str),
}

/// Line ranges `[start, end)` of each m-section of `lines` whose m-line starts with `m=kind `.
fn sections<'a>(lines: &'a [&str], kind: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("m="))
        .map(|(i, _)| i)
        .collect();
    let prefix = format!("m={kind} ");
    (0..starts.len()).filter_map(move |n| {
        let start = starts[n];
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        lines[start].starts_with(&prefix).then_some((start, end))
    })
}

/// `sdp` (the endpoint's offer) with the first video m-section asking to receive simulcast:
/// `a=rid:<rid> recv` for each rid and `a=simulcast:recv r0;r1;...`, in `rids` order, after the
/// section's other attributes (any earlier rid or simulcast lines replaced). The section must
/// already carry the mid, rtp-stream-id and repaired-rtp-stream-id header extensions. Line
/// endings are kept.
pub fn offer_to_receive(sdp: &str, rids: &[&str]) -> Result<String, OfferError> {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.lines().collect();
    let (start, end) = sections(&lines, "video").next().ok_or(OfferError::NoVideoSection)?;
    let section = &lines[start..end];
    for uri in REQUIRED_EXTENSIONS {
        let present = section.iter().any(|l| {
            l.strip_prefix("a=extmap:")
                .and_then(|rest| rest.split_whitespace().nth(1))
                .is_some_and(|u| u == uri)
        });
        if !present {
            return Err(OfferError::MissingExtension(uri));
        }
    }
    let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
    out.extend(
        section
            .iter()
            .filter(|l| !l.starts_with("a=rid:") && !l.starts_with("a=simulcast:"))
            .map(|l| (*l).to_owned()),
    );
    out.extend(rids.iter().map(|rid| format!("a=rid:{rid} recv")));
    out.push(format!("a=simulcast:recv {}", rids.join(";")));
    out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
    let mut text = out.join(eol);
    if sdp.ends_with('\n') {
        text.push_str(eol);
    }
    Ok(text)
}

/// The rids the first video m-section of an answer sends (`a=rid:<rid> send`), in line order.
pub fn answer_send_rids(sdp: &str) -> Vec<String> {
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    let Some((start, end)) = sections(&lines, "video").next() else {
        return Vec::new();
    };
    lines[start..end]
        .iter()
        .filter_map(|l| l.strip_prefix("a=rid:"))
        .filter_map(|rest| {
            let mut fields = rest.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some(rid), Some("send")) => Some(rid.to_owned()),
                _ => None,
            }
        })
        .collect()
}

/// The offered rids (in offer order) that the answer sends: the layers to expect.
pub fn negotiated_rids(offered: &[&str], answer_sdp: &str) -> Vec<String> {
    let sent = answer_send_rids(answer_sdp);
    offered
        .iter()
        .filter(|rid| sent.iter().any(|s| s == *rid))
        .map(|rid| (*rid).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=recvonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=recvonly\r\na=rtpmap:96 VP8/90000\r\n";

    fn video_section(sdp: &str) -> Vec<&str> {
        let lines: Vec<&str> = sdp.lines().collect();
        let (start, end) = sections(&lines, "video").next().expect("video section");
        lines[start..end].to_vec()
    }

    #[test]
    fn the_offer_asks_to_receive_the_rids_in_order_at_the_end_of_the_video_section() {
        let sdp = offer_to_receive(OFFER, &["r0", "r1", "r2"]).expect("munged");
        let video = video_section(&sdp);
        assert_eq!(
            video[video.len() - 4..],
            [
                "a=rid:r0 recv",
                "a=rid:r1 recv",
                "a=rid:r2 recv",
                "a=simulcast:recv r0;r1;r2"
            ]
        );
        assert!(video.contains(&"a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"));
        let audio: Vec<&str> = sdp.lines().skip_while(|l| !l.starts_with("m=audio")).take(4).collect();
        assert!(!audio.iter().any(|l| l.starts_with("a=rid")), "audio untouched");
        assert!(sdp.ends_with("a=simulcast:recv r0;r1;r2\r\n"));
        assert!(!sdp.replace("\r\n", "").contains('\n'), "CRLF kept");
    }

    #[test]
    fn munging_twice_replaces_the_earlier_rids() {
        let once = offer_to_receive(OFFER, &["r0", "r1", "r2"]).expect("munged");
        let twice = offer_to_receive(&once, &["low", "high"]).expect("munged");
        let video = video_section(&twice);
        assert_eq!(video.iter().filter(|l| l.starts_with("a=rid:")).count(), 2);
        assert_eq!(video.last(), Some(&"a=simulcast:recv low;high"));
    }

    #[test]
    fn an_offer_without_video_or_without_the_rid_extensions_is_refused() {
        let audio_only = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\n";
        assert_eq!(offer_to_receive(audio_only, &["r0"]), Err(OfferError::NoVideoSection));
        let no_rrid = OFFER.replace(
            "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
            "",
        );
        assert_eq!(
            offer_to_receive(&no_rrid, &["r0"]),
            Err(OfferError::MissingExtension(REQUIRED_EXTENSIONS[2]))
        );
    }

    #[test]
    fn the_layers_are_the_offered_rids_the_answer_sends() {
        let answer = "v=0\r\nm=video 9 X 96\r\na=mid:1\r\na=rid:r2 send\r\na=rid:r0 send\r\n\
            a=rid:zz send\r\na=rid:r1 recv\r\na=simulcast:send r0;r2\r\n";
        assert_eq!(answer_send_rids(answer), ["r2", "r0", "zz"]);
        assert_eq!(negotiated_rids(&["r0", "r1", "r2"], answer), ["r0", "r2"]);
        assert!(negotiated_rids(&["r0"], "v=0\r\nm=video 9 X 96\r\n").is_empty());
        assert!(answer_send_rids("garbage").is_empty());
    }

    fn default_json(kbps: u32) -> Value {
        Encodings::sora_default(kbps).to_json()
    }

    #[test]
    fn sora_default_encodings_split_the_bitrate_15_30_55_from_the_lowest_layer() {
        let encodings = default_json(1000);
        assert_eq!(
            encodings,
            json!([
                {"rid": "r0", "active": true, "scaleResolutionDownBy": 4.0, "maxBitrate": 150_000},
                {"rid": "r1", "active": true, "scaleResolutionDownBy": 2.0, "maxBitrate": 300_000},
                {"rid": "r2", "active": true, "scaleResolutionDownBy": 1.0, "maxBitrate": 550_000},
            ])
        );
        assert_eq!(Encodings::sora_default(2500).rids(), ["r0", "r1", "r2"]);
        assert_eq!(default_json(2500)[2]["maxBitrate"], 1_375_000);
    }

    #[test]
    fn configured_encodings_are_kept_verbatim_in_order() {
        let text = r#"[{"rid":"r0","active":true,"scaleResolutionDownBy":4,"maxBitrate":150000,"maxFramerate":15},
            {"rid":"r1","scaleResolutionDownTo":{"maxWidth":640,"maxHeight":360},"x-extra":"kept"},
            {"rid":"r2","active":false}]"#;
        let encodings = Encodings::parse(text).expect("valid");
        assert_eq!(encodings.rids(), ["r0", "r1", "r2"]);
        let original: Value = serde_json::from_str(text).expect("json");
        assert_eq!(encodings.to_json(), original);
    }

    #[test]
    fn invalid_encodings_are_refused_with_the_reason() {
        let cases: [(&str, EncodingsError); 10] = [
            ("[", EncodingsError::InvalidJson(String::new())),
            (r#"{"rid":"r0"}"#, EncodingsError::NotANonEmptyArray),
            ("[]", EncodingsError::NotANonEmptyArray),
            (r#"[{"rid":"r0"}, 3]"#, EncodingsError::NotAnObject(1)),
            (r#"[{"active":true}]"#, EncodingsError::MissingRid(0)),
            (r#"[{"rid":5}]"#, EncodingsError::MissingRid(0)),
            (
                r#"[{"rid":"r 0"}]"#,
                EncodingsError::InvalidRid {
                    index: 0,
                    rid: "r 0".into(),
                },
            ),
            (
                r#"[{"rid":"a"},{"rid":"b"},{"rid":"a"}]"#,
                EncodingsError::DuplicateRid("a".into()),
            ),
            (
                r#"[{"rid":"r0","maxBitrate":"1M"}]"#,
                EncodingsError::BadField {
                    index: 0,
                    field: "maxBitrate",
                    expected: "",
                },
            ),
            (
                r#"[{"rid":"r0"},{"rid":"r1","scaleResolutionDownTo":{"maxWidth":640}}]"#,
                EncodingsError::BadField {
                    index: 1,
                    field: "scaleResolutionDownTo",
                    expected: "",
                },
            ),
        ];
        for (text, want) in cases {
            let got = Encodings::parse(text).expect_err(text);
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{text}: {got}"
            );
            match (&got, &want) {
                (EncodingsError::InvalidJson(_), _) => {}
                (
                    EncodingsError::BadField { index, field, .. },
                    EncodingsError::BadField { index: i, field: f, .. },
                ) => assert_eq!((index, field), (i, f), "{text}"),
                _ => assert_eq!(got, want, "{text}"),
            }
        }
        let scale = Encodings::parse(r#"[{"rid":"r0","scaleResolutionDownBy":0.5}]"#).expect_err("scale < 1");
        assert!(scale.to_string().contains("scaleResolutionDownBy"), "{scale}");
    }
}
