//! Test clips from a still picture: the picture scaled to cover the frame and panned slowly up
//! and down, so a filter sees motion (for `bench --input` and the browser's fake camera).

use crate::filter::pixels::{Planes, ResizeError};
use crate::frame::I420Frame;

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
    let scale = (width as f32 / rgb_w as f32).max(height as f32 / rgb_h as f32);
    let (sw, sh) = (
        ((rgb_w as f32 * scale).ceil() as u32).max(width),
        ((rgb_h as f32 * scale).ceil() as u32).max(height),
    );
    let big = planes.rgb_resize(rgb, rgb_w, rgb_h, sw, sh)?;
    let travel = (sh - height).min(height / 4);
    let ox = (sw - width) / 2;
    let mut out = Vec::with_capacity(frames as usize);
    let mut crop = vec![0u8; width as usize * height as usize * 3];
    for i in 0..frames {
        let phase = i as f32 / frames.max(1) as f32 * std::f32::consts::TAU;
        let oy = ((1.0 - phase.cos()) / 2.0 * travel as f32).round() as u32;
        for row in 0..height as usize {
            let src = ((oy as usize + row) * sw as usize + ox as usize) * 3;
            let dst = row * width as usize * 3;
            crop[dst..dst + width as usize * 3].copy_from_slice(&big[src..src + width as usize * 3]);
        }
        out.push(planes.rgb_to_frame(&crop, width, height, width, height)?);
    }
    Ok(out)
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
}
