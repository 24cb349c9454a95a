#!/usr/bin/env bash
# Installs everything livefilter needs to build, run and test on Debian 12, by package name.
# Idempotent: each step checks first and does nothing when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nasm libvpx-dev pkg-config chromium fonts-dejavu-core python3-venv)
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
log "ok"
