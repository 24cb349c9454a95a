//! `pose`: MoveNet Lightning (192x192, COCO's 17 keypoints) on a letterboxed view of the frame;
//! keypoints above the score threshold are drawn as a skeleton over the video.

use std::path::Path;
use std::time::Instant;

use super::params::{FilterParams, PoseParams};
use super::pixels::{Fit, Pen, Placement, Planes};
use super::{Filter, FilterError, Filtered, StageTimes, frame_error, mismatch};
use crate::frame::I420Frame;
use crate::infer::{Device, ElementType, Expect, InferError, InputData, Model, RuntimeOptions};

/// The shipped model file.
pub const DEFAULT_MODEL: &str = "movenet-lightning.onnx";
/// The model's input edge.
pub const INPUT_SIZE: u32 = 192;
/// COCO keypoints.
pub const KEYPOINTS: usize = 17;
/// COCO keypoint names, in the model's order.
pub const NAMES: [&str; KEYPOINTS] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];
/// The limbs drawn between COCO keypoints.
pub const SKELETON: [(usize, usize); 16] = [
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (5, 6),
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
];

/// One keypoint in frame fractions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keypoint {
    /// Horizontal position (0 left .. 1 right).
    pub x: f32,
    /// Vertical position (0 top .. 1 bottom).
    pub y: f32,
    /// Confidence (0..1).
    pub score: f32,
}

/// Reads (y, x, score) triples given in model-input fractions into frame fractions.
pub fn keypoints_from(values: &[f32], placement: &Placement) -> Vec<Keypoint> {
    values
        .chunks_exact(3)
        .map(|k| {
            let (x, y) = placement.to_frame(k[1], k[0]);
            Keypoint { x, y, score: k[2] }
        })
        .collect()
}

/// Draws `points` above `min_score` and, for COCO's 17, the limbs between them.
pub fn draw_skeleton(frame: &mut I420Frame, points: &[Keypoint], min_score: f32, limb: &Pen, joint: &Pen) {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let visible = |k: &Keypoint| k.score >= min_score;
    if points.len() == KEYPOINTS {
        for &(a, b) in &SKELETON {
            let (p, q) = (points[a], points[b]);
            if visible(&p) && visible(&q) {
                limb.line(frame, p.x * w, p.y * h, q.x * w, q.y * h);
            }
        }
    }
    for k in points.iter().filter(|k| visible(k)) {
        joint.disc(frame, k.x * w, k.y * h, joint.width);
    }
}

/// MoveNet Lightning.
pub struct PoseEstimator {
    model: Model,
    planes: Planes,
    input: Vec<i32>,
}

impl PoseEstimator {
    /// Opens the model and checks it takes `[1,192,192,3]` int32 RGB 0..255 and gives
    /// `[1,1,17,3]`.
    pub fn open(path: &Path, options: &RuntimeOptions) -> Result<Self, InferError> {
        let model = Model::open(path, options)?;
        let s = i64::from(INPUT_SIZE);
        model.require(
            "pose estimation",
            &[Expect::fixed(ElementType::I32, &[1, s, s, 3])],
            &[Expect::fixed(ElementType::F32, &[1, 1, KEYPOINTS as i64, 3])],
        )?;
        Ok(Self {
            model,
            planes: Planes::default(),
            input: Vec::new(),
        })
    }

    /// The 17 keypoints of the most prominent person in `frame`, with the times taken.
    pub fn keypoints(&mut self, frame: &I420Frame) -> Result<(Vec<Keypoint>, StageTimes), String> {
        let start = Instant::now();
        let (rgb, placement) = self
            .planes
            .sample_rgb(frame, INPUT_SIZE, INPUT_SIZE, Fit::Letterbox)
            .map_err(|e| e.to_string())?;
        self.input.clear();
        self.input.extend(rgb.data.iter().map(|&c| i32::from(c)));
        let prepared = Instant::now();
        let s = i64::from(INPUT_SIZE);
        let mut outputs = self
            .model
            .run(InputData::I32(&self.input), &[1, s, s, 3])
            .map_err(|e| e.to_string())?;
        let inferred = Instant::now();
        let out = outputs.swap_remove(0);
        if out.data.len() != KEYPOINTS * 3 {
            return Err(format!(
                "{} keypoint values, expected {}",
                out.data.len(),
                KEYPOINTS * 3
            ));
        }
        Ok((
            keypoints_from(&out.data, &placement),
            StageTimes {
                preprocess: prepared - start,
                infer: inferred - prepared,
                postprocess: inferred.elapsed(),
            },
        ))
    }
}

