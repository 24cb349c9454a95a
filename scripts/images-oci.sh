#!/usr/bin/env bash
# Builds the livefilter-relay (CPU) and livefilter-operator images without a Docker engine, from
# Debian packages only, as OCI archives: target/images/<image>-<tag>.oci.tar (`make images-oci`).
#
#   1. The final stage of relay/Dockerfile and operator/Dockerfile is read
#      (scripts/images-oci/dockerfile.py): the apt packages it installs, what it COPYs where, ENV,
#      USER, WORKDIR, EXPOSE, ENTRYPOINT, CMD. The Dockerfiles stay the one description of the
#      images; an instruction this script cannot reproduce stops it.
#   2. A Debian bookworm root filesystem with exactly those packages: `mmdebstrap
#      --variant=minbase` (what debian:bookworm-slim is), documentation excluded like -slim. The
#      tarball is cached under .cache/images-oci/, keyed by a hash of the recipe (suite, variant,
#      packages, mirrors), so a rerun reuses it; IMAGES_OCI_REFRESH=1 rebuilds it (security
#      updates).
#   3. An OCI layout with `umoci`: the root filesystem as the first layer, then one layer per
#      COPY (the binary from target/$IMAGES_OCI_PROFILE, models/, ONNX Runtime from
#      .cache/onnxruntime, the copy scripts/setup.sh installs) at the Dockerfile's paths, then the
#      Dockerfile's config (entrypoint, cmd, user, env, working directory, exposed ports) and
#      OCI labels.
#   4. The layout packed as an oci-archive (a tar of it), checked with `skopeo inspect`.
#
# Push one with: skopeo copy oci-archive:target/images/livefilter-relay-0.1.0.oci.tar \
#                  docker://registry.example/livefilter/livefilter-relay:0.1.0
#
# The CUDA image is not built here: its base (nvidia/cuda, the CUDA runtime and the container
# toolkit's environment) is not a Debian package; `make images` builds it with Docker.
#
# Variables: IMAGES_OCI_PROFILE (release | debug; which target/ binaries), IMAGE_TAG (the
# workspace version), IMAGES_OCI_OUT (target/images, or target/images/debug for debug builds),
# IMAGES_OCI_IMAGES ("relay operator"), IMAGES_OCI_MIRROR (deb.debian.org), IMAGES_OCI_REFRESH.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${IMAGES_OCI_PROFILE:-release}
TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
read -ra IMAGES <<<"${IMAGES_OCI_IMAGES:-relay operator}"
MIRROR=${IMAGES_OCI_MIRROR:-http://deb.debian.org}
CACHE=.cache/images-oci
ORT_DIR=.cache/onnxruntime
case "$PROFILE" in
  release) OUT=${IMAGES_OCI_OUT:-target/images} ;;
  debug) OUT=${IMAGES_OCI_OUT:-target/images/debug} ;;
  *) echo "[images-oci] IMAGES_OCI_PROFILE must be release or debug, not '$PROFILE'" >&2; exit 2 ;;
esac
TOOLS=(mmdebstrap umoci skopeo)
# The time recorded in the images (creation, history, file times): the last commit's.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Scratch space (the root filesystem being built, the OCI layout): a tmpfs with room when there is
# one, since both are many small files written once.
SCRATCH=${IMAGES_OCI_SCRATCH:-${TMPDIR:-/tmp}}
if [ -z "${IMAGES_OCI_SCRATCH:-}" ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 2000000 ]; then
  SCRATCH=/dev/shm
fi

log() { printf '[images-oci] %s\n' "$*"; }
die() { printf '[images-oci] error: %s\n' "$*" >&2; exit 1; }

install_tools() {
  local missing=() p
  for p in "${TOOLS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The Debian recipe for a Dockerfile's base image: BASE_SUITE, BASE_PACKAGES (beyond minbase),
# BASE_ENV (what the base image's config sets).
base_recipe() {
  local from=$1
  BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  case "$from" in
    debian:bookworm-slim | debian:bookworm)
      BASE_SUITE=bookworm
      BASE_PACKAGES=()
      ;;
    gcr.io/distroless/static-debian12* | gcr.io/distroless/cc-debian12* | gcr.io/distroless/base-debian12*)
      # distroless is assembled from Debian 12 packages: these, plus glibc and libgcc (in
      # minbase), which the workspace's operator binary (glibc, not the Dockerfile's static musl
      # build) links.
      BASE_SUITE=bookworm
      BASE_PACKAGES=(ca-certificates netbase tzdata)
      BASE_ENV+=(SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
      ;;
    *)
      die "no Debian-package equivalent of the base image '$from' (the CUDA image's nvidia/cuda base is one: build it with 'make images', which needs Docker)"
      ;;
  esac
}

