"""Where `kubectl retrieve` finds an Integration, and how it reaches the receiver's console API.

An Integration comes from the API server (with the user's kubeconfig, or the in-cluster config)
or, with `--config-dir`, from the manifests `retrieve dev` reads. `logs` and `replay` reach a
ready `<app>-receiver` pod's admin port through the API server's pod proxy (RBAC: list pods,
get/create pods/proxy) with the console token, or Redis directly with `--redis-url`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.constants import (
    API_GROUP,
    API_VERSION,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_NAME,
    PLURAL_INTEGRATION,
    PRODUCT_NAME,
)
from retrieve_core.keys import AppKeys
from retrieve_core.manifests import ManifestError, load_directory
from retrieve_core.models import IntegrationSpec, effective_integration_id

from .selection import resolve_redis_url
from .terminal import safe_text

ENV_CONSOLE_TOKEN = "RETRIEVE_CONSOLE_TOKEN"
ADMIN_PORT = 8081  # the receiver container's admin port (never behind the Service or Ingress)


class PluginError(Exception):
    """Reported as one line on stderr, exit code 1 (2 for usage mistakes)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Resolved:
    """One Integration as the plugin needs it, from the cluster or from a manifest folder."""

    namespace: str
    name: str
    integration_id: str
    spec: IntegrationSpec
    webhook_url: str | None
    xml_webhook_url: str | None
    secrets: SecretStore

    @property
    def keys(self) -> AppKeys:
        return AppKeys(self.namespace, self.spec.application)


# ---------------------------------------------------------------- where integrations come from


def _from_config_dir(directory: Path, integration: str, namespace: str | None) -> Resolved:
    try:
        loaded = load_directory(directory)
    except ManifestError as exc:
        raise PluginError(str(exc)) from exc
    matches: list[tuple[ApplicationConfig, IntegrationConfig]] = [
        (app, item)
        for app in loaded.applications
        if not namespace or app.namespace == namespace
        for item in app.integrations
        if integration in (item.name, item.id)
    ]
    if not matches:
        raise PluginError(f"Integration {integration} not found in {directory}")
    if len(matches) > 1:
        raise PluginError(f"several Integrations named {integration}: pass -n NAMESPACE", 2)
    app, item = matches[0]
    url = f"https://{app.host}/integration/{item.id}" if app.host else None
    return Resolved(
        namespace=app.namespace,
        name=item.name,
        integration_id=item.id,
        spec=item.spec,
        webhook_url=url,
        xml_webhook_url=f"{url}/xml" if url else None,
        secrets=loaded.secrets,
    )


class Cluster:
    """The few API calls the plugin makes, with the user's kubeconfig (or in-cluster config)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        import warnings

        from kubernetes import client, config

        # A kubeconfig with insecure-skip-tls-verify is the user's choice; kubectl stays quiet too.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except config.ConfigException:
            config.load_incluster_config()
        self.api_client = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.default_namespace = "default"
        try:
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = active
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                chosen = next((c for c in contexts if c["name"] == context), active)
            self.default_namespace = chosen["context"].get("namespace") or "default"
        except (config.ConfigException, KeyError, TypeError):
            pass

    def integration(self, name: str, namespace: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL_INTEGRATION, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise PluginError(f"Integration {namespace}/{name} not found") from exc
            raise PluginError(f"reading Integration {namespace}/{name}: {exc.reason}") from exc
        if not isinstance(obj, dict):
            raise PluginError(f"reading Integration {namespace}/{name}: unexpected answer")
        return obj

    def secret_values(self, namespace: str, spec: IntegrationSpec) -> SecretStore:
        import base64

        from kubernetes.client.exceptions import ApiException

        store = SecretStore()
        for name in sorted({ref.name for ref in (spec.verify.secret_refs if spec.verify else [])}):
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                raise PluginError(f"reading Secret {namespace}/{name}: {exc.reason}") from exc
            data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            store.put_secret(namespace, name, data)
        return store

    def receiver_pod(self, namespace: str, app: str) -> str:
        """A ready receiver pod of `app` (all of them read the same Redis, any one will do)."""
        selector = ",".join(f"{k}={v}" for k, v in receiver_selector(app).items())
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        for pod in pods:
            conditions = (pod.status.conditions or []) if pod.status else []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            if ready and pod.metadata is not None:
                return str(pod.metadata.name)
        raise PluginError(f"no ready receiver pod of application {namespace}/{app} ({selector})")

    def proxy(
        self,
        namespace: str,
        app: str,
        path: str,
        *,
        method: str = "GET",
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """A request to a receiver pod's admin port through the API server's pod proxy."""
        from kubernetes.client.exceptions import ApiException

        pod = self.receiver_pod(namespace, app)
        resource = f"/api/v1/namespaces/{namespace}/pods/{pod}:{ADMIN_PORT}/proxy{path}"
        try:
            verb, url, header_params, _, _ = self.api_client.param_serialize(
                method=method,
                resource_path=resource,
                query_params=list(query),
                header_params=dict(headers or {}),
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(
                verb, url, header_params=header_params, _request_timeout=30
            )
            response.read()
        except ApiException as exc:
            body = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            return int(exc.status or 0), body
        return int(response.status), bytes(response.data or b"")


def receiver_selector(app: str) -> dict[str, str]:
    """The labels the operator puts on an application's receiver pods."""
    return {LABEL_NAME: PRODUCT_NAME, LABEL_INSTANCE: app, LABEL_COMPONENT: "receiver"}


