//! Pixel work shared by the filters: sampling an I420 frame into a model-sized RGB picture
//! (stretched or letterboxed), masks (smoothing, feathering, upsampling), a background blur that
//! keeps the person's colours out of the background, alpha compositing in YUV, pixelation and
//! drawing. Pictures are resized with `fast_image_resize` (a low-pass on the way down); masks,
//! which are smooth, are resampled bilinearly ([`resample`]); everything else is a single pass.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::pyramid::{Pyramid, halve};
use crate::frame::{I420Frame, rgb_to_yuv, yuv_to_rgb};

/// A resize that `fast_image_resize` refused (a zero-sized plane), or planes that do not form a
/// frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// The resizer refused.
    #[error("resizing a {from_w}x{from_h} plane to {to_w}x{to_h}: {detail}")]
    Resize {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
        detail: String,
    },
    /// The result is not a frame.
    #[error(transparent)]
    Frame(#[from] crate::frame::FrameError),
}

/// How a frame is fitted into a model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Squeezed to the input size (the aspect ratio changes).
    Stretch,
    /// Scaled to fit inside, centred, the rest black (the aspect ratio is kept).
    Letterbox,
}

/// Where the frame lies inside the model input, as fractions of the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl Placement {
    /// The whole input.
    pub const FULL: Placement = Placement {
        x0: 0.0,
        y0: 0.0,
        w: 1.0,
        h: 1.0,
    };

    /// Maps a point in model-input fractions to frame fractions.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        ((x - self.x0) / self.w, (y - self.y0) / self.h)
    }
}

/// A packed 8-bit RGB picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, R G B.
    pub data: Vec<u8>,
}

/// Resizes planes, reusing its buffers.
pub struct Planes {
    resizer: Resizer,
    options: ResizeOptions,
    /// The luma halved, kept between frames (see [`Planes::sample_rgb`]).
    half_luma: Vec<u8>,
}

impl Default for Planes {
    fn default() -> Self {
        Self {
            resizer: Resizer::new(),
            // Bilinear with a support that widens when shrinking: an area-like average on
            // downscales, so fine detail does not alias into the model input.
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            half_luma: Vec::new(),
        }
    }
}

impl Planes {
    /// Resizes raw pixels of `kind` (packed rows, no padding).
    fn resize_raw(
        &mut self,
        src: &[u8],
        kind: PixelType,
        sw: u32,
        sh: u32,
        dw: u32,
        dh: u32,
    ) -> Result<Vec<u8>, ResizeError> {
        if (sw, sh) == (dw, dh) {
            return Ok(src.to_vec());
        }
        let err = |detail: String| ResizeError::Resize {
            from_w: sw,
            from_h: sh,
            to_w: dw,
            to_h: dh,
            detail,
        };
        let src = ImageRef::new(sw, sh, src, kind).map_err(|e| err(e.to_string()))?;
        let mut dst = Image::new(dw, dh, kind);
        self.resizer
            .resize(&src, &mut dst, &self.options)
            .map_err(|e| err(e.to_string()))?;
        Ok(dst.into_vec())
    }

    /// Resizes one 8-bit plane.
    pub fn resize(&mut self, src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32) -> Result<Vec<u8>, ResizeError> {
        self.resize_raw(src, PixelType::U8, sw, sh, dw, dh)
    }

