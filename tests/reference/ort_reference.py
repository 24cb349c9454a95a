#!/usr/bin/env python3
"""Reference outputs of the bundled vision models, computed with Python ONNX Runtime.

The Rust filters must agree with this (same model, same pre-processing), so the pre-processing
here is written out in numpy rather than borrowed from an imaging library:
  1. resize the packed RGB8 frame to the model size with bilinear interpolation, half-pixel
     centres and edge clamping (OpenCV INTER_LINEAR; no antialiasing when shrinking), then round
     to u8 as an RGB8 -> RGB8 resizer does;
  2. normalise: selfie -> float32 0..1 NHWC; movenet -> int32 0..255 NHWC.
No letterboxing: the image is stretched to the model's square input, so outputs are relative to
the whole input image.

Runs with .cache/venv/bin/python (numpy + onnxruntime from scripts/setup.sh).
Example:
  python3 tests/reference/png_to_rgb.py .cache/testdata/astronaut.png /tmp/a.rgb
  .cache/venv/bin/python tests/reference/ort_reference.py --rgb /tmp/a.rgb --width 512 \\
      --height 512 --kind selfie --model models/selfie.onnx --out /tmp/selfie.json
"""
import argparse
import json

import numpy as np
import onnxruntime as ort

MODEL_SIZE = {"selfie": (256, 256), "movenet": (192, 192)}  # (height, width)


def _axis(out_n, in_n):
    scale = in_n / out_n
    src = (np.arange(out_n, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, in_n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_n - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear_u8(img, out_h, out_w):
    """img: (H, W, C) uint8 -> (out_h, out_w, C) uint8."""
    in_h, in_w = img.shape[:2]
    y0, y1, fy = _axis(out_h, in_h)
    x0, x1, fx = _axis(out_w, in_w)
    f = img.astype(np.float32)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bot = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rgb", required=True, help="packed RGB8 file, row-major, no padding")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--kind", choices=sorted(MODEL_SIZE), required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="JSON output file")
    args = ap.parse_args()

    data = np.fromfile(args.rgb, dtype=np.uint8)
    if data.size != args.width * args.height * 3:
        raise SystemExit(f"{args.rgb}: {data.size} bytes, expected {args.width}x{args.height}x3")
    img = data.reshape(args.height, args.width, 3)
    mh, mw = MODEL_SIZE[args.kind]
    small = resize_bilinear_u8(img, mh, mw)[None]  # (1, mh, mw, 3)

    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    if args.kind == "selfie":
        (mask,) = sess.run(None, {inp.name: small.astype(np.float32) / np.float32(255.0)})
        mask = mask.reshape(mh, mw)
        result = {"width": mw, "height": mh, "mask": [float(v) for v in mask.ravel()]}
    else:
        (kp,) = sess.run(None, {inp.name: small.astype(np.int32)})
        result = {"keypoints": [[float(v) for v in row] for row in kp.reshape(17, 3)]}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
