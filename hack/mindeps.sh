#!/usr/bin/env bash
# Runs the unit and Redis tiers on the declared MINIMUM versions of the main dependencies (redis,
# aiohttp, kopf, pydantic), so that the floors in pyproject.toml stay true. The floors are read
# from pyproject.toml and pinned exactly (pip constraints); everything else resolves as a user's
# pip would. The virtualenv lives in build/mindeps/ (git-ignored) and is reused while pyproject.toml
# is unchanged; nothing else is cached outside the repository except pip's own cache.
# Usage: hack/mindeps.sh [pytest args...]   (hack/test.sh calls it with none)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
dir=build/mindeps
venv=$dir/venv
mkdir -p "$dir" test-artifacts

# "redis==6.2", one a line, from the ">=" floors of the project's dependencies.
"$PYTHON" - >"$dir/constraints.txt" <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    match = re.match(r"^(redis|aiohttp|kopf|pydantic)>=([0-9][^,;\s]*)", dep)
    if match:
        print(f"{match[1]}=={match[2]}")
EOF
if [[ $(wc -l <"$dir/constraints.txt") -ne 4 ]]; then
  echo "mindeps: expected 4 floors (redis, aiohttp, kopf, pydantic) in pyproject.toml, got:" >&2
  cat "$dir/constraints.txt" >&2
  exit 1
fi

started=$SECONDS
stamp=$venv/.retrieve-mindeps
if [[ ! -f $stamp || pyproject.toml -nt $stamp || ! -x $venv/bin/python ]]; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c "$dir/constraints.txt" -e '.[test]'
  touch "$stamp"
fi
installed=$SECONDS

echo "mindeps: testing on $("$venv/bin/python" - <<'EOF'
from importlib.metadata import version
names = ["redis", "aiohttp", "kopf", "pydantic", "pydantic-core", "pytest-aiohttp"]
print(", ".join(f"{name} {version(name)}" for name in names))
EOF
)"
# The same packages must be the floors themselves, not something pip preferred.
while IFS='=' read -r name _ floor; do
  got=$("$venv/bin/python" -c "from importlib.metadata import version; print(version('$name'))")
  if [[ $got != "$floor" && $got != "$floor.0" ]]; then
    echo "mindeps: $name is $got, not the floor $floor" >&2
    exit 1
  fi
done <"$dir/constraints.txt"

set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -q -m "unit or redis" \
  --junitxml=test-artifacts/junit-mindeps.xml "$@"
rc=$?
set -e
echo "mindeps: install $((installed - started)) s, tests $((SECONDS - installed)) s, exit $rc"
exit $rc
