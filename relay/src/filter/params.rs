//! Filter parameters: `filter.params` in the relay's configuration (camelCase keys, as the
//! operator passes a session's `spec.filter.params` unchanged), parsed per filter into typed
//! values with every range checked, and merged with live changes (`PATCH /filter`).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::assets::{Assets, Backdrop, Origin};
use super::pixels::parse_color;
use super::{FilterError, FilterKind};

/// Why parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// A key is unknown, mistyped or out of range.
    #[error("filter {filter}: {detail}")]
    Invalid { filter: &'static str, detail: String },
    /// A key that cannot change while frames flow (an `onnx` model's contract).
    #[error(
        "filter {filter}: {key} cannot change while the relay runs (it describes the model); restart with the new value"
    )]
    NotLive { filter: &'static str, key: String },
    /// `passthrough` takes no parameters.
    #[error("filter passthrough takes no parameters, got {keys}")]
    NoneTaken { keys: String },
}

/// An sRGB colour written `#RRGGBB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(pub [u8; 3]);

impl<'de> Deserialize<'de> for Color {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_color(&s)
            .map(Color)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a colour #RRGGBB, got {s:?}")))
    }
}

impl Serialize for Color {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let [r, g, b] = self.0;
        s.collect_str(&format_args!("#{r:02x}{g:02x}{b:02x}"))
    }
}

/// `background-blur`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BlurParams {
    /// Blur radius in output pixels (1..=100).
    pub radius: u32,
    /// Weight of the previous frame's mask, against flicker (0 = none, up to 0.95).
    pub smoothing: f32,
    /// Edge feather in mask pixels (the mask is 256x256; 0..=16).
    pub feather: u32,
    /// Person probability at which the foreground starts (0.05..=0.95).
    pub threshold: f32,
    /// Which frame's person mask a frame is composited with.
    pub mask_from: MaskFrom,
    /// Take the median of the last three masks, so a blob or hole seen in one frame never
    /// shows (a real change shows one frame later).
    pub stabilize: bool,
    /// Refine the mask's edge at full resolution against the picture's own edges (a guided
    /// filter on the luma).
    pub refine_edges: bool,
}

impl Default for BlurParams {
    fn default() -> Self {
        Self {
            radius: 12,
            smoothing: 0.5,
            feather: 2,
            threshold: 0.5,
            mask_from: MaskFrom::Current,
            stabilize: true,
            refine_edges: true,
        }
    }
}

/// Which frame's person mask a frame is composited with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskFrom {
    /// Its own: inference is on the frame's path (the mask fits the frame exactly).
    #[default]
    Current,
    /// The newest mask already inferred (normally the previous frame's) while this frame's
    /// inference runs beside it on another thread: the inference time leaves the frame's
    /// latency, and the mask trails movement by about one frame.
    Previous,
}

/// `background-replace`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplaceParams {
    /// The backdrop colour (used when no image is given).
    pub color: Color,
    /// A PNG or JPEG backdrop, scaled to the frame.
    pub image: Option<PathBuf>,
    /// The decoded `image`, once resolved ([`FilterParams::with_backdrop`]).
    #[serde(skip)]
    pub backdrop: Option<Backdrop>,
    /// As for `background-blur`.
    pub smoothing: f32,
    /// As for `background-blur`.
    pub feather: u32,
    /// As for `background-blur`.
    pub threshold: f32,
    /// As for `background-blur`.
    pub mask_from: MaskFrom,
    /// As for `background-blur`.
    pub stabilize: bool,
    /// As for `background-blur`.
    pub refine_edges: bool,
}

impl Default for ReplaceParams {
    fn default() -> Self {
        let blur = BlurParams::default();
        Self {
            color: Color([0x00, 0xb1, 0x40]),
            image: None,
            backdrop: None,
            smoothing: blur.smoothing,
            feather: blur.feather,
            threshold: blur.threshold,
            mask_from: blur.mask_from,
            stabilize: blur.stabilize,
            refine_edges: blur.refine_edges,
        }
    }
}

