"""`retrieve` — one console script, one subcommand per job (DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from retrieve_core.constants import ENV_REDIS_URL

Handler = Callable[[argparse.Namespace], int]


def _add_redis(parser: argparse.ArgumentParser, *, required: bool) -> None:
    default = os.environ.get(ENV_REDIS_URL)
    parser.add_argument(
        "--redis-url",
        default=default,
        required=required and default is None,
        help=f"Redis URL (default: ${ENV_REDIS_URL})",
    )


def _add_config_dir(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--config-dir",
        type=Path,
        required=required,
        help="folder of RetrieveApplication / Integration / Secret manifests",
    )


def _add_app_selector(parser: argparse.ArgumentParser) -> None:
    _add_config_dir(parser, required=False)
    parser.add_argument("--namespace", "-n", help="the application's namespace")
    parser.add_argument("--app", help="the application's name (needed when several are served)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieve", description="Webhook ingestion for Kubernetes: operator, receiver, worker."
    )
    parser.add_argument("--log-level", default=os.environ.get("RETRIEVE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run receiver and worker in one process, no cluster needed")
    _add_config_dir(dev, required=True)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--admin-port", type=int, default=8081)
    dev.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    dev.add_argument("--concurrency", type=int, default=None)
    dev.set_defaults(handler=_lazy("retrieve_cli.dev", "run_dev"))

    for name, help_text, target in (
        ("receiver", "serve the webhook endpoints of the configured applications", "run_receiver"),
        ("worker", "process queued jobs of the configured applications", "run_worker"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        source = cmd.add_mutually_exclusive_group(required=False)
        source.add_argument("--config-dir", type=Path, help="folder of manifests (no cluster)")
        source.add_argument(
            "--from-cluster",
            action="store_true",
            help="read the application's <app>-config ConfigMap and Secrets from the API server "
            "(default when RETRIEVE_CONFIG_MAP is set)",
        )
        cmd.add_argument("--namespace", default=os.environ.get("RETRIEVE_NAMESPACE"))
        cmd.add_argument("--app", default=os.environ.get("RETRIEVE_APPLICATION"))
        _add_redis(cmd, required=False)
        if name == "receiver":
            cmd.add_argument("--host", default=os.environ.get("RETRIEVE_HOST", "0.0.0.0"))
            port = int(os.environ.get("RETRIEVE_PORT", "8080"))
            cmd.add_argument("--port", type=int, default=port)
            cmd.add_argument(
                "--processes",
                type=int,
                default=int(os.environ.get("RETRIEVE_RECEIVER_PROCESSES", "1")),
                help="receiver processes sharing the port (SO_REUSEPORT), one core each; "
                "over 1, a parent supervises them and serves the admin port",
            )
            # Set by the supervisor for its children only: SO_REUSEPORT, die with the parent.
            cmd.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
            cmd.add_argument("--admin-host", default=None, help=argparse.SUPPRESS)
        else:
            cmd.add_argument("--concurrency", type=int, default=None)
            cmd.add_argument(
                "--consumer",
                default=os.environ.get("RETRIEVE_WORKER_CONSUMER") or None,
                help="this worker's name in the consumer group (default: $POD_NAME, else "
                "host-pid); restarted under the same name it takes its own pending jobs back "
                "at once instead of after the claim timeout",
            )
            cmd.add_argument("--host", default=os.environ.get("RETRIEVE_HOST", "0.0.0.0"))
        cmd.add_argument(
            "--admin-port", type=int, default=int(os.environ.get("RETRIEVE_ADMIN_PORT", "8081"))
        )
        cmd.set_defaults(handler=_lazy("retrieve_cli.components", target))

    logs = sub.add_parser("logs", help="show webhook log records, newest first")
    _add_app_selector(logs)
    _add_redis(logs, required=False)
    logs.add_argument("--integration", "-i", help="integration id or Integration name")
    logs.add_argument(
        "--status",
        "-s",
        action="append",
        default=[],
        help="queued, rejected, duplicate, retrying, succeeded, failed, dead_letter, or an HTTP "
        "code; repeatable",
    )
    logs.add_argument("--limit", type=int, default=20)
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.add_argument("--payload", action="store_true", help="show payloads in the table")
    logs.add_argument(
        "--notifications",
        action="store_true",
        help="show error notification attempts instead (--status sent|failed)",
    )
    logs.set_defaults(handler=_lazy("retrieve_cli.logs_replay", "run_logs"))

    replay = sub.add_parser("replay", help="requeue the dead-lettered jobs of an integration")
    replay.add_argument("integration", help="integration id or Integration name")
    _add_app_selector(replay)
    _add_redis(replay, required=False)
    replay.set_defaults(handler=_lazy("retrieve_cli.logs_replay", "run_replay"))

    poll = sub.add_parser("poll", help="poll a scheduled integration's source once (spec.schedule)")
    poll.add_argument("integration", help="integration id or Integration name")
    poll_source = poll.add_mutually_exclusive_group(required=False)
    poll_source.add_argument("--config-dir", type=Path, help="folder of manifests (no cluster)")
    poll_source.add_argument(
        "--from-cluster", action="store_true", help="read <app>-config and Secrets from the cluster"
    )
    poll.add_argument("--namespace", "-n", default=os.environ.get("RETRIEVE_NAMESPACE"))
    poll.add_argument("--app", default=os.environ.get("RETRIEVE_APPLICATION"))
    _add_redis(poll, required=False)
    poll.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    poll.set_defaults(handler=_lazy("retrieve_cli.poll_cmd", "run_poll"))

    test_rewrite = sub.add_parser(
        "test-rewrite", help="run an Integration manifest's rewrite.tests examples (exit 1: fail)"
    )
    test_rewrite.add_argument("file", help="Integration manifest (YAML, several documents allowed)")
    test_rewrite.set_defaults(handler=_lazy("retrieve_cli.rewrite_tests", "run_test_rewrite"))

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], dest="namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true")
    op.add_argument(
        "--peering",
        default=os.environ.get("RETRIEVE_PEERING"),
        help="mandatory peering: act only while this (Cluster)KopfPeering exists, as the chart "
        "runs it; by default join `retrieve-operator` if it exists, else run alone",
    )
    op.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    op.set_defaults(handler=_lazy("retrieve_cli.operator_cmd", "run_operator"))

    sink = sub.add_parser("sink", help="an HTTP destination for trying things: prints what it gets")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=9099)
    sink.add_argument("--status", type=int, default=200, help="HTTP status to answer")
    sink.set_defaults(handler=_lazy("retrieve_cli.sink", "run_sink"))
    return parser


def _lazy(module: str, function: str) -> Handler:
    """Import a subcommand's module only when it runs (the operator pulls in kopf, etc.)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        target: Handler = getattr(importlib.import_module(module), function)
        return target(args)

    return handler


class _QuietBadRequests(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses as an ERROR with a traceback and the
    offending bytes: anyone could fill the logs that way. Keep one line at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                record.msg, record.args = (
                    "refused a malformed HTTP request: %s",
                    (type(record.exc_info[1]).__name__,),
                )
                record.exc_info, record.exc_text, record.levelno = None, None, logging.DEBUG
                record.levelname = "DEBUG"
                return True
            return False
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
