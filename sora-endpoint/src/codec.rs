//! The video codecs the endpoint offers and decodes.

use std::fmt;

use serde::Serialize;

/// A video codec, as the API names it (`vp8`, `h264`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 (RFC 7741 payload format).
    Vp8,
    /// H.264 (RFC 6184 payload format, packetization-mode 1).
    H264,
}

impl VideoCodec {
    /// The codec of an RTP MIME type (`video/VP8`, `video/H264`, any case).
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.to_ascii_lowercase().as_str() {
            "video/vp8" => Some(VideoCodec::Vp8),
            "video/h264" => Some(VideoCodec::H264),
            _ => None,
        }
    }

    /// The codec of a Sora `video.codec_type` (`VP8` when absent or unknown to the endpoint).
    pub fn from_codec_type(codec_type: Option<&str>) -> Self {
        match codec_type {
            Some("H264") => VideoCodec::H264,
            _ => VideoCodec::Vp8,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_are_read_from_mime_types_and_sora_codec_types() {
        assert_eq!(VideoCodec::from_mime("video/VP8"), Some(VideoCodec::Vp8));
        assert_eq!(VideoCodec::from_mime("video/h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_mime("video/AV1"), None);
        assert_eq!(VideoCodec::from_codec_type(Some("H264")), VideoCodec::H264);
        assert_eq!(VideoCodec::from_codec_type(None), VideoCodec::Vp8);
        assert_eq!(serde_json::to_value(VideoCodec::H264).unwrap(), "h264");
    }
}
