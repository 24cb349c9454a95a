//! Person-mask refinement between the model and the composite.
//!
//! - [`Stabilizer`]: a per-pixel median of the last three masks. A blob (or a hole) the model
//!   produces for a single frame is outvoted by its neighbours in time, so it never shows;
//!   a real change shows one frame later.
//! - [`EdgeRefiner`]: a fast guided filter (He & Sun, 2015) with the frame's luma as the guide.
//!   The model's mask is 256x256 and soft; the refined alpha follows the picture's edges (a
//!   shoulder against a wall) instead of the mask's blur, so no sharp band of background shows
//!   beside the person and no halo of blur eats into them. The linear coefficients are solved
//!   at a quarter of the frame's size, where they are smooth, and applied at half its size:
//!   one alpha per chroma sample and per 2x2 block of luma, which the composite interpolates.
//!   At full size the pass reads 22 MB of coefficients per 720p frame and cost 2.3 ms more
//!   (measured) for a difference of one luma pixel in the edge's ramp, not visible at the
//!   output's bitrate.

use super::pixels::{Mask, box_blur, resample};
use super::pyramid::Pyramid;
use crate::frame::I420Frame;

/// Temporal median of three consecutive masks.
#[derive(Default)]
pub struct Stabilizer {
    /// The previous two masks, newest first, all of one size.
    history: Vec<Mask>,
}

impl Stabilizer {
    /// The per-pixel median of `mask` and the two before it (the masks as they were, so an
    /// outlier cannot carry over); until two earlier masks of the same size exist, `mask`.
    pub fn apply(&mut self, mask: Mask) -> Mask {
        self.history
            .retain(|m| (m.width, m.height) == (mask.width, mask.height));
        let out = match (self.history.len(), self.history.pop()) {
            // The oldest mask's buffer takes the median in place: each value is read before
            // it is written.
            (2, Some(mut oldest)) => {
                for ((o, &x), &y) in oldest.data.iter_mut().zip(&mask.data).zip(&self.history[0].data) {
                    *o = median3(x, y, *o);
                }
                oldest
            }
            (_, older) => {
                self.history.extend(older);
                mask.clone()
            }
        };
        self.history.insert(0, mask);
        out
    }

    /// Forgets the history (the stabiliser was switched off, or the stream restarted).
    pub fn reset(&mut self) {
        self.history.clear();
    }
}

#[inline]
fn median3(a: f32, b: f32, c: f32) -> f32 {
    a.min(b).max(a.max(b).min(c))
}

/// Window radius of the guided filter at the solving size (a quarter of the frame): 3 there,
/// 12 frame pixels, about the width of the model's blurred edge at 720p.
const RADIUS: usize = 3;
/// Regularisation: luma variance (in 0..1 units) below which a window is treated as flat and
/// the mask is only smoothed there. Camera noise (σ ≈ 2/255) stays well under it; a visible
/// edge (a step of 20/255 or more) is well over.
const EPS: f32 = 2e-3;

/// Contrast applied around 0.5 after filtering. The guided filter moves the edge onto the
/// picture's edge but, like any local average, keeps the model's soft ramp; steepening it
/// afterwards makes the edge as crisp as the picture's where there is one, and halves the ramp
/// (still several pixels wide, from the smooth coefficients) where there is none.
const GAIN: f32 = 2.0;

/// How far the refined alpha may move from the model's (0..1). Luma alone cannot tell a dark
/// strand of hair from a dark wall: where the two look alike inside a window, the fit would
/// punch a hole into the person (or paint a patch of background). Bounding the change keeps
/// refinement to what it is for, the ramp at the edge, where the model itself is unsure.
const MAX_CHANGE: f32 = 0.3;

/// Fast guided filter of an 8-bit alpha with the frame's luma as the guide.
#[derive(Default)]
pub struct EdgeRefiner {
    /// The model's alpha resampled to the solving size.
    alpha_small: Vec<u8>,
    mean_a: Vec<f32>,
    mean_b: Vec<f32>,
    /// The model's alpha at the solving size (0..1).
    mask: Vec<f32>,
    /// The coefficient rows widened to the frame's width.
    wide: Vec<f32>,
    /// The solve's planes, kept between frames: luma, its mean, the alpha's mean, the means of
    /// luma² and of luma·alpha.
    scratch: [Vec<f32>; 5],
}

