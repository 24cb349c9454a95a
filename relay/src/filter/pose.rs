//! `pose`: MoveNet Lightning (192x192, COCO's 17 keypoints) on a letterboxed view of the frame;
//! keypoints above the score threshold are drawn as a skeleton over the video.

use std::path::Path;
use std::time::{Duration, Instant};

use super::params::{FilterParams, PoseParams};
use super::pixels::{Fit, Pen, Placement, Planes};
use super::{Filter, FilterError, Filtered, Probe, StageTimes, frame_error, mismatch};
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
    let shown: Vec<Option<(f32, f32)>> = points
        .iter()
        .map(|k| (k.score >= min_score).then_some((k.x, k.y)))
        .collect();
    draw_points(frame, &shown, limb, joint);
}

/// Draws the shown points (frame fractions) and, for COCO's 17, the limbs between them.
pub fn draw_points(frame: &mut I420Frame, points: &[Option<(f32, f32)>], limb: &Pen, joint: &Pen) {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    if points.len() == KEYPOINTS {
        for &(a, b) in &SKELETON {
            if let (Some(p), Some(q)) = (points[a], points[b]) {
                limb.line(frame, p.0 * w, p.1 * h, q.0 * w, q.1 * h);
            }
        }
    }
    for &(x, y) in points.iter().flatten() {
        joint.disc(frame, x * w, y * h, joint.width);
    }
}

/// The One Euro filter (Casiez, Roussel, Vogel, CHI 2012) on one coordinate: a low-pass whose
/// cut-off rises with the speed, so a still point stops jittering and a moving one does not
/// trail far behind.
#[derive(Clone, Copy, Debug, Default)]
struct OneEuro {
    value: Option<f32>,
    speed: f32,
}

/// Cut-off at rest, in Hz.
const MIN_CUTOFF: f32 = 1.0;
/// Cut-off added per frame-height per second of speed.
const BETA: f32 = 4.0;
/// Cut-off of the speed estimate, in Hz.
const SPEED_CUTOFF: f32 = 1.0;

fn smoothing_factor(cutoff: f32, dt: f32) -> f32 {
    let tau = 1.0 / (std::f32::consts::TAU * cutoff);
    1.0 / (1.0 + tau / dt)
}

impl OneEuro {
    fn update(&mut self, x: f32, dt: f32) -> f32 {
        let Some(prev) = self.value else {
            self.value = Some(x);
            return x;
        };
        let raw_speed = (x - prev) / dt;
        self.speed += smoothing_factor(SPEED_CUTOFF, dt) * (raw_speed - self.speed);
        let cutoff = MIN_CUTOFF + BETA * self.speed.abs();
        let next = prev + smoothing_factor(cutoff, dt) * (x - prev);
        self.value = Some(next);
        next
    }
}

/// One keypoint's state over time.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    shown: bool,
    x: OneEuro,
    y: OneEuro,
}

/// A gap after which smoothing starts afresh (the stream paused or the filter was switched).
const TRACK_GAP: Duration = Duration::from_millis(500);

/// Keypoints steadied over time: shown and hidden with a hysteresis on their score, and their
/// positions smoothed while shown.
#[derive(Debug, Default)]
pub struct KeypointTracker {
    tracks: Vec<Track>,
    last: Option<Instant>,
}

