//! Simulcast to Sora: the encodings the server's offer asks for, the size, frame rate and
//! bitrate each layer gets from the filtered picture, and how the path's estimate is shared
//! between the layers. Pure decisions; [`crate::layers`] encodes what they decide and the Sora
//! publisher sends it.
//!
//! As in libwebrtc, every layer is encoded from the same picture, the path's estimate is handed
//! out from the lowest layer up (each up to its `maxBitrate`), and a layer that would get less
//! than its floor is suspended rather than sent starved, from the top down; the lowest active
//! layer is always sent. A suspended layer comes back only with headroom, so a estimate that
//! hovers at a floor does not switch it on and off every frame.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use super::congestion::BitrateEstimate;
use crate::codec::EncodedFrame;

/// Encodings sent at most: each costs an encoder, so an offer cannot ask for an unbounded number.
pub const MAX_LAYERS: usize = 4;
/// The longest rid: the `rtp-stream-id` header extension carries at most 16 bytes.
pub const MAX_RID_BYTES: usize = 16;
/// A layer's floor as a fraction of its ceiling: below it the picture is not worth sending.
const MIN_FRACTION: f64 = 0.25;
/// No layer's floor is below this (bit/s).
const MIN_LAYER_BPS: f64 = 30_000.0;
/// A suspended layer resumes only when its floor fits this many times over.
const RESUME_HEADROOM: f64 = 1.25;
/// A layer's picture is never smaller than this on either side.
const MIN_SIDE: u32 = 16;
/// How long the estimate must keep room for a suspended layer before it comes back.
pub const RESUME_HOLD: Duration = Duration::from_secs(2);
/// The longest that wait grows to after layers that came back and had to go again.
pub const MAX_RESUME_HOLD: Duration = Duration::from_secs(8);
/// A layer suspended again within this time of coming back doubles its next wait...
const QUICK_RELAPSE: Duration = Duration::from_secs(5);
/// ...and one that stays on this long has it reset.
const STABLE_ON: Duration = Duration::from_secs(10);

/// `scaleResolutionDownTo`: the layer fits within this size, keeping the aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxSize {
    /// Largest width.
    pub max_width: u32,
    /// Largest height.
    pub max_height: u32,
}

/// One simulcast encoding as the server's `encodings` describe it (RTCRtpEncodingParameters).
#[derive(Clone, Debug, PartialEq)]
pub struct Encoding {
    /// The RTP stream id (`a=rid`), sent in every packet of the layer.
    pub rid: String,
    /// Whether the server wants the layer at all.
    pub active: bool,
    /// Divide both sides by this (≥ 1); by default 2^(layers above this one).
    pub scale_resolution_down_by: Option<f64>,
    /// Fit within this size instead (it takes precedence over `scale_resolution_down_by`).
    pub scale_resolution_down_to: Option<MaxSize>,
    /// The layer's ceiling in bit/s.
    pub max_bitrate_bps: Option<u32>,
    /// The layer's highest frame rate.
    pub max_framerate: Option<f64>,
}

impl Encoding {
    /// An active encoding with every limit left to the defaults.
    pub fn new(rid: impl Into<String>) -> Self {
        Self {
            rid: rid.into(),
            active: true,
            scale_resolution_down_by: None,
            scale_resolution_down_to: None,
            max_bitrate_bps: None,
            max_framerate: None,
        }
    }
}

/// Why a server's `encodings` cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EncodingError {
    /// `encodings` is not an array.
    #[error("encodings must be an array, got {0}")]
    NotArray(String),
    /// An empty array.
    #[error("encodings is empty")]
    Empty,
    /// More than [`MAX_LAYERS`].
    #[error("{0} encodings; at most {MAX_LAYERS} are sent")]
    TooMany(usize),
    /// One encoding is malformed.
    #[error("encodings[{index}]: {detail}")]
    Bad {
        /// Its position.
        index: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// Two encodings share a rid.
    #[error("rid {0:?} appears twice in encodings")]
    DuplicateRid(String),
}

