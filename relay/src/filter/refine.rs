//! Person-mask refinement between the model and the composite.
//!
//! - [`Stabilizer`]: a per-pixel median of the last three masks. A blob (or a hole) the model
//!   produces for a single frame is outvoted by its neighbours in time, so it never shows;
//!   a real change shows one frame later.
//! - [`EdgeRefiner`]: a fast guided filter (He & Sun, 2015) with the frame's luma as the guide.
//!   The model's mask is 256x256 and soft; the refined alpha is at the frame's full size and
//!   its edge follows the picture's edges (a shoulder against a wall) instead of the mask's
//!   blur, so no sharp band of background shows beside the person and no halo of blur eats
//!   into them. The linear coefficients are solved at a quarter of the size, where they are
//!   smooth, and applied to every full-size pixel.

use super::pixels::{Mask, Planes, ResizeError, box_blur};

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
        let out = match self.history.as_slice() {
            [a, b] => Mask {
                width: mask.width,
                height: mask.height,
                data: mask
                    .data
                    .iter()
                    .zip(&a.data)
                    .zip(&b.data)
                    .map(|((&x, &y), &z)| median3(x, y, z))
                    .collect(),
            },
            _ => mask.clone(),
        };
        // Reuse the oldest buffer for the newest raw mask.
        if self.history.len() == 2 {
            self.history.pop();
        }
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
    planes: Planes,
    mean_a: Vec<f32>,
    mean_b: Vec<f32>,
    /// The model's alpha at the solving size (0..1).
    mask: Vec<f32>,
}

impl EdgeRefiner {
    /// Refines `alpha` (`aw`x`ah`, 255 = person) against `luma` (`fw`x`fh`) into `out`, which
    /// becomes `fw`x`fh`.
    pub fn refine(
        &mut self,
        luma: &[u8],
        fw: u32,
        fh: u32,
        alpha: &[u8],
        aw: u32,
        ah: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), ResizeError> {
        let factor = if fw >= 64 && fh >= 64 { 4 } else { 1 };
        let (gw, gh) = (fw.div_ceil(factor).max(1), fh.div_ceil(factor).max(1));
        let i_small = self.planes.resize(luma, fw, fh, gw, gh)?;
        let p_small = self.planes.resize(alpha, aw, ah, gw, gh)?;
        self.solve(&i_small, &p_small, gw as usize, gh as usize);
        let coefficients = Coefficients {
            a: &self.mean_a,
            b: &self.mean_b,
            mask: &self.mask,
            width: gw as usize,
            height: gh as usize,
        };
        apply_full(luma, fw as usize, fh as usize, &coefficients, out);
        Ok(())
    }