/// `pose`.
pub struct PoseFilter {
    estimator: PoseEstimator,
    params: PoseParams,
}

impl PoseFilter {
    /// Opens the pose model.
    pub fn open(path: &Path, options: &RuntimeOptions, params: PoseParams) -> Result<Self, FilterError> {
        let estimator =
            PoseEstimator::open(path, options).map_err(|source| FilterError::Setup { filter: "pose", source })?;
        Ok(Self { estimator, params })
    }
}

impl Filter for PoseFilter {
    fn name(&self) -> &'static str {
        "pose"
    }

    fn apply(&mut self, mut frame: I420Frame) -> Result<Filtered, FilterError> {
        let (points, mut times) = self
            .estimator
            .keypoints(&frame)
            .map_err(|d| frame_error("pose", &frame, d))?;
        let start = Instant::now();
        let p = &self.params;
        let limb = Pen::new(p.color.0, p.line_width as f32);
        let joint = Pen::new(p.point_color.0, p.line_width as f32);
        draw_skeleton(&mut frame, &points, p.min_score, &limb, &joint);
        times.postprocess += start.elapsed();
        Ok(Filtered {
            frame,
            times: Some(times),
        })
    }

    fn set_params(&mut self, params: &FilterParams) -> Result<(), FilterError> {
        match params {
            FilterParams::Pose(p) => {
                self.params = p.clone();
                Ok(())
            }
            other => Err(mismatch("pose", other)),
        }
    }

    fn device(&self) -> Option<Device> {
        Some(self.estimator.model.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypoints_are_read_as_y_x_score_and_mapped_out_of_the_letterbox() {
        let letterbox = Placement {
            x0: 0.0,
            y0: 0.25,
            w: 1.0,
            h: 0.5,
        };
        let k = keypoints_from(&[0.5, 0.2, 0.9, 0.25, 1.0, 0.1], &letterbox);
        assert_eq!(
            k,
            vec![
                Keypoint {
                    x: 0.2,
                    y: 0.5,
                    score: 0.9
                },
                Keypoint {
                    x: 1.0,
                    y: 0.0,
                    score: 0.1
                }
            ]
        );
    }

    #[test]
    fn only_confident_limbs_are_drawn() {
        let mut frame = I420Frame::filled(100, 100, [16, 128, 128]).unwrap();
        let mut points = vec![
            Keypoint {
                x: 0.0,
                y: 0.0,
                score: 0.0
            };
            KEYPOINTS
        ];
        // Shoulders (5, 6) confident, left elbow (7) not.
        points[5] = Keypoint {
            x: 0.2,
            y: 0.5,
            score: 0.9,
        };
        points[6] = Keypoint {
            x: 0.8,
            y: 0.5,
            score: 0.9,
        };
        points[7] = Keypoint {
            x: 0.2,
            y: 0.9,
            score: 0.1,
        };
        let limb = Pen::new([255, 255, 255], 2.0);
        let joint = Pen::new([255, 255, 255], 2.0);

        draw_skeleton(&mut frame, &points, 0.3, &limb, &joint);

        assert_eq!(frame.y()[50 * 100 + 50], 235, "the shoulder line");
        assert_eq!(frame.y()[70 * 100 + 20], 16, "no upper arm to an unsure elbow");
        assert_eq!(frame.y()[0], 16, "unsure points are not drawn");
    }
}
