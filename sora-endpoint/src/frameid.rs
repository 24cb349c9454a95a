//! A frame id painted into the picture by a benchmark sender and read back here, after the
//! systems under test (filters, encoders, scaling) have had their way with it, so that each
//! decoded frame can be matched with the moment it was sent.
//!
//! The code is a band of [`CELLS`] square-ish cells across the top ninth of the picture, each
//! solid black or white (luma only; chroma neutral):
//!
//! ```text
//! | white | b12 | b11 | ... | b0 | parity | black |     cells 0..=15, each width/16 x height/9
//! ```
//!
//! Cell 0 is always white and cell 15 always black: they calibrate the threshold after
//! compression and blur. Cells 1..=13 carry the id's 13 bits, most significant first (white =
//! 1), and cell 14 makes the number of white cells among 1..=14 even. Only the middle half of
//! each cell (in both directions) is read, so a blur of up to about an eighth of a cell and
//! the encoder's block artefacts at the edges do not matter; positions are fractions of the
//! picture, so a scaled picture reads the same. `scripts/bench-compare/sender.py` paints it.

use crate::picture::Picture;

/// Cells across the band.
pub const CELLS: u32 = 16;
/// The band is the top `1 / BAND_FRACTION` of the picture.
pub const BAND_FRACTION: u32 = 9;
/// Bits of id the band carries.
pub const ID_BITS: u32 = 13;
/// Ids wrap at this value.
pub const ID_MODULUS: u32 = 1 << ID_BITS;
/// Luma painted for a white cell (BT.601 limited range).
pub const WHITE: u8 = 235;
/// Luma painted for a black cell.
pub const BLACK: u8 = 16;
/// The white and black reference cells must differ by at least this much luma.
const MIN_CONTRAST: f64 = 60.0;
/// A data cell must sit at least this share of the contrast away from the threshold.
const MIN_MARGIN: f64 = 0.25;
/// Smallest picture the band can be read from.
const MIN_SIZE: (u32, u32) = (CELLS * 4, BAND_FRACTION * 4);

/// Rectangle `[x0, x1) x [y0, y1)` of cell `index` in a `width` x `height` picture.
pub fn cell_rect(width: u32, height: u32, index: u32) -> (usize, usize, usize, usize) {
    let (w, h) = (u64::from(width), u64::from(height));
    let i = u64::from(index);
    let c = u64::from(CELLS);
    let x0 = (w * i / c) as usize;
    let x1 = (w * (i + 1) / c) as usize;
    let y1 = (h / u64::from(BAND_FRACTION)) as usize;
    (x0, x1, 0, y1)
}

/// Whether each of the [`CELLS`] cells is white for `id` (taken modulo [`ID_MODULUS`]).
pub fn cell_pattern(id: u32) -> [bool; CELLS as usize] {
    let id = id % ID_MODULUS;
    let mut cells = [false; CELLS as usize];
    cells[0] = true;
    let mut ones = 0;
    for bit in 0..ID_BITS {
        let set = id >> (ID_BITS - 1 - bit) & 1 == 1;
        cells[1 + bit as usize] = set;
        ones += u32::from(set);
    }
    cells[1 + ID_BITS as usize] = ones % 2 == 1;
    cells[(CELLS - 1) as usize] = false;
    cells
}

/// Paints `id`'s band into the luma plane (tests; the benchmark sender paints the same layout).
pub fn paint(picture: &mut Picture, id: u32) {
    let (width, height) = (picture.width(), picture.height());
    let stride = width as usize;
    let pattern = cell_pattern(id);
    let y = picture.y_mut();
    for (index, white) in pattern.iter().enumerate() {
        let (x0, x1, y0, y1) = cell_rect(width, height, index as u32);
        let value = if *white { WHITE } else { BLACK };
        for row in y0..y1 {
            y[row * stride + x0..row * stride + x1].fill(value);
        }
    }
}

/// Mean luma of the middle half of cell `index`.
fn cell_mean(picture: &Picture, index: u32) -> f64 {
    let (x0, x1, y0, y1) = cell_rect(picture.width(), picture.height(), index);
    let (qx, qy) = ((x1 - x0) / 4, (y1 - y0) / 4);
    let (x0, x1, y0, y1) = (x0 + qx, x1 - qx, y0 + qy, y1 - qy);
    let stride = picture.width() as usize;
    let luma = picture.y();
    let mut sum = 0u64;
    for row in y0..y1 {
        sum += luma[row * stride + x0..row * stride + x1]
            .iter()
            .map(|&v| u64::from(v))
            .sum::<u64>();
    }
    let n = ((x1 - x0) * (y1 - y0)).max(1);
    sum as f64 / n as f64
}

