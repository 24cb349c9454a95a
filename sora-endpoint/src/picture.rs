//! A decoded picture (I420, tightly packed planes) and the colour conversion the endpoint
//! reports with. Deliberately the endpoint's own: nothing here comes from the relay, so a bug in
//! the relay's pixel code cannot hide on both sides of a test.

/// Why planes do not make a picture.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PictureError {
    /// Zero width or height.
    #[error("empty picture {width}x{height}")]
    Empty {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A plane's length does not match the size.
    #[error("plane {plane} has {got} bytes, expected {want} for {width}x{height}")]
    PlaneSize {
        /// 0 = Y, 1 = U, 2 = V.
        plane: usize,
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        want: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// An I420 picture: full-size luma, chroma halved (rounded up) in both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    width: u32,
    height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Picture {
    /// A picture from its three planes, checked against the size.
    pub fn from_planes(width: u32, height: u32, y: Vec<u8>, u: Vec<u8>, v: Vec<u8>) -> Result<Self, PictureError> {
        if width == 0 || height == 0 {
            return Err(PictureError::Empty { width, height });
        }
        let (w, h) = (width as usize, height as usize);
        let chroma = w.div_ceil(2) * h.div_ceil(2);
        for (plane, (got, want)) in [(y.len(), w * h), (u.len(), chroma), (v.len(), chroma)]
            .into_iter()
            .enumerate()
        {
            if got != want {
                return Err(PictureError::PlaneSize {
                    plane,
                    got,
                    want,
                    width,
                    height,
                });
            }
        }
        Ok(Self { width, height, y, u, v })
    }

    /// A picture of one colour.
    pub fn filled(width: u32, height: u32, [y, u, v]: [u8; 3]) -> Result<Self, PictureError> {
        let (w, h) = (width as usize, height as usize);
        let chroma = w.div_ceil(2) * h.div_ceil(2);
        Self::from_planes(width, height, vec![y; w * h], vec![u; chroma], vec![v; chroma])
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width of a chroma row.
    pub fn chroma_width(&self) -> usize {
        (self.width as usize).div_ceil(2)
    }

    /// Luma plane.
    pub fn y(&self) -> &[u8] {
        &self.y
    }

    /// The YUV of the pixel at (`x`, `y`); both must be inside the picture.
    pub fn yuv_at(&self, x: usize, y: usize) -> [u8; 3] {
        let ci = (y / 2) * self.chroma_width() + x / 2;
        [self.y[y * self.width as usize + x], self.u[ci], self.v[ci]]
    }

    /// Mutable luma plane (tests paint into it).
    pub fn y_mut(&mut self) -> &mut [u8] {
        &mut self.y
    }

    /// Packed RGB, row by row.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            for col in 0..w {
                out.extend_from_slice(&yuv_to_rgb(self.yuv_at(col, row)));
            }
        }
        out
    }
}

/// BT.601 limited-range YUV -> RGB of one pixel (what VP8 and H.264 encoders in WebRTC assume),
/// in floating point.
pub fn yuv_to_rgb([y, u, v]: [u8; 3]) -> [u8; 3] {
    let luma = 255.0 / 219.0 * (f32::from(y) - 16.0);
    let cb = f32::from(u) - 128.0;
    let cr = f32::from(v) - 128.0;
    let r = luma + 1.596 * cr;
    let g = luma - 0.392 * cb - 0.813 * cr;
    let b = luma + 2.017 * cb;
    [r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// BT.601 limited-range RGB -> YUV of one pixel (for tests that paint pictures).
pub fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_survive_a_round_trip_through_yuv() {
        for rgb in [[0, 0, 0], [255, 255, 255], [200, 60, 30], [30, 90, 220], [0, 255, 0]] {
            let back = yuv_to_rgb(rgb_to_yuv(rgb));
            for (got, want) in back.iter().zip(rgb) {
                assert!((i32::from(*got) - i32::from(want)).abs() <= 3, "{rgb:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn planes_must_match_the_size_odd_sizes_included() {
        assert!(Picture::from_planes(3, 3, vec![0; 9], vec![0; 4], vec![0; 4]).is_ok());
        assert!(matches!(
            Picture::from_planes(3, 3, vec![0; 9], vec![0; 1], vec![0; 4]),
            Err(PictureError::PlaneSize { plane: 1, .. })
        ));
        assert!(matches!(Picture::filled(0, 4, [0; 3]), Err(PictureError::Empty { .. })));
    }

    #[test]
    fn rgb_of_a_solid_picture_is_its_colour() {
        let p = Picture::filled(4, 2, rgb_to_yuv([200, 60, 30])).unwrap();
        let rgb = p.to_rgb();
        assert_eq!(rgb.len(), 4 * 2 * 3);
        assert!(rgb.chunks(3).all(|px| px == &rgb[..3]));
    }
}
