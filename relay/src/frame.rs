//! Decoded pictures and the timestamps each one carries through the relay.

use std::time::Instant;

/// A picture in I420 (YUV 4:2:0 planar, BT.601 limited range), the pipeline's one pixel format.
///
/// Planes are tightly packed: the luma stride is `width`, the chroma stride `(width + 1) / 2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420Frame {
    width: u32,
    height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

/// Why a set of planes cannot form an [`I420Frame`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Zero width or height.
    #[error("frame size {width}x{height} is empty")]
    Empty { width: u32, height: u32 },
    /// A plane's length does not match the frame size.
    #[error("{plane} plane of a {width}x{height} frame has {actual} bytes, expected {expected}")]
    PlaneSize {
        plane: &'static str,
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
}

impl I420Frame {
    /// A frame filled with one YUV colour.
    pub fn filled(width: u32, height: u32, yuv: [u8; 3]) -> Result<Self, FrameError> {
        check_size(width, height)?;
        let (cw, ch) = chroma_size(width, height);
        Ok(Self {
            width,
            height,
            y: vec![yuv[0]; width as usize * height as usize],
            u: vec![yuv[1]; cw * ch],
            v: vec![yuv[2]; cw * ch],
        })
    }

    /// Builds a frame from tightly packed planes, checking their sizes.
    pub fn from_planes(width: u32, height: u32, y: Vec<u8>, u: Vec<u8>, v: Vec<u8>) -> Result<Self, FrameError> {
        check_size(width, height)?;
        let (cw, ch) = chroma_size(width, height);
        let luma = width as usize * height as usize;
        for (plane, expected, actual) in [("Y", luma, y.len()), ("U", cw * ch, u.len()), ("V", cw * ch, v.len())] {
            if expected != actual {
                return Err(FrameError::PlaneSize {
                    plane,
                    width,
                    height,
                    expected,
                    actual,
                });
            }
        }
        Ok(Self { width, height, y, u, v })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width and height of each chroma plane.
    pub fn chroma_size(&self) -> (usize, usize) {
        chroma_size(self.width, self.height)
    }

    /// The luma plane (stride = width).
    pub fn y(&self) -> &[u8] {
        &self.y
    }

    /// The Cb plane (stride = chroma width).
    pub fn u(&self) -> &[u8] {
        &self.u
    }

    /// The Cr plane (stride = chroma width).
    pub fn v(&self) -> &[u8] {
        &self.v
    }

    /// Mutable access to the three planes at once.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        (&mut self.y, &mut self.u, &mut self.v)
    }

    /// Converts to packed 8-bit RGB (BT.601 limited range), e.g. for PNG snapshots.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (cw, _) = self.chroma_size();
        let mut out = Vec::with_capacity(self.width as usize * self.height as usize * 3);
        for row in 0..self.height as usize {
            for col in 0..self.width as usize {
                let y = self.y[row * self.width as usize + col];
                let ci = (row / 2) * cw + col / 2;
                out.extend_from_slice(&yuv_to_rgb([y, self.u[ci], self.v[ci]]));
            }
        }
        out
    }
}

impl I420Frame {
    /// Peak signal-to-noise ratio of the luma planes in dB (infinite when identical); `None`
    /// when the sizes differ.
    pub fn luma_psnr(&self, other: &I420Frame) -> Option<f64> {
        if (self.width, self.height) != (other.width, other.height) {
            return None;
        }
        let sse: u64 = self
            .y
            .iter()
            .zip(&other.y)
            .map(|(&a, &b)| {
                let d = a.abs_diff(b) as u64;
                d * d
            })
            .sum();
        if sse == 0 {
            return Some(f64::INFINITY);
        }
        let mse = sse as f64 / self.y.len() as f64;
        Some(10.0 * (255.0 * 255.0 / mse).log10())
    }
}

fn check_size(width: u32, height: u32) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::Empty { width, height });
    }
    Ok(())
}

fn chroma_size(width: u32, height: u32) -> (usize, usize) {
    (width.div_ceil(2) as usize, height.div_ceil(2) as usize)
}

/// BT.601 limited-range RGB -> YUV for one pixel.
pub fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
    let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
    let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
    [clamp(y), clamp(u), clamp(v)]
}

/// BT.601 limited-range YUV -> RGB for one pixel.
pub fn yuv_to_rgb([y, u, v]: [u8; 3]) -> [u8; 3] {
    let c = y as i32 - 16;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let r = (298 * c + 409 * e + 128) >> 8;
    let g = (298 * c - 100 * d - 208 * e + 128) >> 8;
    let b = (298 * c + 516 * d + 128) >> 8;
    [clamp(r), clamp(g), clamp(b)]
}

fn clamp(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// When a frame passed each stage; the per-stage latencies are differences of these.
#[derive(Clone, Copy, Debug)]
pub struct FrameTimes {
    /// First RTP packet of the frame arrived (or the test pattern generated it).
    pub received: Instant,
    /// The decoder returned the picture.
    pub decoded: Option<Instant>,
    /// The filter thread took it from the newest-frame slot.
    pub filter_start: Option<Instant>,
    /// The filter finished.
    pub filter_end: Option<Instant>,
    /// The encoder returned the bitstream.
    pub encoded: Option<Instant>,
}

impl FrameTimes {
    /// Times of a frame that entered the relay at `received`.
    pub fn new(received: Instant) -> Self {
        Self {
            received,
            decoded: None,
            filter_start: None,
            filter_end: None,
            encoded: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_planes_rejects_a_short_chroma_plane() {
        let err = I420Frame::from_planes(4, 2, vec![0; 8], vec![0; 1], vec![0; 2]).unwrap_err();
        assert_eq!(
            err,
            FrameError::PlaneSize {
                plane: "U",
                width: 4,
                height: 2,
                expected: 2,
                actual: 1
            }
        );
    }

    #[test]
    fn odd_sizes_round_chroma_up() {
        let frame = I420Frame::filled(5, 3, [16, 128, 128]).unwrap();
        assert_eq!(frame.chroma_size(), (3, 2));
        assert_eq!(frame.u().len(), 6);
    }

    #[test]
    fn rgb_yuv_round_trip_stays_within_two_levels() {
        for rgb in [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [30, 60, 90]] {
            let back = yuv_to_rgb(rgb_to_yuv(rgb));
            for c in 0..3 {
                assert!((back[c] as i32 - rgb[c] as i32).abs() <= 2, "{rgb:?} -> {back:?}");
            }
        }
    }
}
