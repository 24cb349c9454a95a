#!/usr/bin/env python3
"""Convert one TensorFlow.js graph model (model.json + weight shards) to ONNX with tf2onnx.

Runs inside .cache/convert-venv (see convert.sh). One model per process: tf2onnx names new
nodes from a process-wide counter, so converting two models in one process would make the
second one's node names depend on the first and break byte-for-byte reproducibility.
"""
import argparse
import json
import os
import runpy
import shutil
import sys
import tempfile

import numpy

# tf2onnx 1.17.0 still calls numpy.product, which numpy 1.25 deprecated and 2.0 removed.
numpy.product = numpy.prod

import onnx  # noqa: E402  (after the shim, like tf2onnx itself)
from tf2onnx.graph import Graph  # noqa: E402

# Reproducible output, part 1: Graph.extract_sub_graph_nodes returns list(set(Node)), and Node
# hashes by id(), i.e. memory address, so the node order after pruning changes from run to run.
# The optimizer's duplicate-constant merge keeps the first node of each group and names new
# folded constants from a counter, so that order leaks into the saved bytes. Keep the graph's
# existing order instead (without this, 4 runs gave 4 different files; with it, identical bytes
# even under random string hashing). convert.sh still pins PYTHONHASHSEED=0, as tf2onnx also
# iterates sets of strings.
_extract_sub_graph_nodes = Graph.extract_sub_graph_nodes


def _extract_sub_graph_nodes_in_order(self, outputs_name, input_checker=None, remove_unused_inputs=True):
    keep = set(_extract_sub_graph_nodes(self, outputs_name, input_checker, remove_unused_inputs))
    return [n for n in self.get_nodes() if n in keep]


Graph.extract_sub_graph_nodes = _extract_sub_graph_nodes_in_order

# tfjs writes _FusedConv2D (and _FusedMatMul) nodes without the "TArgs" attribute that
# TensorFlow's op registry, which tf2onnx builds the graph with, requires; tfjs itself never reads
# it. It lists the dtypes of the fused extra inputs (bias, BN offset), all float32 here.
# FusedDepthwiseConv2dNative has no such attribute in TF 2.15 and must be left alone.
FUSED_OPS = {"_FusedConv2D", "_FusedMatMul"}


def patch_tfjs(src_json, dst_dir):
    with open(src_json, encoding="utf-8") as f:
        model = json.load(f)
    for node in model["modelTopology"]["node"]:
        attr = node.get("attr", {})
        if node["op"] in FUSED_OPS and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "0"))
            attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * n}}
            node["attr"] = attr
    src_dir = os.path.dirname(os.path.abspath(src_json))
    for group in model["weightsManifest"]:
        for shard in group["paths"]:
            shutil.copyfile(os.path.join(src_dir, shard), os.path.join(dst_dir, shard))
    sig = model["signature"]
    (in_name,) = sig["inputs"].keys()
    (out_name,) = sig["outputs"].keys()
    dst_json = os.path.join(dst_dir, "model.json")
    with open(dst_json, "w", encoding="utf-8") as f:
        json.dump(model, f)
    return dst_json, in_name, out_name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tfjs", required=True, help="model.json of a tfjs graph model")
    ap.add_argument("--output", required=True)
    ap.add_argument("--input-name", required=True, help="name of the ONNX input")
    ap.add_argument("--output-name", required=True, help="name of the ONNX output")
    ap.add_argument("--source", required=True, help="provenance, stored as the graph doc string")
    ap.add_argument("--opset", default="17")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_json, tf_in, tf_out = patch_tfjs(args.tfjs, tmp)
        raw = os.path.join(tmp, "raw.onnx")
        sys.argv = [
            "tf2onnx.convert", "--tfjs", model_json, "--output", raw, "--opset", args.opset,
            "--inputs", tf_in, "--outputs", tf_out,
            "--rename-inputs", args.input_name, "--rename-outputs", args.output_name,
        ]
        runpy.run_module("tf2onnx.convert", run_name="__main__")
        m = onnx.load(raw)

    # tf2onnx writes "converted from <temp path>" here: replace it with the real provenance so
    # the bytes do not depend on where the conversion ran.
    m.graph.doc_string = args.source
    m.graph.name = os.path.splitext(os.path.basename(args.output))[0]
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == [args.input_name], m.graph.input
    assert [o.name for o in m.graph.output] == [args.output_name], m.graph.output
    tmp_out = args.output + ".tmp"
    onnx.save(m, tmp_out)
    os.replace(tmp_out, args.output)


if __name__ == "__main__":
    main()
