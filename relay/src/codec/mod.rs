//! Video encoders and decoders behind one abstraction; the codec is chosen by configuration.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::frame::I420Frame;

pub mod h264;
pub mod vpx;

/// Accepted target bitrates in kbit/s.
pub const BITRATE_RANGE_KBPS: std::ops::RangeInclusive<u32> = 50..=50_000;
/// Accepted frame rates.
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=120;
/// Accepted encoder thread counts.
pub const THREADS_RANGE: std::ops::RangeInclusive<u32> = 1..=16;

pub use livefilter_contract::config::VideoCodec;

/// Errors from creating or running a codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
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
    /// Nominal frame rate: where rate control starts before frames' media times say otherwise.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// A keyframe at least this often in media time (zero: only on request).
    pub keyframe_interval: Duration,
    /// Encoder threads (1 keeps latency lowest and leaves cores to the filter).
    pub threads: u32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            fps: 30,
            bitrate_kbps: 1000,
            keyframe_interval: Duration::from_secs_f64(livefilter_contract::config::DEFAULT_KEYFRAME_INTERVAL_SECS),
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
    /// Encodes one frame presented at `pts` (media time since the stream began, increasing);
    /// rate control budgets by the real time between frames. `force_keyframe` makes it a
    /// keyframe. `None` when the rate control skipped the frame.
    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, CodecError>;
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

/// Places periodic keyframes by media time: one is due once `interval` has passed since the last
/// keyframe (whatever caused it), so dropped frames do not stretch the interval.
#[derive(Clone, Debug)]
pub struct KeyframeTimer {
    interval: Duration,
    last: Option<Duration>,
}

impl KeyframeTimer {
    /// A timer for `interval` (zero: never due).
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: None }
    }

    /// Whether a frame at `pts` should be a keyframe to keep the interval.
    pub fn due(&self, pts: Duration) -> bool {
        match self.last {
            _ if self.interval.is_zero() => false,
            None => true,
            Some(last) => pts.saturating_sub(last) >= self.interval,
        }
    }

    /// A keyframe went out at `pts`.
    pub fn keyframe_at(&mut self, pts: Duration) {
        self.last = Some(pts);
    }
}

/// Estimates the input frame rate from the presentation times of the last second of frames.
#[derive(Clone, Debug)]
pub struct FrameRateEstimator {
    window: Duration,
    times: VecDeque<Duration>,
}

impl Default for FrameRateEstimator {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            times: VecDeque::new(),
        }
    }
}