    /// Resizes one float plane (values are kept as they are, no clamping).
    pub fn resize_f32(&mut self, src: &[f32], sw: u32, sh: u32, dw: u32, dh: u32) -> Result<Vec<f32>, ResizeError> {
        let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let out = self.resize_raw(&bytes, PixelType::F32, sw, sh, dw, dh)?;
        Ok(out
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Resizes a packed RGB picture.
    pub fn rgb_resize(
        &mut self,
        rgb: &[u8],
        sw: u32,
        sh: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, ResizeError> {
        self.resize_raw(rgb, PixelType::U8x3, sw, sh, width, height)
    }

    /// Converts a packed RGB picture to an I420 frame of `width`x`height` (stretched).
    pub fn rgb_to_frame(
        &mut self,
        rgb: &[u8],
        sw: u32,
        sh: u32,
        width: u32,
        height: u32,
    ) -> Result<I420Frame, ResizeError> {
        let resized = self.rgb_resize(rgb, sw, sh, width, height)?;
        let px = resized.as_slice();
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut y = vec![0u8; w * h];
        let (mut u, mut v) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
        let mut acc = vec![[0u32; 3]; cw * ch];
        for row in 0..h {
            for col in 0..w {
                let i = row * w + col;
                let yuv = rgb_to_yuv([px[i * 3], px[i * 3 + 1], px[i * 3 + 2]]);
                y[i] = yuv[0];
                let a = &mut acc[(row / 2) * cw + col / 2];
                a[0] += u32::from(yuv[1]);
                a[1] += u32::from(yuv[2]);
                a[2] += 1;
            }
        }
        for (i, a) in acc.iter().enumerate() {
            u[i] = (a[0] / a[2].max(1)) as u8;
            v[i] = (a[1] / a[2].max(1)) as u8;
        }
        Ok(I420Frame::from_planes(width, height, y, u, v)?)
    }

    /// Samples `frame` into a `width`x`height` RGB picture fitted as `fit` says.
    pub fn sample_rgb(
        &mut self,
        frame: &I420Frame,
        width: u32,
        height: u32,
        fit: Fit,
    ) -> Result<(Rgb, Placement), ResizeError> {
        let (fw, fh) = (frame.width(), frame.height());
        let (cw, ch) = match fit {
            Fit::Stretch => (width, height),
            Fit::Letterbox => {
                let scale = (width as f32 / fw as f32).min(height as f32 / fh as f32);
                (
                    ((fw as f32 * scale).round() as u32).clamp(1, width),
                    ((fh as f32 * scale).round() as u32).clamp(1, height),
                )
            }
        };
        let (ox, oy) = ((width - cw) / 2, (height - ch) / 2);
        let (scw, sch) = frame.chroma_size();
        // A model input of at most half the frame each way is sampled from the luma halved
        // (2x2 means), the chroma's size: a quarter of the samples for the resize to read,
        // for the same low-pass.
        let y = if cw * 2 <= fw && ch * 2 <= fh {
            let mut half = std::mem::take(&mut self.half_luma);
            halve(frame.y(), fw as usize, fh as usize, &mut half);
            let y = self.resize(&half, fw.div_ceil(2), fh.div_ceil(2), cw, ch);
            self.half_luma = half;
            y?
        } else {
            self.resize(frame.y(), fw, fh, cw, ch)?
        };
        let u = self.resize(frame.u(), scw as u32, sch as u32, cw, ch)?;
        let v = self.resize(frame.v(), scw as u32, sch as u32, cw, ch)?;
        let mut data = vec![0u8; width as usize * height as usize * 3];
        for row in 0..ch as usize {
            let dst_row = (oy as usize + row) * width as usize + ox as usize;
            for col in 0..cw as usize {
                let i = row * cw as usize + col;
                let rgb = yuv_to_rgb([y[i], u[i], v[i]]);
                data[(dst_row + col) * 3..(dst_row + col) * 3 + 3].copy_from_slice(&rgb);
            }
        }
        let placement = Placement {
            x0: ox as f32 / width as f32,
            y0: oy as f32 / height as f32,
            w: cw as f32 / width as f32,
            h: ch as f32 / height as f32,
        };
        Ok((Rgb { width, height, data }, placement))
    }
}

/// A single-channel float map (a person mask, 0..1), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `width * height` values.
    pub data: Vec<f32>,
}

impl Mask {
    /// Blends `self` into `previous` (exponential moving average; `keep` is the weight of the
    /// previous mask) and returns the result; a size change restarts the average.
    pub fn smoothed(self, previous: Option<&Mask>, keep: f32) -> Mask {
        match previous {
            Some(p) if keep > 0.0 && (p.width, p.height) == (self.width, self.height) => Mask {
                data: self
                    .data
                    .iter()
                    .zip(&p.data)
                    .map(|(&now, &before)| before * keep + now * (1.0 - keep))
                    .collect(),
                ..self
            },
            _ => self,
        }
    }

    /// Fraction of values above `threshold`.
    pub fn coverage(&self, threshold: f32) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().filter(|&&v| v > threshold).count() as f64 / self.data.len() as f64
    }

    /// Softens the edges (box blur, three passes ≈ Gaussian) and maps the mask to 8-bit alpha
    /// with a linear ramp of width `softness` centred on `threshold`.
    pub fn to_alpha(&self, threshold: f32, feather: u32, softness: f32) -> Vec<u8> {
        let mut data = self.data.clone();
        if feather > 0 {
            box_blur(
                &mut data,
                self.width as usize,
                self.height as usize,
                feather as usize,
                3,
            );
        }
        let soft = softness.max(1e-3);
        let lo = threshold - soft / 2.0;
        data.iter().map(|&v| to_u8((v - lo) / soft * 255.0)).collect()
    }
}

/// `v` rounded to the nearest sample value, clamped to 0..=255 (NaN: 0). Not `f32::round`: on
/// baseline x86-64 that is a library call per sample, which the profile showed and which keeps
/// the loop from vectorising.
#[inline]
fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

/// Running-sum box blur of a float plane, `passes` times, horizontally then vertically, with the
/// edges clamped. The vertical pass walks whole rows (a running sum per column) so it stays
/// cache-friendly and vectorises.
pub fn box_blur(data: &mut [f32], width: usize, height: usize, radius: usize, passes: usize) {
    if radius == 0 || width == 0 || height == 0 {
        return;
    }
    let mut line = Vec::with_capacity(width);
    let mut acc = vec![0.0f32; width];
    let mut src = vec![0.0f32; width * height];
    let norm = 1.0 / (2 * radius + 1) as f32;
    let r = radius as isize;
    let row_at = |y: isize| y.clamp(0, height as isize - 1) as usize;
    for _ in 0..passes {
        for row in 0..height {
            line.clear();
            line.extend_from_slice(&data[row * width..(row + 1) * width]);
            blur_line(&line, radius, |i, v| data[row * width + i] = v);
        }
        src.copy_from_slice(data);
        acc.fill(0.0);
        for y in -r..=r {
            let s = &src[row_at(y) * width..(row_at(y) + 1) * width];
            acc.iter_mut().zip(s).for_each(|(a, &v)| *a += v);
        }
        for y in 0..height {
            let out = &mut data[y * width..(y + 1) * width];
            out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a * norm);
            let (add, sub) = (row_at(y as isize + r + 1), row_at(y as isize - r));
            let (add, sub) = (
                &src[add * width..(add + 1) * width],
                &src[sub * width..(sub + 1) * width],
            );
            acc.iter_mut()
                .zip(add.iter().zip(sub))
                .for_each(|(a, (&p, &m))| *a += p - m);
        }
    }
}

fn blur_line(src: &[f32], radius: usize, mut put: impl FnMut(usize, f32)) {
    let n = src.len();
    let at = |i: isize| src[i.clamp(0, n as isize - 1) as usize];
    let r = radius as isize;
    let norm = 1.0 / (2 * radius + 1) as f32;
    let mut sum: f32 = (-r..=r).map(at).sum();
    // Only the ends need clamped reads; the middle reads straight (same sums, same order).
    let body = radius..n.saturating_sub(radius + 1);
    for i in 0..n {
        put(i, sum * norm);
        sum += if body.contains(&i) {
            src[i + radius + 1] - src[i - radius]
        } else {
            at(i as isize + r + 1) - at(i as isize - r)
        };
    }
}

