//! Bounds on what the network may make the relay decode: the picture size a frame declares
//! (checked before the decoder sees it, and again on what it returns) and the reasons an input
//! is refused, each counted.

use std::fmt;

use super::assembler::AssembledFrame;
use super::bitstream::{self, HeaderError};
use super::depacketize::PayloadFormat;

/// Why a frame was refused instead of decoded; the `reason` label of
/// `livefilter_ingest_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The bitstream declares a picture larger than the configured maximum.
    FrameTooLarge,
    /// The size-bearing header (VP8 key frame header, H.264 SPS) could not be read.
    MalformedHeader,
    /// The frame's RTP payloads added up to more bytes than allowed.
    FrameBytes,
    /// The frame spanned more RTP packets than allowed.
    FramePackets,
    /// The decoder returned a picture larger than the maximum (caught after decoding).
    DecodedTooLarge,
}

impl RefusalReason {
    /// Every reason, for counters.
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::FrameTooLarge,
        RefusalReason::MalformedHeader,
        RefusalReason::FrameBytes,
        RefusalReason::FramePackets,
        RefusalReason::DecodedTooLarge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::FrameTooLarge => "frame_too_large",
            RefusalReason::MalformedHeader => "malformed_header",
            RefusalReason::FrameBytes => "frame_bytes",
            RefusalReason::FramePackets => "frame_packets",
            RefusalReason::DecodedTooLarge => "decoded_too_large",
        }
    }

    /// Position in [`RefusalReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refused frame: the reason and what exactly was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame refused ({reason}): {detail}")]
pub struct Refusal {
    /// The counted reason.
    pub reason: RefusalReason,
    /// What was wrong, for the log.
    pub detail: String,
}

/// The largest picture the relay decodes. Orientation does not matter: the long side is held
/// to the longer limit and the short side to the shorter, so a portrait phone at 1080x1920
/// fits a 1920x1080 limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeLimit {
    /// Maximum width (of a landscape picture).
    pub max_width: u32,
    /// Maximum height (of a landscape picture).
    pub max_height: u32,
}

impl Default for SizeLimit {
    fn default() -> Self {
        Self {
            max_width: 1920,
            max_height: 1080,
        }
    }
}

impl SizeLimit {
    /// Whether a `width`x`height` picture fits.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        let (long, short) = (width.max(height), width.min(height));
        long <= self.max_width.max(self.max_height) && short <= self.max_width.min(self.max_height)
    }

    /// Refuses a size that does not fit, with `reason`.
    pub fn check(&self, (width, height): (u32, u32), reason: RefusalReason) -> Result<(), Refusal> {
        if self.fits(width, height) {
            return Ok(());
        }
        Err(Refusal {
            reason,
            detail: format!(
                "{width}x{height} exceeds the {}x{} limit",
                self.max_width, self.max_height
            ),
        })
    }

    /// Checks the size a frame's bitstream declares, before anything decodes it.
    pub fn check_frame(&self, format: PayloadFormat, frame: &AssembledFrame) -> Result<(), Refusal> {
        let declared = match format {
            PayloadFormat::Vp8 => bitstream::vp8_keyframe_size(&frame.data),
            PayloadFormat::H264 => bitstream::h264_largest_sps_size(&frame.data),
        }
        .map_err(|e: HeaderError| Refusal {
            reason: RefusalReason::MalformedHeader,
            detail: e.to_string(),
        })?;
        match declared {
            Some(size) => self.check(size, RefusalReason::FrameTooLarge),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fit_in_either_orientation_up_to_the_limit() {
        let limit = SizeLimit::default();
        assert!(limit.fits(1920, 1080));
        assert!(limit.fits(1080, 1920));
        assert!(limit.fits(640, 360));
        assert!(!limit.fits(1921, 1080));
        assert!(!limit.fits(1920, 1081));
        assert!(!limit.fits(1200, 1200));
        assert!(!limit.fits(16383, 16383));
    }

    #[test]
    fn a_refusal_names_the_size_and_the_limit() {
        let err = SizeLimit::default()
            .check((16383, 16383), RefusalReason::FrameTooLarge)
            .unwrap_err();
        assert_eq!(err.reason, RefusalReason::FrameTooLarge);
        assert_eq!(
            err.to_string(),
            "frame refused (frame_too_large): 16383x16383 exceeds the 1920x1080 limit"
        );
    }

    #[test]
    fn reasons_index_their_position() {
        for (i, r) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
