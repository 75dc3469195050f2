#!/usr/bin/env bash
# Sets everything up, then runs the product's main job locally: `retrieve dev` on examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/setup.sh
exec .venv/bin/retrieve dev --config-dir "${CONFIG_DIR:-examples}" "$@"