/// One 8-bit plane of any size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plane {
    /// Row-major samples, stride = width.
    pub data: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Y, U and V planes at a reduced size (a backdrop upsampled while compositing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallFrame {
    /// Luma.
    pub y: Plane,
    /// Cb.
    pub u: Plane,
    /// Cr.
    pub v: Plane,
}

/// A blurred copy of the frame's background at a quarter of the size (blur is low frequency:
/// the result is the same, the cost a sixteenth; compositing upsamples it). With `alpha` (an
/// 8-bit mask of any size, 255 = person) the blur is weighted by the background share, so the
/// person's colours do not bleed into the blurred background as a halo. `pyramid` holds
/// `frame`'s reduced planes.
pub fn blurred_background(
    frame: &I420Frame,
    pyramid: &Pyramid,
    alpha: Option<(&[u8], u32, u32)>,
    radius: u32,
) -> SmallFrame {
    let (fw, fh) = (frame.width(), frame.height());
    let (fcw, fch) = frame.chroma_size();
    let (fcw, fch) = (fcw as u32, fch as u32);
    let quarter = fw >= 320 && fh >= 180;
    let factor = if quarter { 4 } else { 1 };
    let (y, u, v) = if quarter {
        (pyramid.y(2).view(), pyramid.u(2).view(), pyramid.v(2).view())
    } else {
        ((frame.y(), fw, fh), (frame.u(), fcw, fch), (frame.v(), fcw, fch))
    };
    let r = (radius / factor).max(1) as usize;
    // The weights are the mask resampled bilinearly: it is smooth (feathered), so no
    // low-pass is needed on the way down, and the convolution resizer cost several times more.
    let mut sampled = Vec::new();
    let mut weight = |w: u32, h: u32| {
        alpha.map(|(a, aw, ah)| {
            resample(a, aw, ah, w, h, &mut sampled);
            sampled
                .iter()
                .map(|&p| f32::from(255 - p) / 255.0)
                .collect::<Vec<f32>>()
        })
    };
    let (wy, wc) = (weight(y.1, y.2), weight(u.1, u.2));
    let plane = |(src, width, height): (&[u8], u32, u32), wgt: Option<&Vec<f32>>, r: usize| Plane {
        data: weighted_blur(src, width as usize, height as usize, wgt.map(Vec::as_slice), r),
        width,
        height,
    };
    let rc = (r / 2).max(1);
    SmallFrame {
        y: plane(y, wy.as_ref(), r),
        u: plane(u, wc.as_ref(), rc),
        v: plane(v, wc.as_ref(), rc),
    }
}

/// `src` (`sw`x`sh`) resampled bilinearly to `dw`x`dh` into `out` (pixel centres aligned, the
/// compositor's sampling). No low-pass on downscales: for smooth maps such as masks, not
/// pictures. An empty source gives zeros.
pub fn resample(src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32, out: &mut Vec<u8>) {
    let w = dw as usize;
    out.clear();
    out.resize(w * dh as usize, 0);
    if sw == 0 || sh == 0 || w == 0 || src.len() < sw as usize * sh as usize {
        return;
    }
    let sampler = Sampler::new(src, sw, sh, dw, dh);
    let mut window = RowWindow::default();
    for (y, row) in out.chunks_exact_mut(w).enumerate() {
        sampler.row(y, &mut window, row);
    }
}

fn weighted_blur(src: &[u8], w: usize, h: usize, weight: Option<&[f32]>, radius: usize) -> Vec<u8> {
    match weight {
        None => {
            let mut data: Vec<f32> = src.iter().map(|&p| f32::from(p)).collect();
            box_blur(&mut data, w, h, radius, 3);
            data.iter().map(|&v| to_u8(v)).collect()
        }
        Some(wgt) => {
            let mut num: Vec<f32> = src.iter().zip(wgt).map(|(&p, &k)| f32::from(p) * k).collect();
            let mut den = wgt.to_vec();
            box_blur(&mut num, w, h, radius, 3);
            box_blur(&mut den, w, h, radius, 3);
            num.iter()
                .zip(&den)
                .zip(src)
                .map(|((&n, &d), &orig)| if d > 1e-3 { to_u8(n / d) } else { orig })
                .collect()
        }
    }
}

/// What goes behind the person.
pub enum Backdrop<'a> {
    /// Another frame of the same size (a picture).
    Frame(&'a I420Frame),
    /// Planes of any size (a blurred copy), upsampled while compositing.
    Small(&'a SmallFrame),
    /// One colour (Y, U, V).
    Color([u8; 3]),
}

/// Bilinear sampling positions along one axis: for each destination index, the two source
/// indices and the weight of the second in 1/256 (pixel centres aligned).
struct Axis {
    taps: Vec<(u32, u32, u32)>,
}

impl Axis {
    fn new(src: u32, dst: u32) -> Self {
        let scale = src as f32 / dst as f32;
        let taps = (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as u32).min(src - 1);
                let i1 = (i0 + 1).min(src - 1);
                let w = (((s - i0 as f32) * 256.0).round() as u32).min(256);
                (i0, i1, w)
            })
            .collect();
        Self { taps }
    }
}

/// One horizontal tap: `src[x0]` and `src[x1]` blended with `wx`/256 of the second (`value * 256`).
#[inline]
fn lerp(src: &[u8], (x0, x1, wx): (u32, u32, u32)) -> u16 {
    (u32::from(src[x0 as usize]) * (256 - wx) + u32::from(src[x1 as usize]) * wx) as u16
}

/// A source plane sampled bilinearly onto rows of the destination size. Each source row is
/// resampled horizontally once into a [`RowWindow`] (the gather-heavy part, done per source
/// row rather than per destination row); a destination row is then a vertical blend of two
/// such rows, which vectorises. Exact integer arithmetic, so the order of the passes does not
/// change a single value.
struct Sampler<'a> {
    src: &'a [u8],
    width: usize,
    xs: Axis,
    ys: Axis,
    /// Same size: rows are copied (a full-size refined alpha).
    identity: bool,
    /// The destination width is this whole multiple (2, 4 or 8) of the source's: the usual
    /// case (the half-size alpha onto luma, the quarter-size backdrop), where the taps repeat
    /// with the period of the factor and a row is filled without gathers.
    factor: Option<usize>,
}

/// The two horizontally resampled source rows a destination row blends (`value * 256`).
#[derive(Default)]
struct RowWindow {
    tags: [Option<u32>; 2],
    rows: [Vec<u16>; 2],
}

impl<'a> Sampler<'a> {
    fn new(src: &'a [u8], sw: u32, sh: u32, dw: u32, dh: u32) -> Self {
        Self {
            src,
            width: sw as usize,
            xs: Axis::new(sw, dw),
            ys: Axis::new(sh, dh),
            identity: (sw, sh) == (dw, dh),
            factor: [2, 4, 8]
                .into_iter()
                .find(|&k| sw >= 2 && dw == k * sw)
                .map(|k| k as usize),
        }
    }

