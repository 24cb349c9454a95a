//! Encodes the simulcast layers a Sora session asked for from each filtered picture, on the
//! encode stage's thread: the shapes and shares come from [`crate::publish::simulcast`], the
//! pictures from one scaler, one encoder per layer.
//!
//! A layer with the output's own size and rate is not encoded again: the output stream goes
//! out under its rid, and the Sora publisher's estimate (the output encoder's driver) carries
//! that layer's share. Every other layer has its own encoder, created when the layer starts or
//! resumes (so it starts on a keyframe) and dropped when it is suspended.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{EncodedFrame, EncoderConfig, VideoEncoder, new_encoder};
use crate::frame::I420Frame;
use crate::metrics::Metrics;
use crate::publish::KeyframeRequest;
use crate::publish::keyframe::DEFAULT_KEYFRAME_REQUEST_INTERVAL;
use crate::publish::simulcast::{
    Encoding, LayerFrame, LayerShape, ResumeGate, SimulcastControl, allocate, layer_shapes,
};
use crate::scale::Scaler;

/// A frame this much early still counts as due for a rate-limited layer (capture jitter).
const DUE_TOLERANCE: Duration = Duration::from_millis(5);
/// Bitrate changes smaller than this fraction are not passed to a layer's encoder.
const BITRATE_STEP: f64 = 0.05;

struct Layer {
    rid: Arc<str>,
    shape: LayerShape,
    on: bool,
    encoder: Option<Box<dyn VideoEncoder>>,
    kbps: u32,
    next_due: Option<Duration>,
    /// A keyframe was asked for and not yet made (held back by the interval).
    keyframe_wanted: bool,
    last_keyframe: Option<Duration>,
    gate: ResumeGate,
}

impl Layer {
    /// Whether this picture must be a keyframe: asked for, and at most once per interval (a
    /// receiver cannot make a layer all keyframes).
    fn keyframe_due(&self, pts: Duration) -> bool {
        self.keyframe_wanted
            && self
                .last_keyframe
                .is_none_or(|last| pts.saturating_sub(last) >= DEFAULT_KEYFRAME_REQUEST_INTERVAL)
    }

    /// Whether a rate-limited layer takes the picture at `pts`; advances its schedule if so.
    fn due(&mut self, pts: Duration) -> bool {
        let Some(fps) = self.shape.max_fps else { return true };
        let interval = Duration::from_secs_f64(1.0 / fps);
        match self.next_due {
            Some(due) if pts + DUE_TOLERANCE < due => false,
            Some(due) if pts < due + interval => {
                self.next_due = Some(due + interval);
                true
            }
            // The first picture, or one after a gap: the schedule restarts from it.
            _ => {
                self.next_due = Some(pts + interval);
                true
            }
        }
    }
}

/// A layer's frame of this picture (`None`: the output stream's own), counted.
fn sent(metrics: &Metrics, layer: &Layer, frame: Option<EncodedFrame>) -> LayerFrame {
    metrics.simulcast_layer_frames.with_label_values(&[&*layer.rid]).inc();
    LayerFrame {
        rid: Arc::clone(&layer.rid),
        frame,
    }
}

/// The simulcast layers of the current Sora session (none while it has no simulcast).
pub struct LayerEncoders {
    control: SimulcastControl,
    config: EncoderConfig,
    metrics: Metrics,
    version: Option<u64>,
    plan: Option<Arc<Vec<Encoding>>>,
    layers: Vec<Layer>,
    shaped_for: (u32, u32),
    scaler: Scaler,
    output_keyframes: KeyframeRequest,
}

impl LayerEncoders {
    /// Layers as `control` says, encoded with `config`'s codec and settings; the encodings
    /// without a `maxBitrate` share `config.bitrate_kbps`.
    pub fn new(control: SimulcastControl, config: EncoderConfig, metrics: Metrics) -> Self {
        Self {
            control,
            config,
            metrics,
            version: None,
            plan: None,
            layers: Vec::new(),
            shaped_for: (0, 0),
            scaler: Scaler::default(),
            output_keyframes: KeyframeRequest::default(),
        }
    }

