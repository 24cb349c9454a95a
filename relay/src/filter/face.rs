//! `face-blur`: MediaPipe BlazeFace (front camera, 128x128) finds faces; each one is pixelated
//! or blurred. Detections are decoded from the model's 896 SSD anchors, overlapping ones are
//! suppressed, and a face the detector misses for a few frames stays hidden (held), so a face
//! never flashes through between detections.

use std::path::Path;
use std::time::Instant;

use super::params::{FaceBlurParams, FaceMode, FilterParams};
use super::pixels::{Fit, PixelBox, Placement, Planes, blur_box, pixelate};
use super::{Filter, FilterError, Filtered, StageTimes, frame_error, mismatch};
use crate::frame::I420Frame;
use crate::infer::{Device, ElementType, InferError, InputData, Model, Output, RuntimeOptions, TensorInfo};

/// The shipped model file.
pub const DEFAULT_MODEL: &str = "blazeface-front-128.onnx";
/// The model's input edge.
pub const INPUT_SIZE: u32 = 128;
/// Anchors of the front model: 16x16 cells with 2 anchors (stride 8), 8x8 cells with 6 (stride 16).
pub const ANCHORS: usize = 16 * 16 * 2 + 8 * 8 * 6;
/// Values per anchor in the box outputs: box (4) and six keypoints (12).
const BOX_VALUES: usize = 16;
/// Overlap above which the weaker of two detections is dropped.
const NMS_IOU: f32 = 0.3;
/// Overlap for a detection to continue a held face.
const TRACK_IOU: f32 = 0.2;

/// A box in frame fractions (0..1) with a score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceBox {
    /// Left.
    pub x0: f32,
    /// Top.
    pub y0: f32,
    /// Right.
    pub x1: f32,
    /// Bottom.
    pub y1: f32,
    /// Detection score (0..1).
    pub score: f32,
}

impl FaceBox {
    fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union.
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let inter = FaceBox {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
            score: 0.0,
        }
        .area();
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// The box grown by `fraction` of its size on every side.
    pub fn padded(&self, fraction: f32) -> FaceBox {
        let (dx, dy) = ((self.x1 - self.x0) * fraction, (self.y1 - self.y0) * fraction);
        FaceBox {
            x0: self.x0 - dx,
            y0: self.y0 - dy,
            x1: self.x1 + dx,
            y1: self.y1 + dy,
            score: self.score,
        }
    }
}