    /// Source row `i` resampled to the destination width, into `window` slot `slot`.
    fn fill(&self, i: u32, window: &mut RowWindow, slot: usize) {
        let src = &self.src[i as usize * self.width..(i as usize + 1) * self.width];
        let row = &mut window.rows[slot];
        match self.factor {
            Some(2) => self.fill_by::<2>(src, row),
            Some(4) => self.fill_by::<4>(src, row),
            Some(8) => self.fill_by::<8>(src, row),
            _ => {
                row.clear();
                row.extend(self.xs.taps.iter().map(|&tap| lerp(src, tap)));
            }
        }
        window.tags[slot] = Some(i);
    }

    /// [`Sampler::fill`] for a destination `K` times as wide as `src`: destination `K·i + j`
    /// blends source `i + o_j` and `i + o_j + 1` with a weight that depends on `j` only (`o_j`
    /// is -1 or 0), so the interior is a fixed pattern over windows of three source samples.
    /// The first and last `K` samples, where the taps clamp at the edges, use the taps; the
    /// result is the same to the last bit.
    fn fill_by<const K: usize>(&self, src: &[u8], row: &mut Vec<u16>) {
        let taps = &self.xs.taps;
        row.clear();
        row.resize(taps.len(), 0);
        let phase: [(usize, u32); K] = std::array::from_fn(|j| {
            let (x0, _, wx) = taps[K + j];
            // Source index 1 is the window's middle: x0 is 0 (one back) or 1.
            (x0 as usize, wx)
        });
        for (out, w) in row[K..taps.len() - K].chunks_exact_mut(K).zip(src.windows(3)) {
            for (o, &(at, wx)) in out.iter_mut().zip(&phase) {
                *o = (u32::from(w[at]) * (256 - wx) + u32::from(w[at + 1]) * wx) as u16;
            }
        }
        for x in (0..K).chain(taps.len() - K..taps.len()) {
            row[x] = lerp(src, taps[x]);
        }
    }

    /// The slot holding source row `i`, filling one (never `keep`) when it is not there.
    fn ensure(&self, i: u32, keep: Option<usize>, window: &mut RowWindow) -> usize {
        if let Some(slot) = window.tags.iter().position(|&t| t == Some(i)) {
            return slot;
        }
        let slot = match keep {
            Some(k) => 1 - k,
            None => 0,
        };
        self.fill(i, window, slot);
        slot
    }

    /// Destination row `y` into `out`.
    fn row(&self, y: usize, window: &mut RowWindow, out: &mut [u8]) {
        if self.identity {
            out.copy_from_slice(&self.src[y * self.width..(y + 1) * self.width]);
            return;
        }
        let (i0, i1, wy) = self.ys.taps[y];
        let held1 = window.tags.iter().position(|&t| t == Some(i1));
        let s0 = self.ensure(i0, held1, window);
        let s1 = self.ensure(i1, Some(s0), window);
        let (h0, h1) = (&window.rows[s0], &window.rows[s1]);
        let (w0, w1) = (256 - wy, wy);
        for ((o, &a), &b) in out.iter_mut().zip(h0).zip(h1) {
            *o = ((u32::from(a) * w0 + u32::from(b) * w1 + (1 << 15)) >> 16) as u8;
        }
    }
}

/// Rows per parallel compositing task.
const BAND_ROWS: usize = 32;

/// `(f * a + b * (255 - a)) / 255`, rounded, without a division; exact at `a` = 0 and 255.
/// Every intermediate fits 16 bits, so the loop over a row vectorises 8 or 16 lanes wide.
#[inline]
fn mix(f: u8, b: u8, a: u8) -> u8 {
    let (f, b, a) = (u16::from(f), u16::from(b), u16::from(a));
    let t = f * a + b * (255 - a) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// One plane to blend: its samples and what goes behind it.
struct Layer<'p, 's> {
    fg: &'p mut [u8],
    backdrop: Option<&'s Sampler<'s>>,
    color: u8,
}

/// Blends planes of one size over their backdrops (`None`: the constant `color`) with one
/// alpha, upsampling alpha and backdrops row by row in one pass, bands of rows in parallel. The
/// alpha row is computed once for all the layers (U and V share it).
fn composite_planes(width: u32, height: u32, alpha: &Sampler<'_>, layers: Vec<Layer<'_, '_>>) {
    use rayon::prelude::*;
    let w = width as usize;
    let band = w * BAND_ROWS;
    let mut bands: Vec<Vec<Layer<'_, '_>>> = Vec::new();
    for layer in layers {
        debug_assert_eq!(layer.fg.len(), w * height as usize);
        for (i, fg) in layer.fg.chunks_mut(band).enumerate() {
            if bands.len() <= i {
                bands.push(Vec::new());
            }
            bands[i].push(Layer {
                fg,
                backdrop: layer.backdrop,
                color: layer.color,
            });
        }
    }
    bands.into_par_iter().enumerate().for_each(|(band, mut planes)| {
        let mut a_window = RowWindow::default();
        // Each layer's backdrop has its own source rows.
        let mut b_windows: Vec<RowWindow> = planes.iter().map(|_| RowWindow::default()).collect();
        let (mut a_row, mut b_row) = (vec![0u8; w], vec![0u8; w]);
        let rows = planes.first().map_or(0, |l| l.fg.len() / w.max(1));
        for r in 0..rows {
            let y = band * BAND_ROWS + r;
            alpha.row(y, &mut a_window, &mut a_row);
            for (layer, b_window) in planes.iter_mut().zip(&mut b_windows) {
                let row = &mut layer.fg[r * w..(r + 1) * w];
                match layer.backdrop {
                    Some(b) => b.row(y, b_window, &mut b_row),
                    None => b_row.fill(layer.color),
                }
                for ((f, &b), &a) in row.iter_mut().zip(&b_row).zip(&a_row) {
                    *f = mix(*f, b, a);
                }
            }
        }
    });
}

/// Alpha-composites `frame` (foreground where `alpha` is 255) over `backdrop`; `alpha` is the
/// model's 8-bit mask at `alpha_w`x`alpha_h`, upsampled bilinearly to the luma and chroma sizes.
pub fn composite(frame: &mut I420Frame, alpha: &[u8], alpha_w: u32, alpha_h: u32, backdrop: &Backdrop<'_>) {
    let (fw, fh) = (frame.width(), frame.height());
    let (cw, ch) = frame.chroma_size();
    let (cw, ch) = (cw as u32, ch as u32);
    let a_luma = Sampler::new(alpha, alpha_w, alpha_h, fw, fh);
    let a_chroma = Sampler::new(alpha, alpha_w, alpha_h, cw, ch);
    let (y, u, v) = frame.planes_mut();
    let layer = |fg, backdrop, color| Layer { fg, backdrop, color };
    match backdrop {
        Backdrop::Color([by, bu, bv]) => {
            composite_planes(fw, fh, &a_luma, vec![layer(y, None, *by)]);
            composite_planes(cw, ch, &a_chroma, vec![layer(u, None, *bu), layer(v, None, *bv)]);
        }
        Backdrop::Frame(bg) => {
            let (bcw, bch) = bg.chroma_size();
            let (bcw, bch) = (bcw as u32, bch as u32);
            let by = Sampler::new(bg.y(), bg.width(), bg.height(), fw, fh);
            let (bu, bv) = (
                Sampler::new(bg.u(), bcw, bch, cw, ch),
                Sampler::new(bg.v(), bcw, bch, cw, ch),
            );
            composite_planes(fw, fh, &a_luma, vec![layer(y, Some(&by), 0)]);
            composite_planes(cw, ch, &a_chroma, vec![layer(u, Some(&bu), 0), layer(v, Some(&bv), 0)]);
        }
        Backdrop::Small(bg) => {
            fn s(p: &Plane, w: u32, h: u32) -> Sampler<'_> {
                Sampler::new(&p.data, p.width, p.height, w, h)
            }
            let (by, bu, bv) = (s(&bg.y, fw, fh), s(&bg.u, cw, ch), s(&bg.v, cw, ch));
            composite_planes(fw, fh, &a_luma, vec![layer(y, Some(&by), 0)]);
            composite_planes(cw, ch, &a_chroma, vec![layer(u, Some(&bu), 0), layer(v, Some(&bv), 0)]);
        }
    }
}

