#!/usr/bin/env bash
# Fast integrity check of the committed models (no TensorFlow, no network): every models/*.onnx
# must be listed in models/SHA256SUMS and match it. A model added or re-exported by hand without
# `make models` fails here, before any test runs against it.
set -euo pipefail
cd "$(dirname "$0")/../../models"

# --strict: a malformed SHA256SUMS line is an error, not a warning.
sha256sum --check --strict --quiet SHA256SUMS

unlisted=()
for f in *.onnx; do
  [ -e "$f" ] || continue
  awk -v f="$f" '$2 == f || $2 == "*" f { found = 1 } END { exit !found }' SHA256SUMS || unlisted+=("$f")
done
if [ ${#unlisted[@]} -gt 0 ]; then
  echo "models-check: not in models/SHA256SUMS: ${unlisted[*]} (run 'make models')" >&2
  exit 1
fi
echo "models-check: $(wc -l <SHA256SUMS) models ok"
