//! VP8 through libvpx's decoder, called directly (bindings from `env-libvpx-sys`).
//!
//! The one module of the endpoint that calls C; what it exposes is safe.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_uint};
use std::ptr;

use vpx_sys as ffi;

use super::{DecodeError, Decoder};
use crate::codec::VideoCodec;
use crate::picture::Picture;

/// A libvpx VP8 decoder context.
pub struct Vp8Decoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
    // libvpx may keep a pointer to the configuration: boxed, and alive as long as the context.
    _cfg: Box<ffi::vpx_codec_dec_cfg_t>,
}

impl Vp8Decoder {
    pub fn new() -> Result<Self, DecodeError> {
        let cfg = Box::new(ffi::vpx_codec_dec_cfg_t { threads: 1, w: 0, h: 0 });
        // SAFETY: an all-zero context is the "not initialised" state vpx_codec_dec_init_ver fills.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: ctx and cfg are valid, boxed (stable addresses); vpx_codec_vp8_dx returns a
        // pointer to a static interface description.
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
            return Err(DecodeError::Init {
                codec: VideoCodec::Vp8,
                detail: error_text(err),
            });
        }
        Ok(Self { ctx, _cfg: cfg })
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once here.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl Decoder for Vp8Decoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Option<Picture>, DecodeError> {
        let fail = |detail: String| DecodeError::Frame {
            codec: VideoCodec::Vp8,
            bytes: frame.len(),
            detail,
        };
        // An empty buffer means "flush" to libvpx, not a frame.
        if frame.is_empty() {
            return Err(fail("empty frame".into()));
        }
        let len = c_uint::try_from(frame.len()).map_err(|_| fail("frame over 4 GiB".into()))?;
        // SAFETY: the context is initialised; `frame` is valid for `len` bytes for the call and
        // libvpx keeps no pointer to it afterwards.
        let err = unsafe { ffi::vpx_codec_decode(&mut *self.ctx, frame.as_ptr(), len, ptr::null_mut(), 0) };
        if err != ffi::VPX_CODEC_OK {
            return Err(fail(error_text(err)));
        }
        let mut picture = None;
        let mut iter: ffi::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: initialised context; `iter` is the iterator libvpx handed back.
            let img = unsafe { ffi::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: a non-null image stays valid until the next decode call on this context.
            picture = Some(copy_image(unsafe { &*img }).map_err(fail)?);
        }
        Ok(picture)
    }
}

/// Copies a libvpx I420 image (planes with strides) into a packed picture.
fn copy_image(img: &ffi::vpx_image_t) -> Result<Picture, String> {
    if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 {
        return Err(format!("decoder produced {:?}, not I420", img.fmt));
    }
    let (width, height) = (img.d_w as usize, img.d_h as usize);
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let mut planes: [Vec<u8>; 3] = Default::default();
    for (p, (pw, ph)) in [(width, height), (cw, ch), (cw, ch)].into_iter().enumerate() {
        let stride = img.stride[p];
        if img.planes[p].is_null() || stride < 0 || (stride as usize) < pw {
            return Err(format!("plane {p} has stride {stride} for width {pw}"));
        }
        let mut out = Vec::with_capacity(pw * ph);
        for row in 0..ph {
            // SAFETY: libvpx allocates `stride` bytes per row for every displayed row of each
            // plane (stride checked above to be at least the row width, pointer non-null).
            let src = unsafe { std::slice::from_raw_parts(img.planes[p].add(row * stride as usize), pw) };
            out.extend_from_slice(src);
        }
        planes[p] = out;
    }
    let [y, u, v] = planes;
    Picture::from_planes(img.d_w, img.d_h, y, u, v).map_err(|e| e.to_string())
}

fn error_text(err: ffi::vpx_codec_err_t) -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string (or null).
    let text = unsafe { ffi::vpx_codec_err_to_string(err) };
    if text.is_null() {
        return format!("{err:?}");
    }
    // SAFETY: non-null, static, NUL-terminated.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}