/// An axis-aligned box in frame pixels (clamped to the frame by the users).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelBox {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl PixelBox {
    /// The part of a box given in frame fractions that lies inside a `width`x`height` frame,
    /// snapped outwards to even pixels so the chroma planes cover it too.
    pub fn from_fractions(x0: f32, y0: f32, x1: f32, y1: f32, width: u32, height: u32) -> Option<Self> {
        let px = |v: f32, max: u32| ((v * max as f32).clamp(0.0, max as f32)) as u32;
        let (l, t) = (px(x0, width) & !1, px(y0, height) & !1);
        let (r, b) = ((px(x1, width) + 1).min(width), (px(y1, height) + 1).min(height));
        (r > l && b > t).then(|| PixelBox {
            x: l,
            y: t,
            w: r - l,
            h: b - t,
        })
    }
}

/// Replaces the box with blocks of `block` pixels, each the average of what it covers.
pub fn pixelate(frame: &mut I420Frame, area: PixelBox, block: u32) {
    let block = block.max(2) & !1;
    let fw = frame.width() as usize;
    let (cw, _) = frame.chroma_size();
    let (y, u, v) = frame.planes_mut();
    pixelate_plane(y, fw, area.x, area.y, area.w, area.h, block);
    let (cx, cy, cwid, chei) = (area.x / 2, area.y / 2, area.w.div_ceil(2), area.h.div_ceil(2));
    pixelate_plane(u, cw, cx, cy, cwid, chei, block / 2);
    pixelate_plane(v, cw, cx, cy, cwid, chei, block / 2);
}

fn pixelate_plane(plane: &mut [u8], stride: usize, x: u32, y: u32, w: u32, h: u32, block: u32) {
    let rows = plane.len() / stride;
    let (x1, y1) = (((x + w) as usize).min(stride), ((y + h) as usize).min(rows));
    let block = block.max(1) as usize;
    for by in (y as usize..y1).step_by(block) {
        for bx in (x as usize..x1).step_by(block) {
            let (ex, ey) = ((bx + block).min(x1), (by + block).min(y1));
            let mut sum = 0u32;
            for row in by..ey {
                sum += plane[row * stride + bx..row * stride + ex]
                    .iter()
                    .map(|&p| u32::from(p))
                    .sum::<u32>();
            }
            let mean = (sum / ((ex - bx) * (ey - by)) as u32) as u8;
            for row in by..ey {
                plane[row * stride + bx..row * stride + ex].fill(mean);
            }
        }
    }
}

/// Blurs the box in place with a box blur of `radius` pixels (three passes).
pub fn blur_box(frame: &mut I420Frame, area: PixelBox, radius: u32) {
    let fw = frame.width() as usize;
    let (cw, _) = frame.chroma_size();
    let (y, u, v) = frame.planes_mut();
    blur_region(y, fw, area.x, area.y, area.w, area.h, radius as usize);
    let (cx, cy, cwid, chei) = (area.x / 2, area.y / 2, area.w.div_ceil(2), area.h.div_ceil(2));
    let rc = (radius as usize / 2).max(1);
    blur_region(u, cw, cx, cy, cwid, chei, rc);
    blur_region(v, cw, cx, cy, cwid, chei, rc);
}

fn blur_region(plane: &mut [u8], stride: usize, x: u32, y: u32, w: u32, h: u32, radius: usize) {
    let rows = plane.len() / stride;
    let (x0, y0) = (x as usize, y as usize);
    let (x1, y1) = (((x + w) as usize).min(stride), ((y + h) as usize).min(rows));
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    let (rw, rh) = (x1 - x0, y1 - y0);
    let mut data: Vec<f32> = Vec::with_capacity(rw * rh);
    for row in y0..y1 {
        data.extend(
            plane[row * stride + x0..row * stride + x1]
                .iter()
                .map(|&p| f32::from(p)),
        );
    }
    box_blur(&mut data, rw, rh, radius, 3);
    for (i, row) in (y0..y1).enumerate() {
        for (j, p) in plane[row * stride + x0..row * stride + x1].iter_mut().enumerate() {
            *p = to_u8(data[i * rw + j]);
        }
    }
}

