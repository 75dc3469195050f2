"""`kubectl retrieve` — the kubectl plugin (`kubectl-retrieve` on PATH, installed with the package).

    kubectl retrieve url INTEGRATION [-n NS] [--xml]
    kubectl retrieve logs INTEGRATION [-n NS] [--status S] [-f]
    kubectl retrieve logs INTEGRATION --notifications [--status sent|failed] [-f]
    kubectl retrieve replay INTEGRATION [-n NS]
    kubectl retrieve send INTEGRATION --data FILE [--url URL]

INTEGRATION is an Integration's name (or, with --config-dir, its name or id). By default the
plugin reads Integrations and Secrets from the API server with your kubeconfig. `logs` and
`replay` reach a ready `<app>-receiver` pod's admin port (8081) through the API server's pod
proxy (RBAC: list pods, get/create pods/proxy), or Redis directly with `--redis-url`.
`--config-dir DIR` reads the same manifests as `retrieve dev` instead, with no cluster (and
finds the running dev server's Redis by itself). Where the Integration and the receiver are
found is `kubectl_cluster`; reading, filtering, showing and replaying are `webhook_logs`, the
same code as `retrieve logs|replay`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from retrieve_core.logstore import LogRecord
from retrieve_core.notifications import NotificationAttempt

from .kubectl_cluster import (
    ENV_CONSOLE_TOKEN,
    PluginError,
    Resolved,
    console_api,
    receiver_selector,
    redis_url_of,
    resolve,
)
from .terminal import safe_text
from .webhook_logs import (
    Listing,
    T,
    attempt_listing,
    exit_code,
    follow,
    print_lines,
    print_replayed,
    read_newest,
    record_listing,
    replay,
)

__all__ = ["Resolved", "build_parser", "build_signed_request", "main", "receiver_selector"]

PROG = "kubectl retrieve"
# The receiver's admin API path for each kind `logs` lists, and the answer's field holding them.
_CONSOLE_API: dict[type, tuple[str, str]] = {
    LogRecord: ("/api/logs", "records"),
    NotificationAttempt: ("/console/api/notifications", "attempts"),
}


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


def _show(args: argparse.Namespace, target: Resolved, listing: Listing[T]) -> int:
    redis_url = redis_url_of(args)
    path, field = _CONSOLE_API[listing.model]
    command = "logs --notifications" if args.notifications else "logs"

    def fetch() -> list[T]:
        if redis_url:
            source = (target.keys, target.integration_id)
            return asyncio.run(read_newest(redis_url, [source], listing, args.limit))
        query = [("limit", str(args.limit)), *listing.api_filter]
        answer = console_api(args, target, path, command=command, query=query)
        return [listing.model.model_validate(item) for item in answer[field]]

    items = fetch()
    if not items and not args.json and not args.follow:
        print(f"no {listing.noun} match")
    print_lines(listing, items, as_json=args.json)
    if args.follow:
        follow(listing, fetch, items, as_json=args.json)
    return 0


def run_logs(args: argparse.Namespace) -> int:
    target = resolve(args)
    if args.notifications:
        return _show(args, target, attempt_listing(args.status))
    return _show(args, target, record_listing(args.status))


def run_replay(args: argparse.Namespace) -> int:
    target = resolve(args)
    redis_url = redis_url_of(args)
    if redis_url:
        count = asyncio.run(replay(redis_url, target.keys, target.integration_id))
    else:
        answer = console_api(args, target, "/console/api/replay", command="replay", method="POST")
        count = int(answer["replayed"])
    print_replayed(target.integration_id, count)
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
    logs.add_argument(
        "--notifications",
        action="store_true",
        help="the error notification attempts about the Integration instead (--status sent|failed)",
    )
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


def _handle(args: argparse.Namespace) -> int:
    try:
        code: int = args.handler(args)
    except PluginError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return exit_code(PROG, lambda: _handle(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
