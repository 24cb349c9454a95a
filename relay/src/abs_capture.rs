//! The `abs-capture-time` RTP header extension: when the browser stamps its frames with their
//! capture time (NTP), the relay carries it through to its output, so a viewer can measure
//! glass-to-glass latency (`RTCRtpReceiver.getSynchronizationSources()[].captureTimestamp`).
//!
//! Senders stamp only some packets (receivers are expected to extrapolate with the RTP clock),
//! so the relay keeps the latest (RTP timestamp, capture time) pair and extrapolates per frame.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use rtc::shared::error::Result as RtcResult;
use rtc::shared::marshal::{Marshal, MarshalSize};

/// The extension's URI.
pub const URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp (Q32.32 seconds since 1900) for now.
pub fn ntp_now() -> u64 {
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET_SECS;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Reads the capture time from the extension's payload (8 bytes, or 16 with a clock offset).
pub fn parse(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    matches!(payload.len(), 8 | 16).then(|| u64::from_be_bytes(bytes))
}

/// The id `sdp` negotiated for the extension in its first `m=video` section.
pub fn extmap_id(sdp: &str) -> Option<u8> {
    extmap_id_in(sdp, "video")
}

/// The id `sdp` negotiated for the extension in its first `m=<media>` section.
pub fn extmap_id_in(sdp: &str, media: &str) -> Option<u8> {
    let prefix = format!("m={media} ");
    let mut in_media = false;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            in_media = line.starts_with(&prefix);
        } else if in_media
            && let Some(rest) = line.strip_prefix("a=extmap:")
            && let Some((id, uri)) = rest.split_once(' ')
            && uri.split_whitespace().next() == Some(URI)
        {
            return id.split('/').next()?.parse().ok();
        }
    }
    None
}

/// `a - b` of two NTP timestamps, in microseconds.
pub fn ntp_diff_micros(a: u64, b: u64) -> i64 {
    (((i128::from(a) - i128::from(b)) * 1_000_000) >> 32) as i64
}

/// Extrapolates capture times along the RTP clock from the latest stamped packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureClock {
    anchor: Option<(u32, u64)>,
    clock_rate: u32,
}

impl CaptureClock {
    /// A clock for an RTP stream of `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            anchor: None,
            clock_rate,
        }
    }

    /// Records a stamped packet.
    pub fn observe(&mut self, rtp_timestamp: u32, capture_ntp: u64) {
        self.anchor = Some((rtp_timestamp, capture_ntp));
    }

    /// The capture time of the frame at `rtp_timestamp`, once any packet was stamped.
    pub fn estimate(&self, rtp_timestamp: u32) -> Option<u64> {
        let (ts, ntp) = self.anchor?;
        // Signed distance, so frames just before the anchor are handled too.
        let ticks = i64::from(rtp_timestamp.wrapping_sub(ts) as i32);
        let delta = (i128::from(ticks) << 32) / i128::from(self.clock_rate.max(1));
        Some((i128::from(ntp) + delta) as u64)
    }
}

/// The extension's value, as webrtc-rs writes it (8 bytes: no clock offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbsCaptureTime(pub u64);

impl MarshalSize for AbsCaptureTime {
    fn marshal_size(&self) -> usize {
        8
    }
}

impl Marshal for AbsCaptureTime {
    fn marshal_to(&self, buf: &mut [u8]) -> RtcResult<usize> {
        let mut out = &mut buf[..];
        if out.len() < 8 {
            return Err(rtc::shared::error::Error::ErrBufferTooSmall);
        }
        out.put_u64(self.0);
        Ok(8)
    }
}

impl AbsCaptureTime {
    /// The payload bytes.
    pub fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_8_and_16_bytes_parse_and_others_do_not() {
        let ntp = 0x0123_4567_89ab_cdefu64;
        assert_eq!(parse(&ntp.to_be_bytes()), Some(ntp));
        let mut with_offset = ntp.to_be_bytes().to_vec();
        with_offset.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&with_offset), Some(ntp));
        assert_eq!(parse(&[1, 2, 3]), None);
        assert_eq!(parse(&[0; 12]), None);
    }

    #[test]
    fn capture_times_extrapolate_along_the_rtp_clock_both_ways() {
        let mut clock = CaptureClock::new(90_000);
        assert_eq!(clock.estimate(1000), None);
        let second = 1u64 << 32;
        clock.observe(u32::MAX - 44_999, 100 * second);
        assert_eq!(
            clock.estimate(45_000),
            Some(101 * second),
            "one second later, across wraparound"
        );
        assert_eq!(
            clock.estimate(u32::MAX - 134_999),
            Some(99 * second),
            "one second earlier"
        );
    }

    #[test]
    fn the_video_extmap_id_is_found_and_audio_ignored() {
        let sdp = format!(
            "v=0\r\nm=audio 9 UDP 111\r\na=extmap:3 {URI}\r\nm=video 9 UDP 96\r\na=extmap:2 urn:x\r\na=extmap:7/sendonly {URI}\r\n"
        );
        assert_eq!(extmap_id(&sdp), Some(7));
        assert_eq!(extmap_id("v=0\r\nm=video 9 UDP 96\r\n"), None);
    }

    #[test]
    fn marshalled_value_is_eight_big_endian_bytes() {
        let mut buf = [0u8; 8];
        assert_eq!(AbsCaptureTime(0x0102_0304_0506_0708).marshal_to(&mut buf).unwrap(), 8);
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn ntp_now_is_after_2026() {
        let secs_since_1900 = ntp_now() >> 32;
        assert!(secs_since_1900 > NTP_UNIX_OFFSET_SECS + 1_767_225_600);
    }
}