/// Whether `rid` is an RFC 8851 rid-id short enough for the header extension.
pub fn is_valid_rid(rid: &str) -> bool {
    (1..=MAX_RID_BYTES).contains(&rid.len()) && rid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn excerpt(v: &Value) -> String {
    v.to_string().chars().take(80).collect()
}

/// Parses the `encodings` of a Sora `offer` (or `re-offer`). Fields the relay does not act on
/// (`scalabilityMode`, `adaptivePtime`, `priority`) are ignored: it sends one temporal layer,
/// as `L1T1` asks.
pub fn parse_encodings(v: &Value) -> Result<Vec<Encoding>, EncodingError> {
    let list = v.as_array().ok_or_else(|| EncodingError::NotArray(excerpt(v)))?;
    if list.is_empty() {
        return Err(EncodingError::Empty);
    }
    if list.len() > MAX_LAYERS {
        return Err(EncodingError::TooMany(list.len()));
    }
    let mut out: Vec<Encoding> = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let bad = |detail: String| EncodingError::Bad { index, detail };
        let obj = item
            .as_object()
            .ok_or_else(|| bad(format!("not an object: {}", excerpt(item))))?;
        let rid = obj
            .get("rid")
            .and_then(Value::as_str)
            .filter(|r| is_valid_rid(r))
            .ok_or_else(|| {
                bad(format!(
                    "rid must be 1..={MAX_RID_BYTES} letters, digits, '-' or '_', got {}",
                    obj.get("rid").map_or("nothing".into(), excerpt)
                ))
            })?;
        if out.iter().any(|e| e.rid == rid) {
            return Err(EncodingError::DuplicateRid(rid.to_owned()));
        }
        let active = match obj.get("active") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(bad(format!("active must be a boolean, got {}", excerpt(other)))),
        };
        let number = |field: &str, min: f64| -> Result<Option<f64>, EncodingError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_f64() {
                    Some(n) if n.is_finite() && n >= min => Ok(Some(n)),
                    _ => Err(bad(format!("{field} must be a number >= {min}, got {}", excerpt(x)))),
                },
            }
        };
        let scale_resolution_down_by = number("scaleResolutionDownBy", 1.0)?;
        let max_framerate = number("maxFramerate", 1.0)?;
        let max_bitrate_bps = number("maxBitrate", 1.0)?.map(|b| b.min(f64::from(u32::MAX)) as u32);
        let scale_resolution_down_to = match obj.get("scaleResolutionDownTo") {
            None | Some(Value::Null) => None,
            Some(to) => {
                let side = |field: &str| {
                    to.get(field)
                        .and_then(Value::as_u64)
                        .filter(|&n| n >= u64::from(MIN_SIDE))
                        .map(|n| n.min(u64::from(u32::MAX)) as u32)
                        .ok_or_else(|| {
                            bad(format!(
                                "scaleResolutionDownTo.{field} must be an integer >= {MIN_SIDE}, got {}",
                                excerpt(to)
                            ))
                        })
                };
                Some(MaxSize {
                    max_width: side("maxWidth")?,
                    max_height: side("maxHeight")?,
                })
            }
        };
        out.push(Encoding {
            rid: rid.to_owned(),
            active,
            scale_resolution_down_by,
            scale_resolution_down_to,
            max_bitrate_bps,
            max_framerate,
        });
    }
    Ok(out)
}

/// The rids an SDP's first video section asks to receive (`a=rid:<id> recv`), in order.
pub fn recv_rids(sdp: &str) -> Vec<String> {
    let mut in_video = false;
    let mut rids = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            if in_video {
                break;
            }
            in_video = line.starts_with("m=video ");
        } else if in_video
            && let Some(rest) = line.strip_prefix("a=rid:")
            && let Some((id, params)) = rest.split_once(' ')
            && params.split(' ').next() == Some("recv")
            && is_valid_rid(id)
            && !rids.iter().any(|r| r == id)
        {
            rids.push(id.to_owned());
        }
    }
    rids.truncate(MAX_LAYERS);
    rids
}