    /// Where a keyframe request for the layer that is the output stream goes (the output
    /// encoder's own requests).
    pub fn with_output_keyframes(mut self, requests: KeyframeRequest) -> Self {
        self.output_keyframes = requests;
        self
    }

    fn follow_plan(&mut self) {
        let version = self.control.version();
        if self.version == Some(version) {
            return;
        }
        self.version = Some(version);
        for layer in &self.layers {
            self.metrics
                .simulcast_layer_bitrate
                .with_label_values(&[&*layer.rid])
                .set(0.0);
        }
        self.layers.clear();
        let had_plan = self.plan.is_some();
        self.plan = self.control.plan();
        match &self.plan {
            Some(plan) => {
                tracing::info!(rids = ?plan.iter().map(|e| e.rid.as_str()).collect::<Vec<_>>(), "simulcast layers start")
            }
            // The last share must not pin the output encoder until the next session.
            None if had_plan => self.control.driver().clear(),
            None => {}
        }
    }

    fn reshape(&mut self, plan: &[Encoding], width: u32, height: u32) {
        let shapes = layer_shapes(plan, width, height, f64::from(self.config.bitrate_kbps) * 1000.0);
        if self.layers.len() == shapes.len() {
            for (layer, shape) in self.layers.iter_mut().zip(shapes) {
                layer.shape = shape;
            }
        } else {
            self.layers = shapes
                .into_iter()
                .map(|shape| Layer {
                    rid: Arc::from(shape.rid.as_str()),
                    shape,
                    on: false,
                    encoder: None,
                    kbps: 0,
                    next_due: None,
                    keyframe_wanted: false,
                    last_keyframe: None,
                    gate: ResumeGate::default(),
                })
                .collect();
        }
        self.shaped_for = (width, height);
        for layer in &self.layers {
            tracing::debug!(rid = %layer.rid, width = layer.shape.width, height = layer.shape.height, max_bps = layer.shape.max_bps, "simulcast layer shape");
        }
    }

    /// Encodes `picture`'s layers (the output stream itself was just encoded from it at
    /// `source_fps`); each layer makes a keyframe when its receiver asked for one. `None`
    /// while no simulcast session is on.
    pub fn encode(&mut self, picture: &I420Frame, pts: Duration, source_fps: f64) -> Option<Arc<Vec<LayerFrame>>> {
        self.follow_plan();
        let plan = self.plan.clone()?;
        let (width, height) = (picture.width(), picture.height());
        if self.layers.is_empty() || self.shaped_for != (width, height) {
            self.reshape(&plan, width, height);
        }
        let shares = self.shares(pts);

        let mut driver = None;
        let mut out = Vec::with_capacity(self.layers.len());
        for (layer, share) in self.layers.iter_mut().zip(shares) {
            self.metrics
                .simulcast_layer_bitrate
                .with_label_values(&[&*layer.rid])
                .set(share.unwrap_or(0.0));
            if self.control.take_keyframe_request(&layer.rid) {
                layer.keyframe_wanted = true;
            }
            let Some(bps) = share else {
                if layer.on {
                    tracing::info!(rid = %layer.rid, "simulcast layer suspended: the path cannot carry it");
                    layer.gate.suspended(pts);
                }
                layer.on = false;
                layer.encoder = None;
                layer.next_due = None;
                continue;
            };
            let resumed = !layer.on;
            layer.gate.on(pts);
            if resumed {
                tracing::info!(rid = %layer.rid, kbps = (bps / 1000.0).round(), "simulcast layer on");
            }
            layer.on = true;
            let is_output = layer.shape.width == width
                && layer.shape.height == height
                && layer.shape.max_fps.is_none_or(|max| max + 0.5 >= source_fps);
            if is_output {
                // The SFU switches a viewer to a resumed layer only at a keyframe.
                if std::mem::take(&mut layer.keyframe_wanted) || resumed {
                    self.output_keyframes.request();
                }
                driver = Some(bps);
                out.push(sent(&self.metrics, layer, None));
                continue;
            }
            if let Some(frame) = encode_layer(layer, &self.config, &mut self.scaler, picture, pts, bps, resumed) {
                out.push(sent(&self.metrics, layer, Some(frame)));
            }
        }
        match driver {
            Some(bps) => self.control.driver().set(bps),
            None => self.control.driver().clear(),
        }
        Some(Arc::new(out))
    }

