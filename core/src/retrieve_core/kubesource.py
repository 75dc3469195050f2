"""Configuration from the API server, for receivers and workers running in (or against) a cluster.

A receiver or worker serves one application. It watches that application's `<app>-config`
ConfigMap (written by the operator) and reads the Secrets it references, so whitelist,
integration and secret changes take effect within seconds, without a restart. It needs only a
namespaced Role: get/list/watch on configmaps, get on secrets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from .config import CONFIG_MAP_KEY, ApplicationConfig, SecretStore
from .provider import ConfigProvider

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 50


def _core_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


def _read_secrets(api: Any, app: ApplicationConfig) -> SecretStore:
    import base64

    from kubernetes.client.exceptions import ApiException

    store = SecretStore()
    for name in sorted({name for name, _ in app.secret_refs()}):
        try:
            secret = api.read_namespaced_secret(name, app.namespace)
        except ApiException as exc:
            if exc.status == 404:
                log.warning("Secret %s/%s not found", app.namespace, name)
                continue
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        store.put_secret(app.namespace, name, data)
    return store


def _watch_config_map(
    api: Any,
    namespace: str,
    name: str,
    emit: Callable[[str | None], None],
    stop: threading.Event,
) -> None:
    """List then watch one ConfigMap forever (in a thread), emitting its config text."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    selector = f"metadata.name={name}"
    while not stop.is_set():
        try:
            listing = api.list_namespaced_config_map(namespace, field_selector=selector)
            version = listing.metadata.resource_version
            emit(listing.items[0].data.get(CONFIG_MAP_KEY) if listing.items else None)
            watcher = watch.Watch()
            for event in watcher.stream(
                api.list_namespaced_config_map,
                namespace,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
            ):
                if stop.is_set():
                    watcher.stop()
                    break
                obj = event["object"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    emit((obj.data or {}).get(CONFIG_MAP_KEY))
        except ApiException as exc:
            log.warning("watching ConfigMap %s/%s: %s %s", namespace, name, exc.status, exc.reason)
            stop.wait(2)
        except Exception:  # the watch must survive API server restarts and network errors
            log.exception("watching ConfigMap %s/%s failed; retrying", namespace, name)
            stop.wait(2)


async def watch_cluster_config(
    provider: ConfigProvider,
    namespace: str,
    app: str,
    config_map: str | None = None,
    secret_poll_seconds: float = 3.0,
) -> None:
    """Keep `provider` in step with the cluster until cancelled."""
    api = await asyncio.to_thread(_core_api)
    loop = asyncio.get_running_loop()
    texts: asyncio.Queue[str | None] = asyncio.Queue()
    stop = threading.Event()
    name = config_map or f"{app}-config"
    thread = threading.Thread(
        target=_watch_config_map,
        args=(api, namespace, name, lambda t: loop.call_soon_threadsafe(texts.put_nowait, t), stop),
        name=f"watch-{name}",
        daemon=True,
    )
    thread.start()
    current: ApplicationConfig | None = None
    secrets = SecretStore()
    try:
        while True:
            try:
                text = await asyncio.wait_for(texts.get(), timeout=secret_poll_seconds)
            except TimeoutError:
                text = None
                changed = False
            else:
                changed = True
            if changed and text is not None:
                try:
                    parsed = ApplicationConfig.from_json(text)
                except ValidationError as exc:
                    log.error(
                        "ConfigMap %s/%s is invalid, keeping the last config: %s",
                        namespace,
                        name,
                        exc,
                    )
                    continue
                if parsed != current:
                    current = parsed
                else:
                    changed = False
            elif changed:
                log.warning("ConfigMap %s/%s not found yet", namespace, name)
                continue
            if current is None:
                continue
            try:
                fresh = await asyncio.to_thread(_read_secrets, api, current)
            except Exception as exc:  # keep serving the last good secrets; retry next poll
                log.warning("reading Secrets of %s/%s failed: %s", namespace, app, exc)
                continue
            if changed or fresh.values != secrets.values:
                secrets = fresh
                provider.update((current,), secrets)
                log.info(
                    "configuration of %s/%s loaded (version %d)",
                    namespace,
                    app,
                    provider.current.version,
                )
    finally:
        stop.set()
