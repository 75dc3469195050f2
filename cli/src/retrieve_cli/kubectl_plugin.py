"""`kubectl retrieve` — the kubectl plugin (`kubectl-retrieve` on PATH, installed with the package).

    kubectl retrieve url INTEGRATION [-n NS] [--xml]
    kubectl retrieve logs INTEGRATION [-n NS] [--status S] [-f]
    kubectl retrieve replay INTEGRATION [-n NS]
    kubectl retrieve send INTEGRATION --data FILE [--url URL]

INTEGRATION is an Integration's name (or, with --config-dir, its name or id). By default the
plugin reads Integrations and Secrets from the API server with your kubeconfig. `logs` and
`replay` reach a ready `<app>-receiver` pod's admin port (8081) through the API server's pod
proxy (RBAC: list pods, get/create pods/proxy), or Redis directly with `--redis-url`.
`--config-dir DIR` reads the same manifests as `retrieve dev` instead, with no cluster (and
finds the running dev server's Redis by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

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
from retrieve_core.logstore import LogRecord, LogStatus
from retrieve_core.manifests import ManifestError, load_directory
from retrieve_core.models import IntegrationSpec, effective_integration_id

from .terminal import json_line, safe_text

PROG = "kubectl retrieve"
ENV_CONSOLE_TOKEN = "RETRIEVE_CONSOLE_TOKEN"
FOLLOW_INTERVAL = 2.0
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


# ---------------------------------------------------------------- url


def run_url(args: argparse.Namespace) -> int:
    target = resolve(args)
    url = target.xml_webhook_url if args.xml else target.webhook_url
    if not url:
        raise PluginError(
            f"Integration {target.namespace}/{target.name} has no status.webhookURL yet: is the "
            "operator running and the application's webhook enabled? (kubectl describe rint "
            f"{target.name} -n {target.namespace})"
        )
    print(url)
    return 0


# ---------------------------------------------------------------- send


def build_signed_request(
    target: Resolved, body: bytes, now: float, delivery_id: str
) -> dict[str, str]:
    """Headers for a test webhook the receiver accepts: the preset's signature, its id header."""
    from retrieve_receiver.signatures import compile_scheme, sign

    verify = target.spec.verify
    if verify is None:
        return {}
    values = [target.secrets.get(target.namespace, ref) for ref in verify.secret_refs]
    keys = [v for v in values if v is not None]
    if not keys:
        names = ", ".join(ref.name for ref in verify.secret_refs)
        raise PluginError(f"none of the Secrets {names} holds a value to sign with")
    scheme = compile_scheme(verify, keys)
    headers = sign(scheme, body, now, delivery_id)
    delivery_header = {
        "github": "X-GitHub-Delivery",
        "shopify": "X-Shopify-Webhook-Id",
        "woocommerce": "X-WC-Webhook-Delivery-ID",
    }.get(verify.preset.value)
    if delivery_header:
        headers[delivery_header] = delivery_id
    if verify.preset.value == "github":
        headers.setdefault("X-GitHub-Event", "ping")
    return headers


def _target_url(target: Resolved, override: str | None, xml: bool) -> str:
    suffix = "/xml" if xml else ""
    if override:
        base = override.rstrip("/")
        if "/integration/" in base:
            return base
        return f"{base}/integration/{target.integration_id}{suffix}"
    url = target.xml_webhook_url if xml else target.webhook_url
    if not url:
        raise PluginError(
            f"Integration {target.namespace}/{target.name} has no webhook URL: pass --url"
        )
    return url


