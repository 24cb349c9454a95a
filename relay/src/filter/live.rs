//! Live parameter changes: `PATCH /filter` merges a JSON patch into the running filter's
//! parameters, validates the result as a whole (a new backdrop picture is read and decoded here,
//! in the caller's blocking task, under the assets rules), and hands it to the filter thread,
//! which applies it between two frames. The browser stays connected.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::assets::{Assets, Origin};
use super::params::FilterParams;
use super::{FilterConfig, FilterConfigExt, FilterError, FilterKind};
use crate::infer::Device;

/// `value` with every fractional number shown as its parameter was written: the parameters are
/// `f32`, and JSON carries them widened to `f64`, where 0.6 reads 0.6000000238418579.
fn as_written(value: Value) -> Value {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let shortest = n.as_f64().map(|v| (v as f32).to_string());
            match shortest.and_then(|s| s.parse::<serde_json::Number>().ok()) {
                Some(tidy) => Value::Number(tidy),
                None => Value::Number(n),
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(as_written).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, as_written(v))).collect()),
        other => other,
    }
}

/// The running filter's parameters, shared by the HTTP handlers and the filter thread.
pub struct LiveParams {
    kind: FilterKind,
    requested: Device,
    device: Option<Device>,
    assets: Assets,
    current: Mutex<Map<String, Value>>,
    tx: watch::Sender<FilterParams>,
}

impl LiveParams {
    /// Starts from `config`'s parameters, already resolved as `resolved`
    /// ([`FilterConfig::resolved_params`], the ones the filter was built with); `device` is where
    /// the model runs. The receiver goes to the filter thread.
    pub fn new(
        config: &FilterConfig,
        resolved: FilterParams,
        device: Option<Device>,
    ) -> (Arc<Self>, watch::Receiver<FilterParams>) {
        let (tx, rx) = watch::channel(resolved);
        let live = Arc::new(Self {
            kind: config.kind,
            requested: config.device,
            device,
            assets: config.assets(),
            current: Mutex::new(config.params.clone()),
            tx,
        });
        (live, rx)
    }

    /// The device asked for, and the one the model runs on (none: the filter has no model).
    pub fn devices(&self) -> (String, Option<String>) {
        (self.requested.to_string(), self.device.map(|d| d.to_string()))
    }

    /// The filter, its effective parameters (defaults filled in) and devices, as JSON.
    pub fn snapshot(&self) -> Value {
        let params = match &*self.tx.borrow() {
            FilterParams::Passthrough => json!({}),
            FilterParams::BackgroundBlur(p) => json!(p),
            FilterParams::BackgroundReplace(p) => json!(p),
            FilterParams::FaceBlur(p) => json!(p),
            FilterParams::Pose(p) => json!(p),
            FilterParams::Onnx(p) => json!(p),
        };
        let params = as_written(params);
        let (requested_device, device) = self.devices();
        let ranges: Map<String, Value> = FilterParams::ranges(self.kind)
            .iter()
            .map(|r| (r.key.to_owned(), json!([r.min, r.max])))
            .collect();
        json!({
            "kind": self.kind.as_str(),
            "params": params,
            "ranges": as_written(Value::Object(ranges)),
            "requested_device": requested_device,
            "device": device,
        })
    }

    /// Merges `patch` (RFC 7396) into the parameters; on success the filter thread applies the
    /// result before its next frame. Refused patches change nothing. Blocking: a new backdrop
    /// picture is read and decoded here (bounded), so call it from a blocking task.
    pub fn patch(&self, patch: &Map<String, Value>) -> Result<Value, FilterError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (merged, parsed) = FilterParams::merge_live(self.kind, &current, patch)?;
        let previous = self.tx.borrow().clone();
        // A picture that did not change is not read again (the startup one may lie outside the
        // assets directory); a new one is decoded now, so a bad name is answered, not logged.
        let parsed = parsed.with_backdrop(&self.assets, Origin::Live, Some(&previous))?;
        *current = merged;
        self.tx.send_replace(parsed);
        drop(current);
        Ok(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::filter::params::BlurParams;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn replace_config(params: Value, assets_dir: Option<PathBuf>) -> FilterConfig {
        FilterConfig {
            kind: FilterKind::BackgroundReplace,
            params: map(params),
            assets_dir,
            ..FilterConfig::default()
        }
    }

    fn live(config: &FilterConfig) -> (Arc<LiveParams>, watch::Receiver<FilterParams>) {
        LiveParams::new(config, config.resolved_params().unwrap(), Some(Device::Cpu))
    }

    fn backdrop_of(rx: &mut watch::Receiver<FilterParams>) -> Option<super::super::assets::Backdrop> {
        match rx.borrow_and_update().clone() {
            FilterParams::BackgroundReplace(p) => p.backdrop,
            other => panic!("{other:?}"),
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "livefilter-live-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(dir.join("assets")).unwrap();
            Self(dir)
        }

        fn png(&self, name: &str, w: u32, h: u32) -> PathBuf {
            let path = self.0.join(name);
            image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]))
                .save(&path)
                .unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parameters_and_their_ranges_are_shown_as_written_without_float_noise() {
        let config = FilterConfig {
            kind: FilterKind::BackgroundBlur,
            params: map(json!({"threshold": 0.6, "smoothing": 0.35})),
            ..FilterConfig::default()
        };
        let (live, _rx) = live(&config);

        let params = live.snapshot()["params"].clone();

        assert_eq!(params["threshold"].to_string(), "0.6", "{params}");
        assert_eq!(params["smoothing"].to_string(), "0.35", "{params}");
        assert_eq!(params["radius"].to_string(), "12", "integers stay integers: {params}");
        let ranges = live.snapshot()["ranges"].clone();
        assert_eq!(ranges["radius"].to_string(), "[1,100]", "{ranges}");
        assert_eq!(ranges["smoothing"].to_string(), "[0,0.95]", "{ranges}");
    }

