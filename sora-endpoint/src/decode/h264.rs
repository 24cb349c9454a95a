//! H.264 through OpenH264's decoder (the `openh264` crate's safe API).

use openh264::formats::YUVSource;

use super::{DecodeError, Decoder, copy_plane};
use crate::codec::VideoCodec;
use crate::picture::Picture;

/// An OpenH264 decoder taking Annex-B access units.
pub struct H264Decoder {
    decoder: openh264::decoder::Decoder,
}

impl H264Decoder {
    pub fn new() -> Result<Self, DecodeError> {
        let decoder = openh264::decoder::Decoder::new().map_err(|e| DecodeError::Init {
            codec: VideoCodec::H264,
            detail: e.to_string(),
        })?;
        Ok(Self { decoder })
    }
}

impl Decoder for H264Decoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Option<Picture>, DecodeError> {
        let fail = |detail: String| DecodeError::Frame {
            codec: VideoCodec::H264,
            bytes: frame.len(),
            detail,
        };
        let Some(yuv) = self.decoder.decode(frame).map_err(|e| fail(e.to_string()))? else {
            return Ok(None);
        };
        let (width, height) = yuv.dimensions();
        let (ys, us, vs) = yuv.strides();
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let y = copy_plane(yuv.y(), ys, width, height).ok_or_else(|| fail("short luma plane".into()))?;
        let u = copy_plane(yuv.u(), us, cw, ch).ok_or_else(|| fail("short U plane".into()))?;
        let v = copy_plane(yuv.v(), vs, cw, ch).ok_or_else(|| fail("short V plane".into()))?;
        let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
            return Err(fail(format!("absurd size {width}x{height}")));
        };
        Picture::from_planes(w, h, y, u, v)
            .map(Some)
            .map_err(|e| fail(e.to_string()))
    }
}
