//! Video encoders and decoders behind one abstraction; the codec is chosen by configuration.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::I420Frame;

pub mod h264;
pub mod vpx;

/// Accepted target bitrates in kbit/s.
pub const BITRATE_RANGE_KBPS: std::ops::RangeInclusive<u32> = 50..=50_000;
/// Accepted frame rates.
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=120;
/// Accepted encoder thread counts.
pub const THREADS_RANGE: std::ops::RangeInclusive<u32> = 1..=16;

/// A video codec the relay can encode and decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 via libvpx.
    Vp8,
    /// H.264 constrained baseline via OpenH264, packetization-mode 1.
    H264,
}

impl VideoCodec {
    /// The RTP MIME type (`video/VP8`, `video/H264`).
    pub fn mime_type(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "video/VP8",
            VideoCodec::H264 => "video/H264",
        }
    }

    /// The name Sora's `connect` message uses in `video.codec_type`.
    pub fn sora_name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::H264 => "H264",
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoCodec::Vp8 => "vp8",
            VideoCodec::H264 => "h264",
        })
    }
}

impl FromStr for VideoCodec {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "vp8" | "video/vp8" => Ok(VideoCodec::Vp8),
            "h264" | "video/h264" => Ok(VideoCodec::H264),
            _ => Err(CodecError::UnknownCodec(s.to_owned())),
        }
    }
}

/// Errors from creating or running a codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The name is not a supported codec.
    #[error("unknown video codec {0:?} (expected vp8 or h264)")]
    UnknownCodec(String),
    /// The encoder settings are out of range.
    #[error("invalid encoder setting: {0}")]
    InvalidConfig(String),
    /// The codec library failed to initialise.
    #[error("{codec} {role} initialisation failed: {detail}")]
    Init {
        codec: VideoCodec,
        role: &'static str,
        detail: String,
    },
    /// Encoding one frame failed.
    #[error("{codec} encode of a {width}x{height} frame failed: {detail}")]
    Encode {
        codec: VideoCodec,
        width: u32,
        height: u32,
        detail: String,
    },
    /// Decoding one bitstream chunk failed (corrupt data or lost sync: ask for a keyframe).
    #[error("{codec} decode of {bytes} bytes failed: {detail}")]
    Decode {
        codec: VideoCodec,
        bytes: usize,
        detail: String,
    },
}

/// Encoder settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Which codec.
    pub codec: VideoCodec,
    /// Frame rate the rate control assumes.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// A keyframe at least every this many frames (0: only on request).
    pub keyframe_interval: u32,
    /// Encoder threads (1 keeps latency lowest and leaves cores to the filter).
    pub threads: u32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            fps: 30,
            bitrate_kbps: 1000,
            keyframe_interval: 60,
            threads: 1,
        }
    }
}

/// One encoded picture, ready for RTP packetization (VP8 frame, or H.264 Annex-B access unit).
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// The bitstream.
    pub data: Bytes,
    /// Whether it is a keyframe (IDR for H.264).
    pub keyframe: bool,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
}

/// Turns pictures into a bitstream. Follows resolution changes by re-initialising itself.
pub trait VideoEncoder: Send {
    /// The codec this encoder produces.
    fn codec(&self) -> VideoCodec;
    /// Encodes one frame; `force_keyframe` makes it a keyframe. `None` when the rate control
    /// skipped the frame.
    fn encode(&mut self, frame: &I420Frame, force_keyframe: bool) -> Result<Option<EncodedFrame>, CodecError>;
    /// Changes the target bitrate without re-initialising.
    fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<(), CodecError>;
}

/// Turns a bitstream back into pictures.
pub trait VideoDecoder: Send {
    /// The codec this decoder reads.
    fn codec(&self) -> VideoCodec;
    /// Decodes one complete frame's bitstream; `None` when the decoder produced no picture.
    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError>;
}

