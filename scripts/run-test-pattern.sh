#!/usr/bin/env bash
# The main job on one machine: a local Sora-compatible endpoint and the relay publishing the
# test pattern into it. Ctrl-C stops both. Ports: ENDPOINT_ADDR (7000), RELAY_HTTP (8080).
set -euo pipefail
cd "$(dirname "$0")/.."
ENDPOINT_ADDR=${ENDPOINT_ADDR:-127.0.0.1:7000}
RELAY_HTTP=${RELAY_HTTP:-127.0.0.1:8080}
CODEC=${CODEC:-vp8}
CHANNEL=${CHANNEL:-livefilter-demo}
BIN=target/release

"$BIN/sora-endpoint" --listen "$ENDPOINT_ADDR" &
endpoint=$!
trap 'kill -TERM $relay $endpoint 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 50); do
  curl -fsS "http://$ENDPOINT_ADDR/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

"$BIN/livefilter-relay" test-pattern \
  --listen "$RELAY_HTTP" --udp-addr 127.0.0.1:0 \
  --sora-signaling-url "ws://$ENDPOINT_ADDR/signaling" --channel-id "$CHANNEL" \
  --codec "$CODEC" &
relay=$!

cat <<MSG

  livefilter is running:
    relay metrics    http://$RELAY_HTTP/metrics   status: http://$RELAY_HTTP/status
    what Sora saw    http://$ENDPOINT_ADDR/api/connections
    latest frame     http://$ENDPOINT_ADDR/api/connections/<connection_id>/frame.png
  Ctrl-C stops both.

MSG
wait $relay
