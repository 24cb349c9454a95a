//! The original sample's first program as a pure generator: a hue-cycling background with the
//! elapsed time of each frame drawn in the centre, so that a viewer sees motion, colour and a
//! clock to read latency from, with no browser or camera involved.
//!
//! Frame `i` depends only on `i` (and the configuration), so tests and benchmarks can ask for any
//! frame in any order.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontArc, PxScale, ScaleFont, point};

use crate::frame::{I420Frame, rgb_to_yuv};

/// Where Debian's `fonts-dejavu-core` puts DejaVu Sans Bold.
pub const DEFAULT_FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";

/// Digit height as a fraction of the frame height.
const GLYPH_HEIGHT_FRACTION: f32 = 0.2;
/// The clock text may use at most this fraction of the frame width (for narrow frames).
const MAX_TEXT_WIDTH_FRACTION: f32 = 0.9;
/// The text whose width must fit when the frame is narrow: a clock below 100 s.
const WIDTH_REFERENCE_TEXT: &str = "00.000";
/// Stroke radius in pixels per pixel of digit height.
const STROKE_PER_GLYPH_HEIGHT: f32 = 1.0 / 24.0;
/// The characters the clock can contain; their bitmaps are rendered once, up front.
const CLOCK_CHARS: &str = "0123456789.";

/// Limited-range luma of white and black, and the neutral chroma both share.
const WHITE_Y: u32 = 235;
const BLACK_Y: u32 = 16;
const NEUTRAL_C: u32 = 128;

