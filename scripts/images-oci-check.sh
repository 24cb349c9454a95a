#!/usr/bin/env bash
# Builds the relay and operator images without Docker (scripts/images-oci.sh, debug binaries by
# default) and runs what is inside them, the way a container runtime would, so that a missing
# shared library, model or path fails here and not in a cluster. Run from `make test`.
#
# For each image, the OCI archive is unpacked with umoci (the layers as they would be pulled) and
# its config (entrypoint, user, env, working directory) is what runs:
#   - ldd inside the root filesystem (chroot) on the entrypoint and, for the relay, on ONNX Runtime
#     (ORT_DYLIB_PATH) and every library on LD_LIBRARY_PATH: any "not found" fails, naming it;
#   - relay: the models in LIVEFILTER_MODELS_DIR match their SHA256SUMS, the test pattern's font is
#     there; then `<entrypoint> serve --listen 127.0.0.1:<free port> --filter background-blur`
#     starts in the root filesystem (unshare --mount --pid + chroot, read-only root, tmpfs /tmp,
#     the image's UID/GID and env, host network), /healthz must answer "ok" before a deadline,
#     /status must show mode serve, filter background-blur with its model on the CPU, /readyz
#     ready, /metrics livefilter_filter_device; the process must run as the image's UID/GID;
#     SIGTERM must stop it with exit status 0; then `make-clip` and `bench --filter background-blur`
#     run frames through the filter in the image;
#   - operator: `<entrypoint> --help` and `<entrypoint> crd` run in its root filesystem.
#
# Variables: IMAGES_OCI_PROFILE (debug | release), IMAGE_TAG, IMAGES_OCI_OUT, IMAGES_OCI_IMAGES
# (as images-oci.sh), IMAGES_OCI_CHECK_BUILD=0 (check existing archives, build nothing),
# IMAGES_OCI_CHECK_TIMEOUT (seconds for the relay to answer /healthz; 60), IMAGES_OCI_CHECK_REMOVE
# (paths deleted from the unpacked root filesystems before checking: shows what a broken image
# looks like here, e.g. "/usr/lib/x86_64-linux-gnu/libvpx.so.7").
set -euo pipefail

log() { printf '[images-oci-check] %s\n' "$*"; }
die() { printf '[images-oci-check] FAIL: %s\n' "$*" >&2; exit 1; }

# Inside the new mount and PID namespaces: the root filesystem read-only with /proc, a tmpfs /tmp
# and a minimal /dev over it (and HOSTDIR at /mnt/check when given: the bench's clip), then the
# command chrooted as UID:GID in CWD (the environment is the image's, set by the caller).
if [ "${1:-}" = __in-rootfs ]; then
  root=$2 uid=$3 gid=$4 cwd=$5 hostdir=$6
  shift 6
  mkdir -p "$root/proc" "$root/tmp" "$root/dev" # as a runtime does for its mount points
  [ -z "$hostdir" ] || mkdir -p "$root/mnt/check"
  mount --bind "$root" "$root"
  mount -o remount,bind,ro "$root"
  [ -z "$hostdir" ] || mount --bind "$hostdir" "$root/mnt/check"
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t tmpfs -o mode=1777,nosuid,nodev,size=512m tmpfs "$root/tmp"
  mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
  for n in null zero full random urandom tty; do
    : >"$root/dev/$n"
    mount --bind "/dev/$n" "$root/dev/$n"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  exec unshare --root="$root" --wd="$cwd" --setgid "$gid" --setuid "$uid" -- "$@"
fi

cd "$(dirname "$0")/.."
SELF=$PWD/scripts/images-oci-check.sh
PROFILE=${IMAGES_OCI_PROFILE:-debug}
TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
case "$PROFILE" in
  release) OUT=${IMAGES_OCI_OUT:-target/images} ;;
  debug) OUT=${IMAGES_OCI_OUT:-target/images/debug} ;;
  *) die "IMAGES_OCI_PROFILE must be release or debug, not '$PROFILE'" ;;
