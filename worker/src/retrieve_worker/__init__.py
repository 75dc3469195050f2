"""The Retrieve worker: runs each job's workflow (rewrite, field mapping, destinations)."""

from __future__ import annotations

from .metrics import WorkerMetrics
from .replay import replay_dead_letters
from .worker import Worker, WorkerSettings, default_consumer_name, run_worker

__all__ = [
    "Worker",
    "WorkerMetrics",
    "WorkerSettings",
    "default_consumer_name",
    "replay_dead_letters",
    "run_worker",
]
