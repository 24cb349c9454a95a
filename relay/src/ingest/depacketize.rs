//! RTP payload formats for video: VP8 (RFC 7741) and H.264 (RFC 6184, packetization-mode 1).
//!
//! Pure functions: one RTP payload in, the bitstream bytes it carries out, plus what the payload
//! says about frame boundaries and keyframes. No I/O, no state beyond one H.264 FU-A in progress.

use super::IngestError;

/// The RTP payload format of a video stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// VP8, RFC 7741.
    Vp8,
    /// H.264, RFC 6184 (single NAL unit, STAP-A and FU-A packets).
    H264,
}

/// What one RTP payload contributes to its frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PayloadInfo {
    /// Whether this packet can begin a frame (VP8: S=1 and PID=0; H.264: not a FU-A continuation).
    pub frame_start: bool,
    /// Whether the payload proves the frame is a keyframe (VP8 key frame header; H.264 IDR slice).
    pub keyframe: bool,
}

/// Appends the bitstream carried by one VP8 RTP payload to `out`.
///
/// `out` receives the VP8 payload without the RTP payload descriptor.
pub fn depacketize_vp8(payload: &[u8], out: &mut Vec<u8>) -> Result<PayloadInfo, IngestError> {
    let malformed = |what: &str| IngestError::MalformedPayload {
        format: PayloadFormat::Vp8,
        detail: what.to_owned(),
    };
    let first = *payload.first().ok_or_else(|| malformed("empty payload"))?;
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    let mut offset = 1;
    if extended {
        let x = *payload
            .get(offset)
            .ok_or_else(|| malformed("truncated extension byte"))?;
        offset += 1;
        if x & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let pid = *payload.get(offset).ok_or_else(|| malformed("truncated picture id"))?;
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            offset += 1; // TID / Y / KEYIDX
        }
    }
    let body = payload
        .get(offset..)
        .ok_or_else(|| malformed("descriptor longer than payload"))?;
    if body.is_empty() {
        return Err(malformed("no VP8 data after the descriptor"));
    }
    let frame_start = start && partition == 0;
    let mut info = PayloadInfo {
        frame_start,
        ..PayloadInfo::default()
    };
    if frame_start {
        // VP8 frame tag (RFC 6386 9.1): bit 0 of the first byte is 0 for a key frame. Its size
        // is read from the whole frame, before decoding (`limits`).
        info.keyframe = body[0] & 0x01 == 0;
    }
    out.extend_from_slice(body);
    Ok(info)
}

/// Annex-B start code put before each NAL unit.
const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Reassembles H.264 RTP payloads into an Annex-B access unit.
///
/// Keeps the one piece of state RFC 6184 needs across packets: whether a FU-A fragmented NAL
/// unit is open. Call [`H264Depacketizer::reset`] when a frame is abandoned.
#[derive(Debug, Default)]
pub struct H264Depacketizer {
    fu_open: bool,
}

impl H264Depacketizer {
    /// Forgets any fragment in progress.
    pub fn reset(&mut self) {
        self.fu_open = false;
    }

    /// Whether a FU-A fragment is open (the frame is not finished at a NAL boundary).
    pub fn fragment_open(&self) -> bool {
        self.fu_open
    }

