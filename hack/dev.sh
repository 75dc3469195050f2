#!/usr/bin/env bash
# Installs only what `retrieve dev` runs (redis-server and the package's own Python dependencies,
# no test tools, no browser, no control plane; hack/setup.sh --tests is for the tests), then runs
# the product's main job locally: `retrieve dev` on examples/. A second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "dev: please install redis-server (no root and no sudo here)" >&2; exit 1
  fi
  echo "dev: installing redis-server from Debian packages" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # Debian starts a system redis-server on 6379; dev mode starts its own, so stop that one.
  if command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.retrieve-dev-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
  touch "$stamp"
fi
exec .venv/bin/retrieve dev --config-dir "${CONFIG_DIR:-examples}" "$@"
