//! ONNX Runtime: the shared library loaded once per process (from `ORT_DYLIB_PATH` or the
//! configured path), the execution provider chosen per model (`cpu`, `cuda[:N]`, with an explicit
//! policy when CUDA is missing), and models opened against a filter's contract so that a wrong
//! model fails at startup with the expected and actual shapes, never on the first frame.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::install;

/// The library name looked up on the loader's search path when nothing else is configured.
pub const DEFAULT_LIBRARY: &str = install::ORT_LIBRARY_NAME;

pub use livefilter_contract::config::{Device, DeviceFallback, DeviceParseError};

/// How models are run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The ONNX Runtime shared library; `None`: `ORT_DYLIB_PATH`, else [`DEFAULT_LIBRARY`].
    pub library: Option<PathBuf>,
    /// The requested device.
    pub device: Device,
    /// The policy when CUDA is unusable.
    pub fallback: DeviceFallback,
    /// Intra-op threads per model (0: ONNX Runtime's default, one per core).
    pub threads: usize,
    /// The CUDA arena's cap per model, in bytes (none: unbounded).
    pub gpu_mem_limit_bytes: Option<usize>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            library: None,
            device: Device::Cpu,
            fallback: DeviceFallback::Fail,
            threads: 0,
            gpu_mem_limit_bytes: None,
        }
    }
}

/// Errors of the runtime and of models.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The shared library could not be loaded.
    #[error(
        "cannot load ONNX Runtime from {path}: {detail} (set ORT_DYLIB_PATH or filter.onnxruntime to libonnxruntime.so.1.31.x; `scripts/setup.sh` puts one in .cache/onnxruntime)"
    )]
    Library { path: PathBuf, detail: String },
    /// A second library was asked for after one was loaded.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot switch to {requested} in the same process")]
    LibraryConflict { loaded: PathBuf, requested: PathBuf },
    /// The model file does not exist.
    #[error("model file {path} does not exist")]
    ModelMissing { path: PathBuf },
    /// The model file exists but ONNX Runtime cannot use it.
    #[error("model {path} cannot be loaded: {detail}")]
    ModelUnreadable { path: PathBuf, detail: String },
    /// The model's inputs or outputs do not match what the filter needs.
    #[error("model {path} does not fit filter {filter}: {detail}")]
    Contract {
        path: PathBuf,
        filter: String,
        detail: String,
    },
    /// CUDA was requested and is unusable, and the policy is to fail.
    #[error(
        "device {device} requested but CUDA is unusable: {detail} (use the CUDA relay image with onnxruntime-gpu on a GPU node, or set filter.device_fallback: cpu)"
    )]
    CudaUnavailable { device: Device, detail: String },
    /// Session options were refused.
    #[error("ONNX Runtime refused the session options for {path}: {detail}")]
    Options { path: PathBuf, detail: String },
    /// Inference failed on a frame.
    #[error("inference with {path} failed: {detail}")]
    Run { path: PathBuf, detail: String },
}

struct Runtime {
    library: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Result<Runtime, InferError>> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The library path `options` resolve to: the configured one, `ORT_DYLIB_PATH`, the first
/// library found in the usual places ([`install::onnxruntime_candidates`]), or the bare name
/// for the loader's search path; relative paths are taken from the working directory.
pub fn library_path(options: &RuntimeOptions) -> PathBuf {
    let chosen = options.library.clone().unwrap_or_else(|| {
        let candidates = install::onnxruntime_candidates();
        install::first_existing(&candidates, Path::exists).unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY))
    });
    // A bare file name goes to the loader's search path; anything with a directory is resolved
    // here (ort would otherwise look next to the executable first).
    if chosen.is_relative() && chosen.components().count() > 1 {
        std::env::current_dir().map(|d| d.join(&chosen)).unwrap_or(chosen)
    } else {
        chosen
    }
}

fn runtime(options: &RuntimeOptions) -> Result<&'static Runtime, InferError> {
    let requested = library_path(options);
    let _guard = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    let rt = RUNTIME.get_or_init(|| load_runtime(&requested));
    let rt = rt.as_ref().map_err(Clone::clone)?;
    if rt.library != requested {
        return Err(InferError::LibraryConflict {
            loaded: rt.library.clone(),
            requested,
        });
    }
    Ok(rt)
}

fn load_runtime(path: &Path) -> Result<Runtime, InferError> {
    let lib_err = |detail: String| InferError::Library {
        path: path.to_path_buf(),
        detail,
    };
    if path.components().count() > 1 && !path.exists() {
        return Err(lib_err("no such file".into()));
    }
    let env = ort::init_from(path)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("livefilter")
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(Runtime {
        library: path.to_path_buf(),
        env,
    })
}