def resolve(args: argparse.Namespace, *, need_secrets: bool = False) -> Resolved:
    if args.config_dir is not None:
        return _from_config_dir(args.config_dir, args.integration, args.namespace)
    cluster = cluster_of(args)
    namespace = args.namespace or cluster.default_namespace
    obj = cluster.integration(args.integration, namespace)
    try:
        spec = IntegrationSpec.model_validate(obj.get("spec") or {})
    except ValueError as exc:
        raise PluginError(
            f"Integration {namespace}/{args.integration}: invalid spec: {exc}"
        ) from exc
    status = obj.get("status") or {}
    return Resolved(
        namespace=namespace,
        name=args.integration,
        integration_id=effective_integration_id(namespace, args.integration, spec),
        spec=spec,
        webhook_url=status.get("webhookURL"),
        xml_webhook_url=status.get("xmlWebhookURL"),
        secrets=cluster.secret_values(namespace, spec) if need_secrets else SecretStore(),
    )


def cluster_of(args: argparse.Namespace) -> Cluster:
    cached: Cluster | None = getattr(args, "_cluster", None)
    if cached is None:
        try:
            cached = Cluster(args.kubeconfig, args.context)
        except Exception as exc:  # the client raises several types for a missing/bad config
            raise PluginError(f"no usable kubeconfig: {exc}") from exc
        args._cluster = cached
    return cached


# ---------------------------------------------------------------- Redis, or the console API


def redis_url_of(args: argparse.Namespace) -> str | None:
    """--redis-url; with --config-dir, that of the running `retrieve dev`; else None (the API)."""
    if args.redis_url:
        return str(args.redis_url)
    if args.config_dir is not None:
        return resolve_redis_url(argparse.Namespace(redis_url=None))
    return None


def console_api(
    args: argparse.Namespace,
    target: Resolved,
    path: str,
    *,
    command: str,
    method: str = "GET",
    query: Sequence[tuple[str, str]] = (),
) -> Any:
    """The JSON answer of a receiver pod's admin API `path` about `target`, through the API
    server's pod proxy, with the console token."""
    token = str(args.console_token or os.environ.get(ENV_CONSOLE_TOKEN, ""))
    if not token:
        raise PluginError(
            f"{command} through the cluster needs the receiver's console token (--console-token "
            f"or ${ENV_CONSOLE_TOKEN}), or pass --redis-url",
            2,
        )
    app = target.spec.application
    scope = [("namespace", target.namespace), ("app", app), ("integration", target.integration_id)]
    status, body = cluster_of(args).proxy(
        target.namespace,
        app,
        path,
        method=method,
        query=[*scope, *query],
        # The API server's proxy drops the Authorization header: the token travels as the
        # console's cookie, with the console's header against cross-site requests.
        headers={"Cookie": f"retrieve_console={token}", "X-Retrieve-Console": "1"},
    )
    if status != 200:
        verb = "create" if method == "POST" else "get"
        raise PluginError(
            f"{method} {path} of a {app} receiver pod through the API server: HTTP {status} "
            f"{safe_text(body[:300].decode('utf-8', 'replace'))} (needs list pods and {verb} "
            "pods/proxy)"
        )
    return json.loads(body)
