//! Property tests for the SDP code that faces the network: the offer pre-check (`/offer`,
//! `PATCH /offer/<session>`), the candidate rewriting and the answer's start bitrate. Whatever a
//! client sends: no panic, a named refusal, and rewriting that touches only what it must.
//! Fixed case budgets keep each property to a few seconds; `fuzz/` has the open-ended targets.

use std::net::IpAddr;

use livefilter_relay::answer::with_start_bitrate;
use livefilter_relay::codec::VideoCodec;
use livefilter_relay::ice::rewrite_sdp;
use livefilter_relay::offer::{OfferError, check_offer};
use proptest::prelude::*;

const CASES: u32 = 20_000;

/// A Chromium-shaped offer: audio, video (VP8, H.264, rtx), a DataChannel.
const CHROMIUM_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host generation 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=ice-options:trickle\r\na=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:1111 cname:x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r\na=setup:actpass\r\na=mid:1\r\na=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\na=ssrc-group:FID 2222 3333\r\na=ssrc:2222 cname:x\r\na=ssrc:3333 cname:x\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sctp-port:5000\r\n";

const BOTH: &[VideoCodec] = &[VideoCodec::Vp8, VideoCodec::H264];

/// One way to damage an offer's lines.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Truncate(usize, usize),
    Replace(usize, String),
    Insert(usize, String),
    FlipByte(usize, usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = "[ -~]{0,80}";
    let attribute = prop_oneof![
        "a=ssrc:[0-9a-z -]{0,24}",
        "a=ssrc-group:[A-Z]{0,4}( [0-9a-z]{0,12}){0,3}",
        "a=fingerprint:[a-z0-9-]{0,8}( [0-9A-Fa-fxz:]{0,40})?",
        "a=rtpmap:[0-9]{0,4} [A-Za-z0-9/]{0,20}",
        "a=fmtp:[0-9]{0,4} [a-z0-9=;-]{0,40}",
        "m=[a-z]{0,12} [0-9]{0,5} [A-Z/]{0,20}( [0-9]{1,3}){0,4}",
        line.prop_map(|s| s),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(l, n)| Mutation::Truncate(l, n)),
        (any::<usize>(), attribute.clone()).prop_map(|(l, s)| Mutation::Replace(l, s)),
        (any::<usize>(), attribute).prop_map(|(l, s)| Mutation::Insert(l, s)),
        (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(l, i, b)| Mutation::FlipByte(l, i, b)),
    ]
}

fn mutate(sdp: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<Vec<u8>> = sdp.split("\r\n").map(|l| l.as_bytes().to_vec()).collect();
    for m in mutations {
        let n = lines.len().max(1);
        match m {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let copy = lines[i % n].clone();
                lines.insert(i % n, copy);
            }
            Mutation::Truncate(i, at) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                let keep = at % (line.len() + 1);
                line.truncate(keep);
            }
            Mutation::Replace(i, s) if !lines.is_empty() => lines[i % n] = s.as_bytes().to_vec(),
            Mutation::Insert(i, s) => lines.insert(i % (lines.len() + 1), s.as_bytes().to_vec()),
            Mutation::FlipByte(i, at, b) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                if !line.is_empty() {
                    let k = at % line.len();
                    line[k] = *b;
                }
            }
            _ => {}
        }
    }
    let joined: Vec<u8> = lines.join(&b"\r\n"[..]);
    String::from_utf8_lossy(&joined).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_offer_check_never_panics_and_names_every_refusal(
        mutations in proptest::collection::vec(mutation(), 1..6),
        kind in prop_oneof![Just("offer".to_owned()), "[a-z]{0,8}"],
    ) {
        let sdp = mutate(CHROMIUM_OFFER, &mutations);

        let result = check_offer(&kind, &sdp, BOTH);

        match result {
            Ok(summary) => prop_assert!(!summary.video_codecs.is_empty()),
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                if kind != "offer" {
                    prop_assert_eq!(e, OfferError::NotAnOffer(kind));
                }
            }
        }
    }

    #[test]
    fn the_offer_check_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = check_offer("offer", &text, BOTH);
        let _ = check_offer("offer", &format!("v=0\r\n{text}"), BOTH);
    }

    #[test]
    fn address_rewriting_only_touches_candidates_and_connection_lines(
        mutations in proptest::collection::vec(mutation(), 0..4),
        v4 in any::<[u8; 4]>(),
    ) {
        let sdp = mutate(CHROMIUM_OFFER, &mutations);
        let public: Vec<IpAddr> = vec![IpAddr::from(v4)];

        let out = rewrite_sdp(&sdp, &public);

        let before: Vec<&str> = sdp.split("\r\n").collect();
        let after: Vec<&str> = out.split("\r\n").collect();
        prop_assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            // Candidates and connection lines carry addresses; everything else is left alone.
            if !b.starts_with("a=candidate:") && !b.starts_with("c=IN ") {
                prop_assert_eq!(b, a);
            }
        }
        prop_assert_eq!(rewrite_sdp(&out, &public), out.clone(), "rewriting twice changes nothing more");
    }

    #[test]
    fn the_start_bitrate_only_adds_to_video_formats(
        mutations in proptest::collection::vec(mutation(), 0..4),
        kbps in 0u32..100_000,
    ) {
        let sdp = mutate(CHROMIUM_OFFER, &mutations);

        let out = with_start_bitrate(&sdp, kbps);

        // Every line of the input is still there, in order, possibly extended.
        let mut out_lines = out.split("\r\n");
        for line in sdp.split("\r\n") {
            let found = out_lines.by_ref().any(|o| o.starts_with(line));
            prop_assert!(found, "line {:?} lost", line);
        }
        if kbps == 0 {
            prop_assert_eq!(out, sdp);
        }
    }
}

#[test]
fn the_unmutated_chromium_offer_is_accepted() {
    let summary = check_offer("offer", CHROMIUM_OFFER, BOTH).expect("accepted");
    assert_eq!(summary.video_codecs, vec![VideoCodec::Vp8, VideoCodec::H264]);
}
