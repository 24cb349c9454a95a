#!/usr/bin/env bash
# The main job: the relay on localhost with the default filter and the local preview.
# Open the sender page, allow the camera, press Start; watch the result at /view.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY_HTTP=${RELAY_HTTP:-127.0.0.1:8080}
# The default filter blurs the background behind the person (FILTER=passthrough|background-blur|
# background-replace|face-blur|pose); ONNX Runtime and the models come from scripts/setup.sh.
FILTER=${FILTER:-background-blur}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so}
export LIVEFILTER_MODELS_DIR=${LIVEFILTER_MODELS_DIR:-$PWD/models}
cat <<MSG

  livefilter relay on http://$RELAY_HTTP   filter: $FILTER
    sender page   http://$RELAY_HTTP/        (camera -> relay; localhost counts as a secure context)
    preview       http://$RELAY_HTTP/view    (the filtered stream, over WebRTC)
    status        http://$RELAY_HTTP/status  metrics: http://$RELAY_HTTP/metrics
  filter        http://$RELAY_HTTP/filter  (PATCH a JSON object to change parameters live)
  Ctrl-C stops it. Filter parameters: FILTER_PARAMS='{"radius": 20}' (docs/filters.md).
  Publish to Sora as well: EXTRA_ARGS="--sora-signaling-url wss://... --channel-id ..."

MSG
args=(serve --listen "$RELAY_HTTP" --filter "$FILTER")
# A JSON object may hold spaces: it travels as one argument, never word-split.
if [[ -n ${FILTER_PARAMS:-} ]]; then args+=(--filter-params "$FILTER_PARAMS"); fi
# EXTRA_ARGS is flags and plain values, split on spaces (use FILTER_PARAMS for JSON).
read -r -a extra <<<"${EXTRA_ARGS:-}"
exec target/release/livefilter-relay "${args[@]}" "${extra[@]}"