/// What one layer is encoded as, for a given output picture.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerShape {
    /// The encoding's rid.
    pub rid: String,
    /// Whether the server wants it.
    pub active: bool,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Ceiling in bit/s.
    pub max_bps: f64,
    /// Floor in bit/s: with less, the layer is suspended.
    pub min_bps: f64,
    /// Highest frame rate, if limited.
    pub max_fps: Option<f64>,
}

/// Rounds down to an even size (I420), never below [`MIN_SIDE`] nor above `limit`.
fn side(value: f64, limit: u32) -> u32 {
    // The epsilon keeps 1280 / (1280 / 480) at 480 rather than 479.99.
    let v = ((value + 1e-6).floor() as u32) & !1;
    v.clamp(MIN_SIDE.min(limit), limit)
}

/// The shape of each encoding for a `width`x`height` output. Encodings without a `maxBitrate`
/// share `default_total_bps` in proportion to their pixels.
pub fn layer_shapes(encodings: &[Encoding], width: u32, height: u32, default_total_bps: f64) -> Vec<LayerShape> {
    let n = encodings.len();
    let sizes: Vec<(u32, u32)> = encodings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let by = match e.scale_resolution_down_to {
                Some(to) => {
                    (f64::from(width) / f64::from(to.max_width)).max(f64::from(height) / f64::from(to.max_height))
                }
                None => e
                    .scale_resolution_down_by
                    .unwrap_or_else(|| f64::from(1u32 << (n - 1 - i).min(8))),
            }
            .max(1.0);
            if by == 1.0 {
                (width, height)
            } else {
                (side(f64::from(width) / by, width), side(f64::from(height) / by, height))
            }
        })
        .collect();
    let unpriced_pixels: f64 = encodings
        .iter()
        .zip(&sizes)
        .filter(|(e, _)| e.max_bitrate_bps.is_none())
        .map(|(_, (w, h))| f64::from(*w) * f64::from(*h))
        .sum();
    encodings
        .iter()
        .zip(sizes)
        .map(|(e, (w, h))| {
            let max_bps = match e.max_bitrate_bps {
                Some(b) => f64::from(b),
                None => default_total_bps * f64::from(w) * f64::from(h) / unpriced_pixels.max(1.0),
            };
            LayerShape {
                rid: e.rid.clone(),
                active: e.active,
                width: w,
                height: h,
                max_bps,
                min_bps: (max_bps * MIN_FRACTION).max(MIN_LAYER_BPS).min(max_bps),
                max_fps: e.max_framerate,
            }
        })
        .collect()
}

/// Shares the path's estimate between the layers: from the smallest picture up, each active
/// layer gets up to its ceiling; the first that cannot get its floor (with headroom if it is
/// suspended now, `was_on` false) is suspended with every larger one. The smallest active layer
/// is always sent. Without an estimate (none yet), every active layer gets its ceiling.
/// Returns each layer's bitrate in bit/s, `None` for a suspended or inactive one.
pub fn allocate(shapes: &[&LayerShape], was_on: &[bool], estimate_bps: Option<f64>) -> Vec<Option<f64>> {
    let mut out = vec![None; shapes.len()];
    let mut order: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].active).collect();
    order.sort_by_key(|&i| u64::from(shapes[i].width) * u64::from(shapes[i].height));
    let Some(mut remaining) = estimate_bps else {
        for i in order {
            out[i] = Some(shapes[i].max_bps);
        }
        return out;
    };
    for (k, &i) in order.iter().enumerate() {
        let shape = &shapes[i];
        let floor = if was_on.get(i).copied().unwrap_or(false) {
            shape.min_bps
        } else {
            shape.min_bps * RESUME_HEADROOM
        };
        if k > 0 && remaining < floor {
            break;
        }
        let bps = remaining.min(shape.max_bps).max(shape.min_bps);
        out[i] = Some(bps);
        remaining = (remaining - bps).max(0.0);
    }
    out
}