/// How a face is hidden.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaceMode {
    /// Blocks of `strength` pixels.
    Pixelate,
    /// A box blur of `strength` pixels.
    Blur,
}

/// `face-blur`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FaceBlurParams {
    /// Pixelate or blur.
    pub mode: FaceMode,
    /// Block size or blur radius in pixels (2..=128).
    pub strength: u32,
    /// Extra margin around each face, as a fraction of its size on every side (0..=1).
    pub padding: f32,
    /// Detection score needed (0.05..=0.99).
    pub min_score: f32,
    /// Frames a face stays hidden after the detector last saw it (0..=120).
    pub hold_frames: u32,
}

impl Default for FaceBlurParams {
    fn default() -> Self {
        Self {
            mode: FaceMode::Pixelate,
            strength: 24,
            padding: 0.3,
            min_score: 0.6,
            hold_frames: 15,
        }
    }
}

/// `pose`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PoseParams {
    /// Keypoint score needed to draw it (0..=1).
    pub min_score: f32,
    /// Limb width in pixels (1..=32).
    pub line_width: u32,
    /// Limb colour.
    pub color: Color,
    /// Joint colour.
    pub point_color: Color,
    /// Smooth keypoint positions over time (a One Euro filter: steady when still, little lag
    /// when moving).
    pub smoothing: bool,
    /// Half-width of the score band around `minScore`: a hidden keypoint shows once its score
    /// reaches `minScore + hysteresis`, a shown one hides below `minScore - hysteresis`
    /// (0..=0.3), so a limb whose score hovers at the threshold does not blink.
    pub hysteresis: f32,
}

impl Default for PoseParams {
    fn default() -> Self {
        Self {
            min_score: 0.3,
            line_width: 4,
            color: Color([0x00, 0xff, 0x66]),
            point_color: Color([0xff, 0x33, 0x66]),
            smoothing: true,
            hysteresis: 0.1,
        }
    }
}

/// Memory layout of an image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[1, C, H, W]`.
    Nchw,
    /// `[1, H, W, C]`.
    Nhwc,
}

/// Channel order of an image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
}

/// What a user's model produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A picture (`[1, 3, H, W]` or `[1, H, W, 3]`), shown instead of the frame.
    Image,
    /// A person/foreground mask (`[1, 1, H, W]`, `[1, H, W, 1]` or `[1, H, W]`), composited.
    Mask,
    /// Keypoints `[.., N, 3]` as (y, x, score) in input fractions, drawn.
    Keypoints,
}

/// What a mask's background becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskBackground {
    /// Blurred (`radius`).
    Blur,
    /// One colour (`color`).
    Color,
}

/// `onnx`: a user's model and its declared contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OnnxParams {
    /// Input layout.
    pub layout: Layout,
    /// Input channel order.
    pub color_order: ColorOrder,
    /// Input width; needed only when the model's is dynamic.
    pub width: Option<u32>,
    /// Input height; needed only when the model's is dynamic.
    pub height: Option<u32>,
    /// Values for black and white: pixels are scaled linearly into this range.
    pub input_range: [f32; 2],
    /// Per-channel mean subtracted after scaling (in the model's channel order).
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation divided by after the mean.
    pub std: Option<[f32; 3]>,
    /// What the model produces.
    pub output: OutputKind,
    /// For `image`: the output values for black and white.
    pub output_range: [f32; 2],
    /// For `image`: output layout (default: the input's).
    pub output_layout: Option<Layout>,
    /// For `image`: output channel order (default: the input's).
    pub output_color_order: Option<ColorOrder>,
    /// For `mask`: what the background becomes.
    pub background: MaskBackground,
    /// For `mask` with `background: blur`.
    pub radius: u32,
    /// For `mask` with `background: color`, and the keypoints' colour.
    pub color: Color,
    /// For `mask`.
    pub smoothing: f32,
    /// For `mask`.
    pub feather: u32,
    /// For `mask`.
    pub threshold: f32,
    /// For `mask`: as for `background-blur`.
    pub stabilize: bool,
    /// For `mask`: as for `background-blur`.
    pub refine_edges: bool,
    /// For `keypoints`: score needed to draw one.
    pub min_score: f32,
    /// For `keypoints`: dot and limb size in pixels.
    pub line_width: u32,
}

