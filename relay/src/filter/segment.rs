//! Person segmentation (MediaPipe selfie, 256x256) and the two filters built on it:
//! `background-blur` and `background-replace`. The mask is smoothed over time against flicker,
//! feathered at the edges, and composited in YUV at the frame's size.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::assets::Backdrop as Picture;
use super::params::{FilterParams, MaskBackground, MaskFrom, ParamsError};
use super::pixels::{Backdrop, Fit, Mask, Planes, blurred_background, composite};
use super::pyramid::Pyramid;
use super::refine::{EdgeRefiner, Stabilizer};
use super::{Filter, FilterError, Filtered, Probe, StageTimes, frame_error, mismatch};
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

/// A mask with the time its preprocessing and inference took.
type Inferred = (Mask, Duration, Duration);

/// Where a frame's person mask comes from (see [`MaskFrom`]).
enum MaskSource {
    /// Inferred on the frame, on the frame's path.
    Inline(Box<Segmenter>),
    /// Inferred on a worker thread one frame ahead.
    Ahead(AheadSegmenter),
    /// Between the two while switching (never seen by a frame).
    Switching,
}

impl MaskSource {
    fn new(segmenter: Segmenter, from: MaskFrom) -> Result<Self, String> {
        match from {
            MaskFrom::Current => Ok(Self::Inline(Box::new(segmenter))),
            MaskFrom::Previous => AheadSegmenter::start(segmenter).map(Self::Ahead),
        }
    }

    fn device(&self) -> Option<Device> {
        match self {
            Self::Inline(s) => Some(s.device()),
            Self::Ahead(a) => Some(a.device),
            Self::Switching => None,
        }
    }

    fn mask(&mut self, frame: &I420Frame) -> Result<Inferred, String> {
        match self {
            Self::Inline(s) => s.person_mask(frame),
            Self::Ahead(a) => a.mask(frame),
            Self::Switching => Err("the mask source is being switched".into()),
        }
    }

    /// Switches to `from`, keeping the model.
    fn switch(&mut self, from: MaskFrom) -> Result<(), String> {
        let segmenter = match (std::mem::replace(self, Self::Switching), from) {
            (Self::Inline(s), MaskFrom::Previous) => *s,
            (Self::Ahead(a), MaskFrom::Current) => a.stop()?,
            (same, _) => {
                *self = same;
                return Ok(());
            }
        };
        *self = Self::new(segmenter, from)?;
        Ok(())
    }
}

/// A [`Segmenter`] on its own thread: each frame is handed over (a copy) and composited with
/// the newest mask already back, so inference overlaps the rest of the path instead of adding
/// to it. Only the first frame waits for its own mask. A frame that arrives while the worker is
/// still busy is not queued (the next one will be newer).
struct AheadSegmenter {
    frames: Option<mpsc::SyncSender<I420Frame>>,
    masks: mpsc::Receiver<Result<Inferred, String>>,
    latest: Option<Inferred>,
    /// Frames handed over whose mask has not come back yet: at 2 the worker has one and the
    /// queue holds the other, so a frame is not even copied.
    pending: usize,
    worker: Option<JoinHandle<Segmenter>>,
    device: Device,
}

impl AheadSegmenter {
    fn start(mut segmenter: Segmenter) -> Result<Self, String> {
        let device = segmenter.device();
        let (frames, inbox) = mpsc::sync_channel::<I420Frame>(1);
        let (results, masks) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("segment-ahead".into())
            .spawn(move || {
                // Ends when the filter drops its sender (a switch back, or the filter's end).
                for frame in inbox {
                    if results.send(segmenter.person_mask(&frame)).is_err() {
                        break;
                    }
                }
                segmenter
            })
            .map_err(|e| format!("cannot start the segmentation thread: {e}"))?;
        Ok(Self {
            frames: Some(frames),
            masks,
            latest: None,
            pending: 0,
            worker: Some(worker),
            device,
        })
    }

    fn mask(&mut self, frame: &I420Frame) -> Result<Inferred, String> {
        loop {
            match self.masks.try_recv() {
                Ok(result) => {
                    self.pending = self.pending.saturating_sub(1);
                    self.latest = Some(result?);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                // Only the worker holds the sender: it ended.
                Err(mpsc::TryRecvError::Disconnected) => return Err(self.gone()),
            }
        }
        if self.pending < 2 {
            let sent = match self.frames.as_ref() {
                Some(frames) => frames.try_send(frame.clone()),
                None => return Err(self.gone()),
            };
            match sent {
                Ok(()) => self.pending += 1,
                Err(mpsc::TrySendError::Full(_)) => {}
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(self.gone()),
            }
        }
        if self.latest.is_none() {
            // The first frame: nothing earlier to use, so wait for its own.
            match self.masks.recv() {
                Ok(result) => {
                    self.pending = self.pending.saturating_sub(1);
                    self.latest = Some(result?);
                }
                Err(_) => return Err(self.gone()),
            }
        }
        self.latest.clone().ok_or_else(|| self.gone())
    }

    /// The worker ended: a panic there is re-raised here, on the filter thread, whose
    /// supervision ends the relay as it would for a panic in the filter itself.
    fn gone(&mut self) -> String {
        if let Some(Err(panic)) = self.worker.take().map(JoinHandle::join) {
            std::panic::resume_unwind(panic);
        }
        "the segmentation thread stopped".to_owned()
    }

    /// Stops the worker and takes the model back.
    fn stop(mut self) -> Result<Segmenter, String> {
        self.frames = None;
        self.worker
            .take()
            .ok_or("the segmentation thread is gone")?
            .join()
            .map_err(|_| "the segmentation thread panicked".to_owned())
    }
}

impl Drop for AheadSegmenter {
    fn drop(&mut self) {
        // Closing the channel ends the worker after at most the frame in hand.
        self.frames = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
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
    /// Median of the last three masks against one-frame blobs.
    pub stabilize: bool,
    /// Guided-filter edge refinement at full resolution.
    pub refine_edges: bool,
}

/// A mask's temporal smoothing and compositing over a backdrop; shared with the `onnx` filter's
/// mask output.
pub struct MaskCompositor {
    look: Look,
    shape: MaskShape,
    stabilizer: Stabilizer,
    previous: Option<Mask>,
    refiner: EdgeRefiner,
    /// The alpha the last frame was composited with, and its size.
    alpha: (Vec<u8>, u32, u32),
    planes: Planes,
    /// The backdrop picture at the last frame size.
    backdrop: Option<I420Frame>,
    /// The frame's reduced planes, shared by the blur and the edge refinement.
    pyramid: Pyramid,
}

impl MaskCompositor {
    fn new(look: Look, shape: MaskShape) -> Self {
        Self {
            look,
            shape,
            stabilizer: Stabilizer::default(),
            previous: None,
            refiner: EdgeRefiner::default(),
            alpha: (Vec::new(), 0, 0),
            planes: Planes::default(),
            backdrop: None,
            pyramid: Pyramid::default(),
        }
    }