def run_send(args: argparse.Namespace) -> int:
    target = resolve(args, need_secrets=True)
    try:
        body = sys.stdin.buffer.read() if str(args.data) == "-" else Path(args.data).read_bytes()
    except OSError as exc:
        raise PluginError(f"--data: {exc}") from exc
    xml = args.xml or Path(str(args.data)).suffix.lower() == ".xml"
    content_type = args.content_type or ("application/xml" if xml else "application/json")
    delivery_id = args.delivery_id or secrets.token_hex(16)
    headers = {"Content-Type": content_type, "User-Agent": "kubectl-retrieve"}
    headers.update(build_signed_request(target, body, time.time(), delivery_id))
    url = _target_url(target, args.url, xml)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as answer:
            status, text = answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise PluginError(f"POST {url}: {exc}") from exc
    print(f"POST {url} -> {status} {safe_text(text.strip())}")
    return 0 if 200 <= status < 300 else 1


# ---------------------------------------------------------------- logs and replay


def _line(record: LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    message = safe_text(record.error or record.message)
    return (
        f"{when}Z  {safe_text(record.source_ip):<15} {record.http_status:>3}  "
        f"{record.status.value:<11} attempts={record.attempts}  {message}"
    ).rstrip()


def _fetch_from_redis(
    redis_url: str, target: Resolved, statuses: list[str], limit: int
) -> list[LogRecord]:
    from retrieve_core.logstore import LogStore
    from retrieve_core.redisclient import CLI_TIMEOUTS, connect_redis

    async def query() -> list[LogRecord]:
        redis = connect_redis(redis_url, CLI_TIMEOUTS)
        try:
            return await LogStore(redis, target.keys).query(
                integration_id=target.integration_id, statuses=statuses, limit=limit
            )
        finally:
            await redis.aclose()

    return asyncio.run(query())


def _fetch_through_proxy(
    args: argparse.Namespace, target: Resolved, statuses: list[str], limit: int
) -> list[LogRecord]:
    query = [
        ("namespace", target.namespace),
        ("app", target.spec.application),
        ("integration", target.integration_id),
        ("limit", str(limit)),
        *(("status", s) for s in statuses),
    ]
    # The log API shows payloads: it needs the console token (as the cookie: the API server's
    # proxy drops the Authorization header).
    token = _console_token(args, "logs")
    app = target.spec.application
    status, body = cluster_of(args).proxy(
        target.namespace,
        app,
        "/api/logs",
        query=query,
        headers={"Cookie": f"retrieve_console={token}"},
    )
    if status != 200:
        raise PluginError(
            f"GET /api/logs of a {app} receiver pod through the API server: HTTP {status} "
            f"{body[:300].decode('utf-8', 'replace')} (needs list pods and get pods/proxy)"
        )
    return [LogRecord.model_validate(r) for r in json.loads(body)["records"]]


def _log_fetcher(args: argparse.Namespace, target: Resolved) -> Callable[[], list[LogRecord]]:
    statuses = [s for value in args.status for s in value.split(",") if s]
    valid = {s.value for s in LogStatus}
    for status in statuses:
        if status not in valid and not status.isdigit():
            raise PluginError(
                f"unknown status {status!r}: use one of {', '.join(sorted(valid))}", 2
            )
    redis_url = _redis_url(args)
    if redis_url:
        return lambda: _fetch_from_redis(redis_url, target, statuses, args.limit)
    return lambda: _fetch_through_proxy(args, target, statuses, args.limit)


def _redis_url(args: argparse.Namespace) -> str | None:
    if args.redis_url:
        return str(args.redis_url)
    if args.config_dir is not None:
        from .selection import UsageError, resolve_redis_url

        try:
            return resolve_redis_url(argparse.Namespace(redis_url=None))
        except UsageError as exc:
            raise PluginError(str(exc), 2) from exc
    return None


def _console_token(args: argparse.Namespace, command: str) -> str:
    token = str(args.console_token or os.environ.get(ENV_CONSOLE_TOKEN, ""))
    if not token:
        raise PluginError(
            f"{command} through the cluster needs the receiver's console token (--console-token "
            f"or ${ENV_CONSOLE_TOKEN}), or pass --redis-url",
            2,
        )
    return token


def run_logs(args: argparse.Namespace) -> int:
    target = resolve(args)
    fetch = _log_fetcher(args, target)
    records = fetch()
    if args.json:
        for record in records:
            print(json_line(record.model_dump(mode="json")))
    else:
        for record in reversed(records):
            print(_line(record))
    if not args.follow:
        return 0
    seen = {(r.id, r.status, r.attempts) for r in records}
    while True:
        time.sleep(FOLLOW_INTERVAL)
        fresh = [r for r in reversed(fetch()) if (r.id, r.status, r.attempts) not in seen]
        for record in fresh:
            seen.add((record.id, record.status, record.attempts))
            line = json_line(record.model_dump(mode="json")) if args.json else _line(record)
            print(line, flush=True)


def run_replay(args: argparse.Namespace) -> int:
    target = resolve(args)
    redis_url = _redis_url(args)
    if redis_url:
        from retrieve_core.redisclient import CLI_TIMEOUTS, connect_redis
        from retrieve_worker.replay import replay_dead_letters

        async def replay() -> int:
            redis = connect_redis(redis_url, CLI_TIMEOUTS)
            try:
                return await replay_dead_letters(redis, target.keys, target.integration_id)
            finally:
                await redis.aclose()

        count = asyncio.run(replay())
    else:
        # Through the API server to a receiver pod's console API: needs create on pods/proxy
        # AND the console token (the API server drops the Authorization header, so the token
        # travels as the console's cookie).
        token = _console_token(args, "replay")
        app = target.spec.application
        status, body = cluster_of(args).proxy(
            target.namespace,
            app,
            "/console/api/replay",
            method="POST",
            query=[
                ("namespace", target.namespace),
                ("app", target.spec.application),
                ("integration", target.integration_id),
            ],
            headers={"Cookie": f"retrieve_console={token}", "X-Retrieve-Console": "1"},
        )
        if status != 200:
            raise PluginError(f"replay through a {app} receiver pod: HTTP {status} {body[:300]!r}")
        count = int(json.loads(body)["replayed"])
    print(json.dumps({"integration": target.integration_id, "replayed": count}))
    return 0


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Retrieve webhooks from kubectl: URLs, logs, replay, test sends."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("integration", metavar="INTEGRATION", help="the Integration's name")
        cmd.add_argument("-n", "--namespace", help="namespace (default: the context's)")
        cmd.add_argument(
            "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)"
        )
        cmd.add_argument("--context", default=None, help="kubeconfig context")
        cmd.add_argument(
            "--config-dir",
            type=Path,
            default=None,
            help="read the manifests in DIR (as `retrieve dev` does) instead of a cluster",
        )
        return cmd

    url = common("url", "print the Integration's webhook URL (status.webhookURL)")
    url.add_argument("--xml", action="store_true", help="the XML endpoint's URL")
    url.set_defaults(handler=run_url)

    logs = common("logs", "show the Integration's webhook log records")
    logs.add_argument("--status", "-s", action="append", default=[], help="filter; repeatable")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    logs.add_argument("--limit", type=int, default=50)
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.add_argument("--redis-url", default=None, help="read Redis directly, not via the API")
    logs.add_argument("--console-token", default=None, help=f"default: ${ENV_CONSOLE_TOKEN}")
    logs.set_defaults(handler=run_logs)

    replay = common("replay", "requeue the Integration's dead-lettered jobs")
    replay.add_argument("--redis-url", default=None, help="use Redis directly, not via the API")
    replay.add_argument("--console-token", default=None, help=f"default: ${ENV_CONSOLE_TOKEN}")
    replay.set_defaults(handler=run_replay)

    send = common("send", "send a correctly signed test webhook for the Integration's preset")
    send.add_argument("--data", required=True, help="file with the body to send (- for stdin)")
    send.add_argument("--url", default=None, help="base URL to send to (default: status URL)")
    send.add_argument("--xml", action="store_true", help="send to the XML endpoint")
    send.add_argument("--content-type", default=None)
    send.add_argument("--delivery-id", default=None, help="the provider's delivery id header")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(handler=run_send)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PluginError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except (RedisError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
