//! `onnx`: a user's own model with a declared contract (`filter.params`): input layout, size,
//! channel order and scaling, and what the output is — a picture shown instead of the frame
//! (style transfer, a DensePose rendering), a mask composited like the segmentation filters, or
//! keypoints drawn over the frame. The contract is checked against the model at startup.

use std::path::Path;
use std::time::Instant;

use super::params::{ColorOrder, FilterParams, Layout, OnnxParams, OutputKind};
use super::pixels::{Fit, Mask, Pen, Placement, Planes};
use super::pose::{draw_skeleton, keypoints_from};
use super::segment::{MaskCompositor, MaskShape, compositor_for};
use super::{Filter, FilterError, Filtered, StageTimes, frame_error, mismatch};
use crate::frame::I420Frame;
use crate::infer::{Device, ElementType, InferError, InputData, Model, Output, RuntimeOptions, TensorInfo};

const NAME: &str = "onnx";

/// The input tensor the filter feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputShape {
    /// Element type, as the model declares it.
    pub element: ElementType,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Layout.
    pub layout: Layout,
}

impl InputShape {
    /// The tensor dimensions.
    pub fn dims(&self) -> [i64; 4] {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        match self.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        }
    }
}

/// Resolves the input the contract describes against what the model declares, or says why
/// they disagree.
pub fn resolve_input(model: &TensorInfo, params: &OnnxParams) -> Result<InputShape, String> {
    let declared = || format!("the model declares {model}");
    if !matches!(model.element, ElementType::F32 | ElementType::U8 | ElementType::I32) {
        return Err(format!("input must be float32, uint8 or int32; {}", declared()));
    }
    if model.dims.len() != 4 {
        return Err(format!(
            "input must be a 4-D image tensor ({:?}); {}",
            params.layout,
            declared()
        ));
    }
    let (c, h, w) = match params.layout {
        Layout::Nchw => (model.dims[1], model.dims[2], model.dims[3]),
        Layout::Nhwc => (model.dims[3], model.dims[1], model.dims[2]),
    };
    let layout = match params.layout {
        Layout::Nchw => "nchw [1, 3, height, width]",
        Layout::Nhwc => "nhwc [1, height, width, 3]",
    };
    if !(c == 3 || c < 0) || !(model.dims[0] == 1 || model.dims[0] < 0) {
        return Err(format!(
            "layout {layout} expects 3 channels and batch 1; {}",
            declared()
        ));
    }
    let side = |key: &str, model_dim: i64, param: Option<u32>| -> Result<u32, String> {
        match (model_dim, param) {
            (d, None) if d > 0 => u32::try_from(d).map_err(|_| format!("input {key} {d} is too large")),
            (d, Some(p)) if d > 0 && i64::from(p) != d => Err(format!(
                "params.{key} is {p} but the model's input {key} is {d}; {}",
                declared()
            )),
            (_, Some(p)) => Ok(p),
            (_, None) => Err(format!(
                "the model's input {key} is dynamic: set params.{key}; {}",
                declared()
            )),
        }
    };
    Ok(InputShape {
        element: model.element,
        width: side("width", w, params.width)?,
        height: side("height", h, params.height)?,
        layout: params.layout,
    })
}

/// Checks the first output can be what the contract says it is.
pub fn check_output(model: &TensorInfo, params: &OnnxParams) -> Result<(), String> {
    let declared = format!("the model declares {model}");
    if model.element != ElementType::F32 {
        return Err(format!("output must be float32; {declared}"));
    }
    let d = &model.dims;
    let ok = match params.output {
        OutputKind::Image => {
            let layout = params.output_layout.unwrap_or(params.layout);
            d.len() == 4
                && match layout {
                    Layout::Nchw => d[1] == 3 || d[1] < 0,
                    Layout::Nhwc => d[3] == 3 || d[3] < 0,
                }
        }
        OutputKind::Mask => mask_size(d).is_some() || d.iter().any(|&x| x < 0),
        OutputKind::Keypoints => d.len() >= 2 && (d[d.len() - 1] == 3 || d[d.len() - 1] < 0),
    };
    if ok {
        Ok(())
    } else {
        let want = match params.output {
            OutputKind::Image => "an image [1, 3, H, W] (nchw) or [1, H, W, 3] (nhwc)",
            OutputKind::Mask => "a mask [1, 1, H, W], [1, H, W, 1] or [1, H, W]",
            OutputKind::Keypoints => "keypoints [.., N, 3] as (y, x, score)",
        };
        let kind = match params.output {
            OutputKind::Image => "image",
            OutputKind::Mask => "mask",
            OutputKind::Keypoints => "keypoints",
        };
        Err(format!("output {kind} expects {want}; {declared}"))
    }
}