/// Draws with one colour onto a frame: thick segments and discs, in luma and chroma.
pub struct Pen {
    /// Y, U, V.
    pub yuv: [u8; 3],
    /// Line width in pixels.
    pub width: f32,
}

impl Pen {
    /// A pen of an RGB colour.
    pub fn new(rgb: [u8; 3], width: f32) -> Self {
        Self {
            yuv: rgb_to_yuv(rgb),
            width: width.max(1.0),
        }
    }

    /// A filled disc centred at (`x`, `y`) frame pixels.
    pub fn disc(&self, frame: &mut I420Frame, x: f32, y: f32, radius: f32) {
        let (w, h) = (frame.width() as i64, frame.height() as i64);
        let (cw, _) = frame.chroma_size();
        let (yp, up, vp) = frame.planes_mut();
        let r2 = radius * radius;
        let (x0, x1) = (
            ((x - radius).floor() as i64).max(0),
            ((x + radius).ceil() as i64).min(w - 1),
        );
        let (y0, y1) = (
            ((y - radius).floor() as i64).max(0),
            ((y + radius).ceil() as i64).min(h - 1),
        );
        for py in y0..=y1 {
            for px in x0..=x1 {
                let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
                if dx * dx + dy * dy <= r2 {
                    yp[(py * w + px) as usize] = self.yuv[0];
                    let ci = (py as usize / 2) * cw + px as usize / 2;
                    up[ci] = self.yuv[1];
                    vp[ci] = self.yuv[2];
                }
            }
        }
    }

    /// A segment from (`x0`, `y0`) to (`x1`, `y1`) frame pixels, `width` thick with round ends.
    pub fn line(&self, frame: &mut I420Frame, x0: f32, y0: f32, x1: f32, y1: f32) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let r = self.width / 2.0;
        // Discs half a radius apart leave no gaps and cost little for the few limbs drawn.
        let steps = (len / (r * 0.5).max(0.5)).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            self.disc(frame, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, r);
        }
    }
}