    /// Each layer's share of the path now (`None`: suspended or inactive). A suspended layer
    /// the estimate has room for comes back only when its [`ResumeGate`] lets it, and one held
    /// back keeps every larger suspended layer back too: they come back from the bottom up, as
    /// they were suspended from the top down.
    fn shares(&mut self, pts: Duration) -> Vec<Option<f64>> {
        let shapes: Vec<&LayerShape> = self.layers.iter().map(|l| &l.shape).collect();
        let was_on: Vec<bool> = self.layers.iter().map(|l| l.on).collect();
        let mut shares = allocate(&shapes, &was_on, self.control.path().get());
        let area = |l: &Layer| u64::from(l.shape.width) * u64::from(l.shape.height);
        let mut order: Vec<usize> = (0..self.layers.len()).collect();
        order.sort_by_key(|&i| area(&self.layers[i]));
        let mut held_from: Option<u64> = None;
        for i in order {
            let layer = &mut self.layers[i];
            if layer.on {
                continue;
            }
            let held = held_from.is_some_and(|a| area(layer) >= a);
            match shares[i] {
                Some(_) if held || !layer.gate.may_resume(pts) => {
                    shares[i] = None;
                    held_from = Some(held_from.map_or(area(layer), |a| a.min(area(layer))));
                }
                Some(_) => {}
                None => layer.gate.no_room(),
            }
        }
        shares
    }
}

