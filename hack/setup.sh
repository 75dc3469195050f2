#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian/Ubuntu machine: redis-server (dev mode and the
# tests), openssl (test cluster keys), a Python virtualenv in .venv with the package and its test
# dependencies. With --tests also what only the tests use: Debian's Chromium and chromedriver (the
# web console's browser test). Idempotent: a second run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
command -v git >/dev/null || need+=(git)
if [[ ${1:-} == --tests ]]; then
  # The web console's end-to-end test drives Debian's headless Chromium through chromedriver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup: please install: ${need[*]} (no root and no sudo here)" >&2; exit 1
  fi
  echo "setup: installing ${need[*]} from Debian packages" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system redis-server on 6379; the project starts its own, so stop that one.
  if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.retrieve-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