impl EdgeRefiner {
    /// Refines `alpha` (`aw`x`ah`, 255 = person) against `frame`'s luma into `out`; returns
    /// `out`'s size (half the frame's each way, rounded up; the frame's own when small).
    /// `pyramid` holds `frame`'s reduced planes (the guide and the solve's luma come from it).
    pub fn refine(
        &mut self,
        frame: &I420Frame,
        pyramid: &Pyramid,
        alpha: &[u8],
        aw: u32,
        ah: u32,
        out: &mut Vec<u8>,
    ) -> (u32, u32) {
        let (fw, fh) = (frame.width(), frame.height());
        // The guide's level in the pyramid: half size, or the frame itself when small.
        let level = usize::from(fw >= 128 && fh >= 128);
        let plane = |level: usize| match level {
            0 => (frame.y(), fw, fh),
            l => pyramid.y(l).view(),
        };
        let (guide, ow, oh) = plane(level);
        let (i_small, gw, gh) = if ow >= 32 && oh >= 32 {
            plane(level + 1)
        } else {
            (guide, ow, oh)
        };
        resample(alpha, aw, ah, gw, gh, &mut self.alpha_small);
        self.solve(i_small, gw as usize, gh as usize);
        let coefficients = Coefficients {
            a: &self.mean_a,
            b: &self.mean_b,
            mask: &self.mask,
            width: gw as usize,
            height: gh as usize,
        };
        apply_full(guide, ow as usize, oh as usize, &coefficients, &mut self.wide, out);
        (ow, oh)
    }

    /// The guided filter's mean coefficients (`a`, `b` with q = a·I + b, I and q in 0..1) at
    /// the solving size, for `alpha_small` against `guide`.
    fn solve(&mut self, guide: &[u8], w: usize, h: usize) {
        let n = w * h;
        self.mask.clear();
        self.mask.extend(self.alpha_small.iter().map(|&v| f32::from(v) / 255.0));
        let p = &self.mask;
        let [i, mean_i, mean_p, corr_ii, corr_ip] = &mut self.scratch;
        i.clear();
        i.extend(guide.iter().map(|&v| f32::from(v) / 255.0));
        mean_i.clone_from(i);
        mean_p.clone_from(p);
        corr_ii.clear();
        corr_ii.extend(i.iter().map(|v| v * v));
        corr_ip.clear();
        corr_ip.extend(i.iter().zip(p).map(|(a, b)| a * b));
        for plane in [&mut *mean_i, &mut *mean_p, &mut *corr_ii, &mut *corr_ip] {
            box_blur(plane, w, h, RADIUS, 1);
        }
        self.mean_a.clear();
        self.mean_b.clear();
        self.mean_a.reserve(n);
        self.mean_b.reserve(n);
        for k in 0..n {
            let var = (corr_ii[k] - mean_i[k] * mean_i[k]).max(0.0);
            let cov = corr_ip[k] - mean_i[k] * mean_p[k];
            let a = cov / (var + EPS);
            self.mean_a.push(a);
            self.mean_b.push(mean_p[k] - a * mean_i[k]);
        }
        box_blur(&mut self.mean_a, w, h, RADIUS, 1);
        box_blur(&mut self.mean_b, w, h, RADIUS, 1);
    }
}

/// Rows per parallel task of the output pass.
const BAND_ROWS: usize = 32;

/// The guided filter's solution at the solving size.
struct Coefficients<'a> {
    a: &'a [f32],
    b: &'a [f32],
    /// The model's alpha it was solved for.
    mask: &'a [f32],
    width: usize,
    height: usize,
}