esac
TIMEOUT=${IMAGES_OCI_CHECK_TIMEOUT:-60}
read -ra IMAGES <<<"${IMAGES_OCI_IMAGES:-relay operator}"
FONT=$(sed -n 's/^pub const DEFAULT_FONT_PATH: &str = "\(.*\)";/\1/p' relay/src/testpattern.rs)
[ -n "$FONT" ] || die "no DEFAULT_FONT_PATH in relay/src/testpattern.rs"

if [ "$(id -u)" -ne 0 ]; then
  # Through sudo when it needs no password (as scripts/setup.sh installs packages).
  sudo -n true 2>/dev/null && exec sudo -n --preserve-env "$SELF" "$@"
  die "run as root (sudo scripts/images-oci-check.sh): unshare --mount/--pid and chroot need it"
fi
start=$SECONDS
if [ "${IMAGES_OCI_CHECK_BUILD:-1}" != 0 ]; then
  IMAGES_OCI_PROFILE=$PROFILE IMAGES_OCI_OUT=$OUT IMAGE_TAG=$TAG IMAGES_OCI_IMAGES="${IMAGES[*]}" scripts/images-oci.sh
fi

SCRATCH=${IMAGES_OCI_SCRATCH:-${TMPDIR:-/tmp}}
if [ -z "${IMAGES_OCI_SCRATCH:-}" ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 2000000 ]; then
  SCRATCH=/dev/shm