/// The frame id painted into `picture`, or `None` when the band is not there or unreadable
/// (no contrast between the reference cells, a cell too close to the threshold, bad parity).
pub fn read(picture: &Picture) -> Option<u32> {
    if picture.width() < MIN_SIZE.0 || picture.height() < MIN_SIZE.1 {
        return None;
    }
    let white = cell_mean(picture, 0);
    let black = cell_mean(picture, CELLS - 1);
    let contrast = white - black;
    if contrast < MIN_CONTRAST {
        return None;
    }
    let threshold = (white + black) / 2.0;
    let margin = contrast * MIN_MARGIN;
    let mut id = 0;
    let mut ones = 0;
    for index in 1..=ID_BITS + 1 {
        let mean = cell_mean(picture, index);
        if (mean - threshold).abs() < margin {
            return None;
        }
        let set = mean > threshold;
        ones += u32::from(set);
        if index <= ID_BITS {
            id = id << 1 | u32::from(set);
        }
    }
    (ones % 2 == 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::rgb_to_yuv;

    fn grey(w: u32, h: u32) -> Picture {
        Picture::filled(w, h, rgb_to_yuv([120, 120, 120])).unwrap()
    }

    /// A box blur of the luma plane, `radius` pixels, three passes (close to a Gaussian).
    fn blur(picture: &mut Picture, radius: usize) {
        let (w, h) = (picture.width() as usize, picture.height() as usize);
        let y = picture.y_mut();
        for _ in 0..3 {
            let src: Vec<u8> = y.to_vec();
            for row in 0..h {
                for col in 0..w {
                    let (a, b) = (col.saturating_sub(radius), (col + radius).min(w - 1));
                    let s: u32 = src[row * w + a..=row * w + b].iter().map(|&v| u32::from(v)).sum();
                    y[row * w + col] = (s / (b - a + 1) as u32) as u8;
                }
            }
            let src: Vec<u8> = y.to_vec();
            for row in 0..h {
                let (a, b) = (row.saturating_sub(radius), (row + radius).min(h - 1));
                for col in 0..w {
                    let s: u32 = (a..=b).map(|r| u32::from(src[r * w + col])).sum();
                    y[row * w + col] = (s / (b - a + 1) as u32) as u8;
                }
            }
        }
    }

    /// Scales the luma plane by nearest neighbour (chroma left neutral).
    fn scaled(picture: &Picture, w: u32, h: u32) -> Picture {
        let mut out = grey(w, h);
        let (sw, sh) = (picture.width() as usize, picture.height() as usize);
        let src = picture.y().to_vec();
        let dst = out.y_mut();
        for row in 0..h as usize {
            for col in 0..w as usize {
                dst[row * w as usize + col] = src[row * sh / h as usize * sw + col * sw / w as usize];
            }
        }
        out
    }

    #[test]
    fn every_id_reads_back_as_painted() {
        let mut picture = grey(320, 180);
        for id in (0..ID_MODULUS).step_by(7).chain([ID_MODULUS - 1]) {
            paint(&mut picture, id);
            assert_eq!(read(&picture), Some(id));
        }
    }

    #[test]
    fn ids_wrap_at_the_modulus() {
        let mut picture = grey(320, 180);
        paint(&mut picture, ID_MODULUS + 5);
        assert_eq!(read(&picture), Some(5));
    }

    #[test]
    fn the_id_survives_a_background_blur_and_compression_noise() {
        let mut picture = grey(1280, 720);
        paint(&mut picture, 4321);
        blur(&mut picture, 12);
        // Encoder noise: +-20 luma in a fixed pseudo-random pattern.
        let mut state = 0x2545_f491_u32;
        for v in picture.y_mut() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *v = (i32::from(*v) + (state % 41) as i32 - 20).clamp(0, 255) as u8;
        }
        assert_eq!(read(&picture), Some(4321));
    }

    #[test]
    fn the_id_reads_from_a_scaled_picture() {
        let mut picture = grey(1280, 720);
        paint(&mut picture, 1234);
        assert_eq!(read(&scaled(&picture, 640, 352)), Some(1234));
        assert_eq!(read(&scaled(&picture, 1920, 1080)), Some(1234));
    }

    #[test]
    fn a_picture_without_a_band_has_no_id() {
        assert_eq!(read(&grey(1280, 720)), None);
        let mut gradient = grey(1280, 720);
        let y = gradient.y_mut();
        for (i, v) in y.iter_mut().enumerate() {
            *v = (i % 1280 / 5) as u8;
        }
        assert_eq!(read(&gradient), None, "a left-to-right gradient is no band");
    }

    #[test]
    fn a_flipped_bit_fails_the_parity_check() {
        let mut picture = grey(320, 180);
        paint(&mut picture, 100);
        let (x0, x1, y0, y1) = cell_rect(320, 180, ID_BITS);
        let y = picture.y_mut();
        for row in y0..y1 {
            for v in &mut y[row * 320 + x0..row * 320 + x1] {
                *v = if *v == WHITE { BLACK } else { WHITE };
            }
        }
        assert_eq!(read(&picture), None);
    }

    #[test]
    fn a_cell_halfway_between_black_and_white_is_refused() {
        let mut picture = grey(320, 180);
        paint(&mut picture, 0);
        let (x0, x1, y0, y1) = cell_rect(320, 180, 3);
        let y = picture.y_mut();
        for row in y0..y1 {
            y[row * 320 + x0..row * 320 + x1].fill(125);
        }
        assert_eq!(read(&picture), None);
    }

    #[test]
    fn tiny_and_odd_pictures_do_not_panic() {
        for (w, h) in [(1, 1), (3, 7), (63, 35), (64, 36), (65, 37), (1281, 721)] {
            let mut p = grey(w, h);
            paint(&mut p, 77);
            let got = read(&p);
            if w >= MIN_SIZE.0 && h >= MIN_SIZE.1 {
                assert_eq!(got, Some(77), "{w}x{h}");
            } else {
                assert_eq!(got, None, "{w}x{h}");
            }
        }
    }
}
