//! H.264 through OpenH264 (built from source, BSD-2): constrained baseline for realtime camera
//! video, one Annex-B access unit per frame, SPS and PPS in front of every IDR so that a
//! receiver joining at any keyframe can decode.
//!
//! Rate control follows the frames' media time: OpenH264 budgets each frame as bitrate / frame
//! rate, so the frame rate it assumes is kept at the measured input rate (as libwebrtc does
//! through the same option). That one option is set through OpenH264's raw API, the only
//! `unsafe` here.
#![allow(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use openh264::Timestamp;
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig as OhEncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSource;

use super::{
    CodecError, EncodedFrame, EncoderConfig, FrameRateEstimator, KeyframeTimer, VideoCodec, VideoDecoder, VideoEncoder,
};
use crate::frame::I420Frame;

/// NAL unit types this module looks at (ITU-T H.264 table 7-1).
const NAL_IDR_SLICE: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
/// OpenH264's frame-rate range (`MIN_FRAME_RATE`, `MAX_FRAME_RATE`).
const FPS_LIMITS: (f64, f64) = (1.0, 60.0);
/// The assumed frame rate follows the measured one once they differ by more than this.
const FPS_TOLERANCE: f64 = 0.1;

/// H.264 encoder. Re-initialises itself when the input size changes.
pub struct H264Encoder {
    config: EncoderConfig,
    session: Option<EncoderSession>,
    /// A bitrate change waiting for the next frame (see [`VideoEncoder::set_bitrate_kbps`]).
    pending_bitrate: bool,
    keyframes: KeyframeTimer,
    input_rate: FrameRateEstimator,
    /// The frame rate rate control assumes (nominal until measured).
    assumed_fps: f64,
}

struct EncoderSession {
    encoder: Encoder,
    width: u32,
    height: u32,
    frames: u64,
    /// The latest parameter sets, to repeat them if an IDR ever came without them.
    sps: Vec<u8>,
    pps: Vec<u8>,
}

/// Borrows an [`I420Frame`] as OpenH264 input.
struct FrameSource<'a>(&'a I420Frame);

impl YUVSource for FrameSource<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width() as usize, self.0.height() as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let (cw, _) = self.0.chroma_size();
        (self.0.width() as usize, cw, cw)
    }

    fn y(&self) -> &[u8] {
        self.0.y()
    }

    fn u(&self) -> &[u8] {
        self.0.u()
    }

    fn v(&self) -> &[u8] {
        self.0.v()
    }
}

impl H264Encoder {
    /// An H.264 encoder for `config`; OpenH264 is initialised on the first frame, when the size
    /// is known.
    pub fn new(config: &EncoderConfig) -> Result<Self, CodecError> {
        config.validate()?;
        Ok(Self {
            config: EncoderConfig {
                codec: VideoCodec::H264,
                ..config.clone()
            },
            session: None,
            pending_bitrate: false,
            keyframes: KeyframeTimer::new(config.keyframe_interval),
            input_rate: FrameRateEstimator::default(),
            assumed_fps: f64::from(config.fps).clamp(FPS_LIMITS.0, FPS_LIMITS.1),
        })
    }

