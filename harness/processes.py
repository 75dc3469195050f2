"""Stopping the processes a harness started in their own session (`start_new_session=True`):
the whole group, so a `retrieve receiver --processes N` takes its children with it."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    """SIGTERM to the process group (a clean shutdown), SIGKILL if it lasts over `seconds`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
