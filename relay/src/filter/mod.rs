//! The filter stage: a [`Filter`] transforms each decoded frame on the filter thread, fed by the
//! newest-frame slot. `passthrough` leaves frames untouched; the others run an ONNX model
//! ([`crate::infer`]): person segmentation (`background-blur`, `background-replace`), face
//! detection (`face-blur`), pose keypoints (`pose`), or a user's model with a declared contract
//! (`onnx`). Each reports how long its preprocessing, inference and postprocessing took.

pub mod assets;
pub mod custom;
pub mod face;
pub mod live;
pub mod params;
pub mod pixels;
pub mod pose;
pub mod pyramid;
pub mod refine;
pub mod segment;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::frame::I420Frame;
use crate::infer::{Device, InferError, RuntimeOptions};
use crate::install;
use assets::{AssetError, Assets, Origin};
pub use params::{FilterParams, ParamsError};

/// Errors of a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter failed on one frame (the frame is dropped and counted).
    #[error("filter {filter} failed on a {width}x{height} frame: {detail}")]
    Frame {
        filter: &'static str,
        width: u32,
        height: u32,
        detail: String,
    },
    /// The filter could not start: the runtime or its model.
    #[error("filter {filter}: {source}")]
    Setup {
        filter: &'static str,
        #[source]
        source: InferError,
    },
    /// A built-in filter's shipped model is in none of the places looked at.
    #[error(
        "filter {filter}: its model {file} is in none of: {looked_in}; run `scripts/setup.sh` (or `make models`) in the checkout, or set {env} (or filter.models_dir) to the directory that holds it",
        env = install::MODELS_DIR_ENV
    )]
    ModelNotFound {
        filter: &'static str,
        file: &'static str,
        looked_in: String,
    },
    /// `onnx` without `filter.model`.
    #[error("filter onnx needs filter.model (the path of your .onnx file)")]
    NoModel,
    /// Its parameters are refused.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A backdrop image cannot be used.
    #[error("filter {filter}: {source}")]
    Image {
        filter: &'static str,
        #[source]
        source: AssetError,
    },
}

/// How long the parts of one model-based filter run took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Frame -> model input (resize, colour conversion, normalisation).
    pub preprocess: Duration,
    /// The model.
    pub infer: Duration,
    /// Model output -> frame (mask, compositing, drawing).
    pub postprocess: Duration,
}

/// A filtered frame.
#[derive(Debug)]
pub struct Filtered {
    /// The picture.
    pub frame: I420Frame,
    /// The parts' times, for filters that run a model.
    pub times: Option<StageTimes>,
}

/// One per-frame transformation.
pub trait Filter: Send {
    /// The name shown in metrics and `/status`.
    fn name(&self) -> &'static str;
    /// Transforms one frame.
    fn apply(&mut self, frame: I420Frame) -> Result<Filtered, FilterError>;
    /// Takes new parameters between frames (already validated for this filter's kind).
    fn set_params(&mut self, params: &FilterParams) -> Result<(), FilterError>;
    /// Where its model runs (`None` without a model).
    fn device(&self) -> Option<Device> {
        None
    }
    /// What the filter made of the last frame, for quality figures (`bench`); `None` where it
    /// has nothing to show.
    fn probe(&self) -> Option<Probe<'_>> {
        None
    }
}

/// What a filter made of the last frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe<'a> {
    /// The alpha the frame was composited with (255 = person), `width`x`height`.
    Mask { alpha: &'a [u8], width: u32, height: u32 },
    /// Each keypoint as drawn, in frame pixels; `None` where it was not drawn.
    Keypoints(&'a [Option<(f32, f32)>]),
}

/// Leaves frames as they are.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Filter for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn apply(&mut self, frame: I420Frame) -> Result<Filtered, FilterError> {
        Ok(Filtered { frame, times: None })
    }

    fn set_params(&mut self, _params: &FilterParams) -> Result<(), FilterError> {
        Ok(())
    }
}

pub use livefilter_contract::config::{FilterConfig, FilterKind};

/// The model file shipped in `models/` for a built-in filter.
pub fn default_model(kind: FilterKind) -> Option<&'static str> {
    match kind {
        FilterKind::BackgroundBlur | FilterKind::BackgroundReplace => Some(segment::DEFAULT_MODEL),
        FilterKind::FaceBlur => Some(face::DEFAULT_MODEL),
        FilterKind::Pose => Some(pose::DEFAULT_MODEL),
        FilterKind::Passthrough | FilterKind::Onnx => None,
    }
}

pub use crate::install::MODELS_DIR_ENV;

/// What the relay does with its filter configuration: check it, resolve its model and
/// pictures, and build the filter.
pub trait FilterConfigExt {
    /// The parsed parameters (a backdrop picture named but not loaded; see
    /// [`FilterConfigExt::resolved_params`]).
    fn parsed_params(&self) -> Result<FilterParams, ParamsError>;
    /// The parsed parameters with their backdrop picture read and decoded (the startup
    /// configuration's rules: see [`assets`]).
    fn resolved_params(&self) -> Result<FilterParams, FilterError>;
    /// Where backdrop pictures may come from.
    fn assets(&self) -> Assets;
    /// The model file this configuration runs, if the filter has one: the configured file, else
    /// the filter's shipped model in the first models directory that has it.
    fn model_path(&self) -> Option<PathBuf>;
    /// The error for a built-in filter whose shipped model is in none of the models directories.
    fn missing_default_model(&self) -> Option<FilterError>;
    /// How models are run.
    fn runtime_options(&self) -> RuntimeOptions;
    /// Checks what can be checked without loading anything: the parameters, and that `onnx`
    /// names a model.
    fn validate(&self) -> Result<(), FilterError>;
    /// Builds the configured filter: loads the runtime, the model and any backdrop picture and
    /// checks the model's contract, so every error surfaces here, at startup.
    fn build(&self) -> Result<Box<dyn Filter>, FilterError>;
    /// Builds the configured filter with `params` already resolved (so that the backdrop picture
    /// decoded for them is the one the filter uses and the live parameters start from).
    fn build_with(&self, params: &FilterParams) -> Result<Box<dyn Filter>, FilterError>;
}

