//! Shapes the SDP answer the relay sends a browser, beyond what webrtc-rs writes: pure text
//! rewriting, testable alone.

/// Adds `x-google-start-bitrate` to every video format of an answer: Chromium reads it from the
/// remote description and starts its send-side estimate there instead of at ~300 kbit/s.
pub fn with_start_bitrate(answer: &str, kbps: u32) -> String {
    if kbps == 0 {
        return answer.to_owned();
    }
    let ending = if answer.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = answer.split(ending).collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    let mut in_video = false;
    let mut section_fmtp: Vec<String> = Vec::new();
    let mut pending_rtpmaps: Vec<String> = Vec::new();
    let flush = |out: &mut Vec<String>, pending: &mut Vec<String>, fmtp: &[String]| {
        for pt in pending.drain(..) {
            if !fmtp.contains(&pt) {
                out.push(format!("a=fmtp:{pt} x-google-start-bitrate={kbps}"));
            }
        }
    };
    for line in lines {
        if line.starts_with("m=") {
            flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
            section_fmtp.clear();
            in_video = line.starts_with("m=video");
        }
        if in_video && let Some(rest) = line.strip_prefix("a=fmtp:") {
            let pt = rest.split(' ').next().unwrap_or_default().to_owned();
            section_fmtp.push(pt);
            out.push(format!("{line};x-google-start-bitrate={kbps}"));
            continue;
        }
        if in_video && let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let (pt, codec) = rest.split_once(' ').unwrap_or((rest, ""));
            // Retransmission formats carry no media bitrate.
            if !codec.to_ascii_lowercase().starts_with("rtx/") {
                pending_rtpmaps.push(pt.to_owned());
            }
        }
        if line.is_empty() {
            flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
        }
        out.push(line.to_owned());
    }
    flush(&mut out, &mut pending_rtpmaps, &section_fmtp);
    out.join(ending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_formats_of_the_answer_get_a_start_bitrate_and_audio_does_not() {
        let answer = "v=0\r\nm=audio 9 UDP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\nm=video 9 UDP 96 102\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1\r\na=rtpmap:97 rtx/90000\r\n";
        let out = with_start_bitrate(answer, 1500);
        assert!(out.contains("a=fmtp:111 minptime=10\r\n"), "{out}");
        assert!(
            out.contains("a=fmtp:102 packetization-mode=1;x-google-start-bitrate=1500\r\n"),
            "{out}"
        );
        assert!(out.contains("a=fmtp:96 x-google-start-bitrate=1500"), "{out}");
        assert!(!out.contains("a=fmtp:97"), "{out}");
        assert_eq!(with_start_bitrate(answer, 0), answer);
    }
}
