//! Person segmentation (MediaPipe selfie, 256x256) and the two filters built on it:
//! `background-blur` and `background-replace`. The mask is smoothed over time against flicker,
//! feathered at the edges, and composited in YUV at the frame's size.

use std::path::Path;
use std::time::{Duration, Instant};

use super::assets::Backdrop as Picture;
use super::params::{FilterParams, MaskBackground, ParamsError};
use super::pixels::{Backdrop, Fit, Mask, Planes, blurred_background, composite};
use super::{Filter, FilterError, Filtered, StageTimes, frame_error, mismatch};
use crate::frame::{I420Frame, rgb_to_yuv};
use crate::infer::{Device, ElementType, Expect, InferError, InputData, Model, RuntimeOptions};

/// The shipped model file.
pub const DEFAULT_MODEL: &str = "selfie.onnx";
/// The model's input edge.
pub const INPUT_SIZE: u32 = 256;
/// Width of the alpha ramp around the threshold: soft enough to hide the mask's pixel steps.
const SOFTNESS: f32 = 0.3;

/// MediaPipe selfie segmentation: a person probability per pixel of a 256x256 view of the frame.
pub struct Segmenter {
    model: Model,
    planes: Planes,
    input: Vec<f32>,
}

impl Segmenter {
    /// Opens the model and checks it takes `[1,256,256,3]` float RGB and gives `[1,256,256,1]`.
    pub fn open(path: &Path, options: &RuntimeOptions) -> Result<Self, InferError> {
        let model = Model::open(path, options)?;
        let s = i64::from(INPUT_SIZE);
        model.require(
            "person segmentation",
            &[Expect::fixed(ElementType::F32, &[1, s, s, 3])],
            &[Expect::fixed(ElementType::F32, &[1, s, s, 1])],
        )?;
        Ok(Self {
            model,
            planes: Planes::default(),
            input: Vec::new(),
        })
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The person mask of `frame` at the model's resolution (0 background .. 1 person), with
    /// the preprocessing and inference times.
    pub fn person_mask(&mut self, frame: &I420Frame) -> Result<(Mask, Duration, Duration), String> {
        let start = Instant::now();
        let (rgb, _) = self
            .planes
            .sample_rgb(frame, INPUT_SIZE, INPUT_SIZE, Fit::Stretch)
            .map_err(|e| e.to_string())?;
        self.input.clear();
        self.input.extend(rgb.data.iter().map(|&c| f32::from(c) / 255.0));
        let prepared = Instant::now();
        let s = i64::from(INPUT_SIZE);
        let mut outputs = self
            .model
            .run(InputData::F32(&self.input), &[1, s, s, 3])
            .map_err(|e| e.to_string())?;
        let inferred = Instant::now();
        let out = outputs.swap_remove(0);
        if out.data.len() != (INPUT_SIZE * INPUT_SIZE) as usize {
            return Err(format!(
                "the mask has {} values, expected {}",
                out.data.len(),
                INPUT_SIZE * INPUT_SIZE
            ));
        }
        Ok((
            Mask {
                width: INPUT_SIZE,
                height: INPUT_SIZE,
                data: out.data,
            },
            prepared - start,
            inferred - prepared,
        ))
    }
}

/// What replaces the background.
enum Look {
    Blur {
        radius: u32,
    },
    Color([u8; 3]),
    /// Decoded before it got here (startup or the `PATCH /filter` task), shared, not copied.
    Image(Picture),
}

/// How a person mask becomes alpha.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskShape {
    /// Weight of the previous mask.
    pub smoothing: f32,
    /// Feather radius in mask pixels.
    pub feather: u32,
    /// Foreground threshold.
    pub threshold: f32,
}

/// A mask's temporal smoothing and compositing over a backdrop; shared with the `onnx` filter's
/// mask output.
pub struct MaskCompositor {
    look: Look,
    shape: MaskShape,
    previous: Option<Mask>,
    planes: Planes,
    /// The backdrop picture at the last frame size.
    backdrop: Option<I420Frame>,
}

impl MaskCompositor {
    fn new(look: Look, shape: MaskShape) -> Self {
        Self {
            look,
            shape,
            previous: None,
            planes: Planes::default(),
            backdrop: None,
        }
    }

    /// A compositor that blurs the background by `radius` pixels.
    pub fn blur(radius: u32, shape: MaskShape) -> Self {
        Self::new(Look::Blur { radius }, shape)
    }

    /// A compositor that paints the background one RGB colour.
    pub fn color(rgb: [u8; 3], shape: MaskShape) -> Self {
        Self::new(Look::Color(rgb_to_yuv(rgb)), shape)
    }

    fn set_look(&mut self, look: Look, shape: MaskShape) {
        self.look = look;
        self.shape = shape;
        self.backdrop = None;
    }

