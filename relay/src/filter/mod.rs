//! The filter stage: a [`Filter`] transforms each decoded frame. It runs on its own thread fed
//! by the newest-frame slot. The ONNX filters arrive with the filters issue; `passthrough`
//! leaves frames untouched.

use serde::{Deserialize, Serialize};

use crate::frame::I420Frame;

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
}

/// One per-frame transformation.
pub trait Filter: Send {
    /// The name shown in metrics and `/status`.
    fn name(&self) -> &'static str;
    /// Transforms one frame.
    fn apply(&mut self, frame: I420Frame) -> Result<I420Frame, FilterError>;
}

/// Leaves frames as they are.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Filter for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn apply(&mut self, frame: I420Frame) -> Result<I420Frame, FilterError> {
        Ok(frame)
    }
}

/// Which filter to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    /// No change.
    #[default]
    Passthrough,
}

/// The filter configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Which filter.
    pub kind: FilterKind,
}

impl FilterConfig {
    /// Builds the configured filter.
    pub fn build(&self) -> Box<dyn Filter> {
        match self.kind {
            FilterKind::Passthrough => Box::new(Passthrough),
        }
    }
}