impl FrameRateEstimator {
    /// Adds a frame at `pts`; returns the rate over the window once it spans half of it.
    pub fn observe(&mut self, pts: Duration) -> Option<f64> {
        if self.times.back().is_some_and(|&last| pts <= last) {
            // Not increasing: the clock was rebased; start over.
            self.times.clear();
        }
        self.times.push_back(pts);
        while self
            .times
            .front()
            .is_some_and(|&first| pts.saturating_sub(first) > self.window)
        {
            self.times.pop_front();
        }
        let span = pts.saturating_sub(*self.times.front()?);
        if span < self.window / 2 {
            return None;
        }
        Some((self.times.len() - 1) as f64 / span.as_secs_f64())
    }
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
            keyframe_interval: Duration::ZERO,
            threads: 1,
        }
    }

    /// The presentation time of frame `i` at 30 fps.
    pub fn pts(i: u64) -> Duration {
        Duration::from_secs(i) / 30
    }

    /// Encodes frames `range` of `pattern` at 30 fps, forcing keyframes at the listed indices.
    pub fn encode_range(
        encoder: &mut dyn VideoEncoder,
        pattern: &TestPattern,
        range: std::ops::Range<u64>,
        force_at: &[u64],
    ) -> Vec<(u64, EncodedFrame)> {
        range
            .filter_map(|i| {
                let frame = pattern.frame(i);
                encoder
                    .encode(&frame, pts(i), force_at.contains(&i))
                    .unwrap()
                    .map(|e| (i, e))
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

    pub fn keyframe_interval_is_kept_in_media_time_when_frames_are_dropped(codec: VideoCodec) {
        let pattern = pattern(320, 180);
        let mut encoder = new_encoder(&EncoderConfig {
            keyframe_interval: Duration::from_millis(500),
            ..config(codec)
        })
        .unwrap();

        // Nominally 30 fps, but only every third frame arrives (10 fps): 100 ms apart.
        let keyframes: Vec<u64> = (0..40)
            .filter_map(|n| {
                let i = n * 3;
                let e = encoder.encode(&pattern.frame(i), pts(i), false).unwrap()?;
                e.keyframe.then_some(pts(i).as_millis() as u64)
            })
            .collect();

        assert_eq!(keyframes, [0, 500, 1000, 1500, 2000, 2500, 3000, 3500]);
    }

    /// A picture that moves every frame with some fine grain, so the encoder has work to do
    /// at any bitrate in range (a static or flat picture would undershoot any target, pure
    /// noise overshoot it).
    pub fn moving_texture(width: u32, height: u32, i: u64) -> I420Frame {
        const GRAIN: u8 = 8;
        let mut frame = I420Frame::filled(width, height, [128, 128, 128]).unwrap();
        let (y, u, v) = frame.planes_mut();
        let t = i as f32 * 0.15;
        for (k, p) in y.iter_mut().enumerate() {
            let (row, col) = ((k / width as usize) as f32, (k % width as usize) as f32);
            let wave = (col / 11.0 + t).sin() * (row / 7.0 - t * 0.7).cos();
            let h = (k as u32 ^ (i as u32).wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b);
            let noise = f32::from((h >> 24) as u8 % GRAIN) - f32::from(GRAIN) / 2.0;
            *p = (128.0 + 70.0 * wave + noise).clamp(16.0, 235.0) as u8;
        }
        for (k, p) in u.iter_mut().chain(v.iter_mut()).enumerate() {
            *p = 96 + ((k + i as usize) % 64) as u8;
        }
        frame
    }

    /// The bitrate (kbit/s) a stream of `seconds` of media time came out at, with frames
    /// delivered at `actual_fps` to an encoder configured for 30 fps and `target_kbps`.
    pub fn measured_kbps(codec: VideoCodec, target_kbps: u32, actual_fps: u32, seconds: u32) -> f64 {
        let step = Duration::from_secs(1) / actual_fps;
        let times: Vec<Duration> = (0..actual_fps * seconds).map(|i| step * i).collect();
        kbps_over(codec, target_kbps, &times, Duration::from_secs(seconds.into()))
    }

    /// The bitrate (kbit/s) over `span` of frames stamped with `times`.
    fn kbps_over(codec: VideoCodec, target_kbps: u32, times: &[Duration], span: Duration) -> f64 {
        let (width, height) = (320, 180);
        let mut encoder = new_encoder(&EncoderConfig {
            bitrate_kbps: target_kbps,
            keyframe_interval: Duration::from_secs(2),
            ..config(codec)
        })
        .unwrap();
        let bytes: usize = times
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| {
                let picture = moving_texture(width, height, i as u64);
                encoder.encode(&picture, t, false).unwrap()
            })
            .map(|e| e.data.len())
            .sum();
        bytes as f64 * 8.0 / 1000.0 / span.as_secs_f64()
    }

    pub fn bitrate_with_jittered_and_dropped_frames_stays_within_15_percent_of_the_target(codec: VideoCodec) {
        let target = 500;
        // 30 fps capture, as a browser's frames arrive: ±8 ms of jitter, and about one frame
        // in six dropped at uneven places by a busy filter, so gaps of one and two intervals
        // mix. (VP8 overshot by a third to a half on such streams while libvpx saw the raw gaps.)
        let jitter = [0i64, 8, -6, 3, -8, 5, -2, 7, -5, 1];
        let times: Vec<Duration> = (0..300u64)
            .filter(|i| (i * 7) % 13 >= 2)
            .map(|i| {
                let ms = i as i64 * 1000 / 30 + 8 + jitter[i as usize % jitter.len()];
                Duration::from_millis(ms as u64)
            })
            .collect();

        let kbps = kbps_over(codec, target, &times, Duration::from_secs(10));

        println!("{codec}: target {target} kbit/s; jittered, one in six dropped: {kbps:.0} kbit/s");
        let off = (kbps - f64::from(target)).abs() / f64::from(target);
        assert!(off <= 0.15, "{codec}: {kbps:.0} kbit/s for a {target} kbit/s target");
    }

    pub fn bitrate_at_20_fps_actual_stays_within_15_percent_of_the_target(codec: VideoCodec) {
        let target = 500;

        // 10 s of media time at 20 fps to an encoder configured for 30 fps. (Stamped at the
        // nominal 30 fps instead, as before, both codecs came out near 330 kbit/s.)
        let at_20 = measured_kbps(codec, target, 20, 10);

        println!("{codec}: target {target} kbit/s; 20 fps actual: {at_20:.0} kbit/s");
        let off = (at_20 - f64::from(target)).abs() / f64::from(target);
        assert!(
            off <= 0.15,
            "{codec} at 20 fps: {at_20:.0} kbit/s for a {target} kbit/s target"
        );
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
    fn keyframes_fall_due_by_media_time_since_the_last_one() {
        let ms = Duration::from_millis;
        let mut timer = KeyframeTimer::new(ms(2000));
        assert!(timer.due(ms(0)), "the first frame");
        timer.keyframe_at(ms(0));
        assert!(!timer.due(ms(1999)));
        assert!(timer.due(ms(2000)));
        timer.keyframe_at(ms(1500));
        assert!(!timer.due(ms(3000)), "a requested keyframe restarts the interval");
        assert!(
            !KeyframeTimer::new(Duration::ZERO).due(ms(99_999)),
            "zero: only on request"
        );
    }

    #[test]
    fn frame_rate_is_measured_over_the_last_second() {
        let mut rate = FrameRateEstimator::default();
        let at_20_fps = |i: u32| Duration::from_millis(50) * i;
        assert_eq!(rate.observe(at_20_fps(0)), None);
        let measured: Vec<Option<f64>> = (1..=30).map(|i| rate.observe(at_20_fps(i))).collect();
        assert_eq!(measured[8], None, "less than half a second seen");
        assert_eq!(measured[29], Some(20.0));
        // A rebased clock starts the measurement over.
        assert_eq!(rate.observe(Duration::ZERO), None);
    }
}