    /// Appends the Annex-B bytes carried by one payload to `out`.
    pub fn depacketize(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<PayloadInfo, IngestError> {
        let malformed = |what: &str| IngestError::MalformedPayload {
            format: PayloadFormat::H264,
            detail: what.to_owned(),
        };
        let header = *payload.first().ok_or_else(|| malformed("empty payload"))?;
        let nal_type = header & 0x1f;
        match nal_type {
            1..=23 => {
                if self.fu_open {
                    self.fu_open = false;
                    return Err(malformed("single NAL unit inside an unfinished FU-A"));
                }
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(payload);
                Ok(PayloadInfo {
                    frame_start: true,
                    keyframe: nal_type == NAL_IDR,
                })
            }
            NAL_STAP_A => {
                if self.fu_open {
                    self.fu_open = false;
                    return Err(malformed("STAP-A inside an unfinished FU-A"));
                }
                let mut keyframe = false;
                let mut rest = &payload[1..];
                let mut units = 0;
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(malformed("STAP-A truncated size field"));
                    }
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let unit = rest
                        .get(2..2 + size)
                        .ok_or_else(|| malformed("STAP-A unit longer than payload"))?;
                    if unit.is_empty() {
                        return Err(malformed("STAP-A empty unit"));
                    }
                    keyframe |= unit[0] & 0x1f == NAL_IDR;
                    out.extend_from_slice(&START_CODE);
                    out.extend_from_slice(unit);
                    rest = &rest[2 + size..];
                    units += 1;
                }
                if units == 0 {
                    return Err(malformed("STAP-A without units"));
                }
                Ok(PayloadInfo {
                    frame_start: true,
                    keyframe,
                })
            }
            NAL_FU_A => {
                let fu = *payload.get(1).ok_or_else(|| malformed("FU-A without FU header"))?;
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                let inner_type = fu & 0x1f;
                let data = &payload[2..];
                if start {
                    if self.fu_open {
                        self.fu_open = false;
                        return Err(malformed("FU-A start inside an unfinished FU-A"));
                    }
                    out.extend_from_slice(&START_CODE);
                    out.push((header & 0xe0) | inner_type);
                } else if !self.fu_open {
                    return Err(malformed("FU-A continuation without its start"));
                }
                out.extend_from_slice(data);
                self.fu_open = !end;
                Ok(PayloadInfo {
                    frame_start: start,
                    keyframe: start && inner_type == NAL_IDR,
                })
            }
            other => {
                self.fu_open = false;
                Err(malformed(&format!("unsupported NAL unit type {other}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe header for a `w`x`h` picture (frame tag, start code, size).
    fn vp8_key_header(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
        v
    }

    #[test]
    fn vp8_keyframe_start_with_extended_descriptor() {
        // X=1 S=1 PID=0; I=1 L=1 T=1; 15-bit picture id; tl0picidx; tid.
        let mut payload = vec![0x90, 0xe0, 0x81, 0x23, 0x05, 0x40];
        payload.extend(vp8_key_header(640, 360));
        let mut out = Vec::new();
        let info = depacketize_vp8(&payload, &mut out).unwrap();
        assert!(info.frame_start);
        assert!(info.keyframe);
        assert_eq!(out, vp8_key_header(640, 360));
    }

    #[test]
    fn vp8_interframe_and_continuation() {
        let mut out = Vec::new();
        let info = depacketize_vp8(&[0x10, 0x01, 0xaa, 0xbb], &mut out).unwrap();
        assert!(info.frame_start && !info.keyframe);
        // S=0: continuation; first byte of data must not be read as a frame tag.
        let info = depacketize_vp8(&[0x00, 0x00, 0xcc], &mut out).unwrap();
        assert!(!info.frame_start && !info.keyframe);
        assert_eq!(out, [0x01, 0xaa, 0xbb, 0x00, 0xcc]);
    }

    #[test]
    fn vp8_start_of_a_later_partition_is_not_a_frame_start() {
        let mut out = Vec::new();
        let info = depacketize_vp8(&[0x11, 0x00, 0x01], &mut out).unwrap();
        assert!(!info.frame_start);
    }

    #[test]
    fn vp8_malformed_payloads_are_errors_not_panics() {
        for bad in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x10],
            &[0x90, 0x00],
        ] {
            let mut out = Vec::new();
            assert!(depacketize_vp8(bad, &mut out).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn h264_single_nal_and_stap_a() {
        let mut d = H264Depacketizer::default();
        let mut out = Vec::new();
        // STAP-A with SPS (7) and PPS (8).
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68];
        let info = d.depacketize(&stap, &mut out).unwrap();
        assert!(info.frame_start && !info.keyframe);
        let info = d.depacketize(&[0x65, 0x88, 0x80], &mut out).unwrap();
        assert!(info.frame_start && info.keyframe);
        assert_eq!(
            out,
            [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0, 0, 0, 1, 0x65, 0x88, 0x80]
        );
    }

    #[test]
    fn h264_fu_a_reassembles_an_idr() {
        let mut d = H264Depacketizer::default();
        let mut out = Vec::new();
        let first = d.depacketize(&[0x7c, 0x85, 0x01, 0x02], &mut out).unwrap();
        assert!(first.frame_start && first.keyframe);
        assert!(d.fragment_open());
        let mid = d.depacketize(&[0x7c, 0x05, 0x03], &mut out).unwrap();
        assert!(!mid.frame_start);
        d.depacketize(&[0x7c, 0x45, 0x04], &mut out).unwrap();
        assert!(!d.fragment_open());
        assert_eq!(out, [0, 0, 0, 1, 0x65, 0x01, 0x02, 0x03, 0x04]);
    }

    #[test]
    fn h264_fu_a_continuation_without_start_is_an_error() {
        let mut d = H264Depacketizer::default();
        let mut out = Vec::new();
        assert!(d.depacketize(&[0x7c, 0x05, 0x03], &mut out).is_err());
    }

    #[test]
    fn h264_malformed_payloads_are_errors_not_panics() {
        let cases: [&[u8]; 6] = [
            &[],
            &[0x78, 0x00],
            &[0x78, 0x00, 0x05, 0x67],
            &[0x7c],
            &[0x79, 0x00],
            &[0x78],
        ];
        for bad in cases {
            let mut d = H264Depacketizer::default();
            let mut out = Vec::new();
            assert!(d.depacketize(bad, &mut out).is_err(), "{bad:?}");
        }
    }
}