    /// Tells OpenH264 the measured input frame rate when it drifted from the assumed one.
    fn follow_input_rate(&mut self, pts: Duration) {
        let Some(measured) = self.input_rate.observe(pts) else {
            return;
        };
        let measured = measured.clamp(FPS_LIMITS.0, FPS_LIMITS.1);
        if (measured - self.assumed_fps).abs() <= self.assumed_fps * FPS_TOLERANCE {
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut fps = measured as f32;
        // SAFETY: the encoder is initialised (a session exists only after its first encode call
        // initialised it); ENCODER_OPTION_FRAME_RATE reads one f32 through the pointer, which
        // points to a live local for the duration of the call. The option only updates the
        // frame rate rate control budgets by (WelsEncoderApplyFrameRate), nothing the crate's
        // wrapper relies on.
        let rc = unsafe {
            session
                .encoder
                .raw_api()
                .set_option(openh264_sys2::ENCODER_OPTION_FRAME_RATE, (&raw mut fps).cast())
        };
        if rc == 0 {
            tracing::debug!(
                from = self.assumed_fps,
                to = measured,
                "H.264 rate control follows the input frame rate"
            );
            self.assumed_fps = measured;
        } else {
            tracing::warn!(rc, fps = measured, "OpenH264 refused the measured frame rate");
        }
    }

    fn openh264_config(&self) -> OhEncoderConfig {
        let c = &self.config;
        OhEncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .complexity(Complexity::Low)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(c.bitrate_kbps.saturating_mul(1000)))
            .max_frame_rate(FrameRate::from_hz(self.assumed_fps as f32))
            // OpenH264's rate control only holds the bitrate when it may skip frames.
            .skip_frames(true)
            // Keyframes only where asked (media-time interval or request): a scene-change IDR
            // mid-stream costs a burst of bits the CBR budget did not plan for.
            .scene_change_detect(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .num_threads(c.threads.clamp(1, u16::MAX as u32) as u16)
    }

    fn session_for(&mut self, width: u32, height: u32) -> Result<&mut EncoderSession, CodecError> {
        let same_size = self
            .session
            .as_ref()
            .is_some_and(|s| s.width == width && s.height == height);
        if !same_size || self.pending_bitrate {
            if let Some(old) = &self.session {
                tracing::info!(
                    from = %format_args!("{}x{}", old.width, old.height),
                    to = %format_args!("{width}x{height}"),
                    bitrate_kbps = self.config.bitrate_kbps,
                    "H.264 encoder re-initialising"
                );
            }
            self.session = None;
            let encoder = Encoder::with_api_config(openh264::OpenH264API::from_source(), self.openh264_config())
                .map_err(|e| CodecError::Init {
                    codec: VideoCodec::H264,
                    role: "encoder",
                    detail: format!("{width}x{height}: {e}"),
                })?;
            self.session = Some(EncoderSession {
                encoder,
                width,
                height,
                frames: 0,
                sps: Vec::new(),
                pps: Vec::new(),
            });
            self.pending_bitrate = false;
        }
        self.session.as_mut().ok_or_else(|| CodecError::Init {
            codec: VideoCodec::H264,
            role: "encoder",
            detail: "no session after initialisation".into(),
        })
    }
}

impl VideoEncoder for H264Encoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }

    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, CodecError> {
        let (width, height) = (frame.width(), frame.height());
        let fail = |detail: String| CodecError::Encode {
            codec: VideoCodec::H264,
            width,
            height,
            detail,
        };
        if width % 2 != 0 || height % 2 != 0 {
            // OpenH264 only takes even sizes; failing clearly beats silently cropping a column.
            return Err(fail("H.264 (OpenH264) needs an even width and height".into()));
        }
        let force_keyframe = force_keyframe || self.keyframes.due(pts);
        self.follow_input_rate(pts);
        let session = self.session_for(width, height)?;
        // The first frame of a session is an IDR anyway; OpenH264 wants ForceIntraFrame only
        // once it has been initialised by an encode call.
        if force_keyframe && session.frames > 0 {
            session.encoder.force_intra_frame();
        }
        let timestamp = Timestamp::from_millis(u64::try_from(pts.as_millis()).unwrap_or(u64::MAX));
        session.frames += 1;
        let bitstream = session
            .encoder
            .encode_at(&FrameSource(frame), timestamp)
            .map_err(|e| fail(e.to_string()))?;
        let frame_type = bitstream.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let mut data = bitstream.to_vec();
        if data.is_empty() {
            return Ok(None);
        }

        let keyframe = frame_type == FrameType::IDR;
        if keyframe {
            self.keyframes.keyframe_at(pts);
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let nal_types: Vec<u8> = nal_units(&data).map(|n| n[0] & 0x1f).collect();
        for nal in nal_units(&data) {
            match nal[0] & 0x1f {
                NAL_SPS => session.sps = nal.to_vec(),
                NAL_PPS => session.pps = nal.to_vec(),
                _ => {}
            }
        }
        if nal_types.contains(&NAL_IDR_SLICE) && !(nal_types.contains(&NAL_SPS) && nal_types.contains(&NAL_PPS)) {
            // OpenH264 writes them before each IDR today; this keeps the promise if it ever stops.
            let mut with_sets = Vec::with_capacity(data.len() + session.sps.len() + session.pps.len() + 8);
            for set in [&session.sps, &session.pps] {
                with_sets.extend_from_slice(&[0, 0, 0, 1]);
                with_sets.extend_from_slice(set);
            }
            with_sets.extend_from_slice(&data);
            data = with_sets;
        }
        Ok(Some(EncodedFrame {
            data: Bytes::from(data),
            keyframe,
            width,
            height,
        }))
    }

    /// The safe OpenH264 API cannot change the bitrate of a running encoder, so the change is
    /// applied by re-initialising before the next frame (which therefore becomes an IDR).
    fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<(), CodecError> {
        super::check_bitrate(kbps)?;
        if kbps != self.config.bitrate_kbps {
            self.config.bitrate_kbps = kbps;
            self.pending_bitrate = self.session.is_some();
        }
        Ok(())
    }
}

