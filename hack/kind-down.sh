#!/usr/bin/env bash
# Deletes the kind cluster made by hack/kind-up.sh (and everything in it).
set -euo pipefail
CLUSTER=${KIND_CLUSTER_NAME:-retrieve}
command -v kind >/dev/null || { echo "kind-down: kind is not on PATH" >&2; exit 1; }
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind delete cluster --name "$CLUSTER"
else
  echo "kind-down: no kind cluster named $CLUSTER" >&2
fi
