//! The picture size a frame's bitstream declares, read before anything decodes it: the VP8
//! key frame header (RFC 6386 §9.1) and the H.264 sequence parameter set (ITU-T H.264
//! §7.3.2.1.1). Pure functions over untrusted bytes: every malformed input is an error.

/// Why a header could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The VP8 key frame header is cut short or lacks its start code.
    #[error("VP8 key frame header: {0}")]
    Vp8(&'static str),
    /// The SPS ends early or holds values outside the standard.
    #[error("H.264 SPS: {0}")]
    Sps(&'static str),
}

/// An SPS longer than this is not one a camera sends (they are tens of bytes).
const MAX_SPS_BYTES: usize = 4096;
/// NAL unit type of a sequence parameter set.
const NAL_SPS: u8 = 7;

/// The size a VP8 frame declares: `Some` for a key frame (the only frames that carry it),
/// `None` for an inter frame.
pub fn vp8_keyframe_size(frame: &[u8]) -> Result<Option<(u32, u32)>, HeaderError> {
    let tag = *frame.first().ok_or(HeaderError::Vp8("empty frame"))?;
    if tag & 0x01 != 0 {
        return Ok(None);
    }
    let header = frame.get(..10).ok_or(HeaderError::Vp8("shorter than 10 bytes"))?;
    if header[3..6] != [0x9d, 0x01, 0x2a] {
        return Err(HeaderError::Vp8("no start code 9d 01 2a"));
    }
    // 14 bits of size, 2 bits of upscaling hint (which does not change the decoded size).
    let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
    let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
    Ok(Some((u32::from(width), u32::from(height))))
}

/// The largest picture any SPS in an Annex-B access unit declares (`None`: no SPS in it).
pub fn h264_largest_sps_size(access_unit: &[u8]) -> Result<Option<(u32, u32)>, HeaderError> {
    let mut largest: Option<(u32, u32)> = None;
    for nal in crate::codec::h264::nal_units(access_unit) {
        if nal[0] & 0x1f != NAL_SPS {
            continue;
        }
        let (w, h) = h264_sps_size(nal)?;
        let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
        if largest.is_none_or(|l| area((w, h)) > area(l)) {
            largest = Some((w, h));
        }
    }
    Ok(largest)
}

/// The cropped picture size an SPS NAL unit (header byte included) declares.
pub fn h264_sps_size(nal: &[u8]) -> Result<(u32, u32), HeaderError> {
    let rbsp = unescape(nal.get(1..).ok_or(HeaderError::Sps("empty NAL unit"))?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(8)?; // constraint flags
    r.bits(8)?; // level_idc
    if r.ue()? > 31 {
        return Err(HeaderError::Sps("seq_parameter_set_id above 31"));
    }
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(HeaderError::Sps("chroma_format_idc above 3"));
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        if r.ue()? > 6 || r.ue()? > 6 {
            return Err(HeaderError::Sps("bit depth above 14"));
        }
        r.flag()?; // qpprime_y_zero_transform_bypass_flag
        if r.flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    if r.ue()? > 12 {
        return Err(HeaderError::Sps("log2_max_frame_num_minus4 above 12"));
    }
    match r.ue()? {
        0 => {
            if r.ue()? > 12 {
                return Err(HeaderError::Sps("log2_max_pic_order_cnt_lsb_minus4 above 12"));
            }
        }
        1 => {
            r.flag()?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return Err(HeaderError::Sps("num_ref_frames_in_pic_order_cnt_cycle above 255"));
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return Err(HeaderError::Sps("pic_order_cnt_type above 2")),
    }
    r.ue()?; // max_num_ref_frames
    r.flag()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        r.flag()?; // mb_adaptive_frame_field_flag
    }
    r.flag()?; // direct_8x8_inference_flag
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let coded_width = width_mbs * 16;
    let coded_height = height_map_units * 16 * field_factor;
    let (mut width, mut height) = (coded_width, coded_height);
    if r.flag()? {
        let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
        let (crop_x, crop_y) = match chroma_array_type {
            1 => (2, 2 * field_factor),
            2 => (2, field_factor),
            _ => (1, field_factor),
        };
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let crop_w = crop_x * (u64::from(left) + u64::from(right));
        let crop_h = crop_y * (u64::from(top) + u64::from(bottom));
        if crop_w >= coded_width || crop_h >= coded_height {
            return Err(HeaderError::Sps("cropping larger than the picture"));
        }
        width -= crop_w;
        height -= crop_h;
    }
    let fit = |v: u64| u32::try_from(v).map_err(|_| HeaderError::Sps("picture size beyond 32 bits"));
    Ok((fit(width)?, fit(height)?))
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), HeaderError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            if !(-128..=127).contains(&delta) {
                return Err(HeaderError::Sps("delta_scale outside -128..=127"));
            }
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// The RBSP of a NAL payload: emulation prevention bytes (`00 00 03`) removed; at most
/// [`MAX_SPS_BYTES`] of it, which is more than any real SPS needs.
fn unescape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len().min(MAX_SPS_BYTES));
    let mut zeros = 0;
    for &b in payload.iter().take(MAX_SPS_BYTES) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Reads bits MSB first; every read past the end is an error.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn flag(&mut self) -> Result<bool, HeaderError> {
        let byte = self.data.get(self.pos / 8).ok_or(HeaderError::Sps("truncated"))?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Result<u32, HeaderError> {
        (0..n).try_fold(0u32, |acc, _| Ok((acc << 1) | u32::from(self.flag()?)))
    }

    /// Unsigned Exp-Golomb (§9.1): at most 31 leading zeros, so values fit in 32 bits.
    fn ue(&mut self) -> Result<u32, HeaderError> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros > 31 {
                return Err(HeaderError::Sps("Exp-Golomb code longer than 32 bits"));
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// Signed Exp-Golomb: 1, -1, 2, -2, ...
    fn se(&mut self) -> Result<i64, HeaderError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Builders of valid headers, for the tests of this module and of the ingest.
#[cfg(test)]
pub(crate) mod build {
    /// A VP8 key frame header for a `width`x`height` picture (frame tag, start code, size),
    /// followed by `body` bytes.
    pub fn vp8_keyframe(width: u16, height: u16, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        v.extend_from_slice(&width.to_le_bytes());
        v.extend_from_slice(&height.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn bit(&mut self, b: bool) {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if b {
                *self.bytes.last_mut().unwrap() |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
        fn bits(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let v = u64::from(v) + 1;
            let len = 64 - v.leading_zeros();
            for _ in 0..len - 1 {
                self.bit(false);
            }
            for i in (0..len).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }
    }

    /// A constrained-baseline SPS NAL unit (header byte included, emulation prevention
    /// applied) for a `width`x`height` picture, cropped from whole macroblocks as encoders do.
    pub fn h264_sps(width: u32, height: u32) -> Vec<u8> {
        let mut w = BitWriter {
            bytes: Vec::new(),
            bits: 0,
        };
        w.bits(66, 8); // profile_idc: baseline
        w.bits(0xc0, 8); // constraint_set0/1
        w.bits(31, 8); // level 3.1
        w.ue(0); // sps id
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(2); // pic_order_cnt_type
        w.ue(1); // max_num_ref_frames
        w.bit(false);
        let (mbs_w, mbs_h) = (width.div_ceil(16), height.div_ceil(16));
        w.ue(mbs_w - 1);
        w.ue(mbs_h - 1);
        w.bit(true); // frame_mbs_only
        w.bit(true); // direct_8x8_inference
        let (crop_r, crop_b) = ((mbs_w * 16 - width) / 2, (mbs_h * 16 - height) / 2);
        w.bit(crop_r + crop_b > 0);
        if crop_r + crop_b > 0 {
            w.ue(0);
            w.ue(crop_r);
            w.ue(0);
            w.ue(crop_b);
        }
        w.bit(false); // vui_parameters_present_flag
        w.bit(true); // rbsp stop bit
        let mut nal = vec![0x67];
        let mut zeros = 0;
        for b in w.bytes {
            if zeros >= 2 && b <= 3 {
                nal.push(3);
                zeros = 0;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            nal.push(b);
        }
        nal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_size_is_read_and_inter_frames_have_none() {
        assert_eq!(
            vp8_keyframe_size(&build::vp8_keyframe(640, 360, &[])),
            Ok(Some((640, 360)))
        );
        assert_eq!(
            vp8_keyframe_size(&build::vp8_keyframe(16383, 16383, &[1, 2])),
            Ok(Some((16383, 16383)))
        );
        assert_eq!(vp8_keyframe_size(&[0x01, 0xaa]), Ok(None));
    }

    #[test]
    fn vp8_keyframe_without_a_whole_header_is_an_error() {
        let mut bad_code = build::vp8_keyframe(640, 360, &[]);
        bad_code[4] = 0;
        for input in [&[][..], &[0x10, 0x02, 0x00, 0x9d], &bad_code] {
            assert!(vp8_keyframe_size(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn sps_sizes_come_out_cropped_as_declared() {
        for (w, h) in [
            (640, 360),
            (1920, 1080),
            (1280, 720),
            (16, 16),
            (4096, 2304),
            (16368, 16368),
        ] {
            assert_eq!(h264_sps_size(&build::h264_sps(w, h)), Ok((w, h)), "{w}x{h}");
        }
    }

    #[test]
    fn a_real_openh264_sps_is_read() {
        use crate::codec::{EncoderConfig, VideoCodec, new_encoder};
        let mut encoder = new_encoder(&EncoderConfig {
            codec: VideoCodec::H264,
            ..EncoderConfig::default()
        })
        .unwrap();
        let frame = crate::frame::I420Frame::filled(320, 184, [16, 128, 128]).unwrap();

        let au = encoder
            .encode(&frame, std::time::Duration::ZERO, false)
            .unwrap()
            .unwrap();

        assert_eq!(h264_largest_sps_size(&au.data), Ok(Some((320, 184))));
    }

    #[test]
    fn the_largest_sps_of_an_access_unit_counts() {
        let mut au = Vec::new();
        for sps in [build::h264_sps(320, 180), build::h264_sps(3840, 2160)] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(&sps);
        }
        au.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
        assert_eq!(h264_largest_sps_size(&au), Ok(Some((3840, 2160))));
        assert_eq!(h264_largest_sps_size(&[0, 0, 1, 0x41, 0x9a]), Ok(None));
    }

    #[test]
    fn truncated_or_out_of_range_sps_is_an_error() {
        let sps = build::h264_sps(640, 360);
        for len in 0..sps.len() - 1 {
            // Any prefix may be an error or (when only the flags after the size are cut) a
            // size; it is never a panic.
            let _ = h264_sps_size(&sps[..len]);
        }
        assert!(h264_sps_size(&sps[..4]).is_err());
        // 40 zero bits: an Exp-Golomb code that cannot fit in 32 bits.
        assert!(h264_sps_size(&[0x67, 66, 0, 31, 0, 0, 0, 0, 0]).is_err());
    }
}
