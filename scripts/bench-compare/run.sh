#!/usr/bin/env bash
# `make bench-compare`: livefilter and the original Python design side by side (bench.py).
# Installs its own Python environment (.cache/bench-venv, pinned, apart from `make test`'s
# .cache/venv), makes the 720p clip from the astronaut photo and the sender's pre-encoded input
# once, then runs the comparison. Settings (environment):
#   BENCH_COMPARE_RUNS (2)  BENCH_COMPARE_SECONDS (60)  BENCH_COMPARE_WARMUP (10)
#   BENCH_COMPARE_FILTERS (passthrough,background-blur)  BENCH_COMPARE_BITRATE_KBPS (1000)
#   BENCH_COMPARE_SENDER_KBPS (2500)  BENCH_COMPARE_ARGS (more bench.py flags)
#   RELAY (target/release/livefilter-relay)  ENDPOINT (target/release/sora-endpoint)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.cache/bench-venv
PINS=(aiortc==1.16.0 aiohttp==3.14.5 av==18.1.0 onnxruntime==1.31.1 opencv-python-headless==5.0.0.93
  numpy==2.4.6 sora-sdk==2025.4.0)
stamp="$VENV/.pins-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"
if [[ ! -e $stamp ]]; then
  echo "bench-compare: installing ${PINS[*]} into $VENV"
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  touch "$stamp"
fi

RUNS=${BENCH_COMPARE_RUNS:-2}
SECONDS_=${BENCH_COMPARE_SECONDS:-60}
WARMUP=${BENCH_COMPARE_WARMUP:-10}
FILTERS=${BENCH_COMPARE_FILTERS:-passthrough,background-blur}
BITRATE=${BENCH_COMPARE_BITRATE_KBPS:-1000}
SENDER_KBPS=${BENCH_COMPARE_SENDER_KBPS:-2500}
RELAY=${RELAY:-target/release/livefilter-relay}
ENDPOINT=${ENDPOINT:-target/release/sora-endpoint}

mkdir -p .cache/bench-compare
CLIP=.cache/bench-compare/astronaut-720p.y4m
if [[ ! -s $CLIP ]]; then
  "$RELAY" make-clip --image .cache/testdata/astronaut.png --out "$CLIP.part" --width 1280 --height 720 --frames 150
  mv "$CLIP.part" "$CLIP"
fi
# Frames for warm-up + window + the sender's 5 s tail + slack, rounded up to 600 (20 s).
frames=$(python3 -c "import math; print(math.ceil(($WARMUP + $SECONDS_ + 10) * 30 / 600) * 600)")
IVF=.cache/bench-compare/sender-${frames}f-${SENDER_KBPS}k.ivf
if [[ ! -s $IVF ]]; then
  echo "bench-compare: encoding the sender's input ($frames frames, $SENDER_KBPS kbit/s, once)"
  "$VENV/bin/python" scripts/bench-compare/sender.py prepare --clip "$CLIP" --out "$IVF" \
    --frames "$frames" --bitrate-kbps "$SENDER_KBPS"
fi

read -r -a extra <<<"${BENCH_COMPARE_ARGS:-}"
exec "$VENV/bin/python" scripts/bench-compare/bench.py --relay "$RELAY" --endpoint "$ENDPOINT" \
  --ivf "$IVF" --runs "$RUNS" --seconds "$SECONDS_" --warmup "$WARMUP" --filters "$FILTERS" \
  --bitrate-kbps "$BITRATE" "${extra[@]}"
