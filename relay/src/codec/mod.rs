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
    Init { codec: VideoCodec, role: &'static str, detail: String },
    /// Encoding one frame failed.
    #[error("{codec} encode of a {width}x{height} frame failed: {detail}")]
    Encode { codec: VideoCodec, width: u32, height: u32, detail: String },
    /// Decoding one bitstream chunk failed (corrupt data or lost sync: ask for a keyframe).
    #[error("{codec} decode of {bytes} bytes failed: {detail}")]
    Decode { codec: VideoCodec, bytes: usize, detail: String },
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
        Self { codec: VideoCodec::Vp8, fps: 30, bitrate_kbps: 1000, keyframe_interval: 60, threads: 1 }
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