/// q = a·I + b at every output pixel, `a`, `b` and the model's alpha upsampled bilinearly
/// (pixel centres aligned), q kept within [`MAX_CHANGE`] of the model's alpha and steepened by
/// [`GAIN`]. Each coefficient row is first widened to the frame's width once (`wide`: per
/// solving row, the `a`, `b` and alpha rows side by side), so the per-pixel pass is a vertical
/// blend of two such rows without gathers, which vectorises.
// Seven slices of one length indexed together: the bounds checks fold away and the loop
// vectorises; a zip of seven iterators would not read better.
#[allow(clippy::needless_range_loop)]
fn apply_full(guide: &[u8], fw: usize, fh: usize, c: &Coefficients<'_>, wide: &mut Vec<f32>, out: &mut Vec<u8>) {
    use rayon::prelude::*;
    let (gw, gh) = (c.width, c.height);
    let taps = |src: usize, dst: usize| -> Vec<(usize, usize, f32)> {
        let scale = src as f32 / dst as f32;
        (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(src - 1);
                (i0, (i0 + 1).min(src - 1), (s - i0 as f32).min(1.0))
            })
            .collect()
    };
    let (xs, ys) = (taps(gw, fw), taps(gh, fh));
    wide.resize(gh * 3 * fw, 0.0);
    wide.par_chunks_mut(3 * fw).enumerate().for_each(|(j, rows)| {
        for (plane, dst) in [c.a, c.b, c.mask].into_iter().zip(rows.chunks_mut(fw)) {
            let src = &plane[j * gw..(j + 1) * gw];
            for (d, &(x0, x1, wx)) in dst.iter_mut().zip(&xs) {
                *d = src[x0] + (src[x1] - src[x0]) * wx;
            }
        }
    });
    let wide = &wide[..];
    out.resize(fw * fh, 0);
    out.par_chunks_mut(fw * BAND_ROWS).enumerate().for_each(|(band, rows)| {
        for (r, row) in rows.chunks_mut(fw).enumerate() {
            let y = band * BAND_ROWS + r;
            let (y0, y1, wy) = ys[y];
            let (r0, r1) = (
                &wide[y0 * 3 * fw..(y0 + 1) * 3 * fw],
                &wide[y1 * 3 * fw..(y1 + 1) * 3 * fw],
            );
            let (a0, b0, p0) = (&r0[..fw], &r0[fw..2 * fw], &r0[2 * fw..3 * fw]);
            let (a1, b1, p1) = (&r1[..fw], &r1[fw..2 * fw], &r1[2 * fw..3 * fw]);
            let (guide, row) = (&guide[y * fw..(y + 1) * fw], &mut row[..fw]);
            for x in 0..fw {
                let ca = a0[x] + (a1[x] - a0[x]) * wy;
                let cb = b0[x] + (b1[x] - b0[x]) * wy;
                let cp = p0[x] + (p1[x] - p0[x]) * wy;
                // max/min, not clamp: clamp's check that these bounds are ordered would stop
                // the loop from vectorising.
                let q = (ca * (f32::from(guide[x]) * (1.0 / 255.0)) + cb)
                    .max(cp - MAX_CHANGE)
                    .min(cp + MAX_CHANGE);
                row[x] = (((q - 0.5) * GAIN + 0.5) * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(width: u32, height: u32, data: Vec<f32>) -> Mask {
        Mask { width, height, data }
    }

    fn pyramid_of(frame: &I420Frame) -> Pyramid {
        let mut pyramid = Pyramid::default();
        pyramid.build(frame);
        pyramid
    }

    fn gray_frame(w: usize, h: usize, luma: Vec<u8>) -> I420Frame {
        let chroma = w.div_ceil(2) * h.div_ceil(2);
        I420Frame::from_planes(w as u32, h as u32, luma, vec![128; chroma], vec![128; chroma]).unwrap()
    }

    #[test]
    fn a_blob_seen_in_one_frame_only_never_shows() {
        let mut s = Stabilizer::default();
        let empty = || mask(2, 1, vec![0.0, 0.0]);
        s.apply(empty());
        s.apply(empty());

        let with_blob = s.apply(mask(2, 1, vec![0.9, 0.0]));
        let after = s.apply(empty());

        assert_eq!(with_blob.data, vec![0.0, 0.0], "outvoted by the two frames before");
        assert_eq!(after.data, vec![0.0, 0.0]);
    }

    #[test]
    fn a_real_change_shows_one_frame_later_and_a_one_frame_hole_is_filled() {
        let mut s = Stabilizer::default();
        let out: Vec<f32> = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
            .into_iter()
            .map(|v| s.apply(mask(1, 1, vec![v])).data[0])
            .collect();

        assert_eq!(out, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn a_size_change_restarts_the_history() {
        let mut s = Stabilizer::default();
        s.apply(mask(1, 1, vec![0.0]));
        s.apply(mask(1, 1, vec![0.0]));

        let resized = s.apply(mask(2, 1, vec![1.0, 1.0]));

        assert_eq!(resized.data, vec![1.0, 1.0], "no history of this size yet");
    }

    /// Column of the first value at or above 128 in row `y`.
    fn edge_of(alpha: &[u8], w: usize, y: usize) -> usize {
        alpha[y * w..(y + 1) * w].iter().position(|&v| v >= 128).unwrap_or(w)
    }

    /// Columns from the last value ≤ 25 to the first ≥ 230 in row `y` (the 10–90 % ramp).
    fn ramp_width(alpha: &[u8], w: usize, y: usize) -> usize {
        let row = &alpha[y * w..(y + 1) * w];
        let lo = row.iter().rposition(|&v| v <= 25).unwrap_or(0);
        let hi = row.iter().position(|&v| v >= 230).unwrap_or(w);
        hi.saturating_sub(lo)
    }

    /// A 640x360 frame of `luma(x)` and a 64x36 model alpha of `alpha(x)` (x in frame pixels),
    /// refined; the refined alpha is 320x180.
    fn refined_of(luma: impl Fn(usize) -> u8, alpha: impl Fn(f32) -> f32) -> Vec<u8> {
        let (fw, fh) = (640usize, 360usize);
        let frame = gray_frame(fw, fh, (0..fw * fh).map(|i| luma(i % fw)).collect());
        let (aw, ah) = (64usize, 36usize);
        let mask: Vec<u8> = (0..aw * ah)
            .map(|i| (alpha((i % aw) as f32 * (fw / aw) as f32).clamp(0.0, 1.0) * 255.0) as u8)
            .collect();
        let mut refined = Vec::new();
        let size =
            EdgeRefiner::default().refine(&frame, &pyramid_of(&frame), &mask, aw as u32, ah as u32, &mut refined);
        assert_eq!(size, (320, 180), "half the frame each way");
        assert_eq!(refined.len(), 320 * 180);
        refined
    }

    #[test]
    fn the_refined_edge_moves_to_the_pictures_edge_and_sharpens() {
        // The picture: dark wall left of frame column 320, a bright person right of it. The
        // model's edge is an 80 px ramp centred 8 px too far left (a band of wall would show
        // beside the person). Output columns are half the frame's: the picture's edge is at 160.
        let ramp = |x: f32| (x - 312.0) / 80.0 + 0.5;
        let refined = refined_of(|x| if x < 320 { 40 } else { 200 }, ramp);
        let plain: Vec<u8> = (0..320 * 180)
            .map(|i| (ramp((i % 320) as f32 * 2.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8)
            .collect();

        let (w, y) = (320, 90);
        let (before, after) = (edge_of(&plain, w, y) as i64, edge_of(&refined, w, y) as i64);
        assert!(
            (after - 160).abs() < (before - 160).abs() && (after - 160).abs() <= 2,
            "edge at {after}, was {before}, the picture's at 160"
        );
        assert!(
            ramp_width(&refined, w, y) < ramp_width(&plain, w, y),
            "ramp {} px, was {} px",
            ramp_width(&refined, w, y),
            ramp_width(&plain, w, y)
        );
        assert_eq!(refined[y * w], 0, "far wall stays background");
        assert_eq!(refined[y * w + w - 1], 255, "far person stays foreground");
    }

    #[test]
    fn where_the_fit_says_wall_but_the_model_is_sure_of_the_person_no_hole_is_cut() {
        // A fit that maps dark to background (a = 2, b = -0.5: q = -0.5 at black) over a
        // model alpha of 1 (person, sure), and the reverse over an alpha of 0.
        let (gw, gh) = (4usize, 4usize);
        let ones = vec![1.0f32; gw * gh];
        let sure_person = Coefficients {
            a: &vec![2.0; gw * gh],
            b: &vec![-0.5; gw * gh],
            mask: &ones,
            width: gw,
            height: gh,
        };
        let zeros = vec![0.0f32; gw * gh];
        let sure_wall = Coefficients {
            a: &vec![-2.0; gw * gh],
            b: &vec![1.5; gw * gh],
            mask: &zeros,
            width: gw,
            height: gh,
        };
        let (mut wide, mut person, mut wall) = (Vec::new(), Vec::new(), Vec::new());

        apply_full(&[0u8; 64], 8, 8, &sure_person, &mut wide, &mut person);
        apply_full(&[0u8; 64], 8, 8, &sure_wall, &mut wide, &mut wall);

        // q is held within 0.3 of the model's alpha, then steepened: (0.7 - 0.5) * 2 + 0.5
        // = 0.9 (230), and (0.3 - 0.5) * 2 + 0.5 = 0.1 (26, rounded).
        assert!(person.iter().all(|&a| a == 230), "{person:?}");
        assert!(wall.iter().all(|&a| a == 26), "{wall:?}");
    }

    #[test]
    fn on_a_flat_picture_the_refined_alpha_is_the_mask_smoothed() {
        let (fw, fh) = (128usize, 72usize);
        let frame = gray_frame(fw, fh, vec![120u8; fw * fh]);
        let alpha: Vec<u8> = (0..32 * 18).map(|i| if i % 32 < 16 { 0 } else { 255 }).collect();
        let mut refined = Vec::new();

        EdgeRefiner::default().refine(&frame, &pyramid_of(&frame), &alpha, 32, 18, &mut refined);

        let y = fh / 2;
        assert_eq!(refined[y * fw], 0);
        assert_eq!(refined[y * fw + fw - 1], 255);
        let edge = edge_of(&refined, fw, y) as i64;
        assert!(
            (edge - 64).abs() <= 2,
            "no edge to follow: stays at the mask's ({edge})"
        );
        assert!(
            refined[y * fw..(y + 1) * fw].windows(2).all(|p| p[0] <= p[1]),
            "monotone ramp"
        );
    }
}
