#!/usr/bin/env bash
# The main job: the relay on localhost with the default filter and the local preview.
# Open the sender page, allow the camera, press Start; watch the result at /view.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY_HTTP=${RELAY_HTTP:-127.0.0.1:8080}
cat <<MSG

  livefilter relay on http://$RELAY_HTTP
    sender page   http://$RELAY_HTTP/        (camera -> relay; localhost counts as a secure context)
    preview       http://$RELAY_HTTP/view    (the filtered stream, over WebRTC)
    status        http://$RELAY_HTTP/status  metrics: http://$RELAY_HTTP/metrics
  Ctrl-C stops it. Publish to Sora as well: EXTRA_ARGS="--sora-signaling-url wss://... --channel-id ..."

MSG
# shellcheck disable=SC2086
exec target/release/livefilter-relay serve --listen "$RELAY_HTTP" ${EXTRA_ARGS:-}