impl Default for OnnxParams {
    fn default() -> Self {
        let blur = BlurParams::default();
        Self {
            layout: Layout::Nchw,
            color_order: ColorOrder::Rgb,
            width: None,
            height: None,
            input_range: [0.0, 1.0],
            mean: None,
            std: None,
            output: OutputKind::Image,
            output_range: [0.0, 1.0],
            output_layout: None,
            output_color_order: None,
            background: MaskBackground::Blur,
            radius: blur.radius,
            color: Color([0x00, 0xff, 0x66]),
            smoothing: blur.smoothing,
            feather: blur.feather,
            threshold: blur.threshold,
            stabilize: blur.stabilize,
            refine_edges: blur.refine_edges,
            min_score: 0.3,
            line_width: 4,
        }
    }
}

impl OnnxParams {
    /// Keys describing the model itself: fixed for the life of the relay.
    pub const CONTRACT_KEYS: &'static [&'static str] = &[
        "layout",
        "colorOrder",
        "width",
        "height",
        "inputRange",
        "mean",
        "std",
        "output",
        "outputRange",
        "outputLayout",
        "outputColorOrder",
    ];
}

/// The parsed parameters of the configured filter.
#[derive(Clone, Debug, PartialEq)]
pub enum FilterParams {
    /// No parameters.
    Passthrough,
    /// `background-blur`.
    BackgroundBlur(BlurParams),
    /// `background-replace`.
    BackgroundReplace(ReplaceParams),
    /// `face-blur`.
    FaceBlur(FaceBlurParams),
    /// `pose`.
    Pose(PoseParams),
    /// `onnx`.
    Onnx(OnnxParams),
}

/// A numeric key's accepted values: checked when parameters are set, and shown with them
/// (`GET /filter`'s `ranges`, the sender page's filter panel), so the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyRange {
    /// The key.
    pub key: &'static str,
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
}

const fn key_range(key: &'static str, min: f64, max: f64) -> KeyRange {
    KeyRange { key, min, max }
}

const RADIUS: KeyRange = key_range("radius", 1.0, 100.0);
const SMOOTHING: KeyRange = key_range("smoothing", 0.0, 0.95);
const FEATHER: KeyRange = key_range("feather", 0.0, 16.0);
const THRESHOLD: KeyRange = key_range("threshold", 0.05, 0.95);
const STRENGTH: KeyRange = key_range("strength", 2.0, 128.0);
const PADDING: KeyRange = key_range("padding", 0.0, 1.0);
const FACE_MIN_SCORE: KeyRange = key_range("minScore", 0.05, 0.99);
const HOLD_FRAMES: KeyRange = key_range("holdFrames", 0.0, 120.0);
const MIN_SCORE: KeyRange = key_range("minScore", 0.0, 1.0);
const LINE_WIDTH: KeyRange = key_range("lineWidth", 1.0, 32.0);
const HYSTERESIS: KeyRange = key_range("hysteresis", 0.0, 0.3);
const WIDTH: KeyRange = key_range("width", 1.0, 4096.0);
const HEIGHT: KeyRange = key_range("height", 1.0, 4096.0);

impl KeyRange {
    /// `v` within the range, or the message naming the key, the value and the range.
    fn check<T: Into<f64> + std::fmt::Display + Copy>(&self, v: T) -> Result<(), String> {
        // The bounds at f32 precision: a value written as the bound (0.3 as f32) is accepted.
        let (lo, hi) = (f64::from(self.min as f32), f64::from(self.max as f32));
        let x: f64 = v.into();
        if x < lo || x > hi {
            return Err(format!("{} {v} is outside {}..={}", self.key, self.min, self.max));
        }
        Ok(())
    }
}

fn mask_ranges(smoothing: f32, feather: u32, threshold: f32) -> Result<(), String> {
    SMOOTHING.check(smoothing)?;
    FEATHER.check(feather)?;
    THRESHOLD.check(threshold)
}