/// (width, height) of a mask tensor, if `dims` is one.
fn mask_size(d: &[i64]) -> Option<(u32, u32)> {
    let (h, w) = match d {
        [1, 1, h, w] | [1, h, w, 1] | [1, h, w] => (*h, *w),
        _ => return None,
    };
    Some((
        u32::try_from(w).ok().filter(|&v| v > 0)?,
        u32::try_from(h).ok().filter(|&v| v > 0)?,
    ))
}

/// Writes a packed RGB picture into a tensor as the contract says.
pub fn fill_input(rgb: &[u8], shape: &InputShape, params: &OnnxParams, out: &mut Vec<f32>) {
    let (w, h) = (shape.width as usize, shape.height as usize);
    let plane = w * h;
    out.clear();
    out.resize(plane * 3, 0.0);
    let [lo, hi] = params.input_range;
    let order: [usize; 3] = match params.color_order {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    for i in 0..plane {
        for (c, &src) in order.iter().enumerate() {
            let mut v = lo + (hi - lo) * f32::from(rgb[i * 3 + src]) / 255.0;
            if let Some(mean) = params.mean {
                v -= mean[c];
            }
            if let Some(std) = params.std {
                v /= std[c];
            }
            let at = match shape.layout {
                Layout::Nchw => c * plane + i,
                Layout::Nhwc => i * 3 + c,
            };
            out[at] = v;
        }
    }
}

/// Reads an image output back into packed RGB: (rgb, width, height).
pub fn read_image(out: &Output, params: &OnnxParams) -> Result<(Vec<u8>, u32, u32), String> {
    let layout = params.output_layout.unwrap_or(params.layout);
    let order = params.output_color_order.unwrap_or(params.color_order);
    let d = &out.dims;
    let (h, w) = match (layout, d.as_slice()) {
        (Layout::Nchw, [1, 3, h, w]) | (Layout::Nhwc, [1, h, w, 3]) => (*h as usize, *w as usize),
        _ => {
            return Err(format!(
                "the output image has shape {d:?}, not {layout:?} with 3 channels"
            ));
        }
    };
    let plane = w * h;
    if out.data.len() != plane * 3 || plane == 0 {
        return Err(format!("the output image has {} values for {w}x{h}x3", out.data.len()));
    }
    let [lo, hi] = params.output_range;
    let mut rgb = vec![0u8; plane * 3];
    for i in 0..plane {
        for c in 0..3 {
            let at = match layout {
                Layout::Nchw => c * plane + i,
                Layout::Nhwc => i * 3 + c,
            };
            let v = ((out.data[at] - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8;
            let dst = match order {
                ColorOrder::Rgb => c,
                ColorOrder::Bgr => 2 - c,
            };
            rgb[i * 3 + dst] = v;
        }
    }
    Ok((rgb, w as u32, h as u32))
}

/// The `onnx` filter.
pub struct OnnxFilter {
    model: Model,
    params: OnnxParams,
    input: InputShape,
    planes: Planes,
    tensor: Vec<f32>,
    tensor_u8: Vec<u8>,
    tensor_i32: Vec<i32>,
    compositor: MaskCompositor,
}

impl OnnxFilter {
    /// Opens the model and checks it against the contract in `params`.
    pub fn open(path: &Path, options: &RuntimeOptions, params: OnnxParams) -> Result<Self, FilterError> {
        let setup = |source: InferError| FilterError::Setup { filter: NAME, source };
        let model = Model::open(path, options).map_err(setup)?;
        let contract = |detail: String| {
            setup(InferError::Contract {
                path: path.to_path_buf(),
                filter: NAME.into(),
                detail,
            })
        };
        let [input] = model.inputs() else {
            let list: Vec<String> = model.inputs().iter().map(ToString::to_string).collect();
            return Err(contract(format!(
                "expected exactly one image input, the model has {}: {}",
                list.len(),
                list.join(", ")
            )));
        };
        let input = resolve_input(input, &params).map_err(contract)?;
        let Some(output) = model.outputs().first() else {
            return Err(contract("the model has no outputs".into()));
        };
        check_output(output, &params).map_err(contract)?;
        let compositor = compositor_of(&params);
        tracing::info!(
            model = %path.display(),
            input = ?input.dims(),
            output = ?params.output,
            "onnx filter contract accepted"
        );
        Ok(Self {
            model,
            params,
            input,
            planes: Planes::default(),
            tensor: Vec::new(),
            tensor_u8: Vec::new(),
            tensor_i32: Vec::new(),
            compositor,
        })
    }

    fn run(&mut self, frame: &I420Frame) -> Result<(Output, StageTimes), String> {
        let start = Instant::now();
        let (rgb, _) = self
            .planes
            .sample_rgb(frame, self.input.width, self.input.height, Fit::Stretch)
            .map_err(|e| e.to_string())?;
        fill_input(&rgb.data, &self.input, &self.params, &mut self.tensor);
        let dims = self.input.dims();
        let data = match self.input.element {
            ElementType::U8 => {
                self.tensor_u8.clear();
                self.tensor_u8
                    .extend(self.tensor.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
                InputData::U8(&self.tensor_u8)
            }
            ElementType::I32 => {
                self.tensor_i32.clear();
                self.tensor_i32.extend(self.tensor.iter().map(|v| v.round() as i32));
                InputData::I32(&self.tensor_i32)
            }
            _ => InputData::F32(&self.tensor),
        };
        let prepared = Instant::now();
        let mut outputs = self.model.run(data, &dims).map_err(|e| e.to_string())?;
        let inferred = Instant::now();
        if outputs.is_empty() {
            return Err("the model returned no outputs".into());
        }
        Ok((
            outputs.swap_remove(0),
            StageTimes {
                preprocess: prepared - start,
                infer: inferred - prepared,
                postprocess: Default::default(),
            },
        ))
    }
}

fn compositor_of(p: &OnnxParams) -> MaskCompositor {
    compositor_for(
        p.background,
        p.radius,
        p.color.0,
        MaskShape {
            smoothing: p.smoothing,
            feather: p.feather,
            threshold: p.threshold,
            stabilize: p.stabilize,
            refine_edges: p.refine_edges,
        },
    )
}

impl Filter for OnnxFilter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, mut frame: I420Frame) -> Result<Filtered, FilterError> {
        let (out, mut times) = self.run(&frame).map_err(|d| frame_error(NAME, &frame, d))?;
        let start = Instant::now();
        // `Some`: a new picture; `None`: the frame was changed in place.
        let result = match self.params.output {
            OutputKind::Image => read_image(&out, &self.params).and_then(|(rgb, w, h)| {
                self.planes
                    .rgb_to_frame(&rgb, w, h, frame.width(), frame.height())
                    .map(Some)
                    .map_err(|e| e.to_string())
            }),
            OutputKind::Mask => match mask_size(&out.dims) {
                Some((width, height)) if out.data.len() == (width * height) as usize => {
                    let mask = Mask {
                        width,
                        height,
                        data: out.data,
                    };
                    self.compositor.apply(&mut frame, mask).map(|()| None)
                }
                _ => Err(format!("the output mask has shape {:?}", out.dims)),
            },
            OutputKind::Keypoints => {
                let p = &self.params;
                let pen = Pen::new(p.color.0, p.line_width as f32);
                let points = keypoints_from(&out.data, &Placement::FULL);
                draw_skeleton(&mut frame, &points, p.min_score, &pen, &pen);
                Ok(None)
            }
        };
        let frame = match result {
            Ok(Some(picture)) => picture,
            Ok(None) => frame,
            Err(d) => return Err(frame_error(NAME, &frame, d)),
        };
        times.postprocess = start.elapsed();
        Ok(Filtered {
            frame,
            times: Some(times),
        })
    }

    fn set_params(&mut self, params: &FilterParams) -> Result<(), FilterError> {
        match params {
            FilterParams::Onnx(p) => {
                // The contract keys cannot change live (`FilterParams::merge_live`), so the input
                // stays as resolved at startup.
                self.compositor = compositor_of(p);
                self.params = p.clone();
                Ok(())
            }
            other => Err(mismatch(NAME, other)),
        }
    }

    fn device(&self) -> Option<Device> {
        Some(self.model.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(element: ElementType, dims: &[i64]) -> TensorInfo {
        TensorInfo {
            name: "image".into(),
            element,
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn a_fixed_model_input_gives_the_size() {
        let shape = resolve_input(&info(ElementType::F32, &[1, 3, 64, 48]), &OnnxParams::default()).unwrap();
        assert_eq!((shape.width, shape.height), (48, 64));
        assert_eq!(shape.dims(), [1, 3, 64, 48]);
    }

    #[test]
    fn a_dynamic_input_needs_the_size_in_params() {
        let model = info(ElementType::F32, &[1, 3, -1, -1]);
        let err = resolve_input(&model, &OnnxParams::default()).unwrap_err();
        assert_eq!(
            err,
            "the model's input width is dynamic: set params.width; the model declares 'image' float32 [1, 3, ?, ?]"
        );
        let params = OnnxParams {
            width: Some(320),
            height: Some(240),
            ..Default::default()
        };
        assert_eq!(resolve_input(&model, &params).unwrap().dims(), [1, 3, 240, 320]);
    }

    #[test]
    fn a_layout_that_does_not_match_the_model_names_both() {
        let params = OnnxParams {
            layout: Layout::Nhwc,
            ..Default::default()
        };
        let err = resolve_input(&info(ElementType::F32, &[1, 3, 64, 64]), &params).unwrap_err();
        assert_eq!(
            err,
            "layout nhwc [1, height, width, 3] expects 3 channels and batch 1; the model declares 'image' float32 [1, 3, 64, 64]"
        );
    }

    #[test]
    fn a_size_in_params_must_agree_with_a_fixed_model() {
        let params = OnnxParams {
            width: Some(32),
            ..Default::default()
        };
        let err = resolve_input(&info(ElementType::F32, &[1, 3, 64, 64]), &params).unwrap_err();
        assert!(
            err.starts_with("params.width is 32 but the model's input width is 64"),
            "{err}"
        );
    }

    #[test]
    fn scaling_mean_std_and_bgr_order_are_applied_per_channel() {
        let shape = InputShape {
            element: ElementType::F32,
            width: 1,
            height: 1,
            layout: Layout::Nchw,
        };
        let params = OnnxParams {
            color_order: ColorOrder::Bgr,
            input_range: [0.0, 255.0],
            mean: Some([10.0, 20.0, 30.0]),
            std: Some([2.0, 2.0, 2.0]),
            ..Default::default()
        };
        let mut out = Vec::new();
        fill_input(&[250, 120, 40], &shape, &params, &mut out);
        // B first: (40 - 10) / 2, G: (120 - 20) / 2, R: (250 - 30) / 2.
        assert_eq!(out, vec![15.0, 50.0, 110.0]);
    }

    #[test]
    fn nhwc_input_interleaves_channels() {
        let shape = InputShape {
            element: ElementType::F32,
            width: 2,
            height: 1,
            layout: Layout::Nhwc,
        };
        let mut out = Vec::new();
        fill_input(&[255, 0, 0, 0, 0, 255], &shape, &OnnxParams::default(), &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn an_image_output_is_read_back_with_its_range_and_order() {
        let params = OnnxParams {
            output_range: [-1.0, 1.0],
            output_color_order: Some(ColorOrder::Bgr),
            ..Default::default()
        };
        let out = Output {
            dims: vec![1, 3, 1, 1],
            data: vec![1.0, 0.0, -1.0],
        };
        // Channel 0 is blue (1.0 -> 255), channel 2 red (-1.0 -> 0).
        assert_eq!(read_image(&out, &params), Ok((vec![0, 128, 255], 1, 1)));
    }

    #[test]
    fn outputs_that_cannot_be_the_declared_kind_are_refused() {
        let keypoints = OnnxParams {
            output: OutputKind::Keypoints,
            ..Default::default()
        };
        assert!(check_output(&info(ElementType::F32, &[1, 17, 3]), &keypoints).is_ok());
        let err = check_output(&info(ElementType::F32, &[1, 3, 64, 64]), &keypoints).unwrap_err();
        assert!(
            err.starts_with("output keypoints expects keypoints [.., N, 3]"),
            "{err}"
        );
        let mask = OnnxParams {
            output: OutputKind::Mask,
            ..Default::default()
        };
        assert!(check_output(&info(ElementType::F32, &[1, 1, 64, 64]), &mask).is_ok());
        assert!(check_output(&info(ElementType::F32, &[1, 2, 64, 64]), &mask).is_err());
    }
}
