# shellcheck shell=bash
# What every "build once from Go modules, cache by version" script here shares
# (hack/testcluster/build.sh, hack/node/build.sh, bench/gopeer/build.sh): the cache layout, the fast
# path when every binary is there, one build at a time, the version pins, and an atomic publish so
# that a half-finished build never looks cached.
#
# The caller sets, before calling these functions:
#   cache       the cache root (GOMODCACHE and GOCACHE live in it)
#   bin_dir     the directory that holds the binaries, named after their versions
#   binaries    an array of the binary names expected in bin_dir
#   log_tag     the prefix of progress lines, e.g. "node"
# and then calls, in this order:
#   gobuild_fast_path "$@"   prints bin_dir and exits when everything is built (unless --tidy)
#   gobuild_env              checks for go, exports the Go environment
#   gobuild_lock NAME        serialises concurrent builds; exits like the fast path if another
#                            build finished meanwhile
#   gobuild_check_pin DIR MODULE VERSION   (for each wrapper module)
#   gobuild_start            creates $tmp (removed on exit) and records $start
#   ... go build -o "$tmp/..." ...
#   gobuild_publish          moves $tmp to bin_dir
# Progress goes to stderr; the last stdout line of a build script is bin_dir.

log() { echo "[$log_tag] $*" >&2; }

gobuild_have_all() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$bin_dir/$b" ]] || return 1
    done
}

gobuild_fast_path() {
    if [[ "${1:-}" != "--tidy" ]] && gobuild_have_all; then
        echo "$bin_dir"
        exit 0
    fi
}

gobuild_env() {
    if ! command -v go >/dev/null 2>&1; then
        log "error: 'go' not found on PATH (need Go >= 1.26)"
        exit 1
    fi
    mkdir -p "$cache"
    export GOMODCACHE="$cache/gomod"
    export GOCACHE="$cache/gocache"
    export CGO_ENABLED=0
    export GOFLAGS="-mod=readonly -buildvcs=false"
}

gobuild_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$cache/$1"
    flock 9
    if gobuild_have_all; then
        echo "$bin_dir"
        exit 0
    fi
}

# The wrapper module in $here/DIR must require MODULE at VERSION (the one versions.env names).
gobuild_check_pin() {
    local dir="$1" module="$2" want="$3" got
    got="$(awk -v m="$module" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$here/$dir/go.mod")"
    if [[ "$got" != "$want" ]]; then
        log "error: $dir/go.mod requires $module $got but versions.env says $want"
        exit 1
    fi
}

gobuild_start() {
    log "go: $(go version) GOTOOLCHAIN=$(go env GOTOOLCHAIN) GOPROXY=$(go env GOPROXY)"
    log "building into $bin_dir (cache $cache)"
    start=$(date +%s)
    tmp="$(mktemp -d "$cache/tmp-$log_tag-bin.XXXXXX")"
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
}

gobuild_publish() {
    rm -rf "$bin_dir"
    mv "$tmp" "$bin_dir"
    trap - EXIT
    log "build wall time: $(($(date +%s) - start)) s"
    log "cache disk usage: $(du -sh "$cache" 2>/dev/null | cut -f1) ($cache)"
    log "  binaries: $(du -sh "$bin_dir" | cut -f1), GOMODCACHE: $(du -sh "$GOMODCACHE" | cut -f1), GOCACHE: $(du -sh "$GOCACHE" | cut -f1)"
}