    /// The alpha the last frame was composited with.
    pub fn probe(&self) -> Option<Probe<'_>> {
        let (alpha, width, height) = &self.alpha;
        (!alpha.is_empty()).then_some(Probe::Mask {
            alpha,
            width: *width,
            height: *height,
        })
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

    /// Stabilises and smooths `mask` against the earlier ones, refines its edges against the
    /// frame and composites `frame` over the backdrop.
    pub fn apply(&mut self, frame: &mut I420Frame, mask: Mask) -> Result<(), String> {
        let mask = if self.shape.stabilize {
            self.stabilizer.apply(mask)
        } else {
            self.stabilizer.reset();
            mask
        };
        let mask = mask.smoothed(self.previous.as_ref(), self.shape.smoothing);
        let small = mask.to_alpha(self.shape.threshold, self.shape.feather, SOFTNESS);
        let (mw, mh) = (mask.width, mask.height);
        self.previous = Some(mask);
        let e = |e: super::pixels::ResizeError| e.to_string();
        if self.shape.refine_edges || matches!(self.look, Look::Blur { .. }) {
            self.pyramid.build(frame);
        }
        // The background blur's weights come from the model-size alpha: blur is low frequency.
        let blurred = match &self.look {
            Look::Blur { radius } => Some(blurred_background(
                frame,
                &self.pyramid,
                Some((&small, mw, mh)),
                *radius,
            )),
            _ => None,
        };
        if self.shape.refine_edges {
            (self.alpha.1, self.alpha.2) = self
                .refiner
                .refine(frame, &self.pyramid, &small, mw, mh, &mut self.alpha.0);
        } else {
            self.alpha = (small, mw, mh);
        }
        let (alpha, aw, ah) = (&self.alpha.0, self.alpha.1, self.alpha.2);
        match &self.look {
            Look::Blur { .. } => {
                let Some(bg) = blurred.as_ref() else {
                    return Err("blurred background missing".into());
                };
                composite(frame, alpha, aw, ah, &Backdrop::Small(bg));
                Ok(())
            }
            Look::Color(yuv) => {
                composite(frame, alpha, aw, ah, &Backdrop::Color(*yuv));
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
                composite(frame, alpha, aw, ah, &Backdrop::Frame(bg));
                Ok(())
            }
        }
    }
}

/// `background-blur` and `background-replace`.
pub struct BackgroundFilter {
    name: &'static str,
    masks: MaskSource,
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
        let (look, shape, from) = look_of(name, params)?;
        let masks = MaskSource::new(segmenter, from)
            .map_err(|detail| FilterError::Params(ParamsError::Invalid { filter: name, detail }))?;
        Ok(Self {
            name,
            masks,
            compositor: MaskCompositor::new(look, shape),
        })
    }
}

fn look_of(name: &'static str, params: &FilterParams) -> Result<(Look, MaskShape, MaskFrom), FilterError> {
    match params {
        FilterParams::BackgroundBlur(p) => Ok((
            Look::Blur { radius: p.radius },
            MaskShape {
                smoothing: p.smoothing,
                feather: p.feather,
                threshold: p.threshold,
                stabilize: p.stabilize,
                refine_edges: p.refine_edges,
            },
            p.mask_from,
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
                    stabilize: p.stabilize,
                    refine_edges: p.refine_edges,
                },
                p.mask_from,
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
        let (mask, preprocess, infer) = self.masks.mask(&frame).map_err(|d| frame_error(self.name, &frame, d))?;
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
        let (look, shape, from) = look_of(self.name, params)?;
        self.masks.switch(from).map_err(|detail| {
            FilterError::Params(ParamsError::Invalid {
                filter: self.name,
                detail,
            })
        })?;
        // The same decoded picture: keep the backdrop already scaled to the frame.
        if let (FilterParams::BackgroundReplace(p), Look::Image(current)) = (params, &self.compositor.look)
            && p.backdrop.as_ref() == Some(current)
        {
            self.compositor.shape = shape;
            return Ok(());
        }
        self.compositor.set_look(look, shape);
        Ok(())
    }

    fn device(&self) -> Option<Device> {
        self.masks.device()
    }

    fn probe(&self) -> Option<Probe<'_>> {
        self.compositor.probe()
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
