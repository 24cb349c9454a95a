//! VP8 through libvpx (Debian's libvpx, bindings from `env-libvpx-sys`), set up for realtime:
//! one pass, CBR, no lag, error resilient, fast `cpu-used`.
//!
//! This is the one module of the crate that calls C directly; everything it exposes is safe.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_long, c_uint, c_ulong};
use std::mem::MaybeUninit;
use std::ptr;
use std::time::Duration;

use bytes::Bytes;
use vpx_sys as ffi;

use super::{CodecError, EncodedFrame, EncoderConfig, KeyframeTimer, VideoCodec, VideoDecoder, VideoEncoder};
use crate::frame::I420Frame;

/// Default libvpx `cpu-used` for VP8. Negative values fix the speed at `|n|` (deterministic);
/// positive ones let libvpx adapt the speed to the frame budget, which measured ~7.4 ms per
/// 720p frame at 8..12 against ~4.5 ms fixed at -12 (test pattern, one core, 2.5 Mbit/s).
pub const DEFAULT_CPU_USED: i32 = -12;

/// Rate-control buffer model (ms), as libwebrtc configures VP8 for realtime.
const RC_BUF_INITIAL_MS: c_uint = 500;
const RC_BUF_OPTIMAL_MS: c_uint = 600;
const RC_BUF_MS: c_uint = 1000;
/// Quantizer range libwebrtc uses for VP8.
const RC_MIN_QUANTIZER: c_uint = 2;
const RC_MAX_QUANTIZER: c_uint = 56;
/// The encoder's time base: the 90 kHz clock of video RTP timestamps.
const TIMEBASE_HZ: u64 = 90_000;
/// Weight of each new gap in the smoothed gap between frames (about half a second at 30 fps).
const GAP_SMOOTHING: f64 = 1.0 / 12.0;
/// Longer gaps (a paused source) count as this long, so a resumed stream is not given seconds'
/// worth of bits at once.
const MAX_GAP_TICKS: i64 = TIMEBASE_HZ as i64;

/// VP8 encoder (realtime CBR). Re-initialises itself when the input size changes.
pub struct Vp8Encoder {
    config: EncoderConfig,
    cpu_used: i32,
    session: Option<EncoderSession>,
    keyframes: KeyframeTimer,
}

/// A libvpx encoder context for one resolution.
struct EncoderSession {
    // Boxed so the addresses libvpx may keep stay put when the session moves.
    ctx: Box<ffi::vpx_codec_ctx_t>,
    cfg: Box<ffi::vpx_codec_enc_cfg_t>,
    width: u32,
    height: u32,
    /// The previous frame's media time (90 kHz ticks).
    last_pts: Option<i64>,
    /// The previous frame's stamp as libvpx saw it (an even cadence, see `encode`).
    stamp: Option<i64>,
    /// The smoothed gap between frames, in ticks.
    gap: f64,
    nominal_ticks: i64,
}

// SAFETY: a libvpx codec context has no thread affinity; it is only ever touched through
// `&mut self`, so moving it to another thread between calls is sound.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// A VP8 encoder for `config` at the default `cpu-used`. The libvpx context is created on the
    /// first frame, when the size is known.
    pub fn new(config: &EncoderConfig) -> Result<Self, CodecError> {
        Self::with_cpu_used(config, DEFAULT_CPU_USED)
    }

    /// Like [`Vp8Encoder::new`] with an explicit `cpu-used` (-16..=16, see [`DEFAULT_CPU_USED`]).
    pub fn with_cpu_used(config: &EncoderConfig, cpu_used: i32) -> Result<Self, CodecError> {
        config.validate()?;
        if !(-16..=16).contains(&cpu_used) {
            return Err(CodecError::InvalidConfig(format!(
                "VP8 cpu-used {cpu_used} is out of range -16..=16"
            )));
        }
        Ok(Self {
            config: EncoderConfig {
                codec: VideoCodec::Vp8,
                ..config.clone()
            },
            cpu_used,
            session: None,
            keyframes: KeyframeTimer::new(config.keyframe_interval),
        })
    }

    fn session_for(&mut self, width: u32, height: u32) -> Result<&mut EncoderSession, CodecError> {
        let reusable = self
            .session
            .as_ref()
            .is_some_and(|s| s.width == width && s.height == height);
        if !reusable {
            if let Some(old) = &self.session {
                tracing::info!(
                    from = %format_args!("{}x{}", old.width, old.height),
                    to = %format_args!("{width}x{height}"),
                    "VP8 encoder re-initialising for new input size"
                );
            }
            // Drop the old context first: two 1080p contexts at once is wasted memory.
            self.session = None;
            self.session = Some(EncoderSession::open(&self.config, self.cpu_used, width, height)?);
        }
        self.session
            .as_mut()
            .ok_or_else(|| init_error("encoder", "no session after initialisation".into()))
    }
}