    #[test]
    fn an_accepted_patch_reaches_the_filter_thread() {
        let config = FilterConfig {
            kind: FilterKind::BackgroundBlur,
            ..FilterConfig::default()
        };
        let (live, mut rx) = LiveParams::new(
            &config,
            FilterParams::BackgroundBlur(BlurParams::default()),
            Some(Device::Cpu),
        );

        let snapshot = live.patch(&map(json!({"radius": 40}))).unwrap();

        assert_eq!(snapshot["params"]["radius"], 40);
        assert!(rx.has_changed().unwrap());
        let FilterParams::BackgroundBlur(p) = rx.borrow_and_update().clone() else {
            panic!()
        };
        assert_eq!(p.radius, 40);
    }

    #[test]
    fn a_refused_patch_changes_nothing() {
        let (live, rx) = live(&replace_config(json!({}), None));

        let err = live
            .patch(&map(json!({"image": "/nonexistent/backdrop.png"})))
            .unwrap_err()
            .to_string();

        assert_eq!(
            err,
            "filter background-replace: image \"/nonexistent/backdrop.png\" is not an allowed asset: the relay has no assets directory for live changes (--assets-dir)"
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(live.snapshot()["params"]["image"], Value::Null);
    }

    #[test]
    fn dev_zero_and_paths_outside_the_assets_directory_are_refused_alike() {
        let dir = TempDir::new();
        dir.png("outside.png", 4, 4);
        let (live, rx) = live(&replace_config(json!({}), Some(dir.0.join("assets"))));

        let answers: Vec<String> = ["/dev/zero", "../outside.png", "missing.png"]
            .into_iter()
            .map(|name| live.patch(&map(json!({ "image": name }))).unwrap_err().to_string())
            .collect();

        assert!(
            answers.iter().all(|a| a.contains("is not an allowed asset")),
            "{answers:?}"
        );
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn a_new_picture_is_decoded_once_here_and_shared_with_later_changes() {
        let dir = TempDir::new();
        dir.png("assets/beach.png", 16, 9);
        let (live, mut rx) = live(&replace_config(json!({}), Some(dir.0.join("assets"))));

        let shown = live.patch(&map(json!({"image": "beach.png"}))).unwrap();
        let first = backdrop_of(&mut rx).expect("decoded");
        live.patch(&map(json!({"smoothing": 0.2}))).unwrap();
        let second = backdrop_of(&mut rx).expect("still there");

        assert_eq!(shown["params"]["image"], "beach.png");
        assert_eq!(first.rgb().dimensions(), (16, 9));
        assert_eq!(first.name(), Path::new("beach.png"));
        // The same decoding, not a second one.
        assert_eq!(first, second);
    }

    #[test]
    fn the_startup_picture_outside_the_assets_directory_survives_other_live_changes() {
        let dir = TempDir::new();
        let outside = dir.png("startup.png", 8, 8);
        let config = replace_config(json!({"image": outside}), Some(dir.0.join("assets")));
        let (live, mut rx) = live(&config);
        let FilterParams::BackgroundReplace(start) = rx.borrow_and_update().clone() else {
            panic!()
        };

        live.patch(&map(json!({"threshold": 0.6}))).unwrap();

        assert_eq!(backdrop_of(&mut rx), start.backdrop);
        assert!(start.backdrop.is_some());
    }
}
