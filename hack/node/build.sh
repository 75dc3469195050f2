#!/usr/bin/env bash
# Build (once, cached) the add-ons a real test node needs, from Go modules only (proxy.golang.org):
#   coredns  cluster DNS (github.com/coredns/coredns, wrapper module coredns/ with its own small
#            main.go): coremain.Run with CoreDNS's default plugin set minus the plugins for cloud
#            and external backends (azure, clouddns, route53, etcd, nomad, trace, geoip), so it has
#            kubernetes, forward, hosts, errors, health, ready, prometheus, cache, loop, reload,
#            loadbalance, log, rewrite, template, ... (`coredns -plugins` lists them).
#   traefik  Ingress / Gateway API controller (github.com/traefik/traefik/v3/cmd/traefik, wrapper
#            module traefik/ with the replace/exclude directives copied from Traefik's go.mod and a
#            copy of its nested module github.com/traefik/traefik/dynamic/ext in traefik/ext/).
# kubelet and kube-proxy are not built here: they come from hack/testcluster/build.sh (same module
# and version as the control plane).
#
# Versions come from versions.env. The Go caches are shared with hack/testcluster/build.sh, so
# modules both builds use are downloaded once:
#   ${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}/gomod     GOMODCACHE
#   ${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}/gocache   GOCACHE
#   ${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}/node-bin-coredns<v>-traefik<v>/
# The last line printed on stdout is the directory holding the binaries:
#   NODE_BIN=$(hack/node/build.sh | tail -1)
#   "$NODE_BIN/coredns" -conf Corefile
#   "$NODE_BIN/traefik" --global.checkNewVersion=false --entryPoints.web.address=... --providers...
# Run as plain processes outside the cluster (both checked against the hack/testcluster API server):
#   traefik: --providers.kubernetesingress.endpoint=https://127.0.0.1:<port>
#            --providers.kubernetesingress.token=<token file, or the token itself>
#            --providers.kubernetesingress.certAuthFilePath=<CA bundle of the API server>
#            (the same three under --providers.kubernetesgateway.*). These are used only when
#            KUBERNETES_SERVICE_HOST/PORT and KUBECONFIG are all unset (in-cluster config and
#            $KUBECONFIG take precedence). The token file must not end in a newline (Traefik does
#            not trim it: "invalid header field value for Authorization"); there is no
#            skip-TLS-verify option, so the CA file is required for an https endpoint.
#   coredns: in the kubernetes block, `kubeconfig <file> [<context>]` (token auth) or
#            `endpoint <url>` plus `tls <cert> <key> <ca>` (client certificate); neither means
#            in-cluster config.
# Progress and per-binary timings go to stderr. If the binaries already exist the script only
# prints that directory. Builds are serialised with flock on <cache>/node-build.lock (a separate
# lock from the control plane's build.lock, so the two scripts may run at the same time) and
# published atomically (a build that dies half-way never looks cached).
#
#   build.sh          build if needed, print the bin dir
#   build.sh --tidy   regenerate the wrapper modules' go.sum (after changing versions.env + go.mod)
#
# The build runs with GOFLAGS=-mod=readonly and GOTOOLCHAIN=local: only the committed go.mod/go.sum
# are trusted, nothing is resolved or upgraded, and no Go toolchain is downloaded (both need
# Go >= 1.26.0).
#
# Why these versions and what is special (measured November 2026, Go 1.26.8):
#   - CoreDNS v1.15.0 (newest served) builds as is; its go.mod has no replace directives.
#   - Traefik v3.7.11..v3.7.13 cannot be built from this proxy: some of their dependencies are not
#     served at all (403 "This module version is not available": the Containous go-http-auth fork
#     v0.4.1-0.20260804094822-b975dcaa8c48 and, for v3.7.13, several lego ACME DNS-provider SDKs
#     such as github.com/ucloud/ucloud-sdk-go v0.22.116). v3.7.10 (served, though `go list -m
#     -versions` lists only v3.6.12 and v3.7.11..13) is the newest tag whose whole dependency
#     graph is served; v3.6.12 (no nested module, no go.sum seeding) would be the fallback.
#   - Traefik v3.7 requires github.com/traefik/traefik/dynamic/ext, a nested module of the Traefik
#     repository reached with a local replace; module zips never contain nested modules, so the
#     wrapper replaces it with traefik/ext/ (a copy of the two empty extension structs).
#   - A few modules of Traefik's graph are served by the proxy but missing from the checksum
#     database (sum.golang.org/lookup answers 404, e.g. github.com/akamai/AkamaiOPEN-edgegrid-golang
#     /v13 v13.3.0). `--tidy` therefore seeds traefik/go.sum with Traefik's own committed go.sum
#     before `go mod tidy`; those hashes are the ones Traefik's maintainers verified.
#   - Traefik embeds its dashboard with `//go:embed static` (webui/static). The module zip ships
#     that directory with only a placeholder file, so the build works without a UI build step
#     (no tag or copied tree needed), but /dashboard/ answers 500: there is no web UI. The API
#     (/api/...), /ping and the providers are unaffected.
#   - With a release version compiled in, Traefik checks for new versions on the Internet unless
#     started with --global.checkNewVersion=false (anonymous usage reporting is off by default).
#
# Measured (November 2026, 2 cores, Go 1.26.8; the machine was running other builds and tests at
# the same time, so cold wall times are upper bounds -- CPU time is the steadier figure):
#   cold (empty cache, downloads included)  coredns 145-360 s wall (338 s CPU),
#                                           traefik 600-1300 s wall (~1080 s CPU),
#                                           peak RSS 3.3 GiB (linking traefik)
#   GOCACHE warm, bin dir deleted           80 s (coredns 30 s, traefik 49 s: mostly linking)
#   binaries present                        0.02 s
#   cache growth                            GOMODCACHE 2.1 GiB (0.2 GiB of it shared with
#                                           hack/testcluster), GOCACHE 3.1 GiB, binaries 235 MiB
#                                           (coredns 60 MiB, traefik 174 MiB)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"

