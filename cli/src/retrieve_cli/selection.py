"""Which Redis, application and integration a CLI command is about."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from retrieve_core.config import ApplicationConfig
from retrieve_core.keys import AppKeys
from retrieve_core.manifests import load_directory


class UsageError(Exception):
    """A mistake in the command's arguments, reported without a traceback."""


def dev_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "retrieve" / "dev.json"


def write_dev_state(redis_url: str, config_dir: Path) -> None:
    path = dev_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"redis_url": redis_url, "config_dir": str(config_dir), "pid": os.getpid()})
    )


def clear_dev_state() -> None:
    path = dev_state_file()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_dev() -> dict[str, str] | None:
    """The state of a `retrieve dev` still running on this machine (its Redis and folder)."""
    try:
        state = json.loads(dev_state_file().read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {k: str(v) for k, v in state.items()}


def resolve_redis_url(args: argparse.Namespace) -> str:
    if getattr(args, "redis_url", None):
        return str(args.redis_url)
    dev = running_dev()
    if dev:
        return dev["redis_url"]
    raise UsageError(
        "no Redis to read from: pass --redis-url (or set RETRIEVE_REDIS_URL), or start "
        "`retrieve dev` first"
    )


@dataclass(frozen=True)
class Target:
    keys: AppKeys
    application: ApplicationConfig | None
    integration_id: str | None


def resolve_targets(args: argparse.Namespace, integration: str | None) -> list[Target]:
    """The applications (and integration id) meant by --config-dir / --namespace / --app."""
    config_dir: Path | None = args.config_dir
    if config_dir is None:
        dev = running_dev()
        if dev and not args.app:
            config_dir = Path(dev["config_dir"])
    apps: tuple[ApplicationConfig, ...] = ()
    if config_dir is not None:
        apps = load_directory(config_dir).applications
    candidates = [
        a
        for a in apps
        if (not args.app or a.name == args.app)
        and (not args.namespace or a.namespace == args.namespace)
    ]
    if integration:
        owning = [
            a for a in candidates if any(integration in (i.id, i.name) for i in a.integrations)
        ]
        candidates = owning or candidates
        if len(candidates) > 1:
            names = ", ".join(f"{a.namespace}/{a.name}" for a in candidates)
            raise UsageError(f"several applications match ({names}): pass --namespace and --app")
    targets = []
    for app in candidates:
        integration_id = integration
        for item in app.integrations:
            if integration in (item.id, item.name):
                integration_id = item.id
        targets.append(Target(app.keys, app, integration_id))
    if targets:
        return targets
    if args.app:
        return [Target(AppKeys(args.namespace or "default", args.app), None, integration)]
    raise UsageError("which application? pass --config-dir, or --namespace and --app")
