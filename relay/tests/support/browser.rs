//! Headless Chromium driving the relay's own pages (`tests/js/browser_driver.mjs`), and the
//! test card it streams as its fake camera (a y4m clip generated here, never committed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::WAIT;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where tests leave artefacts worth looking at (clips, screenshots).
pub fn artefact_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// Browser tests take both cores (Chromium encoding, the relay transcoding, the endpoint
/// decoding): they run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn missing(what: &str) -> ! {
    panic!("{what} is missing: run `make setup` (scripts/setup.sh) first")
}

/// Checks node, playwright-core and Chromium; returns the driver script's path.
fn driver_script() -> PathBuf {
    let js = repo_root().join("tests/js");
    if !js.join("node_modules/playwright-core/package.json").exists() {
        missing("tests/js/node_modules/playwright-core");
    }
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing(&format!("Chromium ({chromium})"));
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing("node");
    }
    js.join("browser_driver.mjs")
}

/// How Chromium's fake camera behaves.
#[derive(Clone, Debug, Default)]
pub enum Camera {
    /// Chromium's built-in fake camera (1280x720 at 20 fps, a moving pattern) and microphone.
    #[default]
    Fake,
    /// A y4m clip, looped at its own rate, plus the fake microphone.
    Clip(PathBuf),
    /// Every camera prompt is denied.
    Denied,
    /// A camera and microphone that flash and beep together once a second (lip-sync tests).
    FlashBeep,
}

/// One Chromium process; each named page lives in its own browser context.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<Value>,
    events: Arc<Mutex<Vec<String>>>,
    next_id: u64,
}