    /// The guided filter's mean coefficients (`a`, `b` with q = a·I + b, I and q in 0..1) at
    /// the solving size.
    fn solve(&mut self, guide: &[u8], alpha: &[u8], w: usize, h: usize) {
        let n = w * h;
        let i: Vec<f32> = guide.iter().map(|&v| f32::from(v) / 255.0).collect();
        self.mask.clear();
        self.mask.extend(alpha.iter().map(|&v| f32::from(v) / 255.0));
        let p = &self.mask;
        let blurred = |v: Vec<f32>| {
            let mut v = v;
            box_blur(&mut v, w, h, RADIUS, 1);
            v
        };
        let mean_i = blurred(i.clone());
        let mean_p = blurred(p.clone());
        let corr_ii = blurred(i.iter().map(|v| v * v).collect());
        let corr_ip = blurred(i.iter().zip(p).map(|(a, b)| a * b).collect());
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

/// Rows per parallel task of the full-size pass.
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

/// q = a·I + b at every full-size pixel, `a`, `b` and the model's alpha upsampled bilinearly
/// (pixel centres aligned), q kept within [`MAX_CHANGE`] of the model's alpha and steepened by
/// [`GAIN`].
fn apply_full(luma: &[u8], fw: usize, fh: usize, c: &Coefficients<'_>, out: &mut Vec<u8>) {
    let (gw, gh) = (c.width, c.height);
    use rayon::prelude::*;
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
    out.resize(fw * fh, 0);
    out.par_chunks_mut(fw * BAND_ROWS).enumerate().for_each(|(band, rows)| {
        let (mut ra, mut rb, mut rp) = (vec![0f32; gw], vec![0f32; gw], vec![0f32; gw]);
        for (r, row) in rows.chunks_mut(fw).enumerate() {
            let y = band * BAND_ROWS + r;
            let (y0, y1, wy) = ys[y];
            let lerp_row = |plane: &[f32], dst: &mut [f32]| {
                let (p0, p1) = (&plane[y0 * gw..(y0 + 1) * gw], &plane[y1 * gw..(y1 + 1) * gw]);
                for ((d, &u), &v) in dst.iter_mut().zip(p0).zip(p1) {
                    *d = u + (v - u) * wy;
                }
            };
            lerp_row(c.a, &mut ra);
            lerp_row(c.b, &mut rb);
            lerp_row(c.mask, &mut rp);
            let guide = &luma[y * fw..(y + 1) * fw];
            for ((o, &g), &(x0, x1, wx)) in row.iter_mut().zip(guide).zip(&xs) {
                let ca = ra[x0] + (ra[x1] - ra[x0]) * wx;
                let cb = rb[x0] + (rb[x1] - rb[x0]) * wx;
                let cp = rp[x0] + (rp[x1] - rp[x0]) * wx;
                let q = (ca * (f32::from(g) * (1.0 / 255.0)) + cb).clamp(cp - MAX_CHANGE, cp + MAX_CHANGE);
                *o = (((q - 0.5) * GAIN + 0.5) * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
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

    #[test]
    fn the_refined_edge_moves_to_the_pictures_edge_and_sharpens() {
        // The picture: dark wall left of column 160, a bright person right of it. The model's
        // mask is 64 px wide, its edge a 40 px ramp centred 8 px too far left (a band of wall
        // would show beside the person).
        let (fw, fh) = (320usize, 180usize);
        let luma: Vec<u8> = (0..fw * fh).map(|i| if i % fw < 160 { 40 } else { 200 }).collect();
        let (aw, ah) = (64usize, 36usize);
        let alpha: Vec<u8> = (0..aw * ah)
            .map(|i| {
                let x = (i % aw) as f32 * fw as f32 / aw as f32;
                (((x - 152.0) / 40.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8
            })
            .collect();
        let mut plain = Vec::new();
        let mut planes = Planes::default();
        plain.extend(
            planes
                .resize(&alpha, aw as u32, ah as u32, fw as u32, fh as u32)
                .unwrap(),
        );
        let mut refined = Vec::new();

        EdgeRefiner::default()
            .refine(&luma, fw as u32, fh as u32, &alpha, aw as u32, ah as u32, &mut refined)
            .unwrap();

        assert_eq!(refined.len(), fw * fh);
        let y = fh / 2;
        let (before, after) = (edge_of(&plain, fw, y) as i64, edge_of(&refined, fw, y) as i64);
        assert!(
            (after - 160).abs() < (before - 160).abs() && (after - 160).abs() <= 4,
            "edge at {after}, was {before}, the picture's at 160"
        );
        assert!(
            ramp_width(&refined, fw, y) < ramp_width(&plain, fw, y),
            "ramp {} px, was {} px",
            ramp_width(&refined, fw, y),
            ramp_width(&plain, fw, y)
        );
        assert_eq!(refined[y * fw], 0, "far wall stays background");
        assert_eq!(refined[y * fw + fw - 1], 255, "far person stays foreground");
    }

    #[test]
    fn dark_strands_of_hair_that_look_like_the_wall_are_not_cut_out() {
        // Wall (40) left of 160; hair right of it, strands 8 px wide alternating bright (200)
        // and as dark as the wall. The model is sure of the person from 164 on.
        let (fw, fh) = (320usize, 180usize);
        let luma: Vec<u8> = (0..fw * fh)
            .map(|i| match i % fw {
                x if x >= 160 && (x / 8) % 2 == 0 => 200,
                _ => 40,
            })
            .collect();
        let (aw, ah) = (64usize, 36usize);
        let alpha: Vec<u8> = (0..aw * ah)
            .map(|i| {
                let x = (i % aw) as f32 * fw as f32 / aw as f32;
                (((x - 160.0) / 8.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8
            })
            .collect();
        let mut refined = Vec::new();

        EdgeRefiner::default()
            .refine(&luma, fw as u32, fh as u32, &alpha, aw as u32, ah as u32, &mut refined)
            .unwrap();

        let y = fh / 2;
        let dark: Vec<u8> = (168..200)
            .filter(|x| (x / 8) % 2 == 1)
            .map(|x| refined[y * fw + x])
            .collect();
        assert!(dark.iter().all(|&a| a >= 195), "dark strands stay person: {dark:?}");
    }

    #[test]
    fn on_a_flat_picture_the_refined_alpha_is_the_mask_smoothed() {
        let (fw, fh) = (128usize, 72usize);
        let luma = vec![120u8; fw * fh];
        let alpha: Vec<u8> = (0..32 * 18).map(|i| if i % 32 < 16 { 0 } else { 255 }).collect();
        let mut refined = Vec::new();

        EdgeRefiner::default()
            .refine(&luma, fw as u32, fh as u32, &alpha, 32, 18, &mut refined)
            .unwrap();

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
