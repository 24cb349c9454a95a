//! Live parameter changes: `PATCH /filter` merges a JSON patch into the running filter's
//! parameters, validates the result as a whole, and hands it to the filter thread, which applies
//! it between two frames. The browser stays connected.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::params::FilterParams;
use super::{FilterError, FilterKind, load_image};
use crate::infer::Device;

/// The running filter's parameters, shared by the HTTP handlers and the filter thread.
pub struct LiveParams {
    kind: FilterKind,
    requested: Device,
    device: Option<Device>,
    current: Mutex<Map<String, Value>>,
    tx: watch::Sender<FilterParams>,
}

impl LiveParams {
    /// Starts from the configured `params` (already validated as `parsed`); the receiver goes to
    /// the filter thread.
    pub fn new(
        kind: FilterKind,
        params: Map<String, Value>,
        parsed: FilterParams,
        requested: Device,
        device: Option<Device>,
    ) -> (Arc<Self>, watch::Receiver<FilterParams>) {
        let (tx, rx) = watch::channel(parsed);
        let live = Arc::new(Self {
            kind,
            requested,
            device,
            current: Mutex::new(params),
            tx,
        });
        (live, rx)
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
        json!({
            "kind": self.kind.as_str(),
            "params": params,
            "requested_device": self.requested.to_string(),
            "device": self.device.map(|d| d.to_string()),
        })
    }

    /// Merges `patch` (RFC 7396) into the parameters; on success the filter thread applies the
    /// result before its next frame. Refused patches change nothing.
    pub fn patch(&self, patch: &Map<String, Value>) -> Result<Value, FilterError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (merged, parsed) = FilterParams::merge_live(self.kind, &current, patch)?;
        // A backdrop picture is read here so a bad path is answered now, not logged later.
        if let FilterParams::BackgroundReplace(p) = &parsed
            && let Some(path) = &p.image
        {
            load_image(self.kind.as_str(), path)?;
        }
        *current = merged;
        self.tx.send_replace(parsed);
        drop(current);
        Ok(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::params::BlurParams;

    #[test]
    fn an_accepted_patch_reaches_the_filter_thread() {
        let (live, mut rx) = LiveParams::new(
            FilterKind::BackgroundBlur,
            Map::new(),
            FilterParams::BackgroundBlur(BlurParams::default()),
            Device::Cpu,
            Some(Device::Cpu),
        );
        let patch = json!({"radius": 40}).as_object().cloned().unwrap();

        let snapshot = live.patch(&patch).unwrap();

        assert_eq!(snapshot["params"]["radius"], 40);
        assert!(rx.has_changed().unwrap());
        let FilterParams::BackgroundBlur(p) = rx.borrow_and_update().clone() else {
            panic!()
        };
        assert_eq!(p.radius, 40);
    }

    #[test]
    fn a_refused_patch_changes_nothing() {
        let (live, rx) = LiveParams::new(
            FilterKind::BackgroundReplace,
            Map::new(),
            FilterParams::parse(FilterKind::BackgroundReplace, &Map::new()).unwrap(),
            Device::Cpu,
            Some(Device::Cpu),
        );
        let patch = json!({"image": "/nonexistent/backdrop.png"})
            .as_object()
            .cloned()
            .unwrap();

        let err = live.patch(&patch).unwrap_err().to_string();

        assert!(
            err.starts_with("filter background-replace: backdrop image /nonexistent/backdrop.png:"),
            "{err}"
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(live.snapshot()["params"]["image"], Value::Null);
    }
}