/// When a suspended layer may come back. webrtc-rs's GCC has no probing: while a layer is
/// suspended the connection sends less than its estimate, nothing contradicts the estimate,
/// and it drifts up past what the path carries (seen: 950 kbit/s on a 600 kbit/s path). A layer
/// resumed on such an estimate overloads the path and costs the smaller layers their frames.
/// So the estimate must keep room for the layer for a while first, and a layer that comes back
/// only to be suspended again waits twice as long the next time.
#[derive(Clone, Debug)]
pub struct ResumeGate {
    hold: Duration,
    room_since: Option<Duration>,
    resumed_at: Option<Duration>,
    suspended_before: bool,
}

impl Default for ResumeGate {
    fn default() -> Self {
        Self {
            hold: RESUME_HOLD,
            room_since: None,
            resumed_at: None,
            suspended_before: false,
        }
    }
}

impl ResumeGate {
    /// The allocation has room for the suspended layer at media time `pts`: whether it comes
    /// back now. A layer that was never suspended (a session's start) comes at once.
    pub fn may_resume(&mut self, pts: Duration) -> bool {
        let since = *self.room_since.get_or_insert(pts);
        let ok = !self.suspended_before || pts.saturating_sub(since) >= self.hold;
        if ok {
            self.room_since = None;
            self.resumed_at = Some(pts);
        }
        ok
    }

    /// The allocation has no room for the suspended layer: its wait starts over.
    pub fn no_room(&mut self) {
        self.room_since = None;
    }

    /// The layer is on at `pts`; after a while on, its next wait is the short one again.
    pub fn on(&mut self, pts: Duration) {
        if self.resumed_at.is_some_and(|at| pts.saturating_sub(at) >= STABLE_ON) {
            self.hold = RESUME_HOLD;
        }
    }

    /// The layer was suspended at `pts`.
    pub fn suspended(&mut self, pts: Duration) {
        if self.resumed_at.is_some_and(|at| pts.saturating_sub(at) < QUICK_RELAPSE) && self.suspended_before {
            self.hold = (self.hold * 2).min(MAX_RESUME_HOLD);
        }
        self.suspended_before = true;
        self.room_since = None;
    }
}

/// One layer of one picture, as the Sora publisher sends it.
#[derive(Clone, Debug)]
pub struct LayerFrame {
    /// The layer's rid.
    pub rid: Arc<str>,
    /// Its bitstream, or `None` when the layer is the output stream itself (same size and
    /// rate), which then goes out under this rid as well.
    pub frame: Option<EncodedFrame>,
}

/// What the Sora publisher and the encode stage share about simulcast: the encodings of the
/// current session (none when it has no simulcast) and the path's estimate, which the layers
/// share out. The publisher's own estimate (the encoder's driver) then carries only the share
/// of the layer that is the output stream itself.
#[derive(Clone, Debug, Default)]
pub struct SimulcastControl {
    plan: Arc<Mutex<Option<Arc<Vec<Encoding>>>>>,
    version: Arc<AtomicU64>,
    path: BitrateEstimate,
    driver: BitrateEstimate,
    keyframes: Arc<Mutex<BTreeSet<String>>>,
}

impl SimulcastControl {
    /// Shares out the path's estimate; `driver` is the publisher's estimate the output
    /// encoder follows.
    pub fn new(driver: BitrateEstimate) -> Self {
        Self {
            driver,
            ..Self::default()
        }
    }

