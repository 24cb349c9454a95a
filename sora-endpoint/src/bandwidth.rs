//! The video bitrate cap the endpoint asks publishers to keep to, as Sora holds a publisher to
//! its channel's bitrate: `b=AS` (kbit/s, RFC 4566) and `b=TIAS` (bit/s, RFC 3890) in every
//! video m-section of the SDP the endpoint sends (offer, re-offer, WHIP answer). libwebrtc (the
//! official SDKs, browsers) takes the remote description's bandwidth as the send stream's
//! maximum bitrate. Pure text: the peer connection's own local description is unchanged.

/// `sdp` with the video m-sections' bandwidth lines replaced by `b=AS:kbps` and
/// `b=TIAS:kbps*1000`, placed where RFC 4566 wants them (after `i=` and `c=`, before `k=` and
/// the attributes). Other sections and the line endings are kept as they are.
pub fn cap_video(sdp: &str, kbps: u32) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let bandwidth = [format!("b=AS:{kbps}"), format!("b=TIAS:{}", u64::from(kbps) * 1000)];
    let mut out: Vec<&str> = Vec::new();
    let mut in_video = false;
    let mut pending = false;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            if pending {
                out.extend(bandwidth.iter().map(String::as_str));
            }
            in_video = line.starts_with("m=video ");
            pending = in_video;
        } else if in_video {
            if line.starts_with("b=") {
                continue;
            }
            if pending && !line.starts_with("i=") && !line.starts_with("c=") {
                out.extend(bandwidth.iter().map(String::as_str));
                pending = false;
            }
        }
        out.push(line);
    }
    if pending {
        out.extend(bandwidth.iter().map(String::as_str));
    }
    let mut text = out.join(eol);
    if sdp.ends_with('\n') {
        text.push_str(eol);
    }
    text
}

/// `sdp` capped when a cap is configured, unchanged otherwise.
pub fn apply(sdp: String, kbps: Option<u32>) -> String {
    match kbps {
        Some(kbps) => cap_video(&sdp, kbps),
        None => sdp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\nb=AS:5000\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n";

    fn section<'a>(sdp: &'a str, kind: &str) -> Vec<&'a str> {
        let mut lines = sdp.lines().skip_while(|l| !l.starts_with(&format!("m={kind} ")));
        let first = lines.next().into_iter();
        first.chain(lines.take_while(|l| !l.starts_with("m="))).collect()
    }

    #[test]
    fn video_sections_get_as_and_tias_after_the_connection_line() {
        let capped = cap_video(OFFER, 1000);
        let video = section(&capped, "video");
        assert_eq!(
            video[..4],
            [
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
                "c=IN IP4 0.0.0.0",
                "b=AS:1000",
                "b=TIAS:1000000"
            ]
        );
        assert_eq!(
            video.iter().filter(|l| l.starts_with("b=")).count(),
            2,
            "the old b=AS:5000 is gone"
        );
    }

    #[test]
    fn audio_and_session_lines_are_untouched_and_line_endings_kept() {
        let capped = cap_video(OFFER, 800);
        assert_eq!(section(&capped, "audio"), section(OFFER, "audio"));
        assert!(capped.starts_with("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n"));
        assert!(capped.ends_with("a=rtpmap:96 VP8/90000\r\n"));
        assert!(!capped.replace("\r\n", "").contains('\n'), "only CRLF endings");
    }

    #[test]
    fn a_video_section_without_attributes_still_gets_the_cap() {
        let sdp = "v=0\nm=audio 9 RTP/AVP 0\nm=video 9 RTP/AVP 96\nc=IN IP4 0.0.0.0";
        let capped = cap_video(sdp, 300);
        assert!(
            capped.ends_with("c=IN IP4 0.0.0.0\nb=AS:300\nb=TIAS:300000"),
            "{capped}"
        );
    }

    #[test]
    fn every_video_section_is_capped() {
        let sdp = "v=0\r\nm=video 9 X 96\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n";
        let capped = cap_video(sdp, 1500);
        assert_eq!(
            capped.matches("b=AS:1500\r\nb=TIAS:1500000\r\na=mid:").count(),
            2,
            "{capped}"
        );
    }

    #[test]
    fn no_cap_leaves_the_sdp_alone() {
        assert_eq!(apply(OFFER.to_owned(), None), OFFER);
        assert_ne!(apply(OFFER.to_owned(), Some(1000)), OFFER);
    }
}
