//! Test clips from a still picture: the picture scaled to cover the frame and panned slowly up
//! and down, so a filter sees motion (for `bench --input` and the browser's fake camera), or
//! held still with a camera's sensor noise on every frame (for the filters' flicker and jitter
//! figures: a still scene, where any change in the mask or the keypoints is the filter's).

use crate::filter::pixels::{Planes, ResizeError};
use crate::frame::I420Frame;

/// `rgb` (`rgb_w`x`rgb_h`, packed RGB) scaled to cover `width`x`height` with its aspect kept.
struct Cover {
    rgb: Vec<u8>,
    width: u32,
    height: u32,
}

impl Cover {
    fn new(
        planes: &mut Planes,
        rgb: &[u8],
        rgb_w: u32,
        rgb_h: u32,
        width: u32,
        height: u32,
    ) -> Result<Self, ResizeError> {
        let scale = (width as f32 / rgb_w as f32).max(height as f32 / rgb_h as f32);
        let (sw, sh) = (
            ((rgb_w as f32 * scale).ceil() as u32).max(width),
            ((rgb_h as f32 * scale).ceil() as u32).max(height),
        );
        Ok(Self {
            rgb: planes.rgb_resize(rgb, rgb_w, rgb_h, sw, sh)?,
            width: sw,
            height: sh,
        })
    }

    /// The `width`x`height` window at (`ox`, `oy`) into `out` (packed RGB).
    fn crop(&self, ox: u32, oy: u32, width: u32, height: u32, out: &mut [u8]) {
        let row_bytes = width as usize * 3;
        for row in 0..height as usize {
            let src = ((oy as usize + row) * self.width as usize + ox as usize) * 3;
            out[row * row_bytes..(row + 1) * row_bytes].copy_from_slice(&self.rgb[src..src + row_bytes]);
        }
    }
}

/// `frames` frames of `width`x`height` panning over `rgb` (`rgb_w`x`rgb_h`, packed RGB): one
/// full down-and-up sweep over the clip, at most a quarter of the frame height.
pub fn panned(
    rgb: &[u8],
    rgb_w: u32,
    rgb_h: u32,
    width: u32,
    height: u32,
    frames: u32,
) -> Result<Vec<I420Frame>, ResizeError> {
    let mut planes = Planes::default();
    let cover = Cover::new(&mut planes, rgb, rgb_w, rgb_h, width, height)?;
    let travel = (cover.height - height).min(height / 4);
    let ox = (cover.width - width) / 2;
    let mut crop = vec![0u8; width as usize * height as usize * 3];
    (0..frames)
        .map(|i| {
            let phase = i as f32 / frames.max(1) as f32 * std::f32::consts::TAU;
            let oy = ((1.0 - phase.cos()) / 2.0 * travel as f32).round() as u32;
            cover.crop(ox, oy, width, height, &mut crop);
            planes.rgb_to_frame(&crop, width, height, width, height)
        })
        .collect()
}

/// `frames` frames of `width`x`height` of `rgb` (scaled to cover the frame, centred), each with
/// its own Gaussian noise of standard deviation `noise` (in 8-bit levels, per channel) as a
/// camera on a tripod gives; the noise is seeded, so the clip is the same every time.
pub fn still(
    rgb: &[u8],
    rgb_w: u32,
    rgb_h: u32,
    width: u32,
    height: u32,
    frames: u32,
    noise: f32,
) -> Result<Vec<I420Frame>, ResizeError> {
    let mut planes = Planes::default();
    let cover = Cover::new(&mut planes, rgb, rgb_w, rgb_h, width, height)?;
    let mut crop = vec![0u8; width as usize * height as usize * 3];
    cover.crop(
        (cover.width - width) / 2,
        (cover.height - height) / 2,
        width,
        height,
        &mut crop,
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut noisy = crop.clone();
    (0..frames)
        .map(|_| {
            if noise > 0.0 {
                for (n, &c) in noisy.iter_mut().zip(&crop) {
                    *n = (f32::from(c) + rng.gaussian() * noise).round().clamp(0.0, 255.0) as u8;
                }
            }
            planes.rgb_to_frame(&noisy, width, height, width, height)
        })
        .collect()
}

/// xorshift64: a small seeded generator (the noise must not depend on a crate's algorithm).
struct XorShift(u64);

impl XorShift {
    fn next_unit(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    /// About N(0, 1): the sum of four uniforms, centred and scaled (Irwin–Hall).
    fn gaussian(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.next_unit()).sum();
        (sum - 2.0) * 3.0f32.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panned_clip_covers_the_frame_and_moves() {
        // A vertical gradient: panning shows different rows over time.
        let (w, h) = (32u32, 64u32);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i / w * 4) as u8; 3]).collect();

        let clip = panned(&rgb, w, h, 64, 36, 8).unwrap();

        assert_eq!(clip.len(), 8);
        assert!(clip.iter().all(|f| (f.width(), f.height()) == (64, 36)));
        assert_ne!(
            clip[0].y()[0],
            clip[4].y()[0],
            "the middle of the sweep shows other rows"
        );
        assert_eq!(clip[0].y()[0], panned(&rgb, w, h, 64, 36, 8).unwrap()[0].y()[0]);
    }

    #[test]
    fn a_still_clip_holds_the_picture_and_only_its_noise_changes() {
        let (w, h) = (32u32, 32u32);
        let rgb = vec![128u8; (w * h * 3) as usize];

        let clip = still(&rgb, w, h, 32, 32, 4, 3.0).unwrap();
        let quiet = still(&rgb, w, h, 32, 32, 2, 0.0).unwrap();

        assert_eq!(clip.len(), 4);
        assert_ne!(clip[0].y(), clip[1].y(), "each frame has its own noise");
        assert_eq!(quiet[0].y(), quiet[1].y(), "no noise: identical frames");
        let mean = |f: &I420Frame| f.y().iter().map(|&v| f64::from(v)).sum::<f64>() / f.y().len() as f64;
        let sd = |f: &I420Frame| {
            let m = mean(f);
            (f.y().iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / f.y().len() as f64).sqrt()
        };
        assert!(
            (mean(&clip[2]) - mean(&quiet[0])).abs() < 1.0,
            "the picture is unchanged on average"
        );
        assert!(
            (1.0..5.0).contains(&sd(&clip[2])),
            "luma noise about 3 levels: {}",
            sd(&clip[2])
        );
        assert_eq!(still(&rgb, w, h, 32, 32, 4, 3.0).unwrap()[3].y(), clip[3].y(), "seeded");
    }
}