impl FilterParams {
    /// The numeric keys of `kind` and the values each accepts.
    pub fn ranges(kind: FilterKind) -> &'static [KeyRange] {
        match kind {
            FilterKind::Passthrough => &[],
            FilterKind::BackgroundBlur => &[RADIUS, SMOOTHING, FEATHER, THRESHOLD],
            FilterKind::BackgroundReplace => &[SMOOTHING, FEATHER, THRESHOLD],
            FilterKind::FaceBlur => &[STRENGTH, PADDING, FACE_MIN_SCORE, HOLD_FRAMES],
            FilterKind::Pose => &[MIN_SCORE, LINE_WIDTH, HYSTERESIS],
            FilterKind::Onnx => &[
                WIDTH, HEIGHT, RADIUS, SMOOTHING, FEATHER, THRESHOLD, MIN_SCORE, LINE_WIDTH,
            ],
        }
    }

    /// Parses and range-checks `params` for `kind`.
    pub fn parse(kind: FilterKind, params: &Map<String, Value>) -> Result<Self, ParamsError> {
        let filter = kind.as_str();
        let invalid = |detail: String| ParamsError::Invalid { filter, detail };
        fn typed<T: serde::de::DeserializeOwned>(params: &Map<String, Value>) -> Result<T, String> {
            serde_json::from_value(Value::Object(params.clone())).map_err(|e| e.to_string())
        }
        let parsed = match kind {
            FilterKind::Passthrough => {
                if !params.is_empty() {
                    return Err(ParamsError::NoneTaken {
                        keys: params.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
                FilterParams::Passthrough
            }
            FilterKind::BackgroundBlur => {
                let p: BlurParams = typed(params).map_err(invalid)?;
                RADIUS
                    .check(p.radius)
                    .and_then(|()| mask_ranges(p.smoothing, p.feather, p.threshold))
                    .map_err(invalid)?;
                FilterParams::BackgroundBlur(p)
            }
            FilterKind::BackgroundReplace => {
                let p: ReplaceParams = typed(params).map_err(invalid)?;
                mask_ranges(p.smoothing, p.feather, p.threshold).map_err(invalid)?;
                FilterParams::BackgroundReplace(p)
            }
            FilterKind::FaceBlur => {
                let p: FaceBlurParams = typed(params).map_err(invalid)?;
                STRENGTH
                    .check(p.strength)
                    .and_then(|()| PADDING.check(p.padding))
                    .and_then(|()| FACE_MIN_SCORE.check(p.min_score))
                    .and_then(|()| HOLD_FRAMES.check(p.hold_frames))
                    .map_err(invalid)?;
                FilterParams::FaceBlur(p)
            }
            FilterKind::Pose => {
                let p: PoseParams = typed(params).map_err(invalid)?;
                MIN_SCORE
                    .check(p.min_score)
                    .and_then(|()| LINE_WIDTH.check(p.line_width))
                    .and_then(|()| HYSTERESIS.check(p.hysteresis))
                    .map_err(invalid)?;
                FilterParams::Pose(p)
            }
            FilterKind::Onnx => {
                let p: OnnxParams = typed(params).map_err(invalid)?;
                let positive = |size: KeyRange, v: Option<u32>| match v {
                    Some(0) => Err(format!("{} must be positive", size.key)),
                    Some(v) => size.check(v),
                    None => Ok(()),
                };
                let span = |key: &str, r: [f32; 2]| {
                    if r[0] == r[1] || !r[0].is_finite() || !r[1].is_finite() {
                        Err(format!(
                            "{key} [{}, {}] must be two different finite numbers",
                            r[0], r[1]
                        ))
                    } else {
                        Ok(())
                    }
                };
                positive(WIDTH, p.width)
                    .and_then(|()| positive(HEIGHT, p.height))
                    .and_then(|()| span("inputRange", p.input_range))
                    .and_then(|()| span("outputRange", p.output_range))
                    .and_then(|()| match p.std {
                        Some(s) if s.iter().any(|&v| v == 0.0 || !v.is_finite()) => {
                            Err("std values must be non-zero".to_owned())
                        }
                        _ => Ok(()),
                    })
                    .and_then(|()| RADIUS.check(p.radius))
                    .and_then(|()| mask_ranges(p.smoothing, p.feather, p.threshold))
                    .and_then(|()| MIN_SCORE.check(p.min_score))
                    .and_then(|()| LINE_WIDTH.check(p.line_width))
                    .map_err(invalid)?;
                FilterParams::Onnx(p)
            }
        };
        Ok(parsed)
    }

    /// Reads and decodes the backdrop picture these parameters name (if any) under the rules
    /// for `origin`, reusing the one `previous` already decoded when it names the same file.
    /// The decoding happens here, in the caller's thread, so the filter thread only swaps it in.
    pub fn with_backdrop(
        mut self,
        assets: &Assets,
        origin: Origin,
        previous: Option<&FilterParams>,
    ) -> Result<Self, FilterError> {
        let FilterParams::BackgroundReplace(p) = &mut self else {
            return Ok(self);
        };
        let Some(name) = &p.image else {
            p.backdrop = None;
            return Ok(self);
        };
        let reused = match previous {
            Some(FilterParams::BackgroundReplace(prev)) => prev.backdrop.as_ref().filter(|b| b.name() == name),
            _ => None,
        };
        p.backdrop = Some(match reused {
            Some(b) => b.clone(),
            None => assets.load(name, origin).map_err(|source| FilterError::Image {
                filter: FilterKind::BackgroundReplace.as_str(),
                source,
            })?,
        });
        Ok(self)
    }

    /// Applies a JSON merge patch (RFC 7396: `null` removes a key, i.e. restores its default)
    /// to `current` for a running filter: returns the merged map and its parsed values, or why
    /// the change is refused (nothing is changed then).
    pub fn merge_live(
        kind: FilterKind,
        current: &Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<(Map<String, Value>, FilterParams), ParamsError> {
        let mut merged = current.clone();
        for (key, value) in patch {
            if kind == FilterKind::Onnx
                && OnnxParams::CONTRACT_KEYS.contains(&key.as_str())
                && current.get(key) != Some(value)
            {
                return Err(ParamsError::NotLive {
                    filter: kind.as_str(),
                    key: key.clone(),
                });
            }
            if value.is_null() {
                merged.remove(key);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
        let parsed = Self::parse(kind, &merged)?;
        Ok((merged, parsed))
    }
}

/// Fuzz entry point: any bytes as a `PATCH /filter` body, applied to every filter kind from
/// its defaults. Never a panic; an accepted patch parses again to the same values.
pub fn fuzz_patch_bytes(data: &[u8]) {
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for kind in [
        FilterKind::Passthrough,
        FilterKind::BackgroundBlur,
        FilterKind::BackgroundReplace,
        FilterKind::FaceBlur,
        FilterKind::Pose,
        FilterKind::Onnx,
    ] {
        if let Ok((merged, parsed)) = FilterParams::merge_live(kind, &Map::new(), &patch) {
            assert_eq!(FilterParams::parse(kind, &merged).as_ref(), Ok(&parsed), "{kind:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn every_range_shown_is_the_range_enforced() {
        let kinds = [
            FilterKind::BackgroundBlur,
            FilterKind::BackgroundReplace,
            FilterKind::FaceBlur,
            FilterKind::Pose,
            FilterKind::Onnx,
        ];
        for kind in kinds {
            for r in FilterParams::ranges(kind) {
                let integer = !matches!(r.key, "smoothing" | "threshold" | "padding" | "minScore" | "hysteresis");
                let step = if integer { 1.0 } else { 0.01 };
                let parse = |v: f64| {
                    let value = if integer { json!(v as i64) } else { json!(v) };
                    FilterParams::parse(kind, &map(json!({ r.key: value })))
                };

                for v in [r.min, r.max] {
                    assert!(parse(v).is_ok(), "{kind:?} {} = {v} is in {r:?}: {:?}", r.key, parse(v));
                }
                let outside = [r.min - step, r.max + step].into_iter().filter(|v| *v >= 0.0);
                for v in outside {
                    let err = parse(v).expect_err("outside the range").to_string();
                    assert!(err.contains(r.key), "{kind:?} {} = {v}: {err}", r.key);
                }
            }
        }
    }

    #[test]
    fn defaults_apply_when_no_params_are_given() {
        assert_eq!(
            FilterParams::parse(FilterKind::BackgroundBlur, &Map::new()),
            Ok(FilterParams::BackgroundBlur(BlurParams::default()))
        );
    }

    #[test]
    fn camel_case_keys_and_colours_parse() {
        let p = FilterParams::parse(
            FilterKind::Pose,
            &map(json!({"minScore": 0.5, "lineWidth": 6, "color": "#ff0000"})),
        )
        .unwrap();
        let FilterParams::Pose(p) = p else { panic!("{p:?}") };
        assert_eq!((p.min_score, p.line_width, p.color), (0.5, 6, Color([255, 0, 0])));
    }

    #[test]
    fn an_unknown_key_is_named_with_the_known_ones() {
        let err = FilterParams::parse(FilterKind::BackgroundBlur, &map(json!({"radios": 3}))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("filter background-blur: unknown field `radios`"),
            "{msg}"
        );
        assert!(msg.contains("`radius`"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_range() {
        let err = FilterParams::parse(FilterKind::BackgroundBlur, &map(json!({"radius": 0}))).unwrap_err();
        assert_eq!(err.to_string(), "filter background-blur: radius 0 is outside 1..=100");
        let err = FilterParams::parse(FilterKind::FaceBlur, &map(json!({"padding": 2.5}))).unwrap_err();
        assert_eq!(err.to_string(), "filter face-blur: padding 2.5 is outside 0..=1");
    }

    #[test]
    fn a_bad_colour_is_refused_with_the_expected_form() {
        let err = FilterParams::parse(FilterKind::BackgroundReplace, &map(json!({"color": "green"}))).unwrap_err();
        assert!(
            err.to_string().contains("expected a colour #RRGGBB, got \"green\""),
            "{err}"
        );
    }

    #[test]
    fn passthrough_refuses_parameters() {
        let err = FilterParams::parse(FilterKind::Passthrough, &map(json!({"radius": 3}))).unwrap_err();
        assert_eq!(err.to_string(), "filter passthrough takes no parameters, got radius");
    }

    #[test]
    fn a_live_patch_merges_and_null_restores_the_default() {
        let current = map(json!({"radius": 20, "smoothing": 0.8}));
        let (merged, parsed) = FilterParams::merge_live(
            FilterKind::BackgroundBlur,
            &current,
            &map(json!({"radius": 30, "smoothing": null})),
        )
        .unwrap();
        assert_eq!(merged, map(json!({"radius": 30})));
        let FilterParams::BackgroundBlur(p) = parsed else {
            panic!()
        };
        assert_eq!((p.radius, p.smoothing), (30, BlurParams::default().smoothing));
    }

    #[test]
    fn a_live_patch_cannot_change_an_onnx_models_contract() {
        let current = map(json!({"layout": "nchw", "output": "image"}));
        let err = FilterParams::merge_live(FilterKind::Onnx, &current, &map(json!({"layout": "nhwc"}))).unwrap_err();
        assert_eq!(
            err,
            ParamsError::NotLive {
                filter: "onnx",
                key: "layout".into()
            }
        );
        // Restating the same value, or changing a display key, is fine.
        assert!(
            FilterParams::merge_live(FilterKind::Onnx, &current, &map(json!({"layout": "nchw", "radius": 5}))).is_ok()
        );
    }

    #[test]
    fn an_invalid_live_patch_is_refused_whole() {
        let current = map(json!({"radius": 20}));
        assert!(FilterParams::merge_live(FilterKind::BackgroundBlur, &current, &map(json!({"radius": 500}))).is_err());
    }
}