impl EncoderConfig {
    /// Checks every setting against its accepted range; the error names the offending value.
    pub fn validate(&self) -> Result<(), CodecError> {
        check_bitrate(self.bitrate_kbps)?;
        if !FPS_RANGE.contains(&self.fps) {
            return Err(CodecError::InvalidConfig(format!(
                "fps {} is out of range {}..={}",
                self.fps,
                FPS_RANGE.start(),
                FPS_RANGE.end()
            )));
        }
        if !THREADS_RANGE.contains(&self.threads) {
            return Err(CodecError::InvalidConfig(format!(
                "threads {} is out of range {}..={}",
                self.threads,
                THREADS_RANGE.start(),
                THREADS_RANGE.end()
            )));
        }
        Ok(())
    }
}

fn check_bitrate(kbps: u32) -> Result<(), CodecError> {
    if !BITRATE_RANGE_KBPS.contains(&kbps) {
        return Err(CodecError::InvalidConfig(format!(
            "bitrate_kbps {kbps} is out of range {}..={}",
            BITRATE_RANGE_KBPS.start(),
            BITRATE_RANGE_KBPS.end()
        )));
    }
    Ok(())
}

/// Creates an encoder for `cfg.codec` after validating `cfg`.
pub fn new_encoder(cfg: &EncoderConfig) -> Result<Box<dyn VideoEncoder>, CodecError> {
    cfg.validate()?;
    Ok(match cfg.codec {
        VideoCodec::Vp8 => Box::new(vpx::Vp8Encoder::new(cfg)?),
        VideoCodec::H264 => Box::new(h264::H264Encoder::new(cfg)?),
    })
}

/// Creates a decoder for `codec`.
pub fn new_decoder(codec: VideoCodec) -> Result<Box<dyn VideoDecoder>, CodecError> {
    Ok(match codec {
        VideoCodec::Vp8 => Box::new(vpx::Vp8Decoder::new()?),
        VideoCodec::H264 => Box::new(h264::H264Decoder::new()?),
    })
}

