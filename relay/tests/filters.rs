//! The filters on real pictures and real models: the shipped models against Python ONNX Runtime
//! on the public-domain astronaut photo (scikit-image), face blur's effect region by region,
//! tiny generated models through the `onnx` filter pixel for pixel, and the startup errors.
//! Needs `scripts/setup.sh` (ONNX Runtime, the Python reference tools, the photo).

use std::path::{Path, PathBuf};
use std::process::Command;

use livefilter_relay::filter::face::FaceDetector;
use livefilter_relay::filter::live::LiveParams;
use livefilter_relay::filter::pixels::Planes;
use livefilter_relay::filter::pose::{NAMES, PoseEstimator};
use livefilter_relay::filter::segment::Segmenter;
use livefilter_relay::filter::{FilterConfig, FilterConfigExt, FilterKind};
use livefilter_relay::frame::{I420Frame, rgb_to_yuv, yuv_to_rgb};
use livefilter_relay::infer::{Device, DeviceFallback, RuntimeOptions};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

fn python() -> PathBuf {
    let p = root().join(".cache/venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/test-artefacts/filters");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// The astronaut photo as packed RGB and as the I420 frame the relay would decode.
fn astronaut() -> (Vec<u8>, u32, u32, I420Frame) {
    let path = root().join(".cache/testdata/astronaut.png");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let frame = Planes::default().rgb_to_frame(img.as_raw(), w, h, w, h).unwrap();
    (img.into_raw(), w, h, frame)
}

/// Runs tests/reference/ort_reference.py on the photo.
fn reference(kind: &str, model_file: &str) -> Value {
    let (rgb, w, h, _) = astronaut();
    let input = scratch(&format!("{kind}.rgb"));
    let out = scratch(&format!("{kind}.json"));
    std::fs::write(&input, rgb).unwrap();
    let status = Command::new(python())
        .arg(root().join("tests/reference/ort_reference.py"))
        .args([
            "--rgb",
            input.to_str().unwrap(),
            "--width",
            &w.to_string(),
            "--height",
            &h.to_string(),
        ])
        .args(["--kind", kind, "--model", model(model_file).to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "ort_reference.py {kind} failed");
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

fn cpu() -> RuntimeOptions {
    RuntimeOptions::default()
}

#[test]
fn the_person_mask_agrees_with_python_onnxruntime_on_the_astronaut() {
    let (_, _, _, frame) = astronaut();
    let reference = reference("selfie", "selfie.onnx");
    let expected: Vec<f64> = reference["mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();

    let (mask, _, _) = Segmenter::open(&model("selfie.onnx"), &cpu())
        .unwrap()
        .person_mask(&frame)
        .unwrap();

    assert_eq!((mask.width, mask.height), (256, 256));
    let (mut inter, mut union) = (0, 0);
    for (&ours, &theirs) in mask.data.iter().zip(&expected) {
        let (a, b) = (ours > 0.5, theirs > 0.5);
        inter += usize::from(a && b);
        union += usize::from(a || b);
    }
    let iou = inter as f64 / union as f64;
    println!(
        "selfie mask IoU vs Python onnxruntime: {iou:.4} (coverage {:.3})",
        mask.coverage(0.5)
    );
    assert!(iou > 0.95, "IoU {iou}");
    assert!(
        (0.3..0.8).contains(&mask.coverage(0.5)),
        "the person covers about half the photo"
    );
}

#[test]
fn pose_keypoints_land_near_the_python_reference() {
    let (_, w, h, frame) = astronaut();
    let reference = reference("movenet", "movenet-lightning.onnx");

    let (points, _) = PoseEstimator::open(&model("movenet-lightning.onnx"), &cpu())
        .unwrap()
        .keypoints(&frame)
        .unwrap();

    assert_eq!(points.len(), 17);
    let mut compared = 0;
    for (i, (ours, theirs)) in points
        .iter()
        .zip(reference["keypoints"].as_array().unwrap())
        .enumerate()
    {
        let t: Vec<f64> = theirs.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        if t[2] < 0.3 {
            continue;
        }
        compared += 1;
        let dx = (f64::from(ours.x) - t[1]) * f64::from(w);
        let dy = (f64::from(ours.y) - t[0]) * f64::from(h);
        let dist = (dx * dx + dy * dy).sqrt();
        println!(
            "{:<15} ours ({:.0}, {:.0}) reference ({:.0}, {:.0}) {dist:.1} px",
            NAMES[i],
            ours.x * w as f32,
            ours.y * h as f32,
            t[1] * f64::from(w),
            t[0] * f64::from(h)
        );
        assert!(dist < 12.0, "{} is {dist:.1} px from the reference", NAMES[i]);
        assert!((f64::from(ours.score) - t[2]).abs() < 0.15, "{} score", NAMES[i]);
    }
    assert!(
        compared >= 7,
        "face and shoulders are confidently visible ({compared} compared)"
    );
    // The nose sits in the face, the shoulders below it and apart.
    assert!(points[0].y < points[5].y && points[0].y < points[6].y);
    assert!((points[5].x - points[6].x).abs() > 0.25);
}

fn luma_region(frame: &I420Frame, x0: u32, y0: u32, x1: u32, y1: u32) -> Vec<u8> {
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .map(|(x, y)| frame.y()[(y * frame.width() + x) as usize])
        .collect()
}

#[test]
fn face_blur_hides_the_face_and_leaves_the_rest_of_the_frame_alone() {
    let (_, _, _, frame) = astronaut();
    let mut detector = FaceDetector::open(&model("blazeface-front-128.onnx"), &cpu()).unwrap();
    let (faces, _) = detector.detect(&frame, 0.6).unwrap();
    assert_eq!(faces.len(), 1, "one face: {faces:?}");
    let f = faces[0];
    // Eileen Collins' face is about x 180..270, y 80..175 of the 512x512 photo.
    let (cx, cy) = ((f.x0 + f.x1) / 2.0 * 512.0, (f.y0 + f.y1) / 2.0 * 512.0);
    assert!((200.0..250.0).contains(&cx) && (105.0..155.0).contains(&cy), "{f:?}");

    let cfg = FilterConfig {
        kind: FilterKind::FaceBlur,
        models_dir: Some(root().join("models")),
        ..Default::default()
    };
    let out = cfg.build().unwrap().apply(frame.clone()).unwrap().frame;

    let before = luma_region(&frame, 200, 100, 250, 155);
    let after = luma_region(&out, 200, 100, 250, 155);
    let mad = before
        .iter()
        .zip(&after)
        .map(|(&a, &b)| f64::from(a.abs_diff(b)))
        .sum::<f64>()
        / before.len() as f64;
    assert!(mad > 5.0, "the face changed (mean abs diff {mad:.1})");
    let distinct: std::collections::BTreeSet<u8> = after.iter().copied().collect();
    assert!(
        distinct.len() < before.len() / 20,
        "pixelated into few blocks: {} values",
        distinct.len()
    );
    // Far from the padded box nothing changes: the flag (left), the shuttle (right), the body.
    for (x0, y0, x1, y1) in [(0, 0, 120, 512), (340, 0, 512, 512), (0, 260, 512, 512)] {
        assert_eq!(
            luma_region(&out, x0, y0, x1, y1),
            luma_region(&frame, x0, y0, x1, y1),
            "region {x0},{y0}..{x1},{y1}"
        );
    }
}

#[test]
fn background_blur_keeps_the_person_and_softens_the_background() {
    let (_, _, _, frame) = astronaut();
    let cfg = FilterConfig {
        kind: FilterKind::BackgroundBlur,
        params: json!({"radius": 16}).as_object().cloned().unwrap(),
        models_dir: Some(root().join("models")),
        ..Default::default()
    };
    let out = cfg.build().unwrap().apply(frame.clone()).unwrap().frame;

    // Sharpness: mean absolute horizontal gradient of a region.
    let sharp = |f: &I420Frame, x0, y0, x1, y1| {
        let r = luma_region(f, x0, y0, x1, y1);
        let w = (x1 - x0) as usize;
        r.chunks(w)
            .flat_map(|row| row.windows(2).map(|p| f64::from(p[0].abs_diff(p[1]))))
            .sum::<f64>()
            / r.len() as f64
    };
    // The shuttle model at the right edge is background; the face is the person.
    let (bg_before, bg_after) = (sharp(&frame, 420, 40, 512, 200), sharp(&out, 420, 40, 512, 200));
    let face_psnr = {
        let (a, b) = (
            luma_region(&frame, 200, 100, 250, 155),
            luma_region(&out, 200, 100, 250, 155),
        );
        let mse = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(x.abs_diff(y)).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10()
    };
    println!("background sharpness {bg_before:.2} -> {bg_after:.2}; face PSNR {face_psnr:.1} dB");
    assert!(
        bg_after < bg_before * 0.5,
        "background sharpness {bg_before:.2} -> {bg_after:.2}"
    );
    assert!(face_psnr > 40.0, "the face is kept ({face_psnr:.1} dB)");
}

#[test]
fn background_replace_paints_a_picture_from_the_assets_directory_set_live() {
    let (_, _, _, frame) = astronaut();
    let assets = scratch("assets");
    std::fs::create_dir_all(&assets).unwrap();
    image::RgbImage::from_pixel(16, 9, image::Rgb([255, 0, 0]))
        .save(assets.join("red.png"))
        .unwrap();
    let cfg = FilterConfig {
        kind: FilterKind::BackgroundReplace,
        models_dir: Some(root().join("models")),
        assets_dir: Some(assets.clone()),
        ..Default::default()
    };
    let resolved = cfg.resolved_params().unwrap();
    let mut filter = cfg.build_with(&resolved).unwrap();
    let (live, mut params) = LiveParams::new(&cfg, resolved, filter.device());

    // PATCH /filter's work: the picture is read and decoded here, not on the filter thread ...
    live.patch(json!({"image": "red.png"}).as_object().unwrap()).unwrap();
    // ... which only swaps it in between two frames.
    filter.set_params(&params.borrow_and_update()).unwrap();
    let out = filter.apply(frame.clone()).unwrap().frame;

    let red_luma = rgb_to_yuv([255, 0, 0])[0];
    let background = luma_region(&out, 420, 40, 512, 200);
    let near_red = background.iter().filter(|&&y| y.abs_diff(red_luma) <= 8).count();
    assert!(
        near_red * 10 >= background.len() * 9,
        "{near_red} of {} background pixels are the picture's",
        background.len()
    );
    let (a, b) = (
        luma_region(&frame, 200, 100, 250, 155),
        luma_region(&out, 200, 100, 250, 155),
    );
    let changed = a.iter().zip(&b).filter(|(x, y)| x.abs_diff(**y) > 8).count();
    assert!(changed * 100 <= a.len(), "the face changed in {changed} pixels");
    std::fs::remove_dir_all(&assets).unwrap();
}

/// Generates the tiny models of tests/models/make_tiny_models.py into a fresh directory.
fn tiny_models() -> PathBuf {
    let dir = scratch("tiny-models");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(python())
        .arg(root().join("tests/models/make_tiny_models.py"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "make_tiny_models.py failed");
    dir
}

fn onnx(model: &Path, params: Value) -> FilterConfig {
    FilterConfig {
        kind: FilterKind::Onnx,
        model: Some(model.to_path_buf()),
        params: params.as_object().cloned().unwrap(),
        ..Default::default()
    }
}

/// A grey ramp (U = V = 128), so every step from YUV to RGB and back is exact per pixel.
fn grey_ramp(w: u32, h: u32) -> I420Frame {
    let mut f = I420Frame::filled(w, h, [16, 128, 128]).unwrap();
    for (i, p) in f.planes_mut().0.iter_mut().enumerate() {
        *p = 16 + ((i as u32 % w + i as u32 / w * 3) % 220) as u8;
    }
    f
}

fn inverted_luma(y: u8) -> u8 {
    let c = yuv_to_rgb([y, 128, 128])[0];
    rgb_to_yuv([255 - c; 3])[0]
}

#[test]
fn a_generated_inversion_model_gives_exactly_the_inverted_pixels_in_both_layouts() {
    let dir = tiny_models();
    let frame = grey_ramp(64, 64);
    let expected: Vec<u8> = frame.y().iter().map(|&y| inverted_luma(y)).collect();
    for (file, params) in [
        ("invert_nchw.onnx", json!({})),
        (
            "invert_nhwc_255.onnx",
            json!({"layout": "nhwc", "inputRange": [0, 255], "outputRange": [0, 255]}),
        ),
        ("invert_dynamic.onnx", json!({"width": 64, "height": 64})),
    ] {
        let mut filter = onnx(&dir.join(file), params).build().unwrap();

        let out = filter.apply(frame.clone()).unwrap();

        assert_eq!(out.frame.y(), expected.as_slice(), "{file}");
        assert!(out.frame.u().iter().all(|&u| u == 128), "{file}");
        assert!(out.times.is_some());
    }
}

#[test]
fn an_image_model_at_another_size_is_scaled_to_the_frame() {
    let dir = tiny_models();
    let mut filter = onnx(&dir.join("invert_nchw.onnx"), json!({})).build().unwrap();

    let out = filter
        .apply(I420Frame::filled(320, 180, [16, 128, 128]).unwrap())
        .unwrap()
        .frame;

    assert_eq!((out.width(), out.height()), (320, 180));
    assert!(out.y().iter().all(|&y| y == 235), "black becomes white");
}

#[test]
fn a_mask_model_is_composited_over_the_chosen_colour() {
    let dir = tiny_models();
    let params = json!({"output": "mask", "background": "color", "color": "#000000", "smoothing": 0, "feather": 0});
    let mut filter = onnx(&dir.join("left_half_mask.onnx"), params).build().unwrap();

    let out = filter
        .apply(I420Frame::filled(128, 64, [200, 100, 150]).unwrap())
        .unwrap()
        .frame;

    let row = &out.y()[32 * 128..33 * 128];
    assert!(row[..56].iter().all(|&y| y == 200), "left half kept: {:?}", &row[..64]);
    assert!(row[72..].iter().all(|&y| y == 16), "right half black: {:?}", &row[64..]);
}

#[test]
fn a_keypoint_model_draws_its_points() {
    let dir = tiny_models();
    let params = json!({"output": "keypoints", "color": "#ffffff", "lineWidth": 2});
    let mut filter = onnx(&dir.join("fixed_keypoints.onnx"), params).build().unwrap();

    let out = filter
        .apply(I420Frame::filled(100, 100, [16, 128, 128]).unwrap())
        .unwrap()
        .frame;

    // Keypoint 0 is at (x 0.5, y 0.05); keypoint 16 at (0.5, 0.85); nothing at the left edge.
    assert_eq!(out.y()[5 * 100 + 50], 235);
    assert_eq!(out.y()[85 * 100 + 50], 235);
    assert_eq!(out.y()[50 * 100 + 5], 16);
}

fn build_error(cfg: FilterConfig) -> String {
    match cfg.build() {
        Ok(f) => panic!("{} built", f.name()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_model_is_named_at_startup() {
    let err = build_error(FilterConfig {
        kind: FilterKind::Pose,
        models_dir: Some("/nonexistent/models".into()),
        ..Default::default()
    });
    assert!(
        err.starts_with("filter pose: its model movenet-lightning.onnx is in none of: /nonexistent/models;"),
        "{err}"
    );
    assert!(err.contains("LIVEFILTER_MODELS_DIR"), "the fix is named: {err}");
}

#[test]
fn an_unreadable_model_is_refused_with_the_runtimes_reason() {
    let garbage = scratch("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf").unwrap();

    let err = build_error(onnx(&garbage, json!({})));

    assert!(
        err.starts_with(&format!("filter onnx: model {} cannot be loaded: ", garbage.display())),
        "{err}"
    );
}

#[test]
fn a_model_with_the_wrong_shapes_names_expected_and_actual() {
    let dir = tiny_models();
    let err = build_error(FilterConfig {
        kind: FilterKind::BackgroundBlur,
        model: Some(dir.join("invert_nchw.onnx")),
        ..Default::default()
    });
    assert_eq!(
        err,
        format!(
            "filter background-blur: model {} does not fit filter person segmentation: input 0: expected float32 [1, 256, 256, 3], the model declares 'image' float32 [1, 3, 64, 64]",
            dir.join("invert_nchw.onnx").display()
        )
    );

    let err = build_error(FilterConfig {
        kind: FilterKind::FaceBlur,
        model: Some(model("selfie.onnx")),
        ..Default::default()
    });
    assert!(err.contains("does not fit filter face detection: input 0: expected float32 [1, 128, 128, 3], the model declares 'image' float32 [1, 256, 256, 3]"), "{err}");

    let err = build_error(onnx(&dir.join("two_inputs.onnx"), json!({})));
    assert!(
        err.contains(
            "expected exactly one image input, the model has 2: 'a' float32 [1, 3, 64, 64], 'b' float32 [1, 3, 64, 64]"
        ),
        "{err}"
    );

    let err = build_error(onnx(&dir.join("invert_nchw.onnx"), json!({"output": "keypoints"})));
    assert!(err.contains("output keypoints expects keypoints [.., N, 3] as (y, x, score); the model declares 'out' float32 [1, 3, 64, 64]"), "{err}");
}

#[test]
fn cuda_without_a_cuda_runtime_fails_clearly_or_falls_back_when_told() {
    let mut cfg = FilterConfig {
        kind: FilterKind::BackgroundBlur,
        device: Device::Cuda(0),
        models_dir: Some(root().join("models")),
        ..Default::default()
    };
    let err = build_error(cfg.clone());
    assert!(
        err.starts_with(
            "filter background-blur: device cuda:0 requested but CUDA is unusable: the ONNX Runtime library"
        ),
        "{err}"
    );
    assert!(
        err.contains("has no CUDAExecutionProvider") && err.contains("filter.device_fallback: cpu"),
        "{err}"
    );

    cfg.device_fallback = DeviceFallback::Cpu;
    let filter = cfg.build().unwrap();
    assert_eq!(filter.device(), Some(Device::Cpu));
}

/// The frame mirrored left to right (the person moves to the other side).
fn mirrored(frame: &I420Frame) -> I420Frame {
    let flip = |plane: &[u8], w: usize| -> Vec<u8> {
        plane
            .chunks(w)
            .flat_map(|row| row.iter().rev().copied().collect::<Vec<_>>())
            .collect()
    };
    let (w, cw) = (frame.width() as usize, frame.chroma_size().0);
    I420Frame::from_planes(
        frame.width(),
        frame.height(),
        flip(frame.y(), w),
        flip(frame.u(), cw),
        flip(frame.v(), cw),
    )
    .unwrap()
}

fn green_screen(mask_from: &str) -> Box<dyn livefilter_relay::filter::Filter> {
    FilterConfig {
        kind: FilterKind::BackgroundReplace,
        // Refinement follows each frame's own edges; these tests are about which mask is used.
        params: json!({"color": "#00b140", "smoothing": 0, "refineEdges": false, "maskFrom": mask_from})
            .as_object()
            .cloned()
            .unwrap(),
        models_dir: Some(root().join("models")),
        ..Default::default()
    }
    .build()
    .unwrap()
}

#[test]
fn with_the_previous_frames_mask_the_first_frame_waits_for_its_own_and_the_next_uses_the_one_before() {
    let (_, _, _, first) = astronaut();
    let second = mirrored(&first);
    let green = rgb_to_yuv([0x00, 0xb1, 0x40])[0];
    let mut ahead = green_screen("previous");

    let out1 = ahead.apply(first.clone()).unwrap().frame;
    let out2 = ahead.apply(second.clone()).unwrap().frame;

    assert_eq!(
        out1.y(),
        green_screen("current").apply(first.clone()).unwrap().frame.y(),
        "the first frame is composited with its own mask"
    );
    // Where the first frame's mask said background (green, and not green before), the second
    // frame is green too; where it said person (unchanged), the second frame shows through.
    // (A sliver of alpha can round to either colour at the mask's edge: 1 % is allowed.)
    let (mut background, mut person, mut off) = (0, 0, 0);
    for (i, &o1) in out1.y().iter().enumerate() {
        if o1 == green && first.y()[i].abs_diff(green) > 8 {
            background += 1;
            off += usize::from(out2.y()[i].abs_diff(green) > 2);
        } else if o1 == first.y()[i] && o1.abs_diff(green) > 8 {
            person += 1;
            off += usize::from(out2.y()[i].abs_diff(second.y()[i]) > 2);
        }
    }
    assert!(
        background > 10_000 && person > 10_000,
        "{background} background, {person} person pixels"
    );
    assert!(
        off * 100 <= background + person,
        "{off} of {} pixels do not follow the first frame's mask",
        background + person
    );
    assert_ne!(
        out2.y(),
        green_screen("current").apply(second.clone()).unwrap().frame.y(),
        "the mirrored person's own mask would differ"
    );
}

#[test]
fn switching_back_to_the_current_frames_mask_live_composites_each_frame_with_its_own_again() {
    let (_, _, _, first) = astronaut();
    let second = mirrored(&first);
    let mut filter = green_screen("previous");
    filter.apply(first.clone()).unwrap();

    let params = FilterConfig {
        kind: FilterKind::BackgroundReplace,
        params: json!({"color": "#00b140", "smoothing": 0, "refineEdges": false, "maskFrom": "current"})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    }
    .resolved_params()
    .unwrap();
    filter.set_params(&params).unwrap();
    let out = filter.apply(second.clone()).unwrap().frame;

    assert_eq!(out.y(), green_screen("current").apply(second).unwrap().frame.y());
}

/// A still 640x360 view of the astronaut with a camera's sensor noise on every frame.
fn still_noisy_clip(frames: u32) -> Vec<I420Frame> {
    let (rgb, w, h, _) = astronaut();
    livefilter_relay::bench::clip::still(&rgb, w, h, 640, 360, frames, 3.0).unwrap()
}

fn built(kind: FilterKind, params: Value) -> Box<dyn livefilter_relay::filter::Filter> {
    FilterConfig {
        kind,
        params: params.as_object().cloned().unwrap(),
        models_dir: Some(root().join("models")),
        ..Default::default()
    }
    .build()
    .unwrap()
}

/// 1 − the mean IoU of the consecutive binary masks (alpha ≥ 128) the filter composited with.
fn mask_flicker(filter: &mut dyn livefilter_relay::filter::Filter, clip: &[I420Frame]) -> f64 {
    use livefilter_relay::filter::Probe;
    let mut masks: Vec<Vec<bool>> = Vec::new();
    for frame in clip {
        filter.apply(frame.clone()).unwrap();
        match filter.probe() {
            Some(Probe::Mask { alpha, .. }) => masks.push(alpha.iter().map(|&a| a >= 128).collect()),
            other => panic!("a segmentation filter shows its mask, got {other:?}"),
        }
    }
    let ious: Vec<f64> = masks
        .windows(2)
        .map(|p| {
            let inter = p[0].iter().zip(&p[1]).filter(|(a, b)| **a && **b).count();
            let union = p[0].iter().zip(&p[1]).filter(|(a, b)| **a || **b).count();
            inter as f64 / union.max(1) as f64
        })
        .collect();
    1.0 - ious.iter().sum::<f64>() / ious.len() as f64
}

#[test]
fn on_a_still_noisy_clip_the_stabilised_refined_mask_flickers_less() {
    let clip = still_noisy_clip(12);
    let mut before = built(
        FilterKind::BackgroundBlur,
        json!({"stabilize": false, "refineEdges": false}),
    );
    let mut after = built(FilterKind::BackgroundBlur, json!({}));

    let (flicker_before, flicker_after) = (mask_flicker(&mut *before, &clip), mask_flicker(&mut *after, &clip));

    println!("mask flicker {flicker_before:.4} -> {flicker_after:.4}");
    assert!(flicker_before > 0.0, "the noise moves the raw mask");
    assert!(
        flicker_after < flicker_before,
        "flicker {flicker_before:.4} -> {flicker_after:.4}"
    );
}

/// Median displacement (frame pixels) of keypoints drawn in consecutive frames, and how many
/// keypoints appeared or disappeared.
fn keypoint_jitter(filter: &mut dyn livefilter_relay::filter::Filter, clip: &[I420Frame]) -> (f64, usize) {
    use livefilter_relay::filter::Probe;
    let mut drawn: Vec<Vec<Option<(f32, f32)>>> = Vec::new();
    for frame in clip {
        filter.apply(frame.clone()).unwrap();
        match filter.probe() {
            Some(Probe::Keypoints(points)) => drawn.push(points.to_vec()),
            other => panic!("pose shows its keypoints, got {other:?}"),
        }
    }
    let (mut moves, mut flips) = (Vec::new(), 0);
    for pair in drawn.windows(2) {
        for (a, b) in pair[0].iter().zip(&pair[1]) {
            match (a, b) {
                (Some(a), Some(b)) => moves.push(f64::from((a.0 - b.0).hypot(a.1 - b.1))),
                (None, None) => {}
                _ => flips += 1,
            }
        }
    }
    moves.sort_by(f64::total_cmp);
    (moves.get(moves.len() / 2).copied().unwrap_or(0.0), flips)
}

#[test]
fn on_a_still_noisy_clip_smoothed_keypoints_jitter_less_and_do_not_blink_more() {
    let clip = still_noisy_clip(20);
    let mut before = built(FilterKind::Pose, json!({"smoothing": false, "hysteresis": 0}));
    let mut after = built(FilterKind::Pose, json!({}));

    let ((jitter_before, flips_before), (jitter_after, flips_after)) = (
        keypoint_jitter(&mut *before, &clip),
        keypoint_jitter(&mut *after, &clip),
    );

    println!("keypoint jitter {jitter_before:.2} px -> {jitter_after:.2} px; blinks {flips_before} -> {flips_after}");
    assert!(jitter_before > 0.0, "the noise moves the raw keypoints");
    assert!(
        jitter_after < jitter_before,
        "jitter {jitter_before:.2} -> {jitter_after:.2} px"
    );
    assert!(flips_after <= flips_before, "blinks {flips_before} -> {flips_after}");
}