impl EncoderSession {
    fn open(config: &EncoderConfig, cpu_used: i32, width: u32, height: u32) -> Result<Self, CodecError> {
        // SAFETY: vpx_codec_vp8_cx returns a pointer to a static interface description.
        let iface = unsafe { ffi::vpx_codec_vp8_cx() };
        let mut cfg = MaybeUninit::<ffi::vpx_codec_enc_cfg_t>::uninit();
        // SAFETY: `cfg` points to writable memory of the right type; libvpx fills every field
        // on success, which is checked before `assume_init`.
        let err = unsafe { ffi::vpx_codec_enc_config_default(iface, cfg.as_mut_ptr(), 0) };
        if err != ffi::VPX_CODEC_OK {
            return Err(init_error("encoder", format!("default config: {}", err_string(err))));
        }
        // SAFETY: vpx_codec_enc_config_default returned OK, so it initialised the struct.
        let mut cfg = Box::new(unsafe { cfg.assume_init() });

        cfg.g_w = width;
        cfg.g_h = height;
        cfg.g_threads = config.threads.max(1);
        // Frames carry their media time, so libvpx's rate control budgets by the real time
        // between them (it re-estimates the frame rate from the timestamps).
        cfg.g_timebase = ffi::vpx_rational {
            num: 1,
            den: TIMEBASE_HZ as c_int,
        };
        cfg.g_pass = ffi::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.g_lag_in_frames = 0;
        cfg.g_error_resilient = ffi::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.rc_end_usage = ffi::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = config.bitrate_kbps;
        // Never drop frames inside the encoder: the pipeline already drops at the filter slot,
        // and a predictable one-in-one-out encoder keeps keyframe timing exact.
        cfg.rc_dropframe_thresh = 0;
        cfg.rc_resize_allowed = 0;
        cfg.rc_min_quantizer = RC_MIN_QUANTIZER;
        cfg.rc_max_quantizer = RC_MAX_QUANTIZER;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = RC_BUF_INITIAL_MS;
        cfg.rc_buf_optimal_sz = RC_BUF_OPTIMAL_MS;
        cfg.rc_buf_sz = RC_BUF_MS;
        // Periodic keyframes are placed by media time (KeyframeTimer), not by frame count.
        cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_DISABLED;

        // SAFETY: an all-zero vpx_codec_ctx_t is the documented "not yet initialised" state
        // (null pointers, VPX_CODEC_OK); vpx_codec_enc_init_ver fills it.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: ctx and cfg are valid, boxed (stable addresses) and outlive the context,
        // which is destroyed in Drop before they are freed.
        let err =
            unsafe { ffi::vpx_codec_enc_init_ver(&mut *ctx, iface, &*cfg, 0, ffi::VPX_ENCODER_ABI_VERSION as c_int) };
        if err != ffi::VPX_CODEC_OK {
            let detail = ctx_error(&mut ctx, err);
            return Err(init_error("encoder", format!("{width}x{height}: {detail}")));
        }
        // From here on Drop destroys the context, also on the early returns below.
        let mut session = Self {
            ctx,
            cfg,
            width,
            height,
            last_pts: None,
            stamp: None,
            gap: (TIMEBASE_HZ / u64::from(config.fps.max(1))) as f64,
            nominal_ticks: (TIMEBASE_HZ / u64::from(config.fps.max(1))) as i64,
        };

        let token_partitions = match config.threads {
            0..=1 => 0,
            2..=3 => 1,
            4..=7 => 2,
            _ => 3,
        };
        // libwebrtc's cap on keyframe size: half the optimal buffer, in percent of a frame's share.
        let max_intra_pct = (RC_BUF_OPTIMAL_MS as f32 * 0.5 * config.fps as f32 / 10.0).max(300.0) as c_int;
        for (id, value, name) in [
            (ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED, cpu_used, "cpu-used"),
            (
                ffi::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY,
                0,
                "noise sensitivity",
            ),
            (
                ffi::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD,
                1,
                "static threshold",
            ),
            (
                ffi::vp8e_enc_control_id::VP8E_SET_TOKEN_PARTITIONS,
                token_partitions,
                "token partitions",
            ),
            (
                ffi::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT,
                max_intra_pct,
                "max intra bitrate",
            ),
        ] {
            // SAFETY: the context is initialised; each of these VP8E controls takes one int
            // (or an enum passed as int) by value, which is what the variadic call passes.
            let err = unsafe { ffi::vpx_codec_control_(&mut *session.ctx, id as c_int, value as c_int) };
            if err != ffi::VPX_CODEC_OK {
                let detail = ctx_error(&mut session.ctx, err);
                return Err(init_error("encoder", format!("setting {name} to {value}: {detail}")));
            }
        }
        tracing::debug!(
            width,
            height,
            bitrate_kbps = config.bitrate_kbps,
            cpu_used,
            "VP8 encoder initialised"
        );
        Ok(session)
    }

    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, CodecError> {
        let (width, height) = (frame.width(), frame.height());
        let (cw, _) = frame.chroma_size();
        let ticks = i64::try_from(pts.as_nanos() * u128::from(TIMEBASE_HZ) / 1_000_000_000).unwrap_or(i64::MAX);
        let ticks = self.last_pts.map_or(ticks, |last| ticks.max(last.saturating_add(1)));
        // libvpx re-derives the frame rate from every gap between frames, and a gap more than
        // 10 % off the one before replaces its estimate outright: with some frames dropped
        // (gaps of one and two intervals mixed) each long gap's frame got a doubled budget and
        // the stream overshot by half (measured: 1.57 Mbit/s for 1000 with one frame in six
        // dropped). So libvpx sees an even cadence at the smoothed actual rate: the same bits
        // per second, spread evenly. (Passing each gap as the frame's duration as well was
        // worse: libvpx then saw 2·gap − previous gap.)
        let gap = self
            .last_pts
            .map_or(self.nominal_ticks, |last| (ticks - last).clamp(1, MAX_GAP_TICKS));
        self.gap += (gap as f64 - self.gap) * GAP_SMOOTHING;
        let stamp = self.stamp.map_or(ticks, |s| s + (self.gap.round() as i64).max(1));
        let duration = self.nominal_ticks;
        let fail = |detail: String| CodecError::Encode {
            codec: VideoCodec::Vp8,
            width,
            height,
            detail,
        };

        let mut img = MaybeUninit::<ffi::vpx_image_t>::zeroed();
        // SAFETY: vpx_img_wrap only fills the descriptor; the data pointer is the luma plane,
        // which lives for this whole call. The descriptor never owns memory (no vpx_img_free).
        let wrapped = unsafe {
            ffi::vpx_img_wrap(
                img.as_mut_ptr(),
                ffi::vpx_img_fmt::VPX_IMG_FMT_I420,
                width,
                height,
                1,
                frame.y().as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(fail("vpx_img_wrap rejected the frame".into()));
        }
        // SAFETY: vpx_img_wrap succeeded, so it initialised the descriptor.
        let mut img = unsafe { img.assume_init() };
        // I420Frame keeps three separate, tightly packed planes; point the descriptor at them.
        // libvpx only reads the source picture, so the const-to-mut casts are never written through.
        img.planes[0] = frame.y().as_ptr().cast_mut();
        img.planes[1] = frame.u().as_ptr().cast_mut();
        img.planes[2] = frame.v().as_ptr().cast_mut();
        img.stride[0] = width as c_int;
        img.stride[1] = cw as c_int;
        img.stride[2] = cw as c_int;

        let flags: c_long = if force_keyframe {
            ffi::VPX_EFLAG_FORCE_KF as c_long
        } else {
            0
        };
        // SAFETY: the context is initialised for exactly this size (checked by the caller); the
        // image descriptor and its planes are valid for the whole call and libvpx copies the
        // picture before returning (lag_in_frames = 0).
        let err = unsafe {
            ffi::vpx_codec_encode(
                &mut *self.ctx,
                &img,
                stamp,
                c_ulong::try_from(duration).unwrap_or(1),
                flags,
                ffi::VPX_DL_REALTIME as c_ulong,
            )
        };
        if err != ffi::VPX_CODEC_OK {
            return Err(fail(ctx_error(&mut self.ctx, err)));
        }
        self.last_pts = Some(ticks);
        self.stamp = Some(stamp);

        let mut out: Option<EncodedFrame> = None;
        let mut iter: ffi::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: the context is initialised and `iter` is the iterator libvpx handed back.
            let pkt = unsafe { ffi::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: non-null packets stay valid until the next encode call on this context.
            let pkt = unsafe { &*pkt };
            if pkt.kind != ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            // SAFETY: for VPX_CODEC_CX_FRAME_PKT the `frame` member of the union is the active one.
            let f = unsafe { pkt.data.frame };
            if f.buf.is_null() || f.sz == 0 {
                continue;
            }
            // SAFETY: libvpx guarantees `buf` holds `sz` bytes for a frame packet.
            let data = unsafe { std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize) };
            let keyframe = f.flags & ffi::VPX_FRAME_IS_KEY != 0;
            match &mut out {
                // Without output partitioning there is one packet per frame; append defensively.
                Some(prev) => {
                    let mut joined = prev.data.to_vec();
                    joined.extend_from_slice(data);
                    prev.data = Bytes::from(joined);
                    prev.keyframe |= keyframe;
                }
                None => {
                    out = Some(EncodedFrame {
                        data: Bytes::copy_from_slice(data),
                        keyframe,
                        width,
                        height,
                    })
                }
            }
        }
        Ok(out)
    }

    fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<(), CodecError> {
        self.cfg.rc_target_bitrate = kbps;
        // SAFETY: the context is initialised and `cfg` is a complete config for it.
        let err = unsafe { ffi::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        if err != ffi::VPX_CODEC_OK {
            return Err(CodecError::Encode {
                codec: VideoCodec::Vp8,
                width: self.width,
                height: self.height,
                detail: format!("setting bitrate to {kbps} kbps: {}", ctx_error(&mut self.ctx, err)),
            });
        }
        Ok(())
    }
}

impl Drop for EncoderSession {
    fn drop(&mut self) {
        // SAFETY: the context was successfully initialised (sessions exist only after that) and
        // is destroyed exactly once, here.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl VideoEncoder for Vp8Encoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }

    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, CodecError> {
        let force = force_keyframe || self.keyframes.due(pts);
        let out = self
            .session_for(frame.width(), frame.height())?
            .encode(frame, pts, force)?;
        if out.as_ref().is_some_and(|e| e.keyframe) {
            self.keyframes.keyframe_at(pts);
        }
        Ok(out)
    }

    fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<(), CodecError> {
        super::check_bitrate(kbps)?;
        self.config.bitrate_kbps = kbps;
        match &mut self.session {
            Some(session) => session.set_bitrate_kbps(kbps),
            None => Ok(()),
        }
    }
}

/// VP8 decoder.
pub struct Vp8Decoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
    // Kept alive (and at a fixed address) for as long as the context may refer to it.
    _cfg: Box<ffi::vpx_codec_dec_cfg_t>,
}

// SAFETY: as for the encoder: no thread affinity, only used through `&mut self`.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    /// A VP8 decoder (one thread: VP8 decoding is ~1 ms per 720p frame).
    pub fn new() -> Result<Self, CodecError> {
        let cfg = Box::new(ffi::vpx_codec_dec_cfg_t { threads: 1, w: 0, h: 0 });
        // SAFETY: an all-zero context is the "not yet initialised" state vpx_codec_dec_init_ver expects.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: ctx and cfg are valid and boxed; vpx_codec_vp8_dx returns a static interface.
        let err = unsafe {
            ffi::vpx_codec_dec_init_ver(
                &mut *ctx,
                ffi::vpx_codec_vp8_dx(),
                &*cfg,
                0,
                ffi::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        if err != ffi::VPX_CODEC_OK {
            return Err(init_error("decoder", ctx_error(&mut ctx, err)));
        }
        Ok(Self { ctx, _cfg: cfg })
    }
}

fn decode_error(bytes: usize, detail: String) -> CodecError {
    CodecError::Decode {
        codec: VideoCodec::Vp8,
        bytes,
        detail,
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed exactly once.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl VideoDecoder for Vp8Decoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }

    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
        if data.is_empty() {
            // A null/empty buffer means "flush" to libvpx, not a frame.
            return Err(decode_error(0, "empty input".into()));
        }
        let Ok(len) = c_uint::try_from(data.len()) else {
            return Err(decode_error(data.len(), "frame larger than 4 GiB".into()));
        };
        // SAFETY: the context is initialised; `data` is valid for `len` bytes during the call
        // and libvpx does not keep the pointer afterwards (no input fragments mode).
        let err = unsafe { ffi::vpx_codec_decode(&mut *self.ctx, data.as_ptr(), len, ptr::null_mut(), 0) };
        if err != ffi::VPX_CODEC_OK {
            let detail = ctx_error(&mut self.ctx, err);
            return Err(decode_error(data.len(), detail));
        }

        let mut last: Option<I420Frame> = None;
        let mut iter: ffi::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: the context is initialised and `iter` is the iterator libvpx handed back.
            let img = unsafe { ffi::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: non-null images stay valid until the next decode call on this context.
            let img = unsafe { &*img };
            last = Some(copy_image(img).map_err(|detail| decode_error(data.len(), detail))?);
        }
        Ok(last)
    }
}

/// Copies a decoded libvpx I420 image (with its strides) into a tightly packed frame.
fn copy_image(img: &ffi::vpx_image_t) -> Result<I420Frame, String> {
    if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 {
        return Err(format!("decoder produced {:?}, expected I420", img.fmt));
    }
    let (width, height) = (img.d_w as usize, img.d_h as usize);
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let mut planes: [Vec<u8>; 3] = Default::default();
    for (p, (pw, ph)) in [(width, height), (cw, ch), (cw, ch)].into_iter().enumerate() {
        let stride = img.stride[p];
        if img.planes[p].is_null() || stride < 0 || (stride as usize) < pw {
            return Err(format!("decoded plane {p} has stride {stride} for width {pw}"));
        }
        let mut out = Vec::with_capacity(pw * ph);
        for row in 0..ph {
            // SAFETY: libvpx allocates each plane with `stride` bytes per row for all rows of
            // the displayed size (checked above: stride >= row width, non-null).
            let src = unsafe { std::slice::from_raw_parts(img.planes[p].add(row * stride as usize), pw) };
            out.extend_from_slice(src);
        }
        planes[p] = out;
    }
    let [y, u, v] = planes;
    I420Frame::from_planes(img.d_w, img.d_h, y, u, v).map_err(|e| e.to_string())
}

fn init_error(role: &'static str, detail: String) -> CodecError {
    CodecError::Init {
        codec: VideoCodec::Vp8,
        role,
        detail,
    }
}

fn err_string(err: ffi::vpx_codec_err_t) -> String {
    // SAFETY: vpx_codec_err_to_string returns a pointer to a static NUL-terminated string.
    let s = unsafe { ffi::vpx_codec_err_to_string(err) };
    if s.is_null() {
        return format!("{err:?}");
    }
    // SAFETY: non-null, static, NUL-terminated (see above).
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// The error code's text plus the context's detail message when libvpx left one.
fn ctx_error(ctx: &mut ffi::vpx_codec_ctx_t, err: ffi::vpx_codec_err_t) -> String {
    let mut text = err_string(err);
    // SAFETY: `ctx` is a valid (possibly failed-initialisation) context; the detail pointer is
    // either null or a NUL-terminated string owned by the context, copied out immediately.
    let detail = unsafe { ffi::vpx_codec_error_detail(ctx) };
    if !detail.is_null() {
        // SAFETY: non-null detail strings are NUL-terminated (see above).
        let d = unsafe { CStr::from_ptr(detail) }.to_string_lossy();
        if !d.is_empty() {
            text.push_str(": ");
            text.push_str(&d);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support as scenario;

    #[test]
    fn vp8_round_trip_keeps_size_and_luma_psnr_above_30_db() {
        scenario::round_trip_keeps_size_and_luma_quality(VideoCodec::Vp8, 640, 360);
    }

    #[test]
    fn vp8_round_trip_handles_odd_frame_sizes() {
        scenario::round_trip_keeps_size_and_luma_quality(VideoCodec::Vp8, 641, 361);
    }

    #[test]
    fn vp8_forced_keyframe_decodes_alone_on_a_fresh_decoder() {
        scenario::forced_keyframe_decodes_alone_on_a_fresh_decoder(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_keyframe_interval_is_kept_in_media_time_when_frames_are_dropped() {
        scenario::keyframe_interval_is_kept_in_media_time_when_frames_are_dropped(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_bitrate_with_jittered_and_dropped_frames_stays_within_15_percent_of_the_target() {
        scenario::bitrate_with_jittered_and_dropped_frames_stays_within_15_percent_of_the_target(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_bitrate_at_20_fps_actual_stays_within_15_percent_of_the_target() {
        scenario::bitrate_at_20_fps_actual_stays_within_15_percent_of_the_target(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_size_change_mid_stream_keeps_decoding_at_the_new_size() {
        scenario::size_change_mid_stream_keeps_decoding_at_the_new_size(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_garbage_input_is_a_decode_error_not_a_panic() {
        scenario::garbage_input_is_a_decode_error_not_a_panic(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_corrupted_stream_never_panics_and_a_keyframe_recovers() {
        scenario::corrupted_stream_never_panics_and_a_keyframe_recovers(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_bitrate_change_keeps_the_stream_decodable() {
        scenario::bitrate_change_keeps_the_stream_decodable(VideoCodec::Vp8);
    }

    #[test]
    fn vp8_delta_frame_on_a_fresh_decoder_is_an_error() {
        let pattern = scenario::pattern(320, 180);
        let mut encoder = Vp8Encoder::new(&scenario::config(VideoCodec::Vp8)).unwrap();
        let encoded = scenario::encode_range(&mut encoder, &pattern, 0..3, &[]);

        let result = Vp8Decoder::new().unwrap().decode(&encoded[2].1.data);

        assert!(matches!(result, Err(CodecError::Decode { .. })), "{result:?}");
    }

    #[test]
    fn vp8_cpu_used_out_of_range_is_rejected() {
        let err = Vp8Encoder::with_cpu_used(&EncoderConfig::default(), 17).err().unwrap();
        assert!(err.to_string().contains("cpu-used 17"), "{err}");
    }

    #[test]
    fn vp8_codec_objects_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Vp8Encoder>();
        assert_send::<Vp8Decoder>();
    }
}