/// H.264 decoder.
pub struct H264Decoder {
    decoder: Decoder,
}

impl H264Decoder {
    /// An OpenH264 decoder.
    pub fn new() -> Result<Self, CodecError> {
        let decoder = Decoder::new().map_err(|e| CodecError::Init {
            codec: VideoCodec::H264,
            role: "decoder",
            detail: e.to_string(),
        })?;
        Ok(Self { decoder })
    }
}

impl VideoDecoder for H264Decoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }

    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
        let fail = |detail: String| CodecError::Decode {
            codec: VideoCodec::H264,
            bytes: data.len(),
            detail,
        };
        if nal_units(data).next().is_none() {
            // OpenH264 silently ignores input without a start code; for us that is corrupt input.
            return Err(fail("no Annex-B start code (00 00 01) in input".into()));
        }
        let decoded = self.decoder.decode(data).map_err(|e| fail(e.to_string()))?;
        let Some(yuv) = decoded else { return Ok(None) };
        let (width, height) = yuv.dimensions();
        let (ys, us, vs) = yuv.strides();
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let y = copy_plane(yuv.y(), ys, width, height)
            .ok_or_else(|| fail(format!("luma plane too short for {width}x{height}")))?;
        let u =
            copy_plane(yuv.u(), us, cw, ch).ok_or_else(|| fail(format!("U plane too short for {width}x{height}")))?;
        let v =
            copy_plane(yuv.v(), vs, cw, ch).ok_or_else(|| fail(format!("V plane too short for {width}x{height}")))?;
        I420Frame::from_planes(width as u32, height as u32, y, u, v)
            .map(Some)
            .map_err(|e| fail(e.to_string()))
    }
}

/// Copies `rows` rows of `width` bytes out of a plane with `stride`; `None` if it is too short.
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

/// The NAL units of an Annex-B stream, each without its start code (first byte = NAL header).
pub fn nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = stream;
    std::iter::from_fn(move || {
        loop {
            let start = find_start_code(rest)?;
            let body = &rest[start..];
            let end = find_start_code(body).map_or(body.len(), |next| next - 3);
            // Trailing zeros belong to the next 4-byte start code, not to this NAL.
            let mut nal = &body[..end];
            while let [head @ .., 0] = nal {
                nal = head;
            }
            rest = &body[end..];
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    })
}