/// Codec-independent test scenarios, run by each codec module's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::testpattern::{DEFAULT_FONT_PATH, TestPattern, load_font};

    /// A test pattern of the given size; fails the test clearly when the font is missing.
    pub fn pattern(width: u32, height: u32) -> TestPattern {
        let font = load_font(DEFAULT_FONT_PATH).unwrap_or_else(|e| {
            panic!("test font unavailable: {e} (install Debian fonts-dejavu-core, scripts/setup.sh)")
        });
        TestPattern::new(width, height, 30, font).unwrap()
    }

    /// Realtime settings for tests: 30 fps, 1.5 Mbit/s, keyframes only on request.
    pub fn config(codec: VideoCodec) -> EncoderConfig {
        EncoderConfig {
            codec,
            fps: 30,
            bitrate_kbps: 1500,
            keyframe_interval: 0,
            threads: 1,
        }
    }

    /// Encodes frames `range` of `pattern`, forcing keyframes at the listed indices.
    pub fn encode_range(
        encoder: &mut dyn VideoEncoder,
        pattern: &TestPattern,
        range: std::ops::Range<u64>,
        force_at: &[u64],
    ) -> Vec<(u64, EncodedFrame)> {
        range
            .filter_map(|i| {
                let frame = pattern.frame(i);
                encoder.encode(&frame, force_at.contains(&i)).unwrap().map(|e| (i, e))
            })
            .collect()
    }

    pub fn round_trip_keeps_size_and_luma_quality(codec: VideoCodec, width: u32, height: u32) {
        let pattern = pattern(width, height);
        let mut encoder = new_encoder(&config(codec)).unwrap();
        let mut decoder = new_decoder(codec).unwrap();

        let encoded = encode_range(encoder.as_mut(), &pattern, 0..30, &[]);

        assert_eq!(encoded.len(), 30, "every frame produces output");
        assert!(encoded[0].1.keyframe, "first frame is a keyframe");
        assert!(
            encoded[1..].iter().all(|(_, e)| !e.keyframe),
            "no unrequested keyframes"
        );
        let mut last = None;
        for (i, e) in &encoded {
            assert_eq!((e.width, e.height), (width, height));
            let decoded = decoder
                .decode(&e.data)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} gave no picture"));
            assert_eq!((decoded.width(), decoded.height()), (width, height), "frame {i}");
            last = Some((*i, decoded));
        }
        let (i, decoded) = last.unwrap();
        let psnr = decoded.luma_psnr(&pattern.frame(i)).unwrap();
        assert!(psnr > 30.0, "{codec} luma PSNR of frame {i} is {psnr:.1} dB");
    }

    pub fn forced_keyframe_decodes_alone_on_a_fresh_decoder(codec: VideoCodec) {
        let pattern = pattern(320, 180);
        let mut encoder = new_encoder(&config(codec)).unwrap();

        let encoded = encode_range(encoder.as_mut(), &pattern, 0..12, &[7]);

        let keyframes: Vec<u64> = encoded.iter().filter(|(_, e)| e.keyframe).map(|(i, _)| *i).collect();
        assert_eq!(keyframes, [0, 7]);
        let (_, forced) = &encoded[7];
        let mut fresh = new_decoder(codec).unwrap();
        let decoded = fresh
            .decode(&forced.data)
            .unwrap()
            .expect("a keyframe decodes to a picture");
        assert_eq!((decoded.width(), decoded.height()), (320, 180));
        let psnr = decoded.luma_psnr(&pattern.frame(7)).unwrap();
        assert!(psnr > 30.0, "{codec} forced keyframe PSNR {psnr:.1} dB");
        // ...and the frames after it follow on from it.
        let next = fresh
            .decode(&encoded[8].1.data)
            .unwrap()
            .expect("the next delta frame decodes");
        assert!(next.luma_psnr(&pattern.frame(8)).unwrap() > 30.0);
    }

    pub fn keyframe_interval_places_keyframes_at_its_multiples(codec: VideoCodec) {
        let pattern = pattern(320, 180);
        let mut encoder = new_encoder(&EncoderConfig {
            keyframe_interval: 10,
            ..config(codec)
        })
        .unwrap();

        let encoded = encode_range(encoder.as_mut(), &pattern, 0..35, &[]);

        let keyframes: Vec<u64> = encoded.iter().filter(|(_, e)| e.keyframe).map(|(i, _)| *i).collect();
        assert_eq!(keyframes, [0, 10, 20, 30]);
    }

    pub fn size_change_mid_stream_keeps_decoding_at_the_new_size(codec: VideoCodec) {
        let small = pattern(640, 360);
        let large = pattern(1280, 720);
        let mut encoder = new_encoder(&config(codec)).unwrap();
        let mut decoder = new_decoder(codec).unwrap();

        let before = encode_range(encoder.as_mut(), &small, 0..5, &[]);
        let after = encode_range(encoder.as_mut(), &large, 5..12, &[]);

        for (_, e) in &before {
            let d = decoder.decode(&e.data).unwrap().unwrap();
            assert_eq!((d.width(), d.height()), (640, 360));
        }
        assert!(after[0].1.keyframe, "the first frame at the new size is a keyframe");
        assert_eq!(after.len(), 7);
        for (i, e) in &after {
            assert_eq!((e.width, e.height), (1280, 720));
            let d = decoder
                .decode(&e.data)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} gave no picture"));
            assert_eq!((d.width(), d.height()), (1280, 720), "frame {i}");
            let psnr = d.luma_psnr(&large.frame(*i)).unwrap();
            assert!(psnr > 28.0, "{codec} frame {i} after resize: {psnr:.1} dB");
        }
    }

    pub fn garbage_input_is_a_decode_error_not_a_panic(codec: VideoCodec) {
        let mut decoder = new_decoder(codec).unwrap();
        // Deterministic pseudo-random bytes (xorshift), plus a few hand-made shapes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let inputs: [&[u8]; 4] = [b"definitely not a video frame", &noise, &[], &[0xff; 64]];
        for input in inputs {
            let result = decoder.decode(input);
            assert!(
                matches!(result, Err(CodecError::Decode { codec: c, .. }) if c == codec),
                "{codec} decoding {} garbage bytes gave {result:?}",
                input.len()
            );
        }
    }

    pub fn corrupted_stream_never_panics_and_a_keyframe_recovers(codec: VideoCodec) {
        let pattern = pattern(320, 180);
        let mut encoder = new_encoder(&config(codec)).unwrap();
        let encoded = encode_range(encoder.as_mut(), &pattern, 0..10, &[6]);
        let mut decoder = new_decoder(codec).unwrap();

        for (i, e) in &encoded[..6] {
            // Flip bytes past the headers and truncate: any Ok/Err is fine, a panic is not.
            let mut bad = e.data.to_vec();
            let len = bad.len();
            for k in (len / 3..len).step_by(7) {
                bad[k] ^= 0x5a;
            }
            bad.truncate(len * 2 / 3 + (*i as usize % 5));
            let _ = decoder.decode(&bad);
        }
        let recovered = decoder
            .decode(&encoded[6].1.data)
            .unwrap()
            .expect("keyframe decodes after corruption");
        assert!(recovered.luma_psnr(&pattern.frame(6)).unwrap() > 30.0);
    }

    pub fn bitrate_change_keeps_the_stream_decodable(codec: VideoCodec) {
        let pattern = pattern(320, 180);
        let mut encoder = new_encoder(&config(codec)).unwrap();
        let mut decoder = new_decoder(codec).unwrap();

        let mut encoded = encode_range(encoder.as_mut(), &pattern, 0..5, &[]);
        encoder.set_bitrate_kbps(300).unwrap();
        encoded.extend(encode_range(encoder.as_mut(), &pattern, 5..10, &[]));

        assert_eq!(encoded.len(), 10);
        for (i, e) in &encoded {
            let d = decoder
                .decode(&e.data)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} gave no picture"));
            assert_eq!((d.width(), d.height()), (320, 180));
        }
        assert!(
            matches!(encoder.set_bitrate_kbps(0), Err(CodecError::InvalidConfig(m)) if m.contains("bitrate_kbps 0"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_encoder_rejects_bitrate_zero_naming_it() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let cfg = EncoderConfig {
                codec,
                bitrate_kbps: 0,
                ..EncoderConfig::default()
            };
            let err = new_encoder(&cfg).err().expect("bitrate 0 is rejected");
            assert!(matches!(err, CodecError::InvalidConfig(_)));
            assert!(err.to_string().contains("bitrate_kbps 0"), "{err}");
        }
    }

    #[test]
    fn new_encoder_rejects_out_of_range_fps_and_threads() {
        let fps = new_encoder(&EncoderConfig {
            fps: 0,
            ..EncoderConfig::default()
        })
        .err()
        .unwrap();
        assert!(fps.to_string().contains("fps 0"), "{fps}");
        let fps = new_encoder(&EncoderConfig {
            fps: 121,
            ..EncoderConfig::default()
        })
        .err()
        .unwrap();
        assert!(fps.to_string().contains("fps 121"), "{fps}");
        let threads = new_encoder(&EncoderConfig {
            threads: 0,
            ..EncoderConfig::default()
        })
        .err()
        .unwrap();
        assert!(threads.to_string().contains("threads 0"), "{threads}");
        let high = new_encoder(&EncoderConfig {
            bitrate_kbps: 50_001,
            ..EncoderConfig::default()
        })
        .err()
        .unwrap();
        assert!(high.to_string().contains("bitrate_kbps 50001"), "{high}");
    }

    #[test]
    fn new_encoder_accepts_the_default_config_for_both_codecs() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let encoder = new_encoder(&EncoderConfig {
                codec,
                ..EncoderConfig::default()
            })
            .unwrap();
            assert_eq!(encoder.codec(), codec);
            assert_eq!(new_decoder(codec).unwrap().codec(), codec);
        }
    }

    #[test]
    fn codec_names_parse_case_insensitively() {
        assert_eq!("VP8".parse::<VideoCodec>().unwrap(), VideoCodec::Vp8);
        assert_eq!("video/H264".parse::<VideoCodec>().unwrap(), VideoCodec::H264);
        assert!(matches!("av1".parse::<VideoCodec>(), Err(CodecError::UnknownCodec(s)) if s == "av1"));
    }
}