    /// The session sends these encodings (a new offer or re-offer).
    pub fn start(&self, encodings: Vec<Encoding>) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(encodings));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The session ended: no layers are encoded until the next one starts.
    pub fn stop(&self) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes with every [`Self::start`] and [`Self::stop`].
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current encodings, if a simulcast session is on.
    pub fn plan(&self) -> Option<Arc<Vec<Encoding>>> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Where the send peer records its estimate of the path while simulcasting.
    pub fn path(&self) -> &BitrateEstimate {
        &self.path
    }

    /// The publisher's estimate that the output encoder follows.
    pub fn driver(&self) -> &BitrateEstimate {
        &self.driver
    }

    /// The receiver asked for a keyframe on layer `rid` (a PLI or FIR for its SSRC): only that
    /// layer's encoder makes one, as libwebrtc's simulcast does, not every layer.
    pub fn request_keyframe(&self, rid: &str) {
        self.keyframes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rid.to_owned());
    }

    /// Whether a keyframe was asked for on layer `rid` since the last call; clears it.
    pub fn take_keyframe_request(&self, rid: &str) -> bool {
        self.keyframes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(rid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `allocate` over owned shapes.
    fn shares_of(shapes: &[LayerShape], was_on: &[bool], estimate: Option<f64>) -> Vec<Option<f64>> {
        allocate(&shapes.iter().collect::<Vec<_>>(), was_on, estimate)
    }

    fn sora_three(max: [u32; 3]) -> Vec<Encoding> {
        parse_encodings(&json!([
            {"rid": "r0", "active": true, "scaleResolutionDownBy": 4.0, "maxBitrate": max[0]},
            {"rid": "r1", "active": true, "scaleResolutionDownBy": 2.0, "maxBitrate": max[1]},
            {"rid": "r2", "active": true, "scaleResolutionDownBy": 1.0, "maxBitrate": max[2]},
        ]))
        .unwrap()
    }

    #[test]
    fn soras_encodings_parse_with_every_field_the_relay_acts_on() {
        let parsed = parse_encodings(&json!([
            {"rid": "r0", "active": false, "scaleResolutionDownTo": {"maxWidth": 320, "maxHeight": 240},
             "maxBitrate": 100000, "maxFramerate": 15, "scalabilityMode": "L1T1", "adaptivePtime": false},
            {"rid": "r1"},
        ]))
        .unwrap();

        assert_eq!(
            parsed,
            vec![
                Encoding {
                    rid: "r0".into(),
                    active: false,
                    scale_resolution_down_by: None,
                    scale_resolution_down_to: Some(MaxSize {
                        max_width: 320,
                        max_height: 240
                    }),
                    max_bitrate_bps: Some(100_000),
                    max_framerate: Some(15.0),
                },
                Encoding::new("r1"),
            ]
        );
    }

    #[test]
    fn unusable_encodings_are_refused_naming_the_encoding_and_field() {
        let cases = [
            (json!({"rid": "r0"}), "encodings must be an array"),
            (json!([]), "encodings is empty"),
            (
                json!([{"rid": "a"}, {"rid": "b"}, {"rid": "c"}, {"rid": "d"}, {"rid": "e"}]),
                "5 encodings",
            ),
            (json!([{"rid": "r0"}, {"rid": "r0"}]), "rid \"r0\" appears twice"),
            (json!([{"rid": "r0"}, {"active": true}]), "encodings[1]: rid must be"),
            (
                json!([{"rid": "way-too-long-for-the-extension"}]),
                "encodings[0]: rid must be",
            ),
            (json!([{"rid": "r 0"}]), "encodings[0]: rid must be"),
            (
                json!([{"rid": "r0", "scaleResolutionDownBy": 0.5}]),
                "scaleResolutionDownBy must be a number >= 1",
            ),
            (
                json!([{"rid": "r0", "maxBitrate": "fast"}]),
                "maxBitrate must be a number",
            ),
            (json!([{"rid": "r0", "active": "yes"}]), "active must be a boolean"),
            (
                json!([{"rid": "r0", "scaleResolutionDownTo": {"maxWidth": 0, "maxHeight": 10}}]),
                "maxWidth",
            ),
            (json!([7]), "encodings[0]: not an object"),
        ];
        for (input, want) in cases {
            let err = parse_encodings(&input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn recv_rids_are_read_from_the_video_section_only() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rid:a0 recv\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rid:r0 recv\r\na=rid:r1 recv max-width=640\r\n\
                   a=rid:r2 recv\r\na=rid:s0 send\r\na=simulcast:recv r0;r1;r2\r\nm=application 9 x\r\na=rid:d recv\r\n";
        assert_eq!(recv_rids(sdp), ["r0", "r1", "r2"]);
        assert!(recv_rids("v=0\r\nm=video 9 x 96\r\na=mid:0\r\n").is_empty());
    }

    #[test]
    fn sora_layers_at_720p_are_a_quarter_a_half_and_the_whole_picture() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        let sizes: Vec<_> = shapes.iter().map(|s| (s.rid.as_str(), s.width, s.height)).collect();
        assert_eq!(sizes, [("r0", 320, 180), ("r1", 640, 360), ("r2", 1280, 720)]);
        assert_eq!(shapes[0].max_bps, 150_000.0);
        assert_eq!(shapes[0].min_bps, 37_500.0);
    }

    #[test]
    fn without_scales_layers_default_to_powers_of_two_and_share_the_bitrate_by_pixels() {
        let encodings = vec![Encoding::new("q"), Encoding::new("h"), Encoding::new("f")];

        let shapes = layer_shapes(&encodings, 1280, 720, 2_100_000.0);

        let sizes: Vec<_> = shapes.iter().map(|s| (s.width, s.height)).collect();
        assert_eq!(sizes, [(320, 180), (640, 360), (1280, 720)]);
        let bitrates: Vec<_> = shapes.iter().map(|s| s.max_bps.round()).collect();
        assert_eq!(bitrates, [100_000.0, 400_000.0, 1_600_000.0]);
    }

    #[test]
    fn scale_down_to_fits_the_box_keeps_the_aspect_and_never_upscales() {
        let mut small = Encoding::new("s");
        small.scale_resolution_down_to = Some(MaxSize {
            max_width: 480,
            max_height: 480,
        });
        let mut huge = Encoding::new("h");
        huge.scale_resolution_down_to = Some(MaxSize {
            max_width: 4000,
            max_height: 4000,
        });
        let mut odd = Encoding::new("o");
        odd.scale_resolution_down_by = Some(3.0);

        let shapes = layer_shapes(&[small, huge, odd], 1280, 720, 1e6);

        let sizes: Vec<_> = shapes.iter().map(|s| (s.width, s.height)).collect();
        assert_eq!(sizes, [(480, 270), (1280, 720), (426, 240)]);
    }

    #[test]
    fn a_generous_path_sends_every_layer_at_its_ceiling() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        let got = shares_of(&shapes, &[true; 3], Some(5e6));

        assert_eq!(got, [Some(150_000.0), Some(400_000.0), Some(1_000_000.0)]);
    }

    #[test]
    fn a_narrow_path_fills_the_small_layers_first_and_suspends_the_top() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        // 600 kbit/s: r0 150 + r1 400 leave 50 for r2, whose floor is 250.
        let got = shares_of(&shapes, &[true; 3], Some(600_000.0));

        assert_eq!(got, [Some(150_000.0), Some(400_000.0), None]);
    }

    #[test]
    fn the_top_layer_gets_what_is_left_when_that_is_above_its_floor() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        let got = shares_of(&shapes, &[true; 3], Some(900_000.0));

        assert_eq!(got, [Some(150_000.0), Some(400_000.0), Some(350_000.0)]);
    }

    #[test]
    fn the_smallest_layer_is_sent_at_its_floor_even_on_a_starved_path() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        let got = shares_of(&shapes, &[true; 3], Some(10_000.0));

        assert_eq!(got, [Some(37_500.0), None, None]);
    }

    #[test]
    fn a_suspended_layer_resumes_only_with_headroom_over_its_floor() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);
        // 260 kbit/s left for r2: above its 250 floor, below 1.25 × 250.
        let estimate = Some(810_000.0);

        let while_on = shares_of(&shapes, &[true, true, true], estimate);
        let while_off = shares_of(&shapes, &[true, true, false], estimate);

        assert_eq!(while_on[2], Some(260_000.0));
        assert_eq!(while_off[2], None);
    }

    #[test]
    fn inactive_layers_get_nothing_and_the_next_one_up_is_the_smallest() {
        let mut encodings = sora_three([150_000, 400_000, 1_000_000]);
        encodings[0].active = false;
        let shapes = layer_shapes(&encodings, 1280, 720, 1e6);

        let got = shares_of(&shapes, &[false, true, true], Some(300_000.0));

        assert_eq!(got, [None, Some(300_000.0), None]);
    }

    #[test]
    fn before_any_estimate_every_active_layer_gets_its_ceiling() {
        let shapes = layer_shapes(&sora_three([150_000, 400_000, 1_000_000]), 1280, 720, 1e6);

        assert_eq!(
            shares_of(&shapes, &[false; 3], None),
            [Some(150_000.0), Some(400_000.0), Some(1_000_000.0)]
        );
    }

    #[test]
    fn a_layers_keyframe_request_is_taken_once_and_only_for_that_layer() {
        let control = SimulcastControl::default();

        control.request_keyframe("r1");
        control.request_keyframe("r1");

        assert!(!control.take_keyframe_request("r0"));
        assert!(control.take_keyframe_request("r1"));
        assert!(!control.take_keyframe_request("r1"));
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_layer_starts_at_once_but_comes_back_only_after_the_estimate_kept_room_for_two_seconds() {
        let mut gate = ResumeGate::default();
        assert!(gate.may_resume(S(0)), "a session's layers start at once");
        gate.suspended(S(20));

        let at_once = gate.may_resume(S(21));
        let after_1s = gate.may_resume(S(22));
        gate.no_room();
        let after_gap = gate.may_resume(S(23));
        let after_2s_of_room = gate.may_resume(S(25));

        assert_eq!(
            (at_once, after_1s, after_gap, after_2s_of_room),
            (false, false, false, true)
        );
    }

    #[test]
    fn a_layer_suspended_again_soon_after_coming_back_waits_twice_as_long_up_to_8_s() {
        let mut gate = ResumeGate::default();
        gate.may_resume(S(0));
        gate.suspended(S(30));
        let mut waits = Vec::new();
        let mut t = S(30);
        for _ in 0..4 {
            let start = t;
            while !gate.may_resume(t) {
                t += Duration::from_millis(100);
            }
            waits.push((t - start).as_secs());
            t += S(1);
            gate.suspended(t);
        }
        // Then a long spell on resets it.
        gate.may_resume(t + S(60));
        gate.on(t + S(75));
        gate.suspended(t + S(76));
        let start = t + S(76);
        let mut u = start;
        while !gate.may_resume(u) {
            u += Duration::from_millis(100);
        }

        assert_eq!(waits, [2, 4, 8, 8]);
        assert_eq!((u - start).as_secs(), 2);
    }

    #[test]
    fn the_control_announces_each_start_and_stop() {
        let control = SimulcastControl::default();
        let v0 = control.version();

        control.start(sora_three([1, 2, 3]));
        let started = (control.version(), control.plan().map(|p| p.len()));
        control.stop();

        assert_eq!(started, (v0 + 1, Some(3)));
        assert_eq!((control.version(), control.plan()), (v0 + 2, None));
    }
}
