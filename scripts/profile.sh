#!/usr/bin/env bash
# Profiles the relay's per-frame path: `livefilter-relay bench` on the 720p clip under
# `perf record` (software clock, so it works where hardware counters do not), then a text
# report by library and function and a flamegraph (inferno). Not part of `make test`.
#
#   scripts/profile.sh [FILTER] [extra bench args...]     (FILTER: background-blur by default)
#
# Writes target/profile/FILTER.{perf.data,txt,svg}. Installs Debian's linux-perf and
# crates.io's inferno (into .cache/tools) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

FILTER=${1:-background-blur}
shift || true
OUT=target/profile
CLIP=${BENCH_CLIP:-.cache/bench/astronaut-720p.y4m}
TOOLS=.cache/tools
log() { printf '[profile] %s\n' "$*"; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v perf >/dev/null; then
  log "apt: installing linux-perf"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi
if [ ! -x "$TOOLS/bin/inferno-flamegraph" ]; then
  log "cargo: installing inferno into $TOOLS"
  cargo install -q --locked --root "$TOOLS" inferno
fi
mkdir -p "$OUT" "$(dirname "$CLIP")"
[ -s "$CLIP" ] || target/release/livefilter-relay make-clip --image .cache/testdata/astronaut.png \
  --out "$CLIP" --width 1280 --height 720 --frames 150

export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so}
export LIVEFILTER_MODELS_DIR=${LIVEFILTER_MODELS_DIR:-$PWD/models}
log "perf record: bench --filter $FILTER $*"
perf record -q -e cpu-clock -F 999 -g -o "$OUT/$FILTER.perf.data" \
  target/release/livefilter-relay bench --input "$CLIP" --filter "$FILTER" --frames 450 "$@"
perf report -i "$OUT/$FILTER.perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
  | grep '%' | sed -n '1,60p' > "$OUT/$FILTER.txt"
perf script -i "$OUT/$FILTER.perf.data" 2>/dev/null \
  | "$TOOLS/bin/inferno-collapse-perf" | "$TOOLS/bin/inferno-flamegraph" > "$OUT/$FILTER.svg"
log "top of the profile ($OUT/$FILTER.txt):"
sed -n 1,15p "$OUT/$FILTER.txt"
log "flamegraph: $OUT/$FILTER.svg"