/// Encodes a layer of its own (not the output stream) at `bps`: scales `picture`, creates the
/// layer's encoder when it has none (a resumed layer starts on a keyframe), makes a keyframe
/// when one is due. `None` when the layer skips this picture (its rate, an error: logged).
fn encode_layer(
    layer: &mut Layer,
    config: &EncoderConfig,
    scaler: &mut Scaler,
    picture: &I420Frame,
    pts: Duration,
    bps: f64,
    resumed: bool,
) -> Option<EncodedFrame> {
    if !layer.due(pts) {
        return None;
    }
    let force = layer.keyframe_due(pts) || resumed;
    let kbps = ((bps / 1000.0).round() as u32).max(1);
    let encoder = match layer.encoder.as_mut() {
        Some(e) => {
            if (f64::from(kbps) - f64::from(layer.kbps)).abs() >= f64::from(layer.kbps) * BITRATE_STEP {
                match e.set_bitrate_kbps(kbps) {
                    Ok(()) => layer.kbps = kbps,
                    Err(err) => {
                        tracing::warn!(rid = %layer.rid, error = %err, kbps, "a layer encoder refused a bitrate change")
                    }
                }
            }
            e
        }
        None => {
            let config = EncoderConfig {
                bitrate_kbps: kbps,
                fps: layer
                    .shape
                    .max_fps
                    .map_or(config.fps, |f| (f.round() as u32).clamp(1, config.fps.max(1))),
                ..config.clone()
            };
            match new_encoder(&config) {
                Ok(e) => {
                    layer.kbps = kbps;
                    layer.encoder.insert(e)
                }
                Err(err) => {
                    tracing::warn!(rid = %layer.rid, error = %err, "cannot create a layer encoder; the layer skips this frame");
                    return None;
                }
            }
        }
    };
    let scaled = match scaler.resized(picture, layer.shape.width, layer.shape.height) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(rid = %layer.rid, error = %err, "cannot scale a layer; it skips this frame");
            return None;
        }
    };
    match encoder.encode(&scaled, pts, force) {
        Ok(Some(frame)) => {
            if frame.keyframe {
                layer.keyframe_wanted = false;
                layer.last_keyframe = Some(pts);
            }
            Some(frame)
        }
        Ok(None) => None,
        Err(err) => {
            // A fresh encoder (and keyframe) on the next picture.
            tracing::warn!(rid = %layer.rid, error = %err, "layer encode failed");
            layer.encoder = None;
            layer.on = false;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{VideoCodec, new_decoder};
    use crate::publish::congestion::BitrateEstimate;
    use crate::publish::simulcast::parse_encodings;
    use serde_json::json;

    fn sora_three() -> Vec<Encoding> {
        parse_encodings(&json!([
            {"rid": "r0", "scaleResolutionDownBy": 4.0, "maxBitrate": 150_000},
            {"rid": "r1", "scaleResolutionDownBy": 2.0, "maxBitrate": 400_000},
            {"rid": "r2", "scaleResolutionDownBy": 1.0, "maxBitrate": 1_000_000},
        ]))
        .unwrap()
    }

    fn encoders(control: &SimulcastControl) -> LayerEncoders {
        LayerEncoders::new(
            control.clone(),
            EncoderConfig {
                codec: VideoCodec::Vp8,
                ..EncoderConfig::default()
            },
            Metrics::new(),
        )
    }

    fn pts(i: u64) -> Duration {
        Duration::from_millis(i * 1000 / 30)
    }

    #[test]
    fn without_a_simulcast_session_nothing_is_encoded() {
        let control = SimulcastControl::default();
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [100, 128, 128]).unwrap();

        assert!(layers.encode(&picture, pts(0), 30.0).is_none());
    }

    #[test]
    fn each_layer_decodes_at_its_size_with_the_pictures_colour_and_the_top_is_the_output_itself() {
        let control = SimulcastControl::new(BitrateEstimate::default());
        control.start(sora_three());
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [150, 90, 200]).unwrap();

        let out = layers.encode(&picture, pts(0), 30.0).unwrap();

        let rids: Vec<_> = out.iter().map(|l| &*l.rid).collect();
        assert_eq!(rids, ["r0", "r1", "r2"]);
        assert!(out[2].frame.is_none(), "r2 is the output stream");
        for (layer, size) in out[..2].iter().zip([(320, 180), (640, 360)]) {
            let frame = layer.frame.as_ref().unwrap();
            assert!(frame.keyframe, "a new layer starts on a keyframe");
            let decoded = new_decoder(VideoCodec::Vp8)
                .unwrap()
                .decode(&frame.data)
                .unwrap()
                .unwrap();
            assert_eq!((decoded.width(), decoded.height()), size);
            let mean_y = decoded.y().iter().map(|&p| f64::from(p)).sum::<f64>() / decoded.y().len() as f64;
            assert!((mean_y - 150.0).abs() < 3.0, "{}: mean luma {mean_y}", layer.rid);
        }
    }

    #[test]
    fn the_output_layers_share_becomes_the_publishers_estimate_and_is_cleared_at_the_end() {
        let driver = BitrateEstimate::default();
        let control = SimulcastControl::new(driver.clone());
        control.start(sora_three());
        control.path().set(900_000.0);
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [90, 128, 128]).unwrap();

        layers.encode(&picture, pts(0), 30.0);
        let during = driver.get();
        control.stop();
        let after_stop = layers.encode(&picture, pts(1), 30.0);

        assert_eq!(during, Some(350_000.0), "900k less r0's 150k and r1's 400k");
        assert!(after_stop.is_none());
        assert_eq!(driver.get(), None);
    }

    #[test]
    fn a_narrow_path_suspends_the_top_layer_and_a_wider_one_brings_it_back() {
        let driver = BitrateEstimate::default();
        let control = SimulcastControl::new(driver.clone());
        control.start(sora_three());
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [90, 128, 128]).unwrap();

        control.path().set(600_000.0);
        let narrow = layers.encode(&picture, pts(0), 30.0).unwrap();
        let driver_while_narrow = driver.get();
        control.path().set(3_000_000.0);
        let wide = layers.encode(&picture, pts(1), 30.0).unwrap();

        let rids = |out: &Vec<LayerFrame>| out.iter().map(|l| l.rid.to_string()).collect::<Vec<_>>();
        assert_eq!(rids(&narrow), ["r0", "r1"]);
        assert_eq!(
            driver_while_narrow, None,
            "the output stream is not Sora's while r2 is off"
        );
        assert_eq!(rids(&wide), ["r0", "r1", "r2"]);
        assert_eq!(driver.get(), Some(1_000_000.0));
    }

    #[test]
    fn a_suspended_layer_comes_back_after_the_path_kept_room_for_it_for_two_seconds() {
        let control = SimulcastControl::default();
        control.start(sora_three());
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(320, 180, [90, 128, 128]).unwrap();
        control.path().set(3_000_000.0);
        layers.encode(&picture, pts(0), 30.0);
        control.path().set(600_000.0);
        layers.encode(&picture, pts(1), 30.0);

        control.path().set(3_000_000.0);
        let r2_sent: Vec<bool> = (2..100)
            .map(|i| {
                let out = layers.encode(&picture, pts(i), 30.0).unwrap();
                out.iter().any(|l| &*l.rid == "r2")
            })
            .collect();

        let first = r2_sent.iter().position(|&sent| sent).expect("r2 comes back");
        assert_eq!(first, 60, "after 60 frames (2 s) of room");
        assert!(r2_sent[first..].iter().all(|&sent| sent));
    }

    #[test]
    fn a_keyframe_request_on_one_layer_makes_a_keyframe_on_that_layer_only() {
        let control = SimulcastControl::default();
        control.start(sora_three());
        let output = KeyframeRequest::default();
        let mut layers = encoders(&control).with_output_keyframes(output.clone());
        let picture = I420Frame::filled(1280, 720, [90, 128, 128]).unwrap();
        layers.encode(&picture, pts(0), 30.0);
        layers.encode(&picture, pts(30), 30.0);
        let at_start = output.take();

        control.request_keyframe("r1");
        control.request_keyframe("r2");
        let out = layers.encode(&picture, pts(60), 30.0).unwrap();
        // Within the interval of that keyframe, a second request waits.
        control.request_keyframe("r1");
        let soon = layers.encode(&picture, pts(61), 30.0).unwrap();
        let later = layers.encode(&picture, pts(76), 30.0).unwrap();

        let keyframe = |out: &Vec<LayerFrame>, i: usize| out[i].frame.as_ref().unwrap().keyframe;
        assert!(!keyframe(&out, 0) && keyframe(&out, 1), "only r1 restarts");
        assert_eq!(
            at_start, 1,
            "the output layer's start asks the output encoder for a keyframe"
        );
        assert_eq!(output.take(), 1, "r2 is the output stream: its encoder is asked");
        assert!(!keyframe(&soon, 1));
        assert!(
            keyframe(&later, 1),
            "the held-back request is honoured after the interval"
        );
    }

    #[test]
    fn a_layer_limited_to_15_fps_takes_every_other_picture_of_a_30_fps_source() {
        let control = SimulcastControl::default();
        let mut encodings = sora_three();
        encodings[0].max_framerate = Some(15.0);
        control.start(encodings);
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [90, 128, 128]).unwrap();

        let r0_frames = (0..30)
            .filter(|&i| {
                let out = layers.encode(&picture, pts(i), 30.0).unwrap();
                out.iter().any(|l| &*l.rid == "r0")
            })
            .count();

        assert_eq!(r0_frames, 15);
    }

    #[test]
    fn a_full_size_layer_at_a_lower_rate_is_encoded_on_its_own() {
        let control = SimulcastControl::default();
        control.start(vec![Encoding {
            max_framerate: Some(10.0),
            ..Encoding::new("slow")
        }]);
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(320, 180, [90, 128, 128]).unwrap();

        let out = layers.encode(&picture, pts(0), 30.0).unwrap();

        assert!(out[0].frame.is_some(), "not the 30 fps output stream");
    }

    #[test]
    fn a_new_offers_encodings_rebuild_the_layers_on_keyframes() {
        let control = SimulcastControl::default();
        control.start(sora_three());
        let mut layers = encoders(&control);
        let picture = I420Frame::filled(1280, 720, [90, 128, 128]).unwrap();
        layers.encode(&picture, pts(0), 30.0);
        let before = layers.encode(&picture, pts(1), 30.0).unwrap();

        let mut smaller = sora_three();
        smaller[1].scale_resolution_down_by = Some(3.0);
        control.start(smaller);
        let after = layers.encode(&picture, pts(2), 30.0).unwrap();

        assert!(!before[1].frame.as_ref().unwrap().keyframe);
        let r1 = after[1].frame.as_ref().unwrap();
        assert!(r1.keyframe);
        assert_eq!((r1.width, r1.height), (426, 240));
    }
}
