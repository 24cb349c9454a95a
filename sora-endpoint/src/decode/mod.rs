//! Decoding with the codec libraries themselves (libvpx, OpenH264), not through the relay's
//! codec layer: the endpoint checks the relay's output, so it must not share its code.

mod h264;
mod vp8;

use crate::codec::VideoCodec;
use crate::picture::Picture;

/// Decoder failures.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The library would not create a decoder.
    #[error("cannot create a {codec} decoder: {detail}")]
    Init {
        /// Which codec.
        codec: VideoCodec,
        /// The library's message.
        detail: String,
    },
    /// The library refused a frame.
    #[error("{codec} frame of {bytes} bytes did not decode: {detail}")]
    Frame {
        /// Which codec.
        codec: VideoCodec,
        /// Size of the frame.
        bytes: usize,
        /// The library's message.
        detail: String,
    },
}

/// A decoder of one codec: whole encoded frames in, pictures out.
pub trait Decoder {
    /// Decodes one complete frame; `None` when the library has no picture for it (yet).
    fn decode(&mut self, frame: &[u8]) -> Result<Option<Picture>, DecodeError>;
}

/// A decoder for `codec`.
pub fn new_decoder(codec: VideoCodec) -> Result<Box<dyn Decoder>, DecodeError> {
    Ok(match codec {
        VideoCodec::Vp8 => Box::new(vp8::Vp8Decoder::new()?),
        VideoCodec::H264 => Box::new(h264::H264Decoder::new()?),
    })
}

/// Copies `rows` rows of `width` bytes out of a plane laid out with `stride`; `None` when the
/// plane is too short.
fn copy_plane(src: &[u8], stride: usize, width: usize, rows: usize) -> Option<Vec<u8>> {
    if stride < width {
        return None;
    }
    let mut out = Vec::with_capacity(width * rows);
    for row in 0..rows {
        out.extend_from_slice(src.get(row * stride..row * stride + width)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let mut decoder = new_decoder(codec).unwrap();
            for input in [&[][..], &[0xff; 3][..], &[0, 0, 0, 1, 0x65, 0xff, 0xff][..]] {
                // Either an error or no picture; never a panic or a bogus picture.
                if let Ok(Some(p)) = decoder.decode(input) {
                    panic!("{codec}: a picture {}x{} from garbage", p.width(), p.height());
                }
            }
        }
    }

    #[test]
    fn strided_planes_are_packed() {
        let src = [1, 2, 9, 3, 4, 9];
        assert_eq!(copy_plane(&src, 3, 2, 2), Some(vec![1, 2, 3, 4]));
        assert_eq!(copy_plane(&src, 3, 2, 3), None);
        assert_eq!(copy_plane(&src, 1, 2, 1), None);
    }
}
