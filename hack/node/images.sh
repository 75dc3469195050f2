#!/usr/bin/env bash
# Builds the container images of the single-node test cluster (hack/node/up.sh) without a container
# daemon and without a registry, and writes them as image archives that
# `ctr -n k8s.io images import` takes:
#
#   localhost/retrieve-python:3.11-bookworm  base: debootstrap minbase + Debian's python3 (not exported)
#   localhost/retrieve-operator:dev          images/Dockerfile, target operator
#   localhost/retrieve-runtime:dev           images/Dockerfile, target runtime
#   localhost/redis:7-bookworm               hack/node/Containerfile.redis (Debian's redis-server)
#   localhost/pause:3.10                     Kubernetes' pause.c, compiled here, static, from scratch
#
# buildah (chroot isolation, its own storage under the cache folder) does the building. Everything
# is cached: the base root filesystem by its recipe, each archive by what it is built from (the
# product's images by the content of the files they are built from), so a second run costs about a
# second and rebuilds only what changed. Progress goes to stderr, tool output to log files; the last
# line on stdout is the folder of the archives (<name>.tar, and images.env naming the images).
#
# Usage: hack/node/images.sh [--force]
#   --force  rebuild everything, debootstrap included (the base otherwise keeps the Debian packages
#            of the day it was made)
# Environment: RETRIEVE_NODE_CACHE (~/.cache/retrieve-node), IMAGE_TAG (dev), IMAGE_REPOSITORY
# (localhost, prefix of the two product images), REDIS_IMAGE, PAUSE_IMAGE, DEBIAN_MIRROR,
# DEBIAN_SECURITY_MIRROR. Needs root; installs debootstrap, buildah and gcc from Debian packages
# when they are missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${RETRIEVE_NODE_CACHE:-$HOME/.cache/retrieve-node}
OUT=$CACHE/images
LOGS=$CACHE/logs
STAMPS=$CACHE/stamps

IMAGE_TAG=${IMAGE_TAG:-dev}
IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-localhost}
OPERATOR_IMAGE=$IMAGE_REPOSITORY/retrieve-operator:$IMAGE_TAG
RUNTIME_IMAGE=$IMAGE_REPOSITORY/retrieve-runtime:$IMAGE_TAG
REDIS_IMAGE=${REDIS_IMAGE:-localhost/redis:7-bookworm}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/pause:3.10}
PYTHON_IMAGE=localhost/retrieve-python:3.11-bookworm

# The base: Debian's minimal system plus what images/Dockerfile needs (python, venv with its bundled
# pip for the builder stage, `python` on PATH) and CA certificates for the product's HTTPS clients.
SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_PACKAGES=(python3 python3-venv python-is-python3 ca-certificates)
# Bump when the way the base is made changes (the cache key covers suite, mirrors and packages).
BASE_RECIPE=1
# The inputs of the product's images: what images/Dockerfile copies, and the recipe itself.
PRODUCT_SOURCES=(pyproject.toml README.md core receiver worker operator cli images/Dockerfile
  .dockerignore)

FORCE=0
case ${1:-} in
  '') ;;
  --force) FORCE=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