/// The anchor centres (x, y) in input fractions, in the model's output order.
pub fn anchors() -> Vec<(f32, f32)> {
    let mut out = Vec::with_capacity(ANCHORS);
    for (grid, per_cell) in [(16usize, 2usize), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                let centre = ((x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32);
                out.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    out
}

/// Decodes raw scores (logits, one per anchor) and boxes (16 values per anchor, in input
/// pixels relative to the anchor) into boxes above `min_score`, in frame fractions.
pub fn decode(
    scores: &[f32],
    boxes: &[f32],
    anchors: &[(f32, f32)],
    min_score: f32,
    placement: &Placement,
) -> Vec<FaceBox> {
    let size = INPUT_SIZE as f32;
    let mut found = Vec::new();
    for (i, &(ax, ay)) in anchors.iter().enumerate() {
        let (Some(&logit), Some(b)) = (scores.get(i), boxes.get(i * BOX_VALUES..i * BOX_VALUES + 4)) else {
            break;
        };
        let score = 1.0 / (1.0 + (-logit.clamp(-100.0, 100.0)).exp());
        if score < min_score {
            continue;
        }
        let (cx, cy) = (b[0] / size + ax, b[1] / size + ay);
        let (w, h) = (b[2] / size, b[3] / size);
        let (x0, y0) = placement.to_frame(cx - w / 2.0, cy - h / 2.0);
        let (x1, y1) = placement.to_frame(cx + w / 2.0, cy + h / 2.0);
        found.push(FaceBox { x0, y0, x1, y1, score });
    }
    found
}

/// Keeps the strongest of every group of boxes overlapping by more than `iou`.
pub fn non_max_suppression(mut boxes: Vec<FaceBox>, iou: f32) -> Vec<FaceBox> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<FaceBox> = Vec::new();
    for b in boxes {
        if kept.iter().all(|k| k.iou(&b) <= iou) {
            kept.push(b);
        }
    }
    kept
}

/// Faces seen recently: each is kept for `hold` frames after its last detection.
#[derive(Debug, Default)]
pub struct FaceHold {
    tracks: Vec<(FaceBox, u32)>,
}

impl FaceHold {
    /// Takes this frame's detections and returns every face to hide now.
    pub fn update(&mut self, detections: &[FaceBox], hold: u32) -> Vec<FaceBox> {
        let mut seen = vec![false; self.tracks.len()];
        for d in detections {
            let best = self
                .tracks
                .iter()
                .enumerate()
                .filter(|(i, (t, _))| !seen[*i] && t.iou(d) > TRACK_IOU)
                .max_by(|(_, (a, _)), (_, (b, _))| a.iou(d).total_cmp(&b.iou(d)))
                .map(|(i, _)| i);
            match best {
                Some(i) => {
                    self.tracks[i] = (*d, 0);
                    seen[i] = true;
                }
                None => {
                    self.tracks.push((*d, 0));
                    seen.push(true);
                }
            }
        }
        for (i, track) in self.tracks.iter_mut().enumerate() {
            if !seen[i] {
                track.1 += 1;
            }
        }
        self.tracks.retain(|(_, missed)| *missed <= hold);
        self.tracks.iter().map(|(b, _)| *b).collect()
    }
}

/// Which outputs hold the scores and the boxes, in anchor order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutputMap {
    scores: Vec<usize>,
    boxes: Vec<usize>,
}

/// Finds the score outputs (`[1, n, 1]`) and box outputs (`[1, n, 16]`) whose anchors add up to
/// 896, larger groups first (16x16 before 8x8), or says what the model has instead.
fn map_outputs(outputs: &[TensorInfo]) -> Result<OutputMap, String> {
    let pick = |last: i64| -> Vec<usize> {
        let mut v: Vec<usize> = (0..outputs.len())
            .filter(|&i| {
                let o = &outputs[i];
                o.element == ElementType::F32
                    && o.dims.len() == 3
                    && o.dims[0] == 1
                    && o.dims[2] == last
                    && o.dims[1] > 0
            })
            .collect();
        v.sort_by_key(|&i| std::cmp::Reverse(outputs[i].dims[1]));
        v
    };
    let total = |v: &[usize]| v.iter().map(|&i| outputs[i].dims[1] as usize).sum::<usize>();
    let (scores, boxes) = (pick(1), pick(BOX_VALUES as i64));
    if total(&scores) != ANCHORS || total(&boxes) != ANCHORS {
        let list: Vec<String> = outputs.iter().map(ToString::to_string).collect();
        return Err(format!(
            "expected float32 score outputs [1, n, 1] and box outputs [1, n, 16] over {ANCHORS} anchors (BlazeFace front 128x128), the model declares {}",
            list.join(", ")
        ));
    }
    Ok(OutputMap { scores, boxes })
}

/// BlazeFace: faces in a frame.
pub struct FaceDetector {
    model: Model,
    outputs: OutputMap,
    anchors: Vec<(f32, f32)>,
    planes: Planes,
    input: Vec<f32>,
}

impl FaceDetector {
    /// Opens the model and checks its input (`[1,128,128,3]` float RGB in -1..1) and outputs.
    pub fn open(path: &Path, options: &RuntimeOptions) -> Result<Self, InferError> {
        let model = Model::open(path, options)?;
        let s = i64::from(INPUT_SIZE);
        model.require(
            "face detection",
            &[crate::infer::Expect::fixed(ElementType::F32, &[1, s, s, 3])],
            &[],
        )?;
        let outputs = map_outputs(model.outputs()).map_err(|detail| InferError::Contract {
            path: path.to_path_buf(),
            filter: "face detection".into(),
            detail,
        })?;
        Ok(Self {
            model,
            outputs,
            anchors: anchors(),
            planes: Planes::default(),
            input: Vec::new(),
        })
    }

