#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: lint, type checks, generated-file drift, and
# every pytest tier (unit, real Redis, end-to-end CLI, real Kubernetes API server, a real node).
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/setup.sh --tests

# The real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm), built from
# Go modules once per machine and cached (hack/testcluster/README.md).
RETRIEVE_TESTCLUSTER_BIN=$(./hack/testcluster/build.sh | tail -n 1)
export RETRIEVE_TESTCLUSTER_BIN
# The node tier's single-node cluster (docs/node.md; needs root): CoreDNS and Traefik from Go
# modules and the images from images/Dockerfile, built once and cached. tests/node brings the node
# up and down itself.
./hack/node/build.sh >/dev/null
./hack/node/images.sh >/dev/null

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m retrieve_operator.crds --check
[[ $# -gt 0 ]] || ./hack/mindeps.sh  # unit and Redis tiers on the declared minimum versions

mkdir -p test-artifacts
set +e
.venv/bin/python -m pytest -p no:cacheprovider --junitxml=test-artifacts/junit.xml "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