started=$SECONDS
log() { printf '[images %3ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum | cut -c1-16; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot, buildah)"
mkdir -p "$OUT" "$LOGS" "$STAMPS" "$CACHE/base"
# One build at a time per cache folder (up.sh and a developer may run this together).
exec 9>"$CACHE/.lock"
flock 9

# logged STEP CMD...: runs CMD with its output in $LOGS/STEP.log, and shows the end of it on failure.
logged() {
  local step=$1 file=$LOGS/$1.log
  shift
  if ! "$@" >"$file" 2>&1; then
    tail -n 40 "$file" >&2
    die "$step failed: $* (whole log: $file)"
  fi
}

# fresh NAME KEY: the archive NAME.tar exists and was made from inputs whose hash is KEY.
fresh() { [[ $FORCE -eq 0 && -f $OUT/$1.tar && $(cat "$STAMPS/$1" 2>/dev/null) == "$2" ]]; }

# ---------------------------------------------------------------------------------------- tools
tools_ready=0
ensure_tools() {
  ((tools_ready)) && return
  local pkg missing=()
  for pkg in debootstrap buildah gcc libc6-dev; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian packages"
    logged apt-get apt-get update
    logged apt-get env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  tools_ready=1
}

# buildah with storage of its own under the cache folder (overlay; the machine's default store is
# left alone) and chroot isolation: RUN steps need no OCI runtime, no cgroup setup and no network
# namespace of their own. To look at it: buildah --root <cache>/storage --runroot ... images
STORE=$CACHE/storage
STORE_RUN=/run/retrieve-node-images
export BUILDAH_ISOLATION=chroot
bah() { buildah --root "$STORE" --runroot "$STORE_RUN" --storage-driver overlay "$@"; }

# Working containers made by this run, removed on the way out whatever happens.
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

built=0
# export_image IMAGE NAME KEY: writes the image to $OUT/NAME.tar and records KEY for it. A
# docker-archive, whose layers are not compressed: written and imported faster than a gzipped OCI
# archive. containerd 1.6's `ctr images import` names the image after its tag (localhost/...).
export_image() {
  local image=$1 name=$2 key=$3
  rm -f "$STAMPS/$name" "$OUT/$name.tar.tmp"
  logged "push-$name" bah push --quiet "$image" "docker-archive:$OUT/$name.tar.tmp:$image"
  mv "$OUT/$name.tar.tmp" "$OUT/$name.tar"
  echo "$key" >"$STAMPS/$name"
  built=1
  log "$image -> $OUT/$name.tar ($(du -m "$OUT/$name.tar" | cut -f1) MB)"
}

# smoke IMAGE USER CMD...: runs CMD in a container of IMAGE as USER (uid:gid), output to stderr.
smoke() {
  local image=$1 user=$2 c
  shift 2
  c=$(bah from --pull=never --quiet "$image")
  containers+=("$c")
  bah run --user "$user" "$c" -- "$@" >&2
  bah rm "$c" >/dev/null
}

# ------------------------------------------------------------------------------------- base image
BASE_KEY=$(printf '%s\n' "$SUITE" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR" "${BASE_PACKAGES[*]}" \
  "$BASE_RECIPE" | sha)
BASE_TAR=$CACHE/base/$SUITE-$BASE_KEY.tar

# The root filesystem: debootstrap, then Debian's security and point-release updates and the
# packages, in a chroot. Cached as a tarball named after its key.
build_base_rootfs() {
  local work root
  work=$(mktemp -d "$CACHE/base/work.XXXXXX")
  root=$work/rootfs
  # Whatever happens, nothing stays mounted in the chroot and no half-made folder stays behind.
  # shellcheck disable=SC2064 # expanded now: the paths are local to this function
  trap "umount '$root/proc' 2>/dev/null; rm -rf --one-file-system '$work'; cleanup" EXIT

  log "base: debootstrap --variant=minbase $SUITE $DEBIAN_MIRROR"
  logged debootstrap debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR"

  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # As in Debian's official images: no service starts while packages are installed (here and in
  # RUN steps of images built on this one), and no documentation, manual pages or translations are
  # installed (copyright files stay).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$root/usr/share/man" "$root/usr/share/info" -mindepth 1 -delete
  find "$root/usr/share/locale" -mindepth 1 -not -name locale.alias -delete

  log "base: apt-get install ${BASE_PACKAGES[*]}"
  mount -t proc proc "$root/proc"
  logged apt-update chroot "$root" apt-get update -o Acquire::Languages=none
  logged apt-upgrade chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get upgrade -y
  logged apt-install chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${BASE_PACKAGES[@]}"
  chroot "$root" apt-get clean
  umount "$root/proc"

  # No package lists, logs or machine-specific files (the runtime provides resolv.conf, hostname,
  # hosts and /dev).
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/debconf/*-old "${root:?}"/dev/*
  find "$root/var/log" -type f -delete
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"

  tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$BASE_TAR"
  rm -rf --one-file-system "$work"
  trap cleanup EXIT
}

# The base image in buildah's storage, committed from the tarball; its label tells its key.
base_ready=0
ensure_base_image() {
  local have c mnt
  ((base_ready)) && return
  ensure_tools
  have=$(bah inspect --type image --format '{{index .OCIv1.Config.Labels "retrieve.node.base-key"}}' \
    "$PYTHON_IMAGE" 2>/dev/null || true)
  if [[ $FORCE -eq 0 && $have == "$BASE_KEY" ]]; then
    base_ready=1
    return
  fi
  if [[ $FORCE -eq 1 || ! -f $BASE_TAR ]]; then
    rm -f "$CACHE"/base/"$SUITE"-*.tar # older recipes
    build_base_rootfs
  fi
  log "base: $PYTHON_IMAGE from $BASE_TAR"
  c=$(bah from --quiet scratch)
  containers+=("$c")
  mnt=$(bah mount "$c")
  tar --numeric-owner -C "$mnt" -xpf "$BASE_TAR"
  bah umount "$c" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]' \
    --created-by "debootstrap --variant=minbase $SUITE; apt-get install ${BASE_PACKAGES[*]}" \
    --label "retrieve.node.base-key=$BASE_KEY" \
    --label "org.opencontainers.image.description=Debian $SUITE minbase with python3 (local build)" \
    "$c"
  logged commit-base bah commit --rm --quiet "$c" "$PYTHON_IMAGE"
  base_ready=1
}

# bud CONTEXT ARGS...: a build that never pulls (every FROM is in the local store); with --layers the
# second target of images/Dockerfile reuses the stages the first one built.
bud() { bah bud --pull=never --layers --force-rm --network host "${@:2}" "$1"; }

# --------------------------------------------------------------------------- product's images
# The build context is a snapshot of the files images/Dockerfile is built from, as they are in the
# working tree (tracked or new, not ignored): both images come from the same source even while it is
# being edited, and the key, a hash of the snapshot, says exactly what they hold.
snapshot_context() {
  local ctx=$CACHE/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard -- "${PRODUCT_SOURCES[@]}" |
    while IFS= read -r -d '' f; do if [[ -f $f ]]; then printf '%s\0' "$f"; fi; done |
    tar --null -T - -cf -) | tar -C "$ctx" -xf -
  echo "$ctx"
}

# pip in the builder stage downloads from PyPI. Where outbound TLS goes through a proxy that only the
# machine's CA bundle trusts (as here), RUN steps borrow that bundle and the machine's pip settings:
# bind mounts onto folders every base image has (/etc/ssl/certs, and /root for root's pip.conf), so
# nothing of them, not even an empty mount point, ends up in an image.
build_mounts() {
  local home=$CACHE/build-home
  echo "--volume=/etc/ssl/certs:/etc/ssl/certs:ro"
  if [[ -f /etc/pip.conf ]]; then
    mkdir -p "$home/.config/pip"
    cp /etc/pip.conf "$home/.config/pip/pip.conf"
    echo "--volume=$home:/root:ro"
  fi
}

REWRITE_SMOKE='apiVersion: retrievetl.com/v1alpha1
kind: Integration
metadata: {name: image-smoke-test}
spec:
  application: smoke
  integrationId: "0"
  rewrite:
    javascript: "return {jobStatus: 1, data: jobData.job.data.data.n.map(x => x * 2)};"
    tests:
      - name: V8 runs a rewrite function
        input: {n: [1, 2, 3]}
        expect: {jobStatus: 1, data: [2, 4, 6]}'

build_product() {
  local ctx key mounts target image
  ctx=$(snapshot_context)
  key=$( (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    echo "$BASE_KEY $OPERATOR_IMAGE $RUNTIME_IMAGE") | sha)
  if fresh retrieve-operator "$key" && fresh retrieve-runtime "$key"; then
    log "$OPERATOR_IMAGE, $RUNTIME_IMAGE: up to date"
    return
  fi
  ensure_base_image
  mapfile -t mounts < <(build_mounts)
  for target in runtime operator; do
    image=$IMAGE_REPOSITORY/retrieve-$target:$IMAGE_TAG
    log "$image: images/Dockerfile --target $target"
    logged "build-$target" bud "$ctx" -f "$ctx/images/Dockerfile" --target "$target" \
      --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "${mounts[@]}" -t "$image"
  done
  # As the pods run it (uid 65532): the CLI starts and a rewrite function runs in the V8 sandbox.
  # shellcheck disable=SC2016 # $1 is the container shell's
  smoke "$RUNTIME_IMAGE" 65532:65532 sh -c \
    'printf "%s\n" "$1" >/tmp/smoke.yaml && retrieve test-rewrite /tmp/smoke.yaml' sh "$REWRITE_SMOKE"
  export_image "$RUNTIME_IMAGE" retrieve-runtime "$key"
  export_image "$OPERATOR_IMAGE" retrieve-operator "$key"
}

# ------------------------------------------------------------------------------------------ redis
# As the chart runs it (uid/gid 999, AOF in /data; no TCP port here: the build shares the machine's
# network): it starts, takes a write and creates its append-only files, stops on SIGTERM.
# shellcheck disable=SC2016 # for the container's shell
REDIS_SMOKE='redis-server --port 0 --unixsocket /tmp/redis.sock --appendonly yes --dir /data \
  >/tmp/redis.log 2>&1 &
for _ in $(seq 50); do redis-cli -s /tmp/redis.sock ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -s /tmp/redis.sock set smoke ok >/dev/null && test -d /data/appendonlydir && ok=1
kill $! && wait $!
if [ -z "$ok" ]; then cat /tmp/redis.log; exit 1; fi
echo "redis image: $(redis-server --version | cut -d" " -f1-3) runs as uid $(id -u), writes /data"'

build_redis() {
  local file=hack/node/Containerfile.redis key
  key=$(cat "$REPO/$file" <(echo "$BASE_KEY $REDIS_IMAGE") | sha)
  if fresh redis "$key"; then log "$REDIS_IMAGE: up to date"; return; fi
  ensure_base_image
  log "$REDIS_IMAGE: $file"
  logged build-redis bud "$REPO/hack/node" -f "$REPO/$file" --build-arg "BASE_IMAGE=$PYTHON_IMAGE" \
    -t "$REDIS_IMAGE"
  smoke "$REDIS_IMAGE" 999:999 sh -c "$REDIS_SMOKE"
  export_image "$REDIS_IMAGE" redis "$key"
}

# ------------------------------------------------------------------------------------------ pause
# The CRI sandbox image: Kubernetes' pause.c (from the Go module cache of the test control plane's
# Kubernetes version) compiled static with the flags of its Makefile, alone in an image from scratch,
# user and entrypoint as upstream's.
build_pause() {
  local k8s gomod src bin key c tmp
  # shellcheck source=SCRIPTDIR/../testcluster/versions.env
  k8s=$(source "$REPO/hack/testcluster/versions.env" && echo "$K8S_VERSION")
  gomod=$HOME/.cache/retrieve-testcluster/gomod
  src=$gomod/k8s.io/kubernetes@$k8s/build/pause/linux/pause.c
  if [[ ! -f $src ]]; then
    log "pause: go mod download k8s.io/kubernetes@$k8s"
    command -v go >/dev/null || die "$src is missing and go is not installed (hack/testcluster/build.sh)"
    # From an empty folder: no go.mod of the repository is read or written.
    tmp=$(mktemp -d)
    (cd "$tmp" && logged go-mod-download env GOMODCACHE="$gomod" GOFLAGS=-mod=mod \
      go mod download "k8s.io/kubernetes@$k8s")
    rmdir "$tmp"
  fi
  key=$(cat "$src" <(echo "$k8s $PAUSE_IMAGE") | sha)
  if fresh pause "$key"; then log "$PAUSE_IMAGE: up to date"; return; fi
  ensure_tools
  log "$PAUSE_IMAGE: gcc -static pause.c (kubernetes $k8s)"
  bin=$CACHE/pause
  gcc -Os -Wall -Werror -static "-DVERSION=kubernetes-$k8s" -o "$bin" "$src"
  strip "$bin"
  "$bin" -v >&2
  c=$(bah from --quiet scratch)
  containers+=("$c")
  bah copy --quiet --chmod 0755 "$c" "$bin" /pause
  bah config --user 65535:65535 --entrypoint '["/pause"]' \
    --created-by "gcc -Os -static pause.c (kubernetes $k8s)" "$c"
  logged commit-pause bah commit --rm --quiet "$c" "$PAUSE_IMAGE"
  export_image "$PAUSE_IMAGE" pause "$key"
}

build_pause
build_redis
build_product

# Images no tag refers to any more (earlier builds, this build's stages) go; the tagged ones stay.
if ((built)); then
  logged prune bah rmi --prune
fi

cat >"$OUT/images.env" <<EOF
OPERATOR_IMAGE=$OPERATOR_IMAGE
RUNTIME_IMAGE=$RUNTIME_IMAGE
REDIS_IMAGE=$REDIS_IMAGE
PAUSE_IMAGE=$PAUSE_IMAGE
EOF
log "images: $OPERATOR_IMAGE $RUNTIME_IMAGE $REDIS_IMAGE $PAUSE_IMAGE"
echo "$OUT"