/// Parses `#RRGGBB`.
pub fn parse_color(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> I420Frame {
        let mut frame = I420Frame::filled(width, height, [16, 128, 128]).unwrap();
        let (cw, _) = frame.chroma_size();
        let (y, u, v) = frame.planes_mut();
        for row in 0..height {
            for col in 0..width {
                let yuv = rgb_to_yuv(f(col, row));
                y[(row * width + col) as usize] = yuv[0];
                if row % 2 == 0 && col % 2 == 0 {
                    let ci = (row / 2) as usize * cw + (col / 2) as usize;
                    u[ci] = yuv[1];
                    v[ci] = yuv[2];
                }
            }
        }
        frame
    }

    #[test]
    fn letterboxing_a_wide_frame_centres_it_between_black_bars() {
        let frame = frame_with(64, 32, |_, _| [200, 200, 200]);
        let (rgb, placement) = Planes::default().sample_rgb(&frame, 16, 16, Fit::Letterbox).unwrap();

        assert_eq!(
            placement,
            Placement {
                x0: 0.0,
                y0: 0.25,
                w: 1.0,
                h: 0.5
            }
        );
        let px = |x: usize, y: usize| &rgb.data[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3];
        assert_eq!(px(8, 0), [0, 0, 0], "bar above");
        assert_eq!(px(8, 15), [0, 0, 0], "bar below");
        assert!(px(8, 8).iter().all(|&c| c.abs_diff(200) <= 2), "content {:?}", px(8, 8));
        assert_eq!(placement.to_frame(0.5, 0.5), (0.5, 0.5));
    }

    #[test]
    fn stretching_keeps_left_and_right_halves_apart() {
        let frame = frame_with(64, 32, |x, _| if x < 32 { [255, 0, 0] } else { [0, 0, 255] });
        let (rgb, placement) = Planes::default().sample_rgb(&frame, 8, 8, Fit::Stretch).unwrap();

        assert_eq!(placement, Placement::FULL);
        let left = &rgb.data[(4 * 8 + 1) * 3..(4 * 8 + 1) * 3 + 3];
        let right = &rgb.data[(4 * 8 + 6) * 3..(4 * 8 + 6) * 3 + 3];
        assert!(left[0] > 230 && left[2] < 30, "left {left:?}");
        assert!(right[2] > 230 && right[0] < 30, "right {right:?}");
    }

    #[test]
    fn smoothing_blends_with_the_previous_mask_and_restarts_on_a_new_size() {
        let prev = Mask {
            width: 2,
            height: 1,
            data: vec![1.0, 0.0],
        };
        let now = Mask {
            width: 2,
            height: 1,
            data: vec![0.0, 1.0],
        };
        assert_eq!(now.clone().smoothed(Some(&prev), 0.75).data, vec![0.75, 0.25]);
        let other = Mask {
            width: 1,
            height: 1,
            data: vec![0.5],
        };
        assert_eq!(other.clone().smoothed(Some(&prev), 0.75), other);
    }

    #[test]
    fn alpha_ramps_around_the_threshold() {
        let mask = Mask {
            width: 4,
            height: 1,
            data: vec![0.0, 0.45, 0.55, 1.0],
        };
        assert_eq!(mask.to_alpha(0.5, 0, 0.2), vec![0, 64, 191, 255]);
    }

    #[test]
    fn a_box_blur_preserves_a_flat_plane_and_spreads_a_spike() {
        let mut flat = vec![7.0; 25];
        box_blur(&mut flat, 5, 5, 2, 3);
        assert!(flat.iter().all(|&v| (v - 7.0).abs() < 1e-4));

        let mut spike = vec![0.0; 25];
        spike[12] = 25.0;
        box_blur(&mut spike, 5, 5, 1, 1);
        assert!((spike[12] - 25.0 / 9.0).abs() < 1e-4);
        assert!((spike[6] - 25.0 / 9.0).abs() < 1e-4);
        assert_eq!(spike[0], 0.0);
    }

    #[test]
    fn compositing_takes_the_foreground_where_alpha_is_full_and_the_backdrop_elsewhere() {
        let mut frame = I420Frame::filled(8, 8, [200, 100, 150]).unwrap();
        let alpha: Vec<u8> = (0..64).map(|i| if i % 8 < 4 { 255 } else { 0 }).collect();

        composite(&mut frame, &alpha, 8, 8, &Backdrop::Color([20, 128, 128]));

        assert_eq!(frame.y()[0], 200, "left: the person");
        assert_eq!(frame.y()[7], 20, "right: the backdrop");
        assert_eq!(frame.u()[0], 100);
        assert_eq!(frame.u()[3], 128);
    }

    fn pyramid_of(frame: &I420Frame) -> Pyramid {
        let mut pyramid = Pyramid::default();
        pyramid.build(frame);
        pyramid
    }

    #[test]
    fn the_background_blur_flattens_stripes_at_a_quarter_of_the_size() {
        let stripes = frame_with(640, 360, |x, _| if (x / 4) % 2 == 0 { [255; 3] } else { [0; 3] });

        let blurred = blurred_background(&stripes, &pyramid_of(&stripes), None, 16);

        assert_eq!((blurred.y.width, blurred.y.height), (160, 90));
        assert_eq!((blurred.u.width, blurred.u.height), (80, 45));
        // Away from the clamped edges.
        let row = &blurred.y.data[45 * 160 + 16..45 * 160 + 144];
        let (min, max) = (row.iter().min().unwrap(), row.iter().max().unwrap());
        assert!(max - min < 20, "stripes survived: {min}..{max}");
    }

    #[test]
    fn weighting_keeps_the_person_colour_out_of_the_blurred_background() {
        // A bright person (left half) on a dark background: with the person's weight removed,
        // the background next to the edge stays dark instead of glowing.
        let frame = frame_with(640, 360, |x, _| if x < 320 { [255; 3] } else { [0; 3] });
        let alpha: Vec<u8> = (0..64 * 36).map(|i| if i % 64 < 32 { 255 } else { 0 }).collect();

        let pyramid = pyramid_of(&frame);
        let plain = blurred_background(&frame, &pyramid, None, 32);
        let weighted = blurred_background(&frame, &pyramid, Some((&alpha, 64, 36)), 32);

        let at = |f: &SmallFrame| f.y.data[45 * 160 + 84];
        assert!(at(&plain) > 40, "the unweighted blur bleeds: {}", at(&plain));
        assert!(at(&weighted) < 30, "the weighted blur stays dark: {}", at(&weighted));
    }

    #[test]
    fn pixelation_makes_uniform_blocks_inside_the_box_only() {
        let mut frame = frame_with(32, 32, |x, y| [(x * 8) as u8, (y * 8) as u8, 0]);
        let before = frame.clone();

        pixelate(
            &mut frame,
            PixelBox {
                x: 8,
                y: 8,
                w: 16,
                h: 16,
            },
            8,
        );

        let y = frame.y();
        assert!((8..16).all(|r| (8..16).all(|c| y[r * 32 + c] == y[8 * 32 + 8])));
        assert_eq!(y[0..32], before.y()[0..32], "outside rows untouched");
        assert_eq!(y[4 * 32 + 4], before.y()[4 * 32 + 4]);
    }

    #[test]
    fn boxes_from_fractions_are_clamped_and_snapped_to_even_pixels() {
        assert_eq!(
            PixelBox::from_fractions(0.105, -0.2, 0.5, 0.5, 100, 100),
            Some(PixelBox {
                x: 10,
                y: 0,
                w: 41,
                h: 51
            })
        );
        assert_eq!(PixelBox::from_fractions(1.2, 0.0, 1.5, 1.0, 100, 100), None);
    }

    #[test]
    fn a_pen_line_colours_the_pixels_along_it() {
        let mut frame = I420Frame::filled(32, 32, [16, 128, 128]).unwrap();
        let pen = Pen::new([255, 255, 255], 3.0);

        pen.line(&mut frame, 4.0, 16.0, 28.0, 16.0);

        assert_eq!(frame.y()[16 * 32 + 16], 235);
        assert_eq!(frame.y()[16 * 32 + 2], 16, "beyond the end");
        assert_eq!(frame.y()[10 * 32 + 16], 16, "away from the line");
    }

    #[test]
    fn colours_parse_from_hex() {
        assert_eq!(parse_color("#00b140"), Some([0, 0xb1, 0x40]));
        assert_eq!(parse_color("00b140"), None);
        assert_eq!(parse_color("#00b14"), None);
        assert_eq!(parse_color("#zzzzzz"), None);
    }
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    #[test]
    fn compositing_a_quarter_size_backdrop_upsamples_it_smoothly() {
        let mut frame = I420Frame::filled(16, 8, [200, 128, 128]).unwrap();
        let bg = SmallFrame {
            y: Plane {
                data: vec![0, 0, 100, 100, 0, 0, 100, 100],
                width: 4,
                height: 2,
            },
            u: Plane {
                data: vec![128; 2],
                width: 2,
                height: 1,
            },
            v: Plane {
                data: vec![128; 2],
                width: 2,
                height: 1,
            },
        };

        composite(&mut frame, &[0], 1, 1, &Backdrop::Small(&bg));

        let row: Vec<u8> = frame.y()[..16].to_vec();
        assert_eq!(row[0], 0);
        assert_eq!(row[15], 100);
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "monotonic ramp: {row:?}");
        assert!(row[6] > 0 && row[9] < 100, "interpolated in between: {row:?}");
    }
}

#[cfg(test)]
mod composite_oracle {
    use super::*;

