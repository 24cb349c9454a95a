//! Scaling I420 frames to the configured output size (each plane resized on its own).

use crate::filter::pixels::{Planes, ResizeError};
use crate::frame::{FrameError, I420Frame};

/// Errors while scaling.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The resizer refused the planes.
    #[error("scaling {from_w}x{from_h} to {to_w}x{to_h} failed: {detail}")]
    Resize {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
        detail: String,
    },
    /// The scaled planes did not form a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Scales frames to a fixed size, reusing its resizer.
#[derive(Default)]
pub struct Scaler {
    planes: Planes,
}

impl Scaler {
    /// Returns `frame` at `width`x`height` (unchanged when it already is).
    pub fn scale(&mut self, frame: I420Frame, width: u32, height: u32) -> Result<I420Frame, ScaleError> {
        if frame.width() == width && frame.height() == height {
            return Ok(frame);
        }
        self.resized(&frame, width, height)
    }

    /// A copy of `frame` at `width`x`height`, leaving `frame` as it is (simulcast layers).
    pub fn resized(&mut self, frame: &I420Frame, width: u32, height: u32) -> Result<I420Frame, ScaleError> {
        let (sw, sh) = (frame.width(), frame.height());
        let (scw, sch) = frame.chroma_size();
        let (dcw, dch) = (width.div_ceil(2), height.div_ceil(2));
        let err = |e: ResizeError| ScaleError::Resize {
            from_w: sw,
            from_h: sh,
            to_w: width,
            to_h: height,
            detail: e.to_string(),
        };
        let y = self.planes.resize(frame.y(), sw, sh, width, height).map_err(err)?;
        let u = self
            .planes
            .resize(frame.u(), scw as u32, sch as u32, dcw, dch)
            .map_err(err)?;
        let v = self
            .planes
            .resize(frame.v(), scw as u32, sch as u32, dcw, dch)
            .map_err(err)?;
        Ok(I420Frame::from_planes(width, height, y, u, v)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_a_flat_colour_and_reaches_the_target_size() {
        let mut scaler = Scaler::default();
        let frame = I420Frame::filled(640, 360, [81, 90, 240]).unwrap();
        let out = scaler.scale(frame, 1280, 720).unwrap();
        assert_eq!((out.width(), out.height()), (1280, 720));
        assert!(out.y().iter().all(|&p| p == 81));
        assert!(out.v().iter().all(|&p| p == 240));
    }

    #[test]
    fn a_frame_already_at_size_is_returned_unchanged() {
        let mut scaler = Scaler::default();
        let frame = I420Frame::filled(64, 36, [1, 2, 3]).unwrap();
        assert_eq!(scaler.scale(frame.clone(), 64, 36).unwrap(), frame);
    }
}