/// Element types a contract can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 32-bit signed integer.
    I32,
    /// 8-bit unsigned integer.
    U8,
    /// Anything else (refused by every contract).
    Other,
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementType::F32 => "float32",
            ElementType::I32 => "int32",
            ElementType::U8 => "uint8",
            ElementType::Other => "an unsupported element type",
        })
    }
}

/// A model input or output as the model declares it; `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name in the graph.
    pub name: String,
    /// Element type.
    pub element: ElementType,
    /// Dimensions (`-1`: dynamic); empty for non-tensors.
    pub dims: Vec<i64>,
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' {} {}", self.name, self.element, shape_str(&self.dims))
    }
}

/// `[1, 256, 256, 3]`, with `?` for dynamic dimensions.
pub fn shape_str(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|&d| if d < 0 { "?".to_owned() } else { d.to_string() })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn tensor_info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_owned(),
            element: match ty {
                TensorElementType::Float32 => ElementType::F32,
                TensorElementType::Int32 => ElementType::I32,
                TensorElementType::Uint8 => ElementType::U8,
                _ => ElementType::Other,
            },
            dims: shape.iter().copied().collect(),
        },
        _ => TensorInfo {
            name: name.to_owned(),
            element: ElementType::Other,
            dims: Vec::new(),
        },
    }
}

/// What a filter requires of one tensor: an element type and dimensions (`None`: any size,
/// dynamic allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Required element type.
    pub element: ElementType,
    /// Required dimensions.
    pub dims: Vec<Option<i64>>,
}

impl Expect {
    /// A fully fixed shape.
    pub fn fixed(element: ElementType, dims: &[i64]) -> Self {
        Self {
            element,
            dims: dims.iter().map(|&d| Some(d)).collect(),
        }
    }

    fn matches(&self, info: &TensorInfo) -> bool {
        info.element == self.element
            && info.dims.len() == self.dims.len()
            && self
                .dims
                .iter()
                .zip(&info.dims)
                // A dynamic model dimension accepts the size the filter will feed.
                .all(|(want, &got)| want.is_none_or(|w| got == w || got < 0))
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<i64> = self.dims.iter().map(|d| d.unwrap_or(-1)).collect();
        write!(f, "{} {}", self.element, shape_str(&dims))
    }
}

/// Borrowed input data for one run.
#[derive(Clone, Copy, Debug)]
pub enum InputData<'a> {
    /// float32 elements.
    F32(&'a [f32]),
    /// int32 elements.
    I32(&'a [i32]),
    /// uint8 elements.
    U8(&'a [u8]),
}

/// One float output of a run, copied out of ONNX Runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Actual dimensions.
    pub dims: Vec<i64>,
    /// Row-major elements.
    pub data: Vec<f32>,
}

/// An opened model with its session.
pub struct Model {
    path: PathBuf,
    session: Session,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    device: Device,
    fallback_reason: Option<String>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("device", &self.device)
            .finish()
    }
}

impl Model {
    /// Opens `path` on the requested device (see [`DeviceFallback`]).
    pub fn open(path: &Path, options: &RuntimeOptions) -> Result<Self, InferError> {
        if !path.is_file() {
            return Err(InferError::ModelMissing {
                path: path.to_path_buf(),
            });
        }
        let rt = runtime(options)?;
        match options.device {
            Device::Cpu => Self::open_on(rt, path, options, Device::Cpu, None),
            Device::Cuda(n) => match Self::open_on(rt, path, options, Device::Cuda(n), None) {
                Ok(model) => Ok(model),
                Err(InferError::CudaUnavailable { device, detail }) => match options.fallback {
                    DeviceFallback::Fail => Err(InferError::CudaUnavailable { device, detail }),
                    DeviceFallback::Cpu => {
                        tracing::warn!(
                            model = %path.display(),
                            requested = %device,
                            reason = %detail,
                            "CUDA IS UNUSABLE: running this model on the CPU instead (filter.device_fallback: cpu); expect much higher latency"
                        );
                        Self::open_on(rt, path, options, Device::Cpu, Some(detail))
                    }
                },
                Err(e) => Err(e),
            },
        }
    }

