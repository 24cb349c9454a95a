//! Checks a browser's SDP offer before any WebRTC work: pure, so every rejection is precise
//! and testable.

use crate::codec::VideoCodec;

/// Why an offer is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    /// `type` was not `offer`.
    #[error("expected a description of type \"offer\", got {0:?}")]
    NotAnOffer(String),
    /// The SDP is not parseable SDP.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No `m=video` section.
    #[error("the offer has no video m-line (m= sections offered: {0})")]
    NoVideo(String),
    /// No codec the relay decodes.
    #[error("no common video codec: offered {offered}; the relay accepts {accepted}")]
    NoCommonCodec { offered: String, accepted: String },
    /// The offer parses but cannot be answered (webrtc-rs's words).
    #[error("the offer cannot be answered: {0}")]
    Unanswerable(String),
}

/// Refuses attributes whose values the WebRTC stack would otherwise choke on later, with a
/// message naming the line: SSRCs must be 32-bit numbers, fingerprints `<hash> <hex:hex...>`.
fn check_attribute(value: &str) -> Result<(), OfferError> {
    let bad = |what: &str| Err(OfferError::Malformed(format!("{what} in \"a={}\"", truncate(value))));
    if let Some(rest) = value.strip_prefix("ssrc:") {
        let ssrc = rest.split(' ').next().unwrap_or_default();
        if ssrc.parse::<u32>().is_err() {
            return bad("the SSRC is not a 32-bit number");
        }
    } else if let Some(rest) = value.strip_prefix("ssrc-group:") {
        let mut parts = rest.split(' ');
        let semantics = parts.next().unwrap_or_default();
        if semantics.is_empty() || parts.any(|p| p.parse::<u32>().is_err()) {
            return bad("an SSRC group needs semantics and 32-bit SSRCs");
        }
    } else if let Some(rest) = value.strip_prefix("fingerprint:") {
        let Some((hash, digest)) = rest.split_once(' ') else {
            return bad("a fingerprint needs a hash function and a digest");
        };
        let hex_pairs = digest
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if hash.is_empty() || !hex_pairs {
            return bad("the fingerprint digest is not colon-separated hex");
        }
    }
    Ok(())
}

/// What an acceptable offer contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    /// Video codecs offered that the relay accepts, in the relay's preference order.
    pub video_codecs: Vec<VideoCodec>,
    /// Whether an audio section with Opus is offered.
    pub opus: bool,
}

