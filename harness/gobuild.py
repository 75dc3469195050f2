"""Go programs of the benchmarks (bench/gopeer, bench/gosender), built from Go modules once per
Go version and source digest, modules and build cache kept beside them (not product code)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("RETRIEVE_BENCH_CACHE", Path.home() / ".cache" / "retrieve-bench"))


def build_go(source: Path) -> Path:
    """The binary of the Go module in `source` (go.mod, go.sum if any, *.go), built if needed."""
    digest = hashlib.sha256()
    for path in sorted(source.iterdir()):
        if path.name in ("go.mod", "go.sum") or path.suffix == ".go":
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    if shutil.which("go") is None:
        sys.exit(f"go is needed to build {source.name} (https://go.dev/dl/)")
    version = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    binary = CACHE / f"{source.name}-{version}-{digest.hexdigest()[:12]}" / source.name
    if not binary.exists():
        env = {
            **os.environ,
            "GOMODCACHE": str(CACHE / "gomod"),
            "GOCACHE": str(CACHE / "gocache"),
            "GOFLAGS": "-mod=readonly -buildvcs=false",
            "CGO_ENABLED": "0",
        }
        print(f"building {source.name} ({version}) into {binary.parent}", file=sys.stderr)
        partial = binary.with_name(binary.name + ".partial")
        subprocess.run(["go", "build", "-o", str(partial), "."], cwd=source, env=env, check=True)
        partial.rename(binary)  # a build that died half-way never looks cached
    return binary