impl KeypointTracker {
    /// The points to draw for `points` seen at `now` (frame fractions; `None`: hidden).
    /// `aspect` is the frame's width over its height.
    pub fn update(
        &mut self,
        points: &[Keypoint],
        now: Instant,
        params: &PoseParams,
        aspect: f32,
    ) -> Vec<Option<(f32, f32)>> {
        let gap = self.last.map(|t| now.saturating_duration_since(t));
        self.last = Some(now);
        if self.tracks.len() != points.len() || gap.is_none_or(|g| g > TRACK_GAP) {
            self.tracks = vec![Track::default(); points.len()];
        }
        // Frames arrive at least this far apart in practice; a burst must not divide by zero.
        let dt = gap.map_or(1.0 / 30.0, |g| g.as_secs_f32().max(1.0 / 240.0));
        let (show_at, hide_below) = (
            params.min_score + params.hysteresis,
            params.min_score - params.hysteresis,
        );
        points
            .iter()
            .zip(&mut self.tracks)
            .map(|(k, track)| {
                track.shown = if track.shown {
                    k.score >= hide_below
                } else {
                    k.score >= show_at
                };
                if !track.shown {
                    // A point that comes back starts from where it is, not where it was.
                    *track = Track::default();
                    return None;
                }
                if !params.smoothing {
                    return Some((k.x, k.y));
                }
                // Both axes in frame heights, so a speed means the same along either.
                Some((track.x.update(k.x * aspect, dt) / aspect, track.y.update(k.y, dt)))
            })
            .collect()
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
    tracker: KeypointTracker,
    /// The points drawn on the last frame, in frame pixels.
    drawn: Vec<Option<(f32, f32)>>,
}

impl PoseFilter {
    /// Opens the pose model.
    pub fn open(path: &Path, options: &RuntimeOptions, params: PoseParams) -> Result<Self, FilterError> {
        let estimator =
            PoseEstimator::open(path, options).map_err(|source| FilterError::Setup { filter: "pose", source })?;
        Ok(Self {
            estimator,
            params,
            tracker: KeypointTracker::default(),
            drawn: Vec::new(),
        })
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
        let shown = self
            .tracker
            .update(&points, start, p, frame.width() as f32 / frame.height().max(1) as f32);
        let limb = Pen::new(p.color.0, p.line_width as f32);
        let joint = Pen::new(p.point_color.0, p.line_width as f32);
        draw_points(&mut frame, &shown, &limb, &joint);
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        self.drawn = shown.iter().map(|s| s.map(|(x, y)| (x * w, y * h))).collect();
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

    fn probe(&self) -> Option<Probe<'_>> {
        (!self.drawn.is_empty()).then_some(Probe::Keypoints(&self.drawn))
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

    fn at(x: f32, y: f32, score: f32) -> Keypoint {
        Keypoint { x, y, score }
    }

    /// Feeds one keypoint's observations 1/30 s apart and returns what is drawn each time.
    fn track(observed: &[Keypoint], params: &PoseParams) -> Vec<Option<(f32, f32)>> {
        let mut tracker = KeypointTracker::default();
        let start = Instant::now();
        observed
            .iter()
            .enumerate()
            .map(|(i, k)| tracker.update(&[*k], start + Duration::from_millis(33 * i as u64), params, 1.0)[0])
            .collect()
    }

    #[test]
    fn a_keypoint_whose_score_hovers_at_the_threshold_does_not_blink() {
        let params = PoseParams::default(); // minScore 0.3, hysteresis 0.1
        let scores = [0.5, 0.28, 0.33, 0.25, 0.31, 0.22, 0.35];
        let observed: Vec<Keypoint> = scores.iter().map(|&s| at(0.5, 0.5, s)).collect();

        let shown = track(&observed, &params);

        assert!(shown.iter().all(Option::is_some), "stays shown above 0.2: {shown:?}");
        let unsure: Vec<Keypoint> = [0.1, 0.32, 0.28, 0.35, 0.3].iter().map(|&s| at(0.5, 0.5, s)).collect();
        assert!(
            track(&unsure, &params).iter().all(Option::is_none),
            "never reaches 0.4, never shown"
        );
    }

    #[test]
    fn without_hysteresis_the_threshold_alone_decides() {
        let params = PoseParams {
            hysteresis: 0.0,
            ..PoseParams::default()
        };
        let observed: Vec<Keypoint> = [0.5, 0.28, 0.33].iter().map(|&s| at(0.5, 0.5, s)).collect();

        let shown: Vec<bool> = track(&observed, &params).iter().map(Option::is_some).collect();

        assert_eq!(shown, vec![true, false, true]);
    }

    #[test]
    fn a_still_keypoint_jitters_far_less_than_the_model_says() {
        // A point at rest, the model's estimate wobbling ±1 % of the frame every frame.
        let observed: Vec<Keypoint> = (0..60)
            .map(|i| at(0.5 + if i % 2 == 0 { 0.01 } else { -0.01 }, 0.5, 0.9))
            .collect();
        let params = PoseParams::default();
        let raw = PoseParams {
            smoothing: false,
            ..params.clone()
        };
        let moves = |pts: &[Option<(f32, f32)>]| -> f32 {
            let p: Vec<(f32, f32)> = pts.iter().skip(30).flatten().copied().collect();
            p.windows(2).map(|w| (w[1].0 - w[0].0).abs()).sum::<f32>() / (p.len() - 1) as f32
        };

        let (smoothed, unsmoothed) = (moves(&track(&observed, &params)), moves(&track(&observed, &raw)));

        assert!((unsmoothed - 0.02).abs() < 1e-6, "unsmoothed it is the model's wobble");
        assert!(smoothed < unsmoothed / 4.0, "{smoothed} per frame against {unsmoothed}");
    }

    #[test]
    fn a_moving_keypoint_is_followed_closely() {
        // Half a frame height per second, a brisk arm movement.
        let observed: Vec<Keypoint> = (0..30).map(|i| at(0.2, 0.2 + 0.5 * i as f32 / 30.0, 0.9)).collect();

        let shown = track(&observed, &PoseParams::default());

        let (_, y) = shown[29].expect("shown");
        let lag_frames = (observed[29].y - y) / (0.5 / 30.0);
        assert!((0.0..3.0).contains(&lag_frames), "trails by {lag_frames:.2} frames");
    }

    #[test]
    fn a_keypoint_that_comes_back_starts_where_it_is_seen() {
        let observed = [
            at(0.2, 0.2, 0.9),
            at(0.2, 0.2, 0.9),
            at(0.2, 0.2, 0.05),
            at(0.8, 0.8, 0.9),
        ];

        let shown = track(&observed, &PoseParams::default());

        assert_eq!(shown[2], None);
        assert_eq!(shown[3], Some((0.8, 0.8)), "not pulled back towards where it was");
    }
}