/// Why a test pattern cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TestPatternError {
    /// The font file could not be read.
    #[error("cannot read font file {path}: {source}")]
    FontRead {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file was read but is not a font ab_glyph can parse.
    #[error("{path} is not a usable TrueType/OpenType font: {detail}")]
    FontInvalid {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// The font lacks a glyph the clock needs.
    #[error("font has no glyph for {0:?}, which the clock needs")]
    MissingGlyph(char),
    /// Zero width or height.
    #[error("test pattern size {width}x{height} is empty")]
    EmptySize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// Zero frames per second.
    #[error("test pattern frame rate {0} fps is invalid (must be at least 1)")]
    InvalidFps(u32),
}

/// Reads a TrueType/OpenType font file.
pub fn load_font(path: impl AsRef<Path>) -> Result<FontArc, TestPatternError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TestPatternError::FontRead {
        path: path.to_owned(),
        source,
    })?;
    FontArc::try_from_vec(bytes).map_err(|e| TestPatternError::FontInvalid {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// The clock text of frame `i` at `fps`: elapsed seconds with three decimals, e.g. `"12.333"`.
pub fn clock_text(i: u64, fps: u32) -> String {
    format!("{:.3}", i as f64 / fps as f64)
}

/// HSV (OpenCV 8-bit convention: hue 0..179 = degrees / 2, full saturation and value) to RGB,
/// as `cv2.cvtColor(..., COLOR_HSV2RGB)` computes it.
pub fn hue_rgb(hue: u8) -> [u8; 3] {
    // Same float steps as OpenCV's HSV2RGB_native so results match to the rounding.
    let h = (hue as f32 * (6.0 / 180.0)) % 6.0;
    let sector = h.floor() as usize;
    let f = h - sector as f32;
    let (r, g, b) = match sector {
        0 => (1.0, f, 0.0),
        1 => (1.0 - f, 1.0, 0.0),
        2 => (0.0, 1.0, f),
        3 => (0.0, 1.0 - f, 1.0),
        4 => (f, 0.0, 1.0),
        5 => (1.0, 0.0, 1.0 - f),
        _ => (1.0, 0.0, 0.0),
    };
    let to_u8 = |x: f32| (x * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
    [to_u8(r), to_u8(g), to_u8(b)]
}

/// A rectangle of pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl PixelRect {
    /// Whether pixel `(x, y)` lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x < self.x + self.width && y < self.y + self.height
    }

    fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// One clock character, rasterized once: fill and stroke coverage, placed relative to the pen
/// position on the baseline.
#[derive(Clone, Debug)]
struct GlyphBitmap {
    advance: f32,
    /// Top-left of the stroke bitmap relative to the pen position (the fill bitmap is the
    /// same size, the glyph sitting `stroke` pixels in from each side).
    left: i32,
    top: i32,
    width: usize,
    height: usize,
    fill: Vec<u8>,
    stroke: Vec<u8>,
}

/// The hue-cycling, clock-stamped test pattern.
#[derive(Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    fps: u32,
    font: FontArc,
    /// Bitmaps for [`CLOCK_CHARS`], in that order.
    glyphs: Vec<GlyphBitmap>,
    /// Kerning between clock characters, indexed `[a * n + b]`.
    kerning: Vec<f32>,
    /// Pixel baseline row of the text.
    baseline: i32,
}

impl std::fmt::Debug for TestPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPattern")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

impl TestPattern {
    /// A `width`x`height` pattern at `fps`, drawing the clock with `font`.
    pub fn new(width: u32, height: u32, fps: u32, font: FontArc) -> Result<Self, TestPatternError> {
        if width == 0 || height == 0 {
            return Err(TestPatternError::EmptySize { width, height });
        }
        if fps == 0 {
            return Err(TestPatternError::InvalidFps(fps));
        }
        for c in CLOCK_CHARS.chars() {
            if font.glyph_id(c).0 == 0 {
                return Err(TestPatternError::MissingGlyph(c));
            }
        }

        let scale = clock_scale(&font, width, height);
        let digit_height = digit_height(&font, scale);
        let stroke = (digit_height * STROKE_PER_GLYPH_HEIGHT).round().max(1.0) as i32;
        let glyphs: Vec<GlyphBitmap> = CLOCK_CHARS
            .chars()
            .map(|c| rasterize(&font, c, scale, stroke))
            .collect();
        let scaled = font.as_scaled(scale);
        let ids: Vec<_> = CLOCK_CHARS.chars().map(|c| font.glyph_id(c)).collect();
        let kerning = ids
            .iter()
            .flat_map(|&a| ids.iter().map(move |&b| (a, b)))
            .map(|(a, b)| scaled.kern(a, b))
            .collect();
        let baseline = ((height as f32 + digit_height) / 2.0).round() as i32;

        Ok(Self {
            width,
            height,
            fps,
            font,
            glyphs,
            kerning,
            baseline,
        })
    }

    /// The same pattern (font, frame rate) at another size.
    pub fn with_size(&self, width: u32, height: u32) -> Result<Self, TestPatternError> {
        Self::new(width, height, self.fps, self.font.clone())
    }

    /// Frame width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Frames per second the clock counts in.
    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// The clock text drawn on frame `i`.
    pub fn clock_text(&self, i: u64) -> String {
        clock_text(i, self.fps)
    }

    /// The background colour of frame `i` (RGB), one hue step per frame.
    pub fn background_rgb(&self, i: u64) -> [u8; 3] {
        hue_rgb((i % 180) as u8)
    }

    /// A rectangle containing every pixel the clock of frame `i` touches (fill and stroke);
    /// everything outside it is plain background.
    pub fn text_rect(&self, i: u64) -> PixelRect {
        let placed = self.layout(&self.clock_text(i));
        self.bounding_rect(&placed)
    }

    /// Renders frame `i`.
    pub fn frame(&self, i: u64) -> I420Frame {
        let [by, bu, bv] = rgb_to_yuv(self.background_rgb(i));
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut y = vec![by; w * h];
        let mut u = vec![bu; cw * ch];
        let mut v = vec![bv; cw * ch];

        let text = self.clock_text(i);
        let placed = self.layout(&text);
        // Even-aligned box so that every chroma sample inside it sees its whole 2x2 block.
        let rect = self.bounding_rect(&placed);
        if !rect.is_empty() {
            let bx0 = rect.x & !1;
            let by0 = rect.y & !1;
            let bx1 = (rect.x + rect.width).next_multiple_of(2).min(self.width);
            let by1 = (rect.y + rect.height).next_multiple_of(2).min(self.height);
            let boxed = PixelRect {
                x: bx0,
                y: by0,
                width: bx1 - bx0,
                height: by1 - by0,
            };
            let (fill, stroke) = self.coverage(&placed, boxed);
            composite(&mut y, &mut u, &mut v, (w, cw), boxed, &fill, &stroke, [bu, bv]);
        }

        I420Frame::from_planes(self.width, self.height, y, u, v)
            .expect("plane sizes follow from the non-zero size checked in TestPattern::new")
    }

    /// The clipped union of the placed glyph bitmaps.
    fn bounding_rect(&self, placed: &[(&GlyphBitmap, i64, i64)]) -> PixelRect {
        let mut x0 = i64::MAX;
        let mut y0 = i64::MAX;
        let mut x1 = i64::MIN;
        let mut y1 = i64::MIN;
        for &(g, x, y) in placed {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + g.width as i64);
            y1 = y1.max(y + g.height as i64);
        }
        if x0 > x1 {
            return PixelRect {
                x: 0,
                y: 0,
                width: 0,
                height: 0,
            };
        }
        self.clip(x0, y0, x1, y1)
    }

    /// Places each character's bitmap: `(bitmap, left, top)` in frame pixels.
    fn layout(&self, text: &str) -> Vec<(&GlyphBitmap, i64, i64)> {
        let indices: Vec<usize> = text.chars().filter_map(|c| CLOCK_CHARS.find(c)).collect();
        let n = CLOCK_CHARS.len();
        let mut pens = Vec::with_capacity(indices.len());
        let mut pen = 0.0f32;
        for (k, &gi) in indices.iter().enumerate() {
            if k > 0 {
                pen += self.kerning[indices[k - 1] * n + gi];
            }
            pens.push(pen);
            pen += self.glyphs[gi].advance;
        }
        let text_width = pen;
        // Whole-pixel pen positions keep the pre-rendered bitmaps exact.
        let origin = ((self.width as f32 - text_width) / 2.0).round();
        indices
            .iter()
            .zip(pens)
            .map(|(&gi, pen)| {
                let g = &self.glyphs[gi];
                let x = (origin + pen).round() as i64 + g.left as i64;
                let y = self.baseline as i64 + g.top as i64;
                (g, x, y)
            })
            .collect()
    }

    fn clip(&self, x0: i64, y0: i64, x1: i64, y1: i64) -> PixelRect {
        let cx0 = x0.clamp(0, self.width as i64);
        let cy0 = y0.clamp(0, self.height as i64);
        let cx1 = x1.clamp(cx0, self.width as i64);
        let cy1 = y1.clamp(cy0, self.height as i64);
        PixelRect {
            x: cx0 as u32,
            y: cy0 as u32,
            width: (cx1 - cx0) as u32,
            height: (cy1 - cy0) as u32,
        }
    }

    /// Fill and stroke coverage of the placed glyphs over `area` (row-major, `area.width` wide).
    fn coverage(&self, placed: &[(&GlyphBitmap, i64, i64)], area: PixelRect) -> (Vec<u8>, Vec<u8>) {
        let aw = area.width as usize;
        let mut fill = vec![0u8; aw * area.height as usize];
        let mut stroke = vec![0u8; aw * area.height as usize];
        for &(g, gx, gy) in placed {
            // Intersection of the glyph bitmap with the area, in area coordinates.
            let ax0 = (gx - area.x as i64).max(0);
            let ay0 = (gy - area.y as i64).max(0);
            let ax1 = (gx + g.width as i64 - area.x as i64).min(area.width as i64);
            let ay1 = (gy + g.height as i64 - area.y as i64).min(area.height as i64);
            if ax0 >= ax1 || ay0 >= ay1 {
                continue;
            }
            let (ax0, ax1) = (ax0 as usize, ax1 as usize);
            let gx0 = (area.x as i64 + ax0 as i64 - gx) as usize;
            for ay in ay0 as usize..ay1 as usize {
                let gy_row = (area.y as i64 + ay as i64 - gy) as usize;
                let src = gy_row * g.width + gx0..gy_row * g.width + gx0 + (ax1 - ax0);
                let dst = ay * aw + ax0..ay * aw + ax1;
                // Max, not overwrite: neighbouring glyphs' strokes overlap.
                for (d, s) in fill[dst.clone()].iter_mut().zip(&g.fill[src.clone()]) {
                    *d = (*d).max(*s);
                }
                for (d, s) in stroke[dst].iter_mut().zip(&g.stroke[src]) {
                    *d = (*d).max(*s);
                }
            }
        }
        (fill, stroke)
    }
}