cache="${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}"
bin_dir="$cache/node-bin-coredns${COREDNS_VERSION}-traefik${TRAEFIK_VERSION}"
binaries=(coredns traefik)
log_tag=node

gobuild_fast_path "$@"
gobuild_env
export GOTOOLCHAIN=local

if [[ "${1:-}" == "--tidy" ]]; then
    log "go mod tidy in coredns/"
    (cd "$here/coredns" && GOFLAGS=-mod=mod go mod tidy)
    # Seed go.sum with Traefik's own go.sum: some of its dependencies are not in the checksum
    # database (see the header). tidy then drops every line the wrapper does not need.
    log "seeding traefik/go.sum from the go.sum of github.com/traefik/traefik/v3@$TRAEFIK_VERSION"
    traefik_dir="$(cd "$here/traefik" && GOFLAGS=-mod=mod go mod download -json \
        "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    if [[ ! -f "$traefik_dir/go.sum" ]]; then
        log "error: no go.sum in the Traefik module ($traefik_dir)"
        exit 1
    fi
    touch "$here/traefik/go.sum"
    sort -u "$here/traefik/go.sum" "$traefik_dir/go.sum" >"$here/traefik/go.sum.new"
    mv "$here/traefik/go.sum.new" "$here/traefik/go.sum"
    log "go mod tidy in traefik/"
    (cd "$here/traefik" && GOFLAGS=-mod=mod go mod tidy)
    exit 0
fi

# Serialise concurrent builds (e.g. two test runs starting at once).
gobuild_lock node-build.lock
gobuild_check_pin coredns github.com/coredns/coredns "$COREDNS_VERSION"
gobuild_check_pin traefik github.com/traefik/traefik/v3 "$TRAEFIK_VERSION"
gobuild_start
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# --- CoreDNS ----------------------------------------------------------------------------------------
t0=$(date +%s)
log "building coredns $COREDNS_VERSION"
TIMEFORMAT="[node] coredns go build: %0R s wall, %0U s user + %0S s sys CPU"
time (cd "$here/coredns" && go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .)
coredns_s=$(($(date +%s) - t0))

# --- Traefik ----------------------------------------------------------------------------------------
t0=$(date +%s)
log "building traefik $TRAEFIK_VERSION"
traefik_ldflags="-s -w"
traefik_ldflags+=" -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
traefik_ldflags+=" -X github.com/traefik/traefik/v3/pkg/version.Codename=$TRAEFIK_CODENAME"
traefik_ldflags+=" -X github.com/traefik/traefik/v3/pkg/version.BuildDate=$build_date"
TIMEFORMAT="[node] traefik go build: %0R s wall, %0U s user + %0S s sys CPU"
time (cd "$here/traefik" && go build -trimpath -ldflags "$traefik_ldflags" -o "$tmp/traefik" \
    github.com/traefik/traefik/v3/cmd/traefik)
traefik_s=$(($(date +%s) - t0))

# Smoke-check the binaries before publishing them.
plugins="$("$tmp/coredns" -plugins)"
for p in kubernetes forward hosts errors health ready cache loop reload loadbalance prometheus; do
    if ! grep -qx "$p" <<<"$plugins"; then
        log "error: the coredns binary lacks the $p plugin"
        exit 1
    fi
done
traefik_version="$("$tmp/traefik" version)"
grep -q "^Version: *$TRAEFIK_VERSION\$" <<<"$traefik_version" || {
    log "error: '$tmp/traefik version' does not report $TRAEFIK_VERSION"
    exit 1
}

elapsed=$(($(date +%s) - start))
{
    echo "coredns=$COREDNS_VERSION traefik=$TRAEFIK_VERSION"
    echo "go=$(go env GOVERSION) built=$build_date build_seconds=$elapsed coredns_seconds=$coredns_s traefik_seconds=$traefik_s"
} >"$tmp/BUILD-INFO"

gobuild_publish
echo "$bin_dir"