    /// Faces in `frame` above `min_score` after suppression, with the preprocessing and
    /// inference times.
    pub fn detect(&mut self, frame: &I420Frame, min_score: f32) -> Result<(Vec<FaceBox>, StageTimes), String> {
        let start = Instant::now();
        let (rgb, placement) = self
            .planes
            .sample_rgb(frame, INPUT_SIZE, INPUT_SIZE, Fit::Letterbox)
            .map_err(|e| e.to_string())?;
        self.input.clear();
        self.input.extend(rgb.data.iter().map(|&c| f32::from(c) / 127.5 - 1.0));
        let prepared = Instant::now();
        let s = i64::from(INPUT_SIZE);
        let outputs = self
            .model
            .run(InputData::F32(&self.input), &[1, s, s, 3])
            .map_err(|e| e.to_string())?;
        let inferred = Instant::now();
        let concat = |idx: &[usize], outputs: &[Output]| -> Result<Vec<f32>, String> {
            let mut v = Vec::new();
            for &i in idx {
                let o = outputs.get(i).ok_or_else(|| format!("output {i} missing"))?;
                v.extend_from_slice(&o.data);
            }
            Ok(v)
        };
        let scores = concat(&self.outputs.scores, &outputs)?;
        let boxes = concat(&self.outputs.boxes, &outputs)?;
        let faces = non_max_suppression(decode(&scores, &boxes, &self.anchors, min_score, &placement), NMS_IOU);
        Ok((
            faces,
            StageTimes {
                preprocess: prepared - start,
                infer: inferred - prepared,
                postprocess: inferred.elapsed(),
            },
        ))
    }
}

/// `face-blur`.
pub struct FaceBlur {
    detector: FaceDetector,
    params: FaceBlurParams,
    hold: FaceHold,
}

impl FaceBlur {
    /// Opens the face model.
    pub fn open(path: &Path, options: &RuntimeOptions, params: FaceBlurParams) -> Result<Self, FilterError> {
        let detector = FaceDetector::open(path, options).map_err(|source| FilterError::Setup {
            filter: "face-blur",
            source,
        })?;
        Ok(Self {
            detector,
            params,
            hold: FaceHold::default(),
        })
    }
}