/// An H.264 format the relay's decoder handles: packetization-mode 1, (constrained) baseline.
pub fn h264_fmtp_acceptable(fmtp: &str) -> bool {
    let param = |name: &str| {
        fmtp.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    param("packetization-mode").as_deref() == Some("1")
        && param("profile-level-id").is_some_and(|p| p.starts_with("42"))
}

#[derive(Default)]
struct Section {
    kind: String,
    rtpmap: Vec<(String, String)>,
    fmtp: Vec<(String, String)>,
}

/// Checks `sdp` (of description `kind`) against the codecs the relay accepts (`accepted`, in
/// preference order).
pub fn check_offer(kind: &str, sdp: &str, accepted: &[VideoCodec]) -> Result<OfferSummary, OfferError> {
    if kind != "offer" {
        return Err(OfferError::NotAnOffer(kind.to_owned()));
    }
    let mut lines = sdp.lines().map(str::trim_end).filter(|l| !l.is_empty());
    match lines.next() {
        Some("v=0") => {}
        Some(first) => {
            return Err(OfferError::Malformed(format!(
                "must start with \"v=0\", starts with {:?}",
                truncate(first)
            )));
        }
        None => return Err(OfferError::Malformed("empty SDP".into())),
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            return Err(OfferError::Malformed(format!(
                "line {:?} is not <type>=<value>",
                truncate(line)
            )));
        };
        if key.len() != 1 {
            return Err(OfferError::Malformed(format!(
                "line {:?} has no one-letter type",
                truncate(line)
            )));
        }
        match key {
            "m" => sections.push(Section {
                kind: value.split_whitespace().next().unwrap_or_default().to_owned(),
                ..Default::default()
            }),
            "a" => {
                check_attribute(value)?;
                let Some(section) = sections.last_mut() else { continue };
                if let Some(rest) = value.strip_prefix("rtpmap:") {
                    if let Some((pt, codec)) = rest.split_once(' ') {
                        section
                            .rtpmap
                            .push((pt.to_owned(), codec.split('/').next().unwrap_or_default().to_owned()));
                    }
                } else if let Some(rest) = value.strip_prefix("fmtp:")
                    && let Some((pt, params)) = rest.split_once(' ')
                {
                    section.fmtp.push((pt.to_owned(), params.to_owned()));
                }
            }
            _ => {}
        }
    }
    let video: Vec<&Section> = sections.iter().filter(|s| s.kind == "video").collect();
    if video.is_empty() {
        let kinds: Vec<&str> = sections.iter().map(|s| s.kind.as_str()).collect();
        return Err(OfferError::NoVideo(if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        }));
    }
    let mut offered: Vec<String> = Vec::new();
    let mut found: Vec<VideoCodec> = Vec::new();
    for section in &video {
        for (pt, name) in &section.rtpmap {
            let fmtp = section
                .fmtp
                .iter()
                .find(|(p, _)| p == pt)
                .map(|(_, f)| f.as_str())
                .unwrap_or("");
            let label = if fmtp.is_empty() {
                name.clone()
            } else {
                format!("{name} ({fmtp})")
            };
            if !offered.contains(&label) {
                offered.push(label);
            }
            let codec = match name.to_ascii_uppercase().as_str() {
                "VP8" => Some(VideoCodec::Vp8),
                "H264" if h264_fmtp_acceptable(fmtp) => Some(VideoCodec::H264),
                _ => None,
            };
            if let Some(c) = codec
                && !found.contains(&c)
            {
                found.push(c);
            }
        }
    }
    let video_codecs: Vec<VideoCodec> = accepted.iter().copied().filter(|c| found.contains(c)).collect();
    if video_codecs.is_empty() {
        let names: Vec<String> = accepted
            .iter()
            .map(|c| match c {
                VideoCodec::Vp8 => "VP8".to_owned(),
                VideoCodec::H264 => "H264 (packetization-mode=1, baseline 42xxxx)".to_owned(),
            })
            .collect();
        return Err(OfferError::NoCommonCodec {
            offered: if offered.is_empty() {
                "nothing".into()
            } else {
                offered.join(", ")
            },
            accepted: names.join(", "),
        });
    }
    let opus = sections
        .iter()
        .any(|s| s.kind == "audio" && s.rtpmap.iter().any(|(_, n)| n.eq_ignore_ascii_case("opus")));
    // DTLS-SRTP needs the browser's certificate fingerprint and ICE its credentials.
    for needed in ["fingerprint", "ice-ufrag", "ice-pwd"] {
        let prefix = format!("a={needed}:");
        if !sdp.lines().any(|l| l.trim_start().starts_with(&prefix)) {
            return Err(OfferError::Malformed(format!("the offer has no a={needed} line")));
        }
    }
    Ok(OfferSummary { video_codecs, opus })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[VideoCodec] = &[VideoCodec::Vp8, VideoCodec::H264];

    fn offer(video_rtpmaps: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD:01\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\n{video_rtpmaps}"
        )
    }

    #[test]
    fn a_browser_offer_with_vp8_and_h264_is_accepted_in_preference_order() {
        let sdp = offer(
            "a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:96 VP8/90000\r\n",
        );
        let summary = check_offer("offer", &sdp, &[VideoCodec::H264, VideoCodec::Vp8]).unwrap();
        assert_eq!(
            summary,
            OfferSummary {
                video_codecs: vec![VideoCodec::H264, VideoCodec::Vp8],
                opus: true
            }
        );
    }

    #[test]
    fn only_vp9_and_high_profile_h264_name_what_was_offered() {
        let sdp = offer(
            "a=rtpmap:98 VP9/90000\r\na=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=1;profile-level-id=640c1f\r\n",
        );
        let err = check_offer("offer", &sdp, BOTH).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common video codec: offered VP9, H264 (packetization-mode=1;profile-level-id=640c1f); the relay accepts VP8, H264 (packetization-mode=1, baseline 42xxxx)"
        );
    }

    #[test]
    fn audio_only_offers_have_no_video() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(
            check_offer("offer", sdp, BOTH),
            Err(OfferError::NoVideo("audio".into()))
        );
    }

    #[test]
    fn garbage_and_answers_are_rejected_precisely() {
        assert!(matches!(check_offer("offer", "hello", BOTH), Err(OfferError::Malformed(m)) if m.contains("v=0")));
        assert!(matches!(check_offer("offer", "", BOTH), Err(OfferError::Malformed(m)) if m == "empty SDP"));
        assert!(matches!(
            check_offer("offer", "v=0\nnot a line", BOTH),
            Err(OfferError::Malformed(_))
        ));
        assert_eq!(
            check_offer("answer", &offer(""), BOTH),
            Err(OfferError::NotAnOffer("answer".into()))
        );
    }

    #[test]
    fn h264_needs_packetization_mode_1_and_a_baseline_profile() {
        assert!(h264_fmtp_acceptable("profile-level-id=42001f;packetization-mode=1"));
        assert!(!h264_fmtp_acceptable("profile-level-id=42e01f;packetization-mode=0"));
        assert!(!h264_fmtp_acceptable("profile-level-id=4d001f;packetization-mode=1"));
    }

    #[test]
    fn an_offer_without_dtls_fingerprint_or_ice_credentials_is_malformed() {
        let full = offer("a=rtpmap:96 VP8/90000\r\n");
        for line in [
            "a=fingerprint:sha-256 AB:CD:01\r\n",
            "a=ice-ufrag:u\r\n",
            "a=ice-pwd:p\r\n",
        ] {
            let sdp = full.replace(line, "");

            let err = check_offer("offer", &sdp, BOTH).unwrap_err();

            let name = line.split(':').next().unwrap();
            assert_eq!(err, OfferError::Malformed(format!("the offer has no {name} line")));
        }
    }

    #[test]
    fn malformed_ssrc_and_fingerprint_attributes_are_named() {
        let cases = [
            ("a=ssrc:abc cname:x", "the SSRC is not a 32-bit number"),
            ("a=ssrc:4294967296 cname:x", "the SSRC is not a 32-bit number"),
            ("a=ssrc-group:FID 1 x", "an SSRC group needs semantics and 32-bit SSRCs"),
            (
                "a=fingerprint:sha-256",
                "a fingerprint needs a hash function and a digest",
            ),
            (
                "a=fingerprint:sha-256 zz:01",
                "the fingerprint digest is not colon-separated hex",
            ),
        ];
        for (line, why) in cases {
            let sdp = offer(&format!("a=rtpmap:96 VP8/90000\r\n{line}\r\n"));

            let err = check_offer("offer", &sdp, BOTH).unwrap_err();

            assert!(
                matches!(&err, OfferError::Malformed(m) if m.starts_with(why)),
                "{line}: {err}"
            );
        }
        let good = offer("a=rtpmap:96 VP8/90000\r\na=ssrc:4294967295 cname:x\r\na=ssrc-group:FID 1 2\r\n");
        assert!(check_offer("offer", &good, BOTH).is_ok());
    }
}