    fn open_on(
        rt: &Runtime,
        path: &Path,
        options: &RuntimeOptions,
        device: Device,
        fallback_reason: Option<String>,
    ) -> Result<Self, InferError> {
        let opt_err = |detail: String| InferError::Options {
            path: path.to_path_buf(),
            detail,
        };
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| opt_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| opt_err(e.to_string()))?
            // Spinning workers would steal the cores the decoder and encoder need.
            .with_intra_op_spinning(false)
            .map_err(|e| opt_err(e.to_string()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| opt_err(e.to_string()))?;
        }
        if let Device::Cuda(n) = device {
            let cuda_err = |detail: String| InferError::CudaUnavailable { device, detail };
            let available = ep::CUDA::is_available().map_err(|e| cuda_err(e.to_string()))?;
            if !available {
                return Err(cuda_err(format!(
                    "the ONNX Runtime library {} has no CUDAExecutionProvider",
                    rt.library.display()
                )));
            }
            let id = i32::try_from(n).map_err(|_| cuda_err(format!("GPU index {n} is out of range")))?;
            let mut cuda = ep::CUDA::default().with_device_id(id);
            if let Some(bytes) = options.gpu_mem_limit_bytes {
                cuda = cuda.with_memory_limit(bytes);
            }
            cuda.register(&mut builder).map_err(|e| cuda_err(e.to_string()))?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| InferError::ModelUnreadable {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        tracing::info!(model = %path.display(), %device, "model loaded");
        Ok(Self {
            path: path.to_path_buf(),
            session,
            inputs,
            outputs,
            device,
            fallback_reason,
        })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's inputs as declared.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// The model's outputs as declared.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Where it runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Why it runs on the CPU although CUDA was asked for, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Checks the model has exactly the inputs `inputs` and at least `outputs.len()` outputs
    /// matching `outputs` in order; the error names both sides.
    pub fn require(&self, filter: &str, inputs: &[Expect], outputs: &[Expect]) -> Result<(), InferError> {
        let contract = |detail: String| InferError::Contract {
            path: self.path.clone(),
            filter: filter.to_owned(),
            detail,
        };
        let list = |v: &[TensorInfo]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if self.inputs.len() != inputs.len() {
            return Err(contract(format!(
                "expected {} input(s), the model has {}: {}",
                inputs.len(),
                self.inputs.len(),
                list(&self.inputs)
            )));
        }
        if self.outputs.len() < outputs.len() {
            return Err(contract(format!(
                "expected {} output(s), the model has {}: {}",
                outputs.len(),
                self.outputs.len(),
                list(&self.outputs)
            )));
        }
        for (side, want, got) in [("input", inputs, &self.inputs), ("output", outputs, &self.outputs)] {
            for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
                if !w.matches(g) {
                    return Err(contract(format!("{side} {i}: expected {w}, the model declares {g}")));
                }
            }
        }
        Ok(())
    }

    /// Runs the model on one input of shape `dims` and returns every output as float32.
    pub fn run(&mut self, input: InputData<'_>, dims: &[i64]) -> Result<Vec<Output>, InferError> {
        let run_err = |detail: String| InferError::Run {
            path: self.path.clone(),
            detail,
        };
        let shape = dims.to_vec();
        let value: ort::session::SessionInputValue<'_> = match input {
            InputData::F32(d) => TensorRef::from_array_view((shape, d)).map(Into::into),
            InputData::I32(d) => TensorRef::from_array_view((shape, d)).map(Into::into),
            InputData::U8(d) => TensorRef::from_array_view((shape, d)).map(Into::into),
        }
        .map_err(|e| run_err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![value])
            .map_err(|e| run_err(e.to_string()))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output is not float32: {e}")))?;
            result.push(Output {
                dims: shape.iter().copied().collect(),
                data: data.to_vec(),
            });
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_parse_and_print_back() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!(
            "gpu".parse::<Device>().unwrap_err().to_string(),
            "device \"gpu\" is not one of cpu, cuda, cuda:N"
        );
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn a_dynamic_model_dimension_accepts_the_fed_size() {
        let want = Expect::fixed(ElementType::F32, &[1, 3, 64, 64]);
        let info = |dims: &[i64]| TensorInfo {
            name: "x".into(),
            element: ElementType::F32,
            dims: dims.to_vec(),
        };
        assert!(want.matches(&info(&[1, 3, 64, 64])));
        assert!(want.matches(&info(&[-1, 3, -1, -1])));
        assert!(!want.matches(&info(&[1, 64, 64, 3])));
        assert!(!want.matches(&info(&[1, 3, 64])));
    }

    #[test]
    fn shapes_print_dynamic_dimensions_as_question_marks() {
        assert_eq!(shape_str(&[1, -1, 256, 3]), "[1, ?, 256, 3]");
        assert_eq!(
            Expect::fixed(ElementType::I32, &[1, 192, 192, 3]).to_string(),
            "int32 [1, 192, 192, 3]"
        );
    }
}