fi
WORK=$(mktemp -d "$SCRATCH/images-oci-check.XXXXXX")
OUTER_PID=
cleanup() {
  if [ -n "$OUTER_PID" ] && kill -0 "$OUTER_PID" 2>/dev/null; then
    kill -KILL "$OUTER_PID" 2>/dev/null || true # --kill-child takes the relay with it
    wait "$OUTER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# unpack IMAGE: $WORK/IMAGE/rootfs from the archive, and the image config as IMG_* variables.
unpack() {
  local name=livefilter-$1 archive
  archive=$OUT/$name-$TAG.oci.tar
  [ -s "$archive" ] || die "$archive does not exist (scripts/images-oci.sh writes it)"
  mkdir -p "$WORK/$1.layout"
  tar -xf "$archive" -C "$WORK/$1.layout"
  umoci unpack --image "$WORK/$1.layout:$TAG" "$WORK/$1" >/dev/null
  ROOTFS=$WORK/$1/rootfs
  local p
  for p in ${IMAGES_OCI_CHECK_REMOVE:-}; do
    if [ -e "$ROOTFS$p" ] || [ -L "$ROOTFS$p" ]; then
      log "$name: removing $p from the unpacked image (IMAGES_OCI_CHECK_REMOVE)"
      rm -rf "${ROOTFS:?}$p"
    fi
  done
  local config
  config=$(python3 - "$WORK/$1.layout" "$TAG" "$ROOTFS" <<'PY'
import json, os, shlex, sys
layout, tag, rootfs = sys.argv[1:]
def blob(digest):
    algo, h = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", algo, h)) as f:
        return json.load(f)
index = json.load(open(os.path.join(layout, "index.json")))
desc = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
if len(desc) != 1:
    sys.exit(f"no single manifest tagged {tag} in {layout}/index.json")
config = blob(blob(desc[0]["digest"])["config"]["digest"])["config"]
def ident(value, db):
    if value.isdigit():
        return value
    for line in open(os.path.join(rootfs, "etc", db)):
        fields = line.split(":")
        if fields[0] == value:
            return fields[2]
    sys.exit(f"{value} is not in the image's /etc/{db}")
user, _, group = config.get("User", "0").partition(":")
uid = ident(user or "0", "passwd")
gid = ident(group, "group") if group else "0"
def arr(name, values):
    print(f"{name}=({' '.join(shlex.quote(v) for v in values)})")
print(f"IMG_UID={uid} IMG_GID={gid} IMG_CWD={shlex.quote(config.get('WorkingDir') or '/')}")
arr("IMG_ENV", config.get("Env") or [])
arr("IMG_ENTRYPOINT", config.get("Entrypoint") or [])
PY
) || die "$name: cannot read the image config in $archive (above)"
  eval "$config"
  [ ${#IMG_ENTRYPOINT[@]} -gt 0 ] || die "$name: the image has no entrypoint"
  log "$name: unpacked $archive (user $IMG_UID:$IMG_GID, cwd $IMG_CWD, entrypoint ${IMG_ENTRYPOINT[*]})"
}

# img_env NAME: the value of NAME in the image's environment.
img_env() {
  local e
  for e in "${IMG_ENV[@]}"; do
    [ "${e%%=*}" = "$1" ] && { echo "${e#*=}"; return; }
  done
}

# ldd_check IMAGE FILE...: the dynamic loader of the image resolves every library of each FILE.
ldd_check() {
  local name=$1 f out missing
  shift
  for f in "$@"; do
    [ -e "$ROOTFS$f" ] || die "$name: $f is not in the image"
    if ! out=$(env -i "${IMG_ENV[@]}" chroot "$ROOTFS" ldd "$f" 2>&1); then
      case "$out" in
        *"not a dynamic executable"*) log "$name: ldd $f: static"; continue ;;
        *) die "$name: ldd $f failed in the image: $out" ;;
      esac
    fi
    missing=$(grep 'not found' <<<"$out" || true)
    [ -z "$missing" ] || die "$name: $f needs libraries the image does not have:
$missing"
    log "ok    $name: ldd $f ($(grep -c '=>' <<<"$out") libraries resolved)"
  done
}

# start_in_image LOG ARG...: runs the image's entrypoint with ARGs in the background (OUTER_PID).
# HOSTDIR (a variable), when set, is mounted at /mnt/check.
start_in_image() {
  local logfile=$1
  shift
  env -i "${IMG_ENV[@]}" unshare --mount --pid --fork --kill-child -- \
    "$BASH" "$SELF" __in-rootfs "$ROOTFS" "$IMG_UID" "$IMG_GID" "$IMG_CWD" "${HOSTDIR:-}" \
    "${IMG_ENTRYPOINT[@]}" "$@" >"$logfile" 2>&1 &
  OUTER_PID=$!
}

# run_in_image LOG ARG...: the same in the foreground; its exit status.
run_in_image() {
  local logfile=$1
  shift
  env -i "${IMG_ENV[@]}" unshare --mount --pid --fork --kill-child -- \
    "$BASH" "$SELF" __in-rootfs "$ROOTFS" "$IMG_UID" "$IMG_GID" "$IMG_CWD" "${HOSTDIR:-}" \
    "${IMG_ENTRYPOINT[@]}" "$@" >"$logfile" 2>&1
}

show_log() {
  log "--- $1 (last 40 lines)"
  tail -n 40 "$1" | sed 's/^/        /' >&2
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_relay() {
  local name=livefilter-relay
  unpack relay
  local ort models ldpath
  ort=$(img_env ORT_DYLIB_PATH)
  models=$(img_env LIVEFILTER_MODELS_DIR)
  ldpath=$(img_env LD_LIBRARY_PATH)
  [ -n "$ort" ] || die "$name: ORT_DYLIB_PATH is not set in the image"
  [ -n "$models" ] || die "$name: LIVEFILTER_MODELS_DIR is not set in the image"
  [ -f "$ROOTFS$ort" ] || die "$name: ORT_DYLIB_PATH=$ort: no such file in the image"
  local libs=("${IMG_ENTRYPOINT[0]}" "$ort") d f
  for d in ${ldpath//:/ }; do
    for f in "$ROOTFS$d"/lib*.so*; do
      [ -e "$f" ] && [ "${f#"$ROOTFS"}" != "$ort" ] && libs+=("${f#"$ROOTFS"}")
    done
  done
  ldd_check "$name" "${libs[@]}"
  [ -f "$ROOTFS$models/SHA256SUMS" ] || die "$name: LIVEFILTER_MODELS_DIR=$models has no SHA256SUMS in the image"
  local sums
  sums=$(cd "$ROOTFS$models" && sha256sum --strict -c SHA256SUMS 2>&1) ||
    die "$name: the models in $models do not match their SHA256SUMS:
$sums"
  log "ok    $name: $(grep -c ': OK$' <<<"$sums") models in $models match SHA256SUMS"
  [ -s "$ROOTFS$FONT" ] || die "$name: the test pattern's font $FONT is not in the image"
  log "ok    $name: font $FONT"

  local port url relay_log=$WORK/relay.log deadline pid=
  port=$(free_port)
  url=http://127.0.0.1:$port
  log "$name: starting '${IMG_ENTRYPOINT[*]} serve --listen 127.0.0.1:$port --filter background-blur' in the image"
  local t0=$SECONDS
  start_in_image "$relay_log" serve --listen "127.0.0.1:$port" --filter background-blur
  deadline=$((SECONDS + TIMEOUT))
  until [ "$(curl -fsS --max-time 2 "$url/healthz" 2>/dev/null)" = ok ]; do
    if ! kill -0 "$OUTER_PID" 2>/dev/null; then
      local rc=0
      wait "$OUTER_PID" || rc=$?
      OUTER_PID=
      show_log "$relay_log"
      die "$name: the relay exited (status $rc) before /healthz answered; its log is above"
    fi
    if [ $SECONDS -ge $deadline ]; then
      show_log "$relay_log"
      die "$name: /healthz did not answer ok within ${TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "ok    $name: /healthz ok after $((SECONDS - t0))s"
  pid=$(pgrep -P "$OUTER_PID" | head -n1)
  [ -n "$pid" ] || die "$name: no relay process under unshare ($OUTER_PID)"

  local status ready metrics
  status=$(curl -fsS --max-time 5 "$url/status") || die "$name: GET /status failed"
  ready=$(curl -sS --max-time 5 "$url/readyz") || die "$name: GET /readyz failed"
  metrics=$(curl -fsS --max-time 5 "$url/metrics") || die "$name: GET /metrics failed"
  python3 - "$status" "$ready" "$pid" "$IMG_UID" "$IMG_GID" "$ROOTFS${IMG_ENTRYPOINT[0]}" <<'PY' || { show_log "$relay_log"; die "$name: the running relay is not what the image should start (above)"; }
import json, os, sys
status, ready = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, uid, gid, exe = sys.argv[3:]
problems = []
if status.get("mode") != "serve":
    problems.append(f"/status mode is {status.get('mode')!r}, not 'serve'")
if status.get("filter") != "background-blur":
    problems.append(f"/status filter is {status.get('filter')!r}, not 'background-blur'")
device = (status.get("inference") or {}).get("device")
if device != "cpu":
    problems.append(f"/status inference.device is {device!r}: the filter's model did not start on the CPU")
if ready.get("ready") is not True or ready.get("filter") != "background-blur":
    problems.append(f"/readyz is {ready}")
with open(f"/proc/{pid}/status") as f:
    fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
if fields["Uid"].split()[:2] != [uid, uid] or fields["Gid"].split()[:2] != [gid, gid]:
    problems.append(f"the relay runs as uid {fields['Uid']} gid {fields['Gid']}, not {uid}:{gid}")
if fields.get("Groups", "").strip():
    problems.append(f"the relay has supplementary groups {fields['Groups']}")
if os.path.realpath(f"/proc/{pid}/exe") != os.path.realpath(exe):
    problems.append(f"the process is {os.path.realpath(f'/proc/{pid}/exe')}, not the image's {exe}")
for p in problems:
    print(f"[images-oci-check] FAIL: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"[images-oci-check] ok    livefilter-relay: /status mode serve, filter background-blur, inference on {device}; /readyz ready; uid {uid} gid {gid}")
PY
  grep -q '^livefilter_filter_device{device="cpu",filter="background-blur",requested="cpu"} 1$' <<<"$metrics" ||
    die "$name: /metrics has no livefilter_filter_device{device=\"cpu\",filter=\"background-blur\"} 1:
$(grep '^livefilter_filter_device' <<<"$metrics" || echo '(no livefilter_filter_device series)')"
  log "ok    $name: /metrics livefilter_filter_device{filter=\"background-blur\",device=\"cpu\"} 1"

  kill -TERM "$pid"
  deadline=$((SECONDS + 20))
  while kill -0 "$OUTER_PID" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { show_log "$relay_log"; die "$name: still running 20s after SIGTERM"; }
    sleep 0.1
  done
  local rc=0
  wait "$OUTER_PID" || rc=$?
  OUTER_PID=
  [ "$rc" -eq 0 ] || { show_log "$relay_log"; die "$name: exited with status $rc after SIGTERM, not 0"; }
  log "ok    $name: stopped on SIGTERM with status 0"
  # The relay says where it found ONNX Runtime and the model: the image's paths.
  local line want
  for want in "ONNX Runtime loaded library=$ort" "model loaded model=$models/"; do
    line=$(grep -F -- "$want" "$relay_log" | head -n1) || { show_log "$relay_log"; die "$name: the relay's log has no '$want'"; }
    log "ok    $name: log: ${line#*livefilter_relay::}"
  done

  # Frames through the filter: a small clip of the astronaut photo (make setup) made in the image,
  # then `bench` runs decode, background-blur on ONNX Runtime and encode on it, in the image.
  local photo=.cache/testdata/astronaut.png bench_log=$WORK/bench.log
  [ -s "$photo" ] || die "$name: $photo is missing (make setup)"
  HOSTDIR=$WORK/check
  mkdir -p "$HOSTDIR"
  cp "$photo" "$HOSTDIR/photo.png"
  chown -R "$IMG_UID:$IMG_GID" "$HOSTDIR"
  run_in_image "$bench_log" make-clip --image /mnt/check/photo.png --out /mnt/check/clip.y4m \
    --width 320 --height 240 --frames 20 || { show_log "$bench_log"; die "$name: make-clip failed in the image"; }
  run_in_image "$bench_log" bench --input /mnt/check/clip.y4m --filter background-blur --warmup 0 ||
    { show_log "$bench_log"; die "$name: bench --filter background-blur failed in the image"; }
  HOSTDIR=
  line=$(grep -E '^bench background-blur .*device cpu: [1-9][0-9]* frames measured' "$bench_log") ||
    { show_log "$bench_log"; die "$name: bench measured no background-blur frames on the CPU"; }
  log "ok    $name: $line"
}

check_operator() {
  local name=livefilter-operator
  unpack operator
  ldd_check "$name" "${IMG_ENTRYPOINT[0]}"
  local out=$WORK/operator.log
  run_in_image "$out" --help || { show_log "$out"; die "$name: '${IMG_ENTRYPOINT[*]} --help' failed in the image"; }
  grep -q '^Usage: livefilter-operator' "$out" || { show_log "$out"; die "$name: --help printed no usage"; }
  log "ok    $name: --help runs in the image"
  run_in_image "$out" crd || { show_log "$out"; die "$name: '${IMG_ENTRYPOINT[*]} crd' failed in the image"; }
  grep -q '^kind: CustomResourceDefinition' "$out" || { show_log "$out"; die "$name: crd printed no CustomResourceDefinition"; }
  log "ok    $name: crd runs in the image"
}

for image in "${IMAGES[@]}"; do
  case "$image" in
    relay) check_relay ;;
    operator) check_operator ;;
    *) die "no check for the image '$image'" ;;
  esac
done
log "ok: images ${IMAGES[*]} ($PROFILE binaries) built and run, in $((SECONDS - start))s"