/// `a + (b - a) * t / 255`, rounded.
#[inline]
fn mix(a: u32, b: u32, t: u32) -> u32 {
    (a * (255 - t) + b * t + 127) / 255
}

/// Draws white stroke then black fill over the background inside `area` (even-aligned).
#[allow(clippy::too_many_arguments)]
fn composite(
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    (stride, cstride): (usize, usize),
    area: PixelRect,
    fill: &[u8],
    stroke: &[u8],
    [bu, bv]: [u8; 2],
) {
    let aw = area.width as usize;
    let ah = area.height as usize;
    let (ax, ay) = (area.x as usize, area.y as usize);
    for row in 0..ah {
        let dst = &mut y[(ay + row) * stride + ax..][..aw];
        let f = &fill[row * aw..][..aw];
        let s = &stroke[row * aw..][..aw];
        for ((d, &f), &s) in dst.iter_mut().zip(f).zip(s) {
            if f | s != 0 {
                let lit = mix(*d as u32, WHITE_Y, s as u32);
                *d = mix(lit, BLACK_Y, f as u32) as u8;
            }
        }
    }
    // Both white and black have neutral chroma, so chroma only moves towards 128 by the
    // combined opacity of the two layers, averaged over each 2x2 block.
    let alpha = |k: usize| {
        let (f, s) = (fill[k] as u32, stroke[k] as u32);
        f + s - (f * s + 127) / 255
    };
    for crow in 0..ah.div_ceil(2) {
        let r0 = crow * 2;
        let rows = if r0 + 1 < ah { 2 } else { 1 };
        let cbase = (ay / 2 + crow) * cstride + ax / 2;
        for ccol in 0..aw.div_ceil(2) {
            let c0 = ccol * 2;
            let cols = if c0 + 1 < aw { 2 } else { 1 };
            let mut sum = 0;
            for dr in 0..rows {
                for dc in 0..cols {
                    sum += alpha((r0 + dr) * aw + c0 + dc);
                }
            }
            if sum == 0 {
                continue;
            }
            let n = (rows * cols) as u32;
            let a = (sum + n / 2) / n;
            u[cbase + ccol] = mix(bu as u32, NEUTRAL_C, a) as u8;
            v[cbase + ccol] = mix(bv as u32, NEUTRAL_C, a) as u8;
        }
    }
}