impl Filter for FaceBlur {
    fn name(&self) -> &'static str {
        "face-blur"
    }

    fn apply(&mut self, mut frame: I420Frame) -> Result<Filtered, FilterError> {
        let (faces, mut times) = self
            .detector
            .detect(&frame, self.params.min_score)
            .map_err(|d| frame_error("face-blur", &frame, d))?;
        let start = Instant::now();
        let hidden = self.hold.update(&faces, self.params.hold_frames);
        for face in hidden {
            let p = face.padded(self.params.padding);
            let Some(area) = PixelBox::from_fractions(p.x0, p.y0, p.x1, p.y1, frame.width(), frame.height()) else {
                continue;
            };
            match self.params.mode {
                FaceMode::Pixelate => pixelate(&mut frame, area, self.params.strength),
                FaceMode::Blur => blur_box(&mut frame, area, self.params.strength),
            }
        }
        times.postprocess += start.elapsed();
        Ok(Filtered {
            frame,
            times: Some(times),
        })
    }

    fn set_params(&mut self, params: &FilterParams) -> Result<(), FilterError> {
        match params {
            FilterParams::FaceBlur(p) => {
                self.params = p.clone();
                Ok(())
            }
            other => Err(mismatch("face-blur", other)),
        }
    }

    fn device(&self) -> Option<Device> {
        Some(self.detector.model.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> FaceBox {
        FaceBox { x0, y0, x1, y1, score }
    }

    #[test]
    fn there_are_896_anchors_with_the_16x16_grid_first() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], (1.0 / 32.0, 1.0 / 32.0));
        assert_eq!(a[1], a[0], "two anchors per 16x16 cell");
        assert_eq!(a[2], (3.0 / 32.0, 1.0 / 32.0));
        assert_eq!(a[512], (1.0 / 16.0, 1.0 / 16.0), "then the 8x8 grid");
        assert_eq!(a[895], (15.0 / 16.0, 15.0 / 16.0));
    }

    #[test]
    fn a_confident_anchor_decodes_to_a_box_around_its_centre_in_frame_fractions() {
        let anchors = vec![(0.5, 0.5), (0.25, 0.25)];
        let scores = vec![5.0, -5.0];
        let mut boxes = vec![0.0; 32];
        boxes[..4].copy_from_slice(&[12.8, 0.0, 32.0, 64.0]); // +0.1 x; 0.25 x 0.5 of the input

        let letterbox = Placement {
            x0: 0.0,
            y0: 0.25,
            w: 1.0,
            h: 0.5,
        };
        let found = decode(&scores, &boxes, &anchors, 0.5, &letterbox);

        assert_eq!(found.len(), 1, "the second anchor is below the score");
        let f = found[0];
        assert!((f.x0 - 0.475).abs() < 1e-5 && (f.x1 - 0.725).abs() < 1e-5, "{f:?}");
        // 0.25..0.75 of the input is the letterboxed frame's full height.
        assert!((f.y0 - 0.0).abs() < 1e-5 && (f.y1 - 1.0).abs() < 1e-5, "{f:?}");
        assert!((f.score - 0.9933).abs() < 1e-3);
    }

    #[test]
    fn suppression_keeps_the_strongest_of_overlapping_boxes() {
        let kept = non_max_suppression(
            vec![
                b(0.0, 0.0, 0.2, 0.2, 0.7),
                b(0.01, 0.0, 0.21, 0.2, 0.9),
                b(0.6, 0.6, 0.8, 0.8, 0.8),
            ],
            0.3,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.8);
    }

    #[test]
    fn a_missed_face_stays_hidden_for_the_hold_then_goes() {
        let mut hold = FaceHold::default();
        let face = b(0.4, 0.4, 0.6, 0.6, 0.9);
        assert_eq!(hold.update(&[face], 2), vec![face]);
        assert_eq!(hold.update(&[], 2), vec![face], "missed once: held");
        assert_eq!(hold.update(&[], 2), vec![face], "missed twice: held");
        assert_eq!(hold.update(&[], 2), vec![], "past the hold");
    }

    #[test]
    fn a_moving_face_updates_its_held_box_instead_of_adding_one() {
        let mut hold = FaceHold::default();
        hold.update(&[b(0.4, 0.4, 0.6, 0.6, 0.9)], 5);
        let moved = b(0.42, 0.4, 0.62, 0.6, 0.9);
        assert_eq!(hold.update(&[moved], 5), vec![moved]);
    }

    #[test]
    fn padding_grows_every_side_by_a_fraction_of_the_size() {
        let p = b(0.4, 0.4, 0.6, 0.8, 1.0).padded(0.5);
        assert!((p.x0 - 0.3).abs() < 1e-6 && (p.x1 - 0.7).abs() < 1e-6);
        assert!((p.y0 - 0.2).abs() < 1e-6 && (p.y1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn outputs_are_found_by_shape_whatever_their_order() {
        let t = |dims: &[i64]| TensorInfo {
            name: format!("{dims:?}"),
            element: ElementType::F32,
            dims: dims.to_vec(),
        };
        let outputs = [t(&[1, 384, 16]), t(&[1, 512, 1]), t(&[1, 384, 1]), t(&[1, 512, 16])];
        assert_eq!(
            map_outputs(&outputs),
            Ok(OutputMap {
                scores: vec![1, 2],
                boxes: vec![3, 0]
            })
        );
        let err = map_outputs(&[t(&[1, 100, 1])]).unwrap_err();
        assert!(
            err.contains("the model declares '[1, 100, 1]' float32 [1, 100, 1]"),
            "{err}"
        );
    }
}
