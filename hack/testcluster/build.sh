#!/usr/bin/env bash
# Build (once, cached) the real control-plane binaries used by the tests:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes, wrapper k8s/)
#   kubelet, kube-proxy (the node, hack/node/)                         (same module and version)
#   etcd                                              (go.etcd.io/etcd/server/v3, wrapper module etcd/)
#   helm                                              (helm.sh/helm/v3/cmd/helm, wrapper module helm/)
# Versions come from versions.env. Everything (GOMODCACHE, GOCACHE, binaries) lives under
#   ${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}
# The last line printed on stdout is the directory holding the binaries:
#   BIN=$(hack/testcluster/build.sh | tail -1)
# Progress goes to stderr. If the binaries already exist the script only prints that directory.
#
#   build.sh          build if needed, print the bin dir
#   build.sh --tidy   regenerate the wrapper modules' go.sum (after changing versions.env + go.mod)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"

cache="${RETRIEVE_TESTCLUSTER_CACHE:-$HOME/.cache/retrieve-testcluster}"
bin_dir="$cache/bin-${K8S_VERSION}-etcd${ETCD_VERSION}-helm${HELM_VERSION}"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd helm)
log_tag=testcluster

gobuild_fast_path "$@"
gobuild_env

if [[ "${1:-}" == "--tidy" ]]; then
    for m in k8s etcd helm; do
        log "go mod tidy in $m/"
        (cd "$here/$m" && GOFLAGS=-mod=mod go mod tidy)
    done
    exit 0
fi

# Serialise concurrent builds (e.g. two test runs starting at once).
gobuild_lock build.lock
gobuild_check_pin k8s k8s.io/kubernetes "$K8S_VERSION"
gobuild_check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
gobuild_check_pin helm helm.sh/helm/v3 "$HELM_VERSION"
gobuild_start

# --- Kubernetes: control plane and node binaries ---------------------------------
k8s_ver="${K8S_VERSION#v}"
k8s_major="${k8s_ver%%.*}"
k8s_minor="$(echo "$k8s_ver" | cut -d. -f2)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
t0=$(date +%s)
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy $K8S_VERSION"
(cd "$here/k8s" && go build -trimpath -ldflags "$k8s_ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy)
log "kubernetes binaries: $(($(date +%s) - t0)) s"

# --- etcd -------------------------------------------------------------------------------------------
t0=$(date +%s)
log "building etcd $ETCD_VERSION"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
log "etcd: $(($(date +%s) - t0)) s"

# --- helm -------------------------------------------------------------------------------------------
t0=$(date +%s)
log "building helm $HELM_VERSION"
helm_cg="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$here/helm/go.mod")" # e.g. v0.37.0
helm_k8s_minor="$(echo "${helm_cg#v}" | cut -d. -f2)"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
done
(cd "$here/helm" && go build -trimpath -ldflags "$helm_ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
log "helm: $(($(date +%s) - t0)) s"

elapsed=$(($(date +%s) - start))
{
    echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION"
    echo "go=$(go env GOVERSION) built=$build_date build_seconds=$elapsed"
} >"$tmp/BUILD-INFO"

gobuild_publish
echo "$bin_dir"