impl Browser {
    /// Launches Chromium with `camera`; waits until the driver is ready.
    pub async fn launch(camera: Camera) -> Self {
        let script = driver_script();
        let mut args = vec![script.into_os_string()];
        match &camera {
            Camera::Fake => {}
            Camera::Clip(path) => args.extend(["--clip".into(), path.clone().into_os_string()]),
            Camera::Denied => args.push("--deny-camera".into()),
            Camera::FlashBeep => args.push("--flash-beep".into()),
        }
        let mut child = Command::new("node")
            .args(&args)
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, replies) = mpsc::unbounded_channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(tokio::sync::Notify::new());
        {
            let (events, ready) = (events.clone(), ready.clone());
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if value.get("id").is_some() {
                        let _ = tx.send(value);
                        continue;
                    }
                    if value["event"] == "ready" {
                        ready.notify_one();
                    }
                    push_bounded(&events, line);
                }
            });
        }
        {
            let events = events.clone();
            let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    push_bounded(&events, format!("stderr: {line}"));
                }
            });
        }
        let browser = Self {
            child,
            stdin,
            replies,
            events,
            next_id: 0,
        };
        if tokio::time::timeout(WAIT, ready.notified()).await.is_err() {
            panic!(
                "Chromium did not start within {WAIT:?}; driver output:\n{}",
                browser.events()
            );
        }
        browser
    }

    /// What the driver and the pages printed lately (console, page errors, stderr).
    pub fn events(&self) -> String {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Sends one command and returns its result, or the driver's error text.
    pub async fn try_call(&mut self, mut command: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("driver gone: {e}"))?;
        let reply = loop {
            match tokio::time::timeout(WAIT, self.replies.recv()).await {
                Err(_) => return Err(format!("no reply to {command} within {WAIT:?}")),
                Ok(None) => return Err(format!("driver exited during {command}")),
                Ok(Some(reply)) if reply["id"] == id => break reply,
                Ok(Some(_)) => {}
            }
        };
        if reply["ok"] == true {
            Ok(reply["result"].clone())
        } else {
            Err(reply["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Sends one command; panics with the driver's error and recent page output on failure.
    pub async fn call(&mut self, command: Value) -> Value {
        match self.try_call(command.clone()).await {
            Ok(result) => result,
            Err(error) => panic!(
                "browser command {command} failed: {error}\npage output:\n{}",
                self.events()
            ),
        }
    }

    /// Opens `url` in a new context named `page`.
    pub async fn open(&mut self, page: &str, url: &str) -> Value {
        let result = self.call(json!({"cmd": "open", "page": page, "url": url})).await;
        assert_eq!(result["status"], 200, "GET {url}: {result}");
        result
    }

    /// Loads `url` in a new page named `page` in a phone's viewport (390x844, touch, 2x).
    pub async fn open_mobile(&mut self, page: &str, url: &str) -> Value {
        let result = self
            .call(json!({"cmd": "open", "page": page, "url": url, "mobile": true}))
            .await;
        assert_eq!(result["status"], 200, "GET {url}: {result}");
        result
    }

    /// The page's width against its viewport's, and the elements that reach past it.
    pub async fn layout(&mut self, page: &str) -> Value {
        self.call(json!({"cmd": "layout", "page": page})).await
    }

    /// `window.livefilter.start(opts)` on the sender page: its state once live or failed.
    pub async fn start(&mut self, page: &str, opts: Value) -> Value {
        self.call(json!({"cmd": "start", "page": page, "opts": opts})).await
    }

    /// An ICE restart of the page's live session (`window.livefilter.restartIce()`).
    pub async fn restart_ice(&mut self, page: &str) -> Value {
        self.call(json!({"cmd": "restart-ice", "page": page})).await
    }

    /// `window.livefilter.stop()`.
    pub async fn stop(&mut self, page: &str) -> Value {
        self.call(json!({"cmd": "stop", "page": page})).await
    }

    /// `window.livefilter.scaleDown(factor)`.
    pub async fn scale_down(&mut self, page: &str, factor: f64) -> Value {
        self.call(json!({"cmd": "scale", "page": page, "factor": factor})).await
    }

    /// `window.livefilterView.disconnect()` on a viewer page (ends its WHEP session).
    pub async fn disconnect_viewer(&mut self, page: &str) -> Value {
        self.call(json!({"cmd": "disconnect", "page": page})).await
    }

    /// The page's `state()` (sender or viewer).
    pub async fn state(&mut self, page: &str) -> Value {
        self.call(json!({"cmd": "state", "page": page})).await
    }

    /// Polls the page's state every 200 ms until `done` holds; panics with the last state.
    pub async fn wait_state(&mut self, page: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state(page).await;
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{page}: never {what}; last state: {state:#}\npage output:\n{}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text an element shows, and whether it is visible.
    pub async fn text(&mut self, page: &str, selector: &str) -> (String, bool) {
        let r = self
            .call(json!({"cmd": "text", "page": page, "selector": selector}))
            .await;
        (
            r["text"].as_str().unwrap_or_default().trim().to_owned(),
            r["visible"] == true,
        )
    }

    /// An attribute of an element (`None` when the element or attribute is absent).
    pub async fn attr(&mut self, page: &str, selector: &str, name: &str) -> Option<String> {
        let r = self
            .call(json!({"cmd": "attr", "page": page, "selector": selector, "name": name}))
            .await;
        r["value"].as_str().map(str::to_owned)
    }

    /// Types into an input.
    pub async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.call(json!({"cmd": "fill", "page": page, "selector": selector, "value": value}))
            .await;
    }

    /// Clicks an element.
    pub async fn click(&mut self, page: &str, selector: &str) {
        self.call(json!({"cmd": "click", "page": page, "selector": selector}))
            .await;
    }

    /// The picture a `<video>` shows now, at its intrinsic size.
    pub async fn snapshot(&mut self, page: &str, selector: &str) -> RgbImage {
        let r = self
            .call(json!({"cmd": "snapshot", "page": page, "selector": selector}))
            .await;
        let b64 = r["png_base64"]
            .as_str()
            .unwrap_or_else(|| panic!("{selector} shows no picture: {r}"));
        let png = base64_decode(b64);
        image::load_from_memory(&png).expect("a PNG").to_rgb8()
    }

    /// Saves a full-page screenshot under the artefact dir; returns its path.
    pub async fn screenshot(&mut self, page: &str, name: &str) -> PathBuf {
        let path = artefact_dir().join(format!("{name}.png"));
        self.call(json!({"cmd": "screenshot", "page": page, "path": path}))
            .await;
        path
    }

    /// Closes a page like closing its tab (pagehide runs; its peer connections end).
    pub async fn close(&mut self, page: &str) {
        self.call(json!({"cmd": "close", "page": page})).await;
    }

    /// Closes Chromium and waits (bounded) for the driver to exit.
    pub async fn quit(mut self) {
        let _ = self.try_call(json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn push_bounded(events: &Mutex<Vec<String>>, line: String) {
    let mut events = events.lock().unwrap_or_else(|p| p.into_inner());
    if events.len() >= 400 {
        events.drain(..100);
    }
    events.push(line);
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (value(c) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// A static test card: 75% colour bars, a grey ramp, a checkerboard and concentric rings: flat
/// colours (a U/V swap shows), sharp edges and structure (misplaced or mis-scaled pictures
/// show), and no text.
pub struct TestCard {
    /// The card as a perfect I420 pipeline would show it (BT.601 limited range, 4:2:0).
    pub rgb: RgbImage,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl TestCard {
    /// Draws the card at `width` x `height` (both even).
    pub fn new(width: u32, height: u32) -> Self {
        assert!(
            width.is_multiple_of(2) && height.is_multiple_of(2),
            "I420 needs even sizes"
        );
        let source = RgbImage::from_fn(width, height, |x, y| image::Rgb(card_pixel(x, y, width, height)));
        let (w, h) = (width as usize, height as usize);
        let mut luma = vec![0u8; w * h];
        for (i, p) in source.pixels().enumerate() {
            luma[i] = rgb_to_yuv(p.0)[0];
        }
        let (cw, ch) = (w / 2, h / 2);
        let (mut u, mut v) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
        for cy in 0..ch {
            for cx in 0..cw {
                let mut sum = [0u32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = source.get_pixel((2 * cx + dx) as u32, (2 * cy + dy) as u32).0;
                    (0..3).for_each(|i| sum[i] += u32::from(p[i]));
                }
                let yuv = rgb_to_yuv(sum.map(|s| ((s + 2) / 4) as u8));
                u[cy * cw + cx] = yuv[1];
                v[cy * cw + cx] = yuv[2];
            }
        }
        let rgb = RgbImage::from_fn(width, height, |x, y| {
            let (x, y) = (x as usize, y as usize);
            let c = (y / 2) * cw + x / 2;
            image::Rgb(yuv_to_rgb([luma[y * w + x], u[c], v[c]]))
        });
        Self { rgb, y: luma, u, v }
    }

    /// Writes the card as a y4m clip of `frames` identical frames at `fps` (Chromium loops it).
    pub fn write_clip(&self, path: &Path, fps: u32, frames: u32) {
        use std::io::Write;
        let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut out = std::io::BufWriter::new(file);
        writeln!(
            out,
            "YUV4MPEG2 W{} H{} F{fps}:1 Ip A1:1 C420jpeg",
            self.rgb.width(),
            self.rgb.height()
        )
        .expect("write clip");
        for _ in 0..frames {
            out.write_all(b"FRAME\n").expect("write clip");
            for plane in [&self.y, &self.u, &self.v] {
                out.write_all(plane).expect("write clip");
            }
        }
        out.flush().expect("write clip");
    }

    /// PSNR (dB, over R, G and B) of `picture` against the card scaled to the picture's size.
    pub fn psnr(&self, picture: &RgbImage) -> f64 {
        let (w, h) = picture.dimensions();
        let reference = if (w, h) == self.rgb.dimensions() {
            self.rgb.clone()
        } else {
            image::imageops::resize(&self.rgb, w, h, image::imageops::FilterType::Triangle)
        };
        psnr(&reference, picture)
    }
}

/// PSNR (dB) between two same-sized RGB pictures; infinite when identical.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "PSNR needs same-sized pictures");
    let sum: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = sum / a.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

fn card_pixel(x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    const BARS: [[u8; 3]; 7] = [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
    ];
    let (bars_end, ramp_end) = (h * 7 / 12, h * 3 / 4);
    if y < bars_end {
        return BARS[(x * 7 / w) as usize];
    }
    if y < ramp_end {
        let g = (x * 255 / (w - 1)) as u8;
        return [g, g, g];
    }
    if x < w / 2 {
        let cell = (h / 9).max(2);
        return if ((x / cell) + (y / cell)).is_multiple_of(2) {
            [16, 16, 16]
        } else {
            [235, 235, 235]
        };
    }
    let (cx, cy) = (f64::from(w) * 0.75, f64::from(ramp_end + h) / 2.0);
    let r = (f64::from(x) - cx).hypot(f64::from(y) - cy);
    let t = 0.5 + 0.5 * (r * std::f64::consts::TAU / f64::from(h / 8)).cos();
    let v = (40.0 + 175.0 * t) as u8;
    [v, v, 255 - v]
}

/// BT.601 limited-range RGB -> YUV.
fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// BT.601 limited-range YUV -> RGB.
fn yuv_to_rgb([y, u, v]: [u8; 3]) -> [u8; 3] {
    let (y, u, v) = (
        1.164 * (f64::from(y) - 16.0),
        f64::from(u) - 128.0,
        f64::from(v) - 128.0,
    );
    [y + 1.596 * v, y - 0.813 * v - 0.391 * u, y + 2.018 * u].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// A generated clip, deleted on drop.
pub struct Clip {
    /// The y4m file.
    pub path: PathBuf,
    /// The card it shows.
    pub card: TestCard,
}

impl Clip {
    /// The test card at `width` x `height`, 2 s at 20 fps, in a file unique to this test.
    pub fn test_card(name: &str, width: u32, height: u32) -> Self {
        let card = TestCard::new(width, height);
        let path = artefact_dir().join(format!("{name}-{width}x{height}-{}.y4m", std::process::id()));
        card.write_clip(&path, 20, 40);
        Self { path, card }
    }
}

impl Drop for Clip {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