impl FilterConfigExt for FilterConfig {
    fn parsed_params(&self) -> Result<FilterParams, ParamsError> {
        FilterParams::parse(self.kind, &self.params)
    }

    fn resolved_params(&self) -> Result<FilterParams, FilterError> {
        let params = self.parsed_params()?;
        params.with_backdrop(&self.assets(), Origin::Config, None)
    }

    fn assets(&self) -> Assets {
        Assets::new(self.assets_dir.clone(), self.image_limits)
    }

    fn model_path(&self) -> Option<PathBuf> {
        if let Some(model) = &self.model {
            return Some(model.clone());
        }
        let file = default_model(self.kind)?;
        let candidates: Vec<PathBuf> = match &self.models_dir {
            Some(dir) => vec![dir.join(file)],
            None => install::model_dirs().into_iter().map(|d| d.join(file)).collect(),
        };
        // When none exists the first place is named, and the build error lists them all.
        install::first_existing(&candidates, Path::exists).or_else(|| candidates.into_iter().next())
    }

    fn missing_default_model(&self) -> Option<FilterError> {
        if self.model.is_some() {
            return None;
        }
        let file = default_model(self.kind)?;
        let dirs = match &self.models_dir {
            Some(dir) => vec![dir.clone()],
            None => install::model_dirs(),
        };
        let candidates: Vec<PathBuf> = dirs.iter().map(|d| d.join(file)).collect();
        install::first_existing(&candidates, Path::exists)
            .is_none()
            .then(|| FilterError::ModelNotFound {
                filter: self.kind.as_str(),
                file,
                looked_in: install::looked_in(&dirs),
            })
    }

    fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            library: self.onnxruntime.clone(),
            device: self.device,
            fallback: self.device_fallback,
            threads: self.threads,
            gpu_mem_limit_bytes: self
                .gpu_mem_limit_mb
                .and_then(|mb| usize::try_from(mb.saturating_mul(1024 * 1024)).ok()),
        }
    }

    fn validate(&self) -> Result<(), FilterError> {
        self.parsed_params()?;
        if self.kind == FilterKind::Onnx && self.model.is_none() {
            return Err(FilterError::NoModel);
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Filter>, FilterError> {
        let params = self.resolved_params()?;
        self.build_with(&params)
    }

    fn build_with(&self, params: &FilterParams) -> Result<Box<dyn Filter>, FilterError> {
        self.validate()?;
        if let Some(missing) = self.missing_default_model() {
            return Err(missing);
        }
        let params = params.clone();
        let model = || self.model_path().ok_or(FilterError::NoModel);
        let options = self.runtime_options();
        let filter: Box<dyn Filter> = match params {
            FilterParams::Passthrough => Box::new(Passthrough),
            FilterParams::BackgroundBlur(_) | FilterParams::BackgroundReplace(_) => {
                Box::new(segment::BackgroundFilter::open(&model()?, &options, &params)?)
            }
            FilterParams::FaceBlur(p) => Box::new(face::FaceBlur::open(&model()?, &options, p)?),
            FilterParams::Pose(p) => Box::new(pose::PoseFilter::open(&model()?, &options, p)?),
            FilterParams::Onnx(p) => Box::new(custom::OnnxFilter::open(&model()?, &options, p)?),
        };
        Ok(filter)
    }
}

/// The error for parameters of another filter (a programming error, reported, never a panic).
pub(crate) fn mismatch(name: &'static str, params: &FilterParams) -> FilterError {
    FilterError::Params(ParamsError::Invalid {
        filter: name,
        detail: format!("parameters of another filter: {params:?}"),
    })
}

/// A per-frame failure of `filter` on `frame`.
pub(crate) fn frame_error(filter: &'static str, frame: &I420Frame, detail: String) -> FilterError {
    FilterError::Frame {
        filter,
        width: frame.width(),
        height: frame.height(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_filters_default_to_their_shipped_model_in_the_models_dir() {
        let cfg = FilterConfig {
            kind: FilterKind::FaceBlur,
            models_dir: Some("/opt/m".into()),
            ..Default::default()
        };
        assert_eq!(
            cfg.model_path(),
            Some(PathBuf::from("/opt/m").join(face::DEFAULT_MODEL))
        );
        let explicit = FilterConfig {
            model: Some("/x.onnx".into()),
            ..cfg
        };
        assert_eq!(explicit.model_path(), Some(PathBuf::from("/x.onnx")));
    }

    #[test]
    fn the_onnx_filter_without_a_model_is_refused_before_anything_loads() {
        let cfg = FilterConfig {
            kind: FilterKind::Onnx,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert_eq!(err, "filter onnx needs filter.model (the path of your .onnx file)");
    }

    #[test]
    fn passthrough_builds_without_a_runtime() {
        let filter = FilterConfig::default().build().unwrap();
        assert_eq!(filter.name(), "passthrough");
        assert_eq!(filter.device(), None);
    }
}