# base_tarball SUITE PACKAGE...: prints the cached root filesystem tarball, building it first when
# the cache has none for this recipe.
base_tarball() {
  local suite=$1
  shift
  local packages sources opts key tarball
  packages=$(printf '%s\n' "$@" | sort -u | xargs)
  sources=("deb $MIRROR/debian $suite main" "deb $MIRROR/debian $suite-updates main"
    "deb $MIRROR/debian-security $suite-security main")
  # -slim's exclusions (documentation, man pages, locales; copyright files stay).
  opts=(--variant=minbase --skip=output/dev
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/locale/*')
  key=$(printf '%s\n' "$suite" "$packages" "${sources[@]}" "${opts[@]}" | sha256sum | cut -c1-16)
  tarball=$CACHE/rootfs-$suite-$key.tar
  # Tarballs of recipes no image used for two weeks go (the time is refreshed on each use).
  find "$CACHE" -maxdepth 1 -name "rootfs-*.tar" -mtime +14 -delete 2>/dev/null || true
  if [ -s "$tarball" ] && [ -z "${IMAGES_OCI_REFRESH:-}" ]; then
    touch "$tarball"
    log "base: $tarball (cached; packages: ${packages:-none beyond minbase})" >&2
  else
    log "base: mmdebstrap $suite minbase + ${packages:-nothing} -> $tarball" >&2
    mkdir -p "$CACHE"
    local include=()
    [ -n "$packages" ] && include=("--include=${packages// /,}")
    local start=$SECONDS
    local tmp=$CACHE/.building-$key.$$.tar
    rm -rf "$tmp"
    # dpkg without fsync, in a tmpfs when there is one: 20 s instead of a minute.
    if ! SOURCE_DATE_EPOCH=$EPOCH TMPDIR=$SCRATCH mmdebstrap --quiet --format=tar --dpkgopt=force-unsafe-io \
      "${opts[@]}" "${include[@]}" "$suite" "$tmp" "${sources[@]}" >&2; then
      rm -rf "$tmp"
      die "mmdebstrap failed for $suite with: ${packages:-minbase}"
    fi
    mv "$tmp" "$tarball"
    log "base: built in $((SECONDS - start))s ($(du -h "$tarball" | cut -f1))" >&2
  fi
  echo "$tarball"
}

# copy_source IMAGE FROM SRC: the local file or directory that stands for the Dockerfile's
# `COPY --from=FROM SRC`.
copy_source() {
  local image=$1 from=$2 src=$3
  case "$from:$src" in
    build:/out/livefilter-relay | build:/out/livefilter-operator)
      echo "target/$PROFILE/${src#/out/}"
      ;;
    build:/out/models) echo models ;;
    onnxruntime:/opt/onnxruntime) echo "$ORT_DIR" ;;
    *) die "$image: don't know what 'COPY --from=$from $src' is without Docker (scripts/images-oci.sh copy_source)" ;;
  esac
}

# stage IMAGE FROM SRC DEST: a copy of what the COPY adds, root-owned, file times at $EPOCH.
stage() {
  local image=$1 from=$2 src=$3 dest=$4 local_src
  local_src=$(copy_source "$image" "$from" "$src")
  [ -e "$local_src" ] || die "$image: $local_src (for COPY --from=$from $src) does not exist$(hint "$local_src")"
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  if [ "$local_src" = "$ORT_DIR" ]; then
    # Only the versioned library ORT_DYLIB_PATH names, as the Dockerfile copies it out of the wheel.
    local lib=$ORT_DYLIB_BASENAME
    [ -n "$lib" ] || die "$image: the Dockerfile copies ONNX Runtime but sets no ORT_DYLIB_PATH"
    [ -f "$ORT_DIR/$lib" ] || die "$image: $ORT_DIR/$lib missing: the Dockerfile's ORT_VERSION and scripts/setup.sh's differ, or run 'make setup'"
    mkdir -p "$dest/lib"
    cp -L "$ORT_DIR/$lib" "$dest/lib/$lib"
    chmod 0755 "$dest/lib/$lib"
  else
    cp -RL "$local_src" "$dest"
  fi
  chown -R 0:0 "$dest"
  find "$dest" -exec touch -h -d "@$EPOCH" {} +
}

hint() {
  case "$1" in
    target/release/*) echo " (build it: cargo build --release -p livefilter-relay -p livefilter-operator)" ;;
    target/debug/*) echo " (build it: cargo build --workspace --bins)" ;;
    "$ORT_DIR"*) echo " (run 'make setup')" ;;
  esac
}

# build IMAGE: target/images/livefilter-IMAGE-TAG.oci.tar from IMAGE/Dockerfile.
build() {
  local image=$1 name=livefilter-$1 dockerfile=$1/Dockerfile
  local start=$SECONDS
  [ -f "$dockerfile" ] || die "no $dockerfile"
  local DF_FROM DF_PACKAGES DF_COPY_FROM DF_COPY_SRC DF_COPY_DST DF_ENV DF_USER DF_WORKDIR
  local DF_EXPOSE DF_ENTRYPOINT DF_CMD DF_UNHANDLED
  local parsed
  parsed=$(python3 scripts/images-oci/dockerfile.py "$dockerfile") || die "cannot read $dockerfile (above)"
  eval "$parsed"
  if [ ${#DF_UNHANDLED[@]} -gt 0 ]; then
    die "$dockerfile: its final stage has instructions this script does not reproduce: $(printf '[%s] ' "${DF_UNHANDLED[@]}")"
  fi
  local BASE_SUITE BASE_PACKAGES BASE_ENV
  base_recipe "$DF_FROM"
  ORT_DYLIB_BASENAME=
  local e
  for e in "${DF_ENV[@]}"; do
    case "$e" in ORT_DYLIB_PATH=*) ORT_DYLIB_BASENAME=$(basename "${e#ORT_DYLIB_PATH=}") ;; esac
  done
  log "$name: $dockerfile (FROM $DF_FROM; apt: ${DF_PACKAGES[*]:-none}), $PROFILE binaries, tag $TAG"
  local tarball
  tarball=$(base_tarball "$BASE_SUITE" "${BASE_PACKAGES[@]}" "${DF_PACKAGES[@]}")

  local work layout=oci
  work=$(mktemp -d "$SCRATCH/images-oci.XXXXXX")
  WORKDIRS+=("$work")
  (
    cd "$work"
    umoci init --layout "$layout"
    umoci new --image "$layout:$TAG"
  )
  umoci raw add-layer --image "$work/$layout:$TAG" --history.created "$CREATED" \
    --history.created_by "mmdebstrap --variant=minbase $BASE_SUITE (${DF_FROM}) + apt-get install ${DF_PACKAGES[*]:-}" \
    "$tarball"
  local i dest
  for i in "${!DF_COPY_SRC[@]}"; do
    dest=$work/stage/$i
    stage "$name" "${DF_COPY_FROM[$i]}" "${DF_COPY_SRC[$i]}" "$dest"
    umoci insert --image "$work/$layout:$TAG" --history.created "$CREATED" \
      --history.created_by "COPY --from=${DF_COPY_FROM[$i]} ${DF_COPY_SRC[$i]} ${DF_COPY_DST[$i]}" \
      "$dest" "${DF_COPY_DST[$i]%/}"
  done
  local config=(--created "$CREATED" --history.created "$CREATED" --history.created_by "scripts/images-oci.sh: $dockerfile config"
    --architecture amd64 --os linux
    --config.user "$DF_USER"
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.version=$TAG"
    --config.label "org.opencontainers.image.revision=$REVISION"
    --config.label "org.opencontainers.image.created=$CREATED"
    --config.label "org.opencontainers.image.description=$dockerfile built without Docker from Debian packages (scripts/images-oci.sh)"
    --config.label "dev.livefilter.image.profile=$PROFILE")
  [ -n "$DF_WORKDIR" ] && config+=(--config.workingdir "$DF_WORKDIR")
  for e in "${BASE_ENV[@]}" "${DF_ENV[@]}"; do config+=(--config.env "$e"); done
  for e in "${DF_EXPOSE[@]}"; do
    case "$e" in */*) config+=(--config.exposedports "$e") ;; *) config+=(--config.exposedports "$e/tcp") ;; esac
  done
  for e in "${DF_ENTRYPOINT[@]}"; do config+=(--config.entrypoint "$e"); done
  for e in "${DF_CMD[@]}"; do config+=(--config.cmd "$e"); done
  umoci config --image "$work/$layout:$TAG" "${config[@]}"
  umoci gc --layout "$work/$layout"

  mkdir -p "$OUT"
  local archive=$OUT/$name-$TAG.oci.tar
  chmod -R a+rX "$work/$layout"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -C "$work/$layout" -cf "$archive.$$.tmp" .
  mv "$archive.$$.tmp" "$archive"
  local inspect
  inspect=$(skopeo inspect "oci-archive:$archive") || die "skopeo cannot read $archive"
  python3 - "$inspect" "$archive" "$((SECONDS - start))" <<'PY'
import json, os, sys
i = json.loads(sys.argv[1])
size = os.path.getsize(sys.argv[2]) / 1e6
print(f"[images-oci] wrote {sys.argv[2]} ({size:.0f} MB, {len(i['Layers'])} layers, {i['Os']}/{i['Architecture']}) in {sys.argv[3]}s")
PY
  rm -rf "$work"
}

# Root: mmdebstrap's root mode (no user namespaces needed) and umoci recording the files as owned
# by uid 0, as in a docker build.
if [ "$(id -u)" -ne 0 ]; then
  # Through sudo when it needs no password (as scripts/setup.sh installs packages).
  sudo -n true 2>/dev/null && exec sudo -n --preserve-env "$PWD/scripts/images-oci.sh" "$@"
  die "run as root (sudo scripts/images-oci.sh): mmdebstrap and umoci need it to write root-owned images"
fi
install_tools
WORKDIRS=()
trap 'rm -rf "${WORKDIRS[@]}"' EXIT
for image in "${IMAGES[@]}"; do
  build "$image"
done
log "push with: skopeo copy oci-archive:$OUT/livefilter-<image>-$TAG.oci.tar docker://\$REGISTRY/livefilter-<image>:$TAG"
