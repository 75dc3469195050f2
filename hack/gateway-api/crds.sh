#!/usr/bin/env bash
# Prints the directory holding the Gateway API standard-channel CRDs (config/crd/standard/) of the
# pinned sigs.k8s.io/gateway-api Go module (version.env), downloading the module once into the
# test cluster's module cache. The last stdout line is the directory:
#
#   kubectl apply --server-side -f "$(hack/gateway-api/crds.sh | tail -1)"
#
# Environment: RETRIEVE_TESTCLUSTER_CACHE (default ~/.cache/retrieve-testcluster; the module goes
# to its gomod/, shared with hack/testcluster/build.sh). Needs go and the Go module proxy (the
# GOPROXY of `go env`) the first time only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=version.env
source "$here/version.env"

cache="${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}"
export GOMODCACHE="$cache/gomod"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
export GONOSUMDB=sigs.k8s.io/gateway-api # checked against the pinned hash below instead
export GOSUMDB=off
export GO111MODULE=on

module="sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
dir="$GOMODCACHE/sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
if [[ ! -d "$dir/config/crd/standard" ]]; then
    command -v go >/dev/null || { echo "gateway-api: go is not on PATH" >&2; exit 1; }
    echo "gateway-api: downloading $module into $GOMODCACHE" >&2
    # Outside any module: `go mod download` then needs no go.mod (an empty dir keeps it so).
    empty="$(mktemp -d)"
    trap 'rm -rf "$empty"' EXIT
    json="$(cd "$empty" && go mod download -json "$module")"
    sum="$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$json")"
    if [[ "$sum" != "$GATEWAY_API_SUM" ]]; then
        echo "gateway-api: $module has hash '$sum', version.env pins '$GATEWAY_API_SUM'" >&2
        exit 1
    fi
    dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")"
else
    # Cached: the module cache keeps the zip's hash beside it (cache/download/.../v.ziphash).
    ziphash="$GOMODCACHE/cache/download/sigs.k8s.io/gateway-api/@v/$GATEWAY_API_VERSION.ziphash"
    if [[ "$(cat "$ziphash" 2>/dev/null)" != "$GATEWAY_API_SUM" ]]; then
        echo "gateway-api: cached $module does not match the pinned hash ($ziphash)" >&2
        exit 1
    fi
fi
echo "$dir/config/crd/standard"
