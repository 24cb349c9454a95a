//! A frame's planes at half and a quarter of their size, made once per frame and shared by the
//! passes that work at a reduced size: the edge refinement's guide (half-size luma) and solve
//! (quarter-size luma), and the background blur (quarter-size luma and chroma).
//!
//! Each level is a 2x2 box average of the one above. The profile put three separate
//! convolution resizes of the full-size luma at 10 % of background-blur's CPU; halving reads
//! each source sample once, with no coefficient tables, and the quarter comes from the half.
//! For the reduced-size passes a box average is as good a low-pass as the convolution's
//! triangle: the guide's edges stay where they were, and the blur smooths far more than either.

use crate::frame::I420Frame;

/// One plane at one level, row-major with stride = width.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Level {
    /// Samples.
    pub data: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Level {
    /// The samples with their width and height.
    pub fn view(&self) -> (&[u8], u32, u32) {
        (&self.data, self.width, self.height)
    }

    fn halve_from(&mut self, src: &[u8], width: u32, height: u32) {
        (self.width, self.height) = (width.div_ceil(2), height.div_ceil(2));
        halve(src, width as usize, height as usize, &mut self.data);
    }
}

/// Half- and quarter-size luma and chroma of the last frame built; the buffers are kept between
/// frames, so the media path does not allocate for them.
#[derive(Default)]
pub struct Pyramid {
    y: [Level; 2],
    u: [Level; 2],
    v: [Level; 2],
}

impl Pyramid {
    /// Builds the levels of `frame`, replacing the previous frame's.
    pub fn build(&mut self, frame: &I420Frame) {
        let (w, h) = (frame.width(), frame.height());
        let (cw, ch) = frame.chroma_size();
        let (cw, ch) = (cw as u32, ch as u32);
        for (levels, plane, w, h) in [
            (&mut self.y, frame.y(), w, h),
            (&mut self.u, frame.u(), cw, ch),
            (&mut self.v, frame.v(), cw, ch),
        ] {
            let [half, quarter] = levels;
            half.halve_from(plane, w, h);
            quarter.halve_from(&half.data, half.width, half.height);
        }
    }

    /// Luma at half (`1`) or a quarter (`2`) of the frame's size each way.
    pub fn y(&self, level: usize) -> &Level {
        &self.y[level.clamp(1, 2) - 1]
    }

    /// Cb at half (`1`) or a quarter (`2`) of the frame's chroma size each way.
    pub fn u(&self, level: usize) -> &Level {
        &self.u[level.clamp(1, 2) - 1]
    }

    /// Cr at half (`1`) or a quarter (`2`) of the frame's chroma size each way.
    pub fn v(&self, level: usize) -> &Level {
        &self.v[level.clamp(1, 2) - 1]
    }
}

/// `src` (`w`x`h`) halved each way (rounded up) into `dst`: each sample the rounded mean of a
/// 2x2 block; on an odd edge the last row or column stands in for the missing one.
pub fn halve(src: &[u8], w: usize, h: usize, dst: &mut Vec<u8>) {
    let (dw, dh) = (w.div_ceil(2), h.div_ceil(2));
    dst.resize(dw * dh, 0);
    if w == 0 || h == 0 {
        return;
    }
    let pairs = w / 2;
    // Each row pair is summed down the columns first, then across: two passes that both
    // vectorise (measured: 85 µs for a 720p luma plane, against 150 µs for one 2x2 pass).
    let mut columns = vec![0u16; w];
    for (y, out) in dst.chunks_exact_mut(dw).enumerate() {
        let r0 = &src[2 * y * w..(2 * y + 1) * w];
        let r1 = if 2 * y + 1 < h {
            &src[(2 * y + 1) * w..(2 * y + 2) * w]
        } else {
            r0
        };
        for ((c, &a), &b) in columns.iter_mut().zip(r0).zip(r1) {
            *c = u16::from(a) + u16::from(b);
        }
        let (c, body) = (&columns[..2 * pairs], &mut out[..pairs]);
        for (x, o) in body.iter_mut().enumerate() {
            *o = ((c[2 * x] + c[2 * x + 1] + 2) >> 2) as u8;
        }
        if w % 2 == 1 {
            out[pairs] = ((2 * columns[w - 1] + 2) >> 2) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, sample by sample: the mean of the 2x2 block, read with clamped
    /// coordinates, rounded to nearest with halves up.
    fn halved_by_definition(src: &[u8], w: usize, h: usize) -> Vec<u8> {
        let at = |x: usize, y: usize| f64::from(src[y.min(h - 1) * w + x.min(w - 1)]);
        let mut out = Vec::new();
        for y in 0..h.div_ceil(2) {
            for x in 0..w.div_ceil(2) {
                let mean =
                    (at(2 * x, 2 * y) + at(2 * x + 1, 2 * y) + at(2 * x, 2 * y + 1) + at(2 * x + 1, 2 * y + 1)) / 4.0;
                out.push((mean + 0.5).floor() as u8);
            }
        }
        out
    }

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn halving_averages_each_2x2_block_rounding_half_up() {
        // 2x2 blocks: {0,0,0,1} = 0.25 -> 0, {0,0,1,1} = 0.5 -> 1, {255 x4} -> 255.
        let src = [0, 0, 0, 0, 255, 255, 0, 1, 1, 1, 255, 255];
        let mut out = Vec::new();

        halve(&src, 6, 2, &mut out);

        assert_eq!(out, vec![0, 1, 255]);
    }

    #[test]
    fn halving_matches_the_definition_on_every_size_parity() {
        for (w, h) in [(1, 1), (2, 2), (3, 5), (8, 3), (17, 9), (1280, 720), (641, 361)] {
            let src = noise(w * h, (w * 31 + h) as u32);
            let mut out = vec![7; 3];

            halve(&src, w, h, &mut out);

            let expected = halved_by_definition(&src, w, h);
            assert_eq!(out, expected, "{w}x{h}");
        }
    }

    #[test]
    fn a_pyramid_holds_half_and_quarter_sizes_of_every_plane() {
        let (w, h) = (1280usize, 720usize);
        let (cw, ch) = (w / 2, h / 2);
        let frame = I420Frame::from_planes(
            w as u32,
            h as u32,
            noise(w * h, 1),
            vec![90; cw * ch],
            vec![200; cw * ch],
        )
        .unwrap();
        let mut pyramid = Pyramid::default();

        pyramid.build(&frame);

        let y1 = pyramid.y(1);
        assert_eq!((y1.width, y1.height, y1.data.len()), (640, 360, 640 * 360));
        let y2 = pyramid.y(2);
        assert_eq!((y2.width, y2.height), (320, 180));
        let mut expected = Vec::new();
        halve(&y1.data, 640, 360, &mut expected);
        assert_eq!(y2.data, expected, "the quarter is the half halved");
        let (u2, v2) = (pyramid.u(2), pyramid.v(2));
        assert_eq!((u2.width, u2.height), (160, 90));
        assert!(u2.data.iter().all(|&s| s == 90) && v2.data.iter().all(|&s| s == 200));
    }
}