    #[test]
    fn a_box_blur_pass_is_the_mean_of_the_clamped_window_around_each_sample() {
        for (w, h, r) in [(9usize, 4usize, 2usize), (5, 7, 3), (40, 3, 1), (3, 3, 5)] {
            let src: Vec<f32> = noise(w * h, 9).into_iter().map(f32::from).collect();
            let mut blurred = src.clone();

            box_blur(&mut blurred, w, h, r, 1);

            let at =
                |x: isize, y: isize| src[y.clamp(0, h as isize - 1) as usize * w + x.clamp(0, w as isize - 1) as usize];
            let r = r as isize;
            for y in 0..h as isize {
                for x in 0..w as isize {
                    // Horizontal mean, then vertical mean of those: the separable box.
                    let row_mean = |yy: isize| (-r..=r).map(|d| at(x + d, yy)).sum::<f32>() / (2 * r + 1) as f32;
                    let want = (-r..=r)
                        .map(|d| row_mean((y + d).clamp(0, h as isize - 1)))
                        .sum::<f32>()
                        / (2 * r + 1) as f32;
                    let got = blurred[y as usize * w + x as usize];
                    assert!((got - want).abs() < 1e-3, "{w}x{h} r={r} at ({x},{y}): {got} vs {want}");
                }
            }
        }
    }

    /// Bilinear sample of `src` (`sw`x`sh`) at destination pixel (`x`, `y`) of a `dw`x`dh`
    /// grid, pixel centres aligned, in floating point: written from the definition, not from
    /// the code under test.
    fn bilinear(src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32, x: u32, y: u32) -> f64 {
        let at = |d: u32, s: u32, dn: u32| ((f64::from(d) + 0.5) * f64::from(s) / f64::from(dn) - 0.5).max(0.0);
        let (fx, fy) = (at(x, sw, dw), at(y, sh, dh));
        let (x0, y0) = ((fx.floor() as u32).min(sw - 1), (fy.floor() as u32).min(sh - 1));
        let (x1, y1) = ((x0 + 1).min(sw - 1), (y0 + 1).min(sh - 1));
        let (tx, ty) = (fx - f64::from(x0), fy - f64::from(y0));
        let p = |x: u32, y: u32| f64::from(src[(y * sw + x) as usize]);
        (p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx) * (1.0 - ty) + (p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx) * ty
    }

    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn resampling_matches_bilinear_from_the_definition_up_down_and_across_parities() {
        for (sw, sh, dw, dh) in [
            (256u32, 256u32, 320u32, 180u32),
            (16, 9, 64, 36),
            (7, 5, 3, 11),
            (5, 5, 5, 5),
        ] {
            let src = noise((sw * sh) as usize, 8);
            let mut out = vec![1, 2, 3];

            resample(&src, sw, sh, dw, dh, &mut out);

            assert_eq!(out.len(), (dw * dh) as usize);
            for y in 0..dh {
                for x in 0..dw {
                    let want = bilinear(&src, sw, sh, dw, dh, x, y);
                    let got = f64::from(out[(y * dw + x) as usize]);
                    // Weights in 1/256 steps on each axis, then rounding: 1.5 at most.
                    assert!(
                        (got - want).abs() <= 1.5,
                        "{sw}x{sh}->{dw}x{dh} at ({x},{y}): {got} vs {want:.2}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_upsampled_by_a_whole_factor_equal_the_general_taps_to_the_last_bit() {
        for k in [2u32, 4, 8] {
            for sw in 2..40u32 {
                let src = noise(sw as usize, sw + k);
                let sampler = Sampler::new(&src, sw, 1, k * sw, 1);
                assert_eq!(sampler.factor, Some(k as usize));
                let mut window = RowWindow::default();

                sampler.fill(0, &mut window, 0);

                let general: Vec<u16> = sampler.xs.taps.iter().map(|&tap| lerp(&src, tap)).collect();
                assert_eq!(window.rows[0], general, "x{k} from {sw}");
            }
        }
    }

    #[test]
    fn resampling_an_empty_source_gives_zeros_of_the_asked_size() {
        let mut out = Vec::new();

        resample(&[], 0, 0, 4, 2, &mut out);

        assert_eq!(out, vec![0; 8]);
    }

    #[test]
    fn compositing_matches_per_pixel_bilinear_blending_of_alpha_and_backdrop_on_every_plane() {
        for (fw, fh, aw, ah, bw, bh) in [
            (64u32, 36u32, 16u32, 16u32, 16u32, 9u32),
            (50, 30, 7, 5, 13, 8),
            (33, 17, 33, 17, 4, 3),
        ] {
            let (cw, ch) = (fw.div_ceil(2), fh.div_ceil(2));
            let (bcw, bch) = (bw.div_ceil(2), bh.div_ceil(2));
            let y = noise((fw * fh) as usize, 1);
            let (u, v) = (noise((cw * ch) as usize, 2), noise((cw * ch) as usize, 3));
            let mut frame = I420Frame::from_planes(fw, fh, y.clone(), u.clone(), v.clone()).unwrap();
            let alpha = noise((aw * ah) as usize, 4);
            let plane = |data: Vec<u8>, width, height| Plane { data, width, height };
            let bg = SmallFrame {
                y: plane(noise((bw * bh) as usize, 5), bw, bh),
                u: plane(noise((bcw * bch) as usize, 6), bcw, bch),
                v: plane(noise((bcw * bch) as usize, 7), bcw, bch),
            };

            composite(&mut frame, &alpha, aw, ah, &Backdrop::Small(&bg));

            let check = |name: &str, out: &[u8], fg: &[u8], b: &Plane, w: u32, h: u32| {
                for py in 0..h {
                    for px in 0..w {
                        let a = bilinear(&alpha, aw, ah, w, h, px, py) / 255.0;
                        let back = bilinear(&b.data, b.width, b.height, w, h, px, py);
                        let want = f64::from(fg[(py * w + px) as usize]) * a + back * (1.0 - a);
                        let got = f64::from(out[(py * w + px) as usize]);
                        assert!(
                            (got - want).abs() <= 1.5,
                            "{name} {fw}x{fh} at ({px},{py}): got {got}, want {want:.2}"
                        );
                    }
                }
            };
            check("Y", frame.y(), &y, &bg.y, fw, fh);
            check("U", frame.u(), &u, &bg.u, cw, ch);
            check("V", frame.v(), &v, &bg.v, cw, ch);
        }
    }
}
