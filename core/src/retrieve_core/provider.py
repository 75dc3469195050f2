"""The live configuration of a receiver or worker process.

A source (a folder of manifests in dev mode, the API server in a cluster) pushes new snapshots
into a `ConfigProvider`; consumers read `provider.current` on each request (a plain attribute read,
swapped atomically) and may subscribe to changes to rebuild derived state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import ApplicationConfig, IntegrationConfig, SecretStore
from .manifests import ManifestError, load_directory, manifest_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigSnapshot:
    applications: tuple[ApplicationConfig, ...] = ()
    secrets: SecretStore = field(default_factory=SecretStore)
    version: int = 0

    def application(self, namespace: str, name: str) -> ApplicationConfig | None:
        for app in self.applications:
            if app.namespace == namespace and app.name == name:
                return app
        return None

    def find_integration(
        self, integration_id: str
    ) -> tuple[ApplicationConfig, IntegrationConfig] | None:
        for app in self.applications:
            integration = app.integration(integration_id)
            if integration is not None:
                return app, integration
        return None


Listener = Callable[[ConfigSnapshot], None]


class ConfigProvider:
    def __init__(self) -> None:
        self._current = ConfigSnapshot()
        self._listeners: list[Listener] = []
        self.loaded = asyncio.Event()

    @property
    def current(self) -> ConfigSnapshot:
        return self._current

    def update(
        self, applications: tuple[ApplicationConfig, ...], secrets: SecretStore
    ) -> ConfigSnapshot:
        self._current = ConfigSnapshot(applications, secrets, self._current.version + 1)
        self.loaded.set()
        for listener in list(self._listeners):
            listener(self._current)
        return self._current

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self.loaded.is_set():
            listener(self._current)


def _fingerprint(directory: Path) -> tuple[tuple[str, float, int], ...]:
    return tuple((str(p), p.stat().st_mtime, p.stat().st_size) for p in manifest_files(directory))


async def watch_directory(provider: ConfigProvider, directory: Path, interval: float = 1.0) -> None:
    """Reload the folder when a manifest changes; a bad edit keeps the last good config."""
    seen = _fingerprint(directory)
    while True:
        await asyncio.sleep(interval)
        try:
            now = _fingerprint(directory)
            if now == seen:
                continue
            seen = now
            loaded = load_directory(directory)
        except (ManifestError, OSError) as exc:
            log.error("config not reloaded, keeping the last good one: %s", exc)
            continue
        provider.update(loaded.applications, loaded.secrets)
        log.info("config reloaded from %s", directory)