/// Height in pixels of the digit `0` at `scale`.
fn digit_height(font: &FontArc, scale: PxScale) -> f32 {
    let glyph = font.glyph_id('0').with_scale_and_position(scale, point(0.0, 0.0));
    font.outline_glyph(glyph)
        .map(|g| g.px_bounds().height())
        .unwrap_or(scale.y * 0.7)
}

/// The font scale making digits a fifth of the frame height, shrunk if the clock would not fit
/// across a narrow frame.
fn clock_scale(font: &FontArc, width: u32, height: u32) -> PxScale {
    let probe = PxScale::from(100.0);
    let probe_digit = digit_height(font, probe).max(1.0);
    let by_height = 100.0 * GLYPH_HEIGHT_FRACTION * height as f32 / probe_digit;
    let scaled = font.as_scaled(probe);
    let probe_width: f32 = WIDTH_REFERENCE_TEXT
        .chars()
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum();
    let by_width = 100.0 * MAX_TEXT_WIDTH_FRACTION * width as f32 / probe_width.max(1.0);
    PxScale::from(by_height.min(by_width).max(1.0))
}

/// Renders one character's fill and its dilated stroke (disc of radius `stroke`, antialiased).
fn rasterize(font: &FontArc, c: char, scale: PxScale, stroke: i32) -> GlyphBitmap {
    let id = font.glyph_id(c);
    let advance = font.as_scaled(scale).h_advance(id);
    let glyph = id.with_scale_and_position(scale, point(0.0, 0.0));
    let Some(outlined) = font.outline_glyph(glyph) else {
        // Glyphs without outline (none among digits and '.') draw nothing.
        return GlyphBitmap {
            advance,
            left: 0,
            top: 0,
            width: 0,
            height: 0,
            fill: Vec::new(),
            stroke: Vec::new(),
        };
    };
    let bounds = outlined.px_bounds();
    let gw = bounds.width() as usize;
    let gh = bounds.height() as usize;
    let pad = stroke as usize + 1;
    let width = gw + 2 * pad;
    let height = gh + 2 * pad;
    let mut fill = vec![0u8; width * height];
    outlined.draw(|x, y, cov| {
        let (x, y) = (x as usize + pad, y as usize + pad);
        if x < width && y < height {
            fill[y * width + x] = (cov.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    });

    // Disc offsets with antialiased weight at the rim (radius + 0.5 fades over one pixel).
    let r = stroke;
    let mut disc = Vec::new();
    for dy in -(r + 1)..=(r + 1) {
        for dx in -(r + 1)..=(r + 1) {
            let d = ((dx * dx + dy * dy) as f32).sqrt();
            let w = (r as f32 + 0.5 - d).clamp(0.0, 1.0);
            if w > 0.0 {
                disc.push((dx, dy, (w * 255.0).round() as u32));
            }
        }
    }
    let mut stroke_cov = vec![0u8; width * height];
    for y in 0..height as i32 {
        for x in 0..width as i32 {
            let src = fill[y as usize * width + x as usize] as u32;
            if src == 0 {
                continue;
            }
            for &(dx, dy, w) in &disc {
                let (tx, ty) = (x + dx, y + dy);
                if tx < 0 || ty < 0 || tx >= width as i32 || ty >= height as i32 {
                    continue;
                }
                let t = &mut stroke_cov[ty as usize * width + tx as usize];
                *t = (*t).max(((src * w + 127) / 255) as u8);
            }
        }
    }

    GlyphBitmap {
        advance,
        left: bounds.min.x as i32 - pad as i32,
        top: bounds.min.y as i32 - pad as i32,
        width,
        height,
        fill,
        stroke: stroke_cov,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::yuv_to_rgb;

    fn font() -> FontArc {
        load_font(DEFAULT_FONT_PATH).unwrap_or_else(|e| {
            panic!("test font unavailable: {e} (install Debian fonts-dejavu-core, scripts/setup.sh)")
        })
    }

    fn pixel_rgb(frame: &I420Frame, x: u32, y: u32) -> [u8; 3] {
        let (cw, _) = frame.chroma_size();
        let (x, y) = (x as usize, y as usize);
        let luma = frame.y()[y * frame.width() as usize + x];
        let ci = (y / 2) * cw + x / 2;
        yuv_to_rgb([luma, frame.u()[ci], frame.v()[ci]])
    }

    fn assert_close(actual: [u8; 3], expected: [u8; 3], tolerance: i32, what: &str) {
        for c in 0..3 {
            assert!(
                (actual[c] as i32 - expected[c] as i32).abs() <= tolerance,
                "{what}: got {actual:?}, expected {expected:?} (±{tolerance})"
            );
        }
    }

    #[test]
    fn clock_text_of_frame_370_at_30_fps_reads_12_333() {
        assert_eq!(clock_text(370, 30), "12.333");
        assert_eq!(clock_text(0, 30), "0.000");
        assert_eq!(clock_text(30, 30), "1.000");
    }

    #[test]
    fn hue_rgb_matches_opencv_at_primary_and_intermediate_hues() {
        // Reference values: cv2.cvtColor(np.uint8([[[h, 255, 255]]]), cv2.COLOR_HSV2RGB).
        assert_eq!(hue_rgb(0), [255, 0, 0]);
        assert_eq!(hue_rgb(30), [255, 255, 0]);
        assert_eq!(hue_rgb(60), [0, 255, 0]);
        assert_eq!(hue_rgb(90), [0, 255, 255]);
        assert_eq!(hue_rgb(120), [0, 0, 255]);
        assert_eq!(hue_rgb(150), [255, 0, 255]);
        assert_eq!(hue_rgb(10), [255, 85, 0]);
        assert_eq!(hue_rgb(15), [255, 128, 0]);
        assert_close(hue_rgb(179), [255, 0, 8], 1, "hue 179");
    }

    #[test]
    fn background_hue_wraps_after_180_frames() {
        let pattern = TestPattern::new(64, 36, 30, font()).unwrap();
        assert_eq!(pattern.background_rgb(180), pattern.background_rgb(0));
        assert_eq!(pattern.background_rgb(181), hue_rgb(1));
        assert_eq!(pattern.background_rgb(359), hue_rgb(179));
    }

    #[test]
    fn corner_pixel_has_the_frames_hue_after_yuv_round_trip() {
        let pattern = TestPattern::new(320, 180, 30, font()).unwrap();
        for i in [0u64, 1, 17, 45, 90, 135, 179, 200] {
            let frame = pattern.frame(i);
            let rect = pattern.text_rect(i);
            assert!(!rect.contains(0, 0), "text reaches the corner: {rect:?}");
            assert_close(
                pixel_rgb(&frame, 0, 0),
                hue_rgb((i % 180) as u8),
                3,
                &format!("frame {i}"),
            );
            assert_close(
                pixel_rgb(&frame, 319, 179),
                hue_rgb((i % 180) as u8),
                3,
                &format!("frame {i}"),
            );
        }
    }

    #[test]
    fn centre_contains_black_fill_and_white_stroke() {
        let pattern = TestPattern::new(1280, 720, 30, font()).unwrap();
        let frame = pattern.frame(370);
        let rect = pattern.text_rect(370);
        let (mut black, mut white) = (0, 0);
        for y in rect.y..rect.y + rect.height {
            for x in rect.x..rect.x + rect.width {
                match frame.y()[(y * 1280 + x) as usize] {
                    ..=20 => black += 1,
                    230.. => white += 1,
                    _ => {}
                }
            }
        }
        assert!(black > 1000, "only {black} black pixels in {rect:?}");
        assert!(white > 1000, "only {white} white pixels in {rect:?}");
        // The text is centred and about a fifth of the height tall (stroke included).
        let centre_x = rect.x + rect.width / 2;
        let centre_y = rect.y + rect.height / 2;
        assert!(centre_x.abs_diff(640) <= 8, "{rect:?}");
        assert!(centre_y.abs_diff(360) <= 12, "{rect:?}");
        assert!((144..=200).contains(&rect.height), "{rect:?}");
    }

    #[test]
    fn pixels_outside_the_text_rect_are_plain_background() {
        let pattern = TestPattern::new(320, 180, 30, font()).unwrap();
        let i = 42;
        let frame = pattern.frame(i);
        let background = I420Frame::filled(320, 180, rgb_to_yuv(pattern.background_rgb(i))).unwrap();
        let rect = pattern.text_rect(i);
        for y in 0..180 {
            for x in 0..320 {
                if !rect.contains(x, y) {
                    let k = (y * 320 + x) as usize;
                    assert_eq!(frame.y()[k], background.y()[k], "luma at ({x},{y}) outside {rect:?}");
                }
            }
        }
        let (cw, ch) = frame.chroma_size();
        for cy in 0..ch as u32 {
            for cx in 0..cw as u32 {
                let touched = (0..2).any(|dy| (0..2).any(|dx| rect.contains(cx * 2 + dx, cy * 2 + dy)));
                if !touched {
                    let k = cy as usize * cw + cx as usize;
                    assert_eq!(frame.u()[k], background.u()[k], "U at ({cx},{cy})");
                    assert_eq!(frame.v()[k], background.v()[k], "V at ({cx},{cy})");
                }
            }
        }
    }

    #[test]
    fn clock_region_changes_between_frames_with_different_times() {
        let pattern = TestPattern::new(320, 180, 30, font()).unwrap();
        let (a, b) = (pattern.frame(370), pattern.frame(371));
        let rect = pattern.text_rect(370);
        assert_eq!(rect, pattern.text_rect(371), "same digit count, same box");
        let differing = (rect.y..rect.y + rect.height)
            .flat_map(|y| (rect.x..rect.x + rect.width).map(move |x| (y * 320 + x) as usize))
            .filter(|&k| a.y()[k].abs_diff(b.y()[k]) > 64)
            .count();
        assert!(
            differing > 20,
            "only {differing} luma pixels differ between 12.333 and 12.367"
        );
    }

    #[test]
    fn same_index_renders_identical_frames() {
        let pattern = TestPattern::new(160, 90, 30, font()).unwrap();
        assert_eq!(pattern.frame(1234), pattern.frame(1234));
    }

    #[test]
    fn odd_and_small_sizes_render_without_panicking() {
        for (w, h) in [(320, 180), (641, 361), (1, 1), (3, 5), (17, 9), (90, 640)] {
            let pattern = TestPattern::new(w, h, 30, font()).unwrap();
            for i in [0, 370, 999_999_999] {
                let frame = pattern.frame(i);
                assert_eq!((frame.width(), frame.height()), (w, h));
                let rect = pattern.text_rect(i);
                assert!(
                    rect.x + rect.width <= w && rect.y + rect.height <= h,
                    "{w}x{h}: {rect:?}"
                );
            }
        }
    }

    #[test]
    fn new_rejects_empty_size_and_zero_fps() {
        assert!(matches!(
            TestPattern::new(0, 10, 30, font()),
            Err(TestPatternError::EmptySize { width: 0, height: 10 })
        ));
        assert!(matches!(
            TestPattern::new(10, 10, 0, font()),
            Err(TestPatternError::InvalidFps(0))
        ));
    }

    #[test]
    fn load_font_names_the_path_when_missing_or_not_a_font() {
        let missing = load_font("/nonexistent/livefilter-font.ttf").unwrap_err();
        let msg = missing.to_string();
        assert!(msg.contains("/nonexistent/livefilter-font.ttf"), "{msg}");
        assert!(matches!(missing, TestPatternError::FontRead { .. }));

        let path = std::env::temp_dir().join(format!("livefilter-not-a-font-{}.ttf", std::process::id()));
        std::fs::write(&path, b"definitely not a font").unwrap();
        let invalid = load_font(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(invalid, TestPatternError::FontInvalid { .. }));
        assert!(invalid.to_string().contains(&path.display().to_string()), "{invalid}");
    }
}