/// Index just past the first `00 00 01` in `data`.
fn find_start_code(data: &[u8]) -> Option<usize> {
    data.windows(3).position(|w| w == [0, 0, 1]).map(|i| i + 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support as scenario;

    #[test]
    fn h264_round_trip_keeps_size_and_luma_psnr_above_30_db() {
        scenario::round_trip_keeps_size_and_luma_quality(VideoCodec::H264, 640, 360);
    }

    #[test]
    fn h264_forced_keyframe_decodes_alone_on_a_fresh_decoder() {
        scenario::forced_keyframe_decodes_alone_on_a_fresh_decoder(VideoCodec::H264);
    }

    #[test]
    fn h264_keyframe_interval_is_kept_in_media_time_when_frames_are_dropped() {
        scenario::keyframe_interval_is_kept_in_media_time_when_frames_are_dropped(VideoCodec::H264);
    }

    #[test]
    fn h264_bitrate_with_jittered_and_dropped_frames_stays_within_15_percent_of_the_target() {
        scenario::bitrate_with_jittered_and_dropped_frames_stays_within_15_percent_of_the_target(VideoCodec::H264);
    }

    #[test]
    fn h264_bitrate_at_20_fps_actual_stays_within_15_percent_of_the_target() {
        scenario::bitrate_at_20_fps_actual_stays_within_15_percent_of_the_target(VideoCodec::H264);
    }

    #[test]
    fn h264_size_change_mid_stream_keeps_decoding_at_the_new_size() {
        scenario::size_change_mid_stream_keeps_decoding_at_the_new_size(VideoCodec::H264);
    }

    #[test]
    fn h264_garbage_input_is_a_decode_error_not_a_panic() {
        scenario::garbage_input_is_a_decode_error_not_a_panic(VideoCodec::H264);
    }

    #[test]
    fn h264_corrupted_stream_never_panics_and_a_keyframe_recovers() {
        scenario::corrupted_stream_never_panics_and_a_keyframe_recovers(VideoCodec::H264);
    }

    #[test]
    fn h264_bitrate_change_keeps_the_stream_decodable() {
        scenario::bitrate_change_keeps_the_stream_decodable(VideoCodec::H264);
    }

    #[test]
    fn h264_every_idr_carries_sps_and_pps_in_annex_b() {
        let pattern = scenario::pattern(320, 180);
        let config = EncoderConfig {
            keyframe_interval: scenario::pts(5),
            ..scenario::config(VideoCodec::H264)
        };
        let mut encoder = H264Encoder::new(&config).unwrap();

        let encoded = scenario::encode_range(&mut encoder, &pattern, 0..12, &[7]);

        for (i, e) in &encoded {
            assert!(
                e.data.starts_with(&[0, 0, 0, 1]) || e.data.starts_with(&[0, 0, 1]),
                "frame {i} is Annex-B"
            );
            let types: Vec<u8> = nal_units(&e.data).map(|n| n[0] & 0x1f).collect();
            if e.keyframe {
                for t in [NAL_SPS, NAL_PPS, NAL_IDR_SLICE] {
                    assert!(types.contains(&t), "keyframe {i} lacks NAL type {t}: {types:?}");
                }
            } else {
                assert!(
                    !types.contains(&NAL_IDR_SLICE),
                    "delta frame {i} has an IDR slice: {types:?}"
                );
            }
        }
        let keyframes: Vec<u64> = encoded.iter().filter(|(_, e)| e.keyframe).map(|(i, _)| *i).collect();
        assert!(
            keyframes.contains(&0) && keyframes.contains(&5) && keyframes.contains(&7),
            "{keyframes:?}"
        );
    }

    #[test]
    fn h264_stream_is_constrained_baseline() {
        let pattern = scenario::pattern(320, 180);
        let mut encoder = H264Encoder::new(&scenario::config(VideoCodec::H264)).unwrap();

        let (_, first) = scenario::encode_range(&mut encoder, &pattern, 0..1, &[]).remove(0);

        let sps = nal_units(&first.data)
            .find(|n| n[0] & 0x1f == NAL_SPS)
            .expect("SPS present");
        assert_eq!(sps[1], 66, "profile_idc baseline");
        assert_ne!(sps[2] & 0x40, 0, "constraint_set1_flag (constrained baseline)");
    }

    #[test]
    fn h264_odd_frame_size_is_an_encode_error_naming_the_size() {
        let frame = I420Frame::filled(641, 361, [16, 128, 128]).unwrap();
        let mut encoder = H264Encoder::new(&scenario::config(VideoCodec::H264)).unwrap();

        let err = encoder.encode(&frame, Duration::ZERO, false).unwrap_err();

        assert!(err.to_string().contains("641x361"), "{err}");
    }

    #[test]
    fn nal_units_splits_three_and_four_byte_start_codes() {
        let stream = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0];
        let nals: Vec<&[u8]> = nal_units(&stream).collect();
        assert_eq!(nals, [&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]);
        assert_eq!(nal_units(b"no start code here").count(), 0);
    }
}
