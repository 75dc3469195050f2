"""The `node` tier: Retrieve installed with Helm on a real single-node cluster (docs/node.md).

The session brings the node up with ``hack/node/up.sh`` (building what it needs the first time,
cached afterwards), installs the charts and the examples with ``hack/node/install.sh`` as a user
does, and takes the node down at the end with ``hack/node/down.sh`` unless it was already up (or
``RETRIEVE_NODE_KEEP=1``). Tests run in file order: the lifecycle tests (upgrade, uninstall) last.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support import node


@pytest.fixture(scope="session")
def node_up() -> Iterator[None]:
    was_up = subprocess.run([str(node.NODE_DIR / "run"), "true"], check=False).returncode == 0
    up = subprocess.run([str(node.NODE_DIR / "up.sh")], check=False)
    if up.returncode != 0:
        pytest.fail(f"hack/node/up.sh exited {up.returncode} (its output is above)", pytrace=False)
    try:
        yield
    finally:
        if not was_up and not node.keep_node():
            subprocess.run([str(node.NODE_DIR / "down.sh")], check=False)


@pytest.fixture(scope="session")
def installed(node_up: None) -> None:
    """The charts, the examples and the sink, installed and Ready (hack/node/install.sh)."""
    done = subprocess.run([str(node.NODE_DIR / "install.sh")], check=False)
    if done.returncode != 0:
        pytest.fail(f"hack/node/install.sh exited {done.returncode} (output above)", pytrace=False)