    /// Smooths `mask` against the previous one and composites `frame` over the backdrop.
    pub fn apply(&mut self, frame: &mut I420Frame, mask: Mask) -> Result<(), String> {
        let mask = mask.smoothed(self.previous.as_ref(), self.shape.smoothing);
        let alpha = mask.to_alpha(self.shape.threshold, self.shape.feather, SOFTNESS);
        let (aw, ah) = (mask.width, mask.height);
        self.previous = Some(mask);
        let e = |e: super::pixels::ResizeError| e.to_string();
        match &self.look {
            Look::Blur { radius } => {
                let weight = Mask {
                    width: aw,
                    height: ah,
                    data: alpha.iter().map(|&a| f32::from(a) / 255.0).collect(),
                };
                let bg = blurred_background(&mut self.planes, frame, Some(&weight), *radius).map_err(e)?;
                composite(frame, &alpha, aw, ah, &Backdrop::Small(&bg));
                Ok(())
            }
            Look::Color(yuv) => {
                composite(frame, &alpha, aw, ah, &Backdrop::Color(*yuv));
                Ok(())
            }
            Look::Image(picture) => {
                let rgb = picture.rgb();
                let stale = self
                    .backdrop
                    .as_ref()
                    .is_none_or(|b| (b.width(), b.height()) != (frame.width(), frame.height()));
                if stale {
                    self.backdrop = Some(
                        self.planes
                            .rgb_to_frame(rgb.as_raw(), rgb.width(), rgb.height(), frame.width(), frame.height())
                            .map_err(e)?,
                    );
                }
                let Some(bg) = self.backdrop.as_ref() else {
                    return Err("backdrop missing".into());
                };
                composite(frame, &alpha, aw, ah, &Backdrop::Frame(bg));
                Ok(())
            }
        }
    }
}

/// `background-blur` and `background-replace`.
pub struct BackgroundFilter {
    name: &'static str,
    segmenter: Segmenter,
    compositor: MaskCompositor,
}

impl BackgroundFilter {
    /// Opens the segmentation model and applies `params` (a blur or replace variant).
    pub fn open(path: &Path, options: &RuntimeOptions, params: &FilterParams) -> Result<Self, FilterError> {
        let name = match params {
            FilterParams::BackgroundReplace(_) => "background-replace",
            _ => "background-blur",
        };
        let segmenter = Segmenter::open(path, options).map_err(|source| FilterError::Setup { filter: name, source })?;
        let (look, shape) = look_of(name, params)?;
        Ok(Self {
            name,
            segmenter,
            compositor: MaskCompositor::new(look, shape),
        })
    }
}

fn look_of(name: &'static str, params: &FilterParams) -> Result<(Look, MaskShape), FilterError> {
    match params {
        FilterParams::BackgroundBlur(p) => Ok((
            Look::Blur { radius: p.radius },
            MaskShape {
                smoothing: p.smoothing,
                feather: p.feather,
                threshold: p.threshold,
            },
        )),
        FilterParams::BackgroundReplace(p) => {
            let look = match (&p.image, &p.backdrop) {
                (Some(_), Some(picture)) => Look::Image(picture.clone()),
                (Some(image), None) => {
                    return Err(FilterError::Params(ParamsError::Invalid {
                        filter: name,
                        detail: format!("image {} was named but not loaded", image.display()),
                    }));
                }
                (None, _) => Look::Color(rgb_to_yuv(p.color.0)),
            };
            Ok((
                look,
                MaskShape {
                    smoothing: p.smoothing,
                    feather: p.feather,
                    threshold: p.threshold,
                },
            ))
        }
        other => Err(mismatch(name, other)),
    }
}

impl Filter for BackgroundFilter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply(&mut self, mut frame: I420Frame) -> Result<Filtered, FilterError> {
        let (mask, preprocess, infer) = self
            .segmenter
            .person_mask(&frame)
            .map_err(|d| frame_error(self.name, &frame, d))?;
        let start = Instant::now();
        self.compositor
            .apply(&mut frame, mask)
            .map_err(|d| frame_error(self.name, &frame, d))?;
        Ok(Filtered {
            frame,
            times: Some(StageTimes {
                preprocess,
                infer,
                postprocess: start.elapsed(),
            }),
        })
    }

    fn set_params(&mut self, params: &FilterParams) -> Result<(), FilterError> {
        // The same decoded picture: keep the backdrop already scaled to the frame.
        if let (FilterParams::BackgroundReplace(p), Look::Image(current)) = (params, &self.compositor.look)
            && p.backdrop.as_ref() == Some(current)
        {
            self.compositor.shape = MaskShape {
                smoothing: p.smoothing,
                feather: p.feather,
                threshold: p.threshold,
            };
            return Ok(());
        }
        let (look, shape) = look_of(self.name, params)?;
        self.compositor.set_look(look, shape);
        Ok(())
    }

    fn device(&self) -> Option<Device> {
        Some(self.segmenter.device())
    }
}

/// The `mask` background of the `onnx` filter.
pub(super) fn compositor_for(
    background: MaskBackground,
    radius: u32,
    rgb: [u8; 3],
    shape: MaskShape,
) -> MaskCompositor {
    match background {
        MaskBackground::Blur => MaskCompositor::blur(radius, shape),
        MaskBackground::Color => MaskCompositor::color(rgb, shape),
    }
}
