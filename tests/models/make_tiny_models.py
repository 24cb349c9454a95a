#!/usr/bin/env python3
"""Write the tiny ONNX models the filter tests use (exact, hand-checkable outputs).

Usage: make_tiny_models.py OUTDIR   (runs with .cache/venv/bin/python: needs only `onnx`)
Output is deterministic, so the files can be regenerated at test time instead of committed.
Opset 17 / IR 8: old enough for any ONNX Runtime the relay supports (1.31 reads up to IR 11).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32 = TensorProto.FLOAT


def scalar(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def save(outdir, filename, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, os.path.splitext(filename)[0], inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="livefilter-tests", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(outdir, filename))


def image(name, dims):
    return helper.make_tensor_value_info(name, F32, dims)


def uses_input_times_zero(prefix):
    """Nodes computing `<prefix>_zero` = 0 * mean(image): ties a constant output to the input,
    so the graph has a real dependency on it; exact because c + 0.0 == c."""
    return [
        helper.make_node("ReduceMean", ["image"], [f"{prefix}_mean"], keepdims=0),
        helper.make_node("Mul", [f"{prefix}_mean", "zero"], [f"{prefix}_zero"]),
    ]


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    nchw = [1, 3, 64, 64]

    # out = 1 - x, NCHW, 0..1 range models.
    save(outdir, "invert_nchw.onnx", [helper.make_node("Sub", ["one", "image"], ["out"])],
         [image("image", nchw)], [image("out", nchw)], [scalar("one", 1.0)])

    # out = 255 - x, NHWC, 0..255 range models.
    nhwc = [1, 64, 64, 3]
    save(outdir, "invert_nhwc_255.onnx", [helper.make_node("Sub", ["c255", "image"], ["out"])],
         [image("image", nhwc)], [image("out", nhwc)], [scalar("c255", 255.0)])

    # out = 1 - x with symbolic height/width: the filter must take the frame size as is.
    dyn = [1, 3, "height", "width"]
    save(outdir, "invert_dynamic.onnx", [helper.make_node("Sub", ["one", "image"], ["out"])],
         [image("image", dyn)], [image("out", dyn)], [scalar("one", 1.0)])

    # mask[0,0,y,x] = 1.0 for x < 32 else 0.0.
    mask = np.zeros((1, 1, 64, 64), dtype=np.float32)
    mask[..., :32] = 1.0
    save(outdir, "left_half_mask.onnx",
         uses_input_times_zero("m") + [helper.make_node("Add", ["mask_const", "m_zero"], ["mask"])],
         [image("image", nchw)], [image("mask", [1, 1, 64, 64])],
         [numpy_helper.from_array(mask, "mask_const"), scalar("zero", 0.0)])

    # keypoints[0,i] = (y=(i+1)/20, x=0.5, score=0.9) as float32, i in 0..17.
    kp = np.array([[[(i + 1) / 20, 0.5, 0.9] for i in range(17)]], dtype=np.float32)
    save(outdir, "fixed_keypoints.onnx",
         uses_input_times_zero("k") + [helper.make_node("Add", ["kp_const", "k_zero"], ["keypoints"])],
         [image("image", nchw)], [image("keypoints", [1, 17, 3])],
         [numpy_helper.from_array(kp, "kp_const"), scalar("zero", 0.0)])

    # Two inputs: the single-input filter contract must reject it with a clear error.
    save(outdir, "two_inputs.onnx", [helper.make_node("Add", ["a", "b"], ["out"])],
         [image("a", nchw), image("b", nchw)], [image("out", nchw)])


if __name__ == "__main__":
    main()
