"""Stored text a sender chose never acts on the operator's terminal (issue 12, defect 1).

A sender the whitelist refuses chooses the integration id of its 403 log record; a whitelisted one
chooses the payload, and through a rewrite the message. `retrieve logs` and `kubectl retrieve
logs` run in a real pty against a real `retrieve dev`: no markup is interpreted, no control
character reaches the terminal (only rich's own colour sequences), no value splits a row.
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from retrieve_cli.terminal import cell, json_line, safe_text
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogStatus, LogStore
from tests.e2e.conftest import EXTRA, DevServer, dev_server, dns_server
from tests.support.ports import free_port
from tests.support.processes import retrieve_command, write_config
from tests.support.redis_server import RedisServer

__all__ = ["dev_server", "dns_server"]  # fixtures used below

FORGED_ROW = "2026-01-01 00:00:00.000Z  10.0.0.1  FORGED  200  succeeded"
EVIL_ID = f"[bold red]x[/]\x1b]0;pwned\x07\x1b[2J\n{FORGED_ROW}\u202e:smile:"
EVIL_MESSAGE = (
    "done [link=http://evil.example]click[/link]\x1b]8;;http://evil.example\x1b\\here"
    f"\x1b]8;;\x1b\\\r\n{FORGED_ROW}\u0085\u2028\x9b2J"
)
ECHO = {
    "apiVersion": "retrievetl.com/v1alpha1",
    "kind": "Integration",
    "metadata": {"name": "echo", "namespace": "shop"},
    "spec": {
        "application": "yourapp",
        "integrationId": "ECHO1",
        # A rewrite that fails on purpose with the payload's text as its message.
        "rewrite": {"javascript": "return {jobStatus: 0, message: jobData.job.data.data.text};"},
        "destinations": [{"name": "sink", "http": {"url": "http://127.0.0.1:9/echo"}}],
    },
}
YOURAPP = AppKeys("shop", "yourapp")
RICH_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config", "http://127.0.0.1:9", [*EXTRA, ECHO])


def post(server: DevServer, path: str, body: bytes, source: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, source_address=(source, 0))
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def run_in_pty(args: list[str], columns: int = 1000) -> tuple[int, str]:
    """Runs a command with a pty as its terminal; returns its exit code and what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    code = process.wait(30)
    # The pty's line discipline writes every "\n" as "\r\n".
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def assert_terminal_safe(output: str) -> None:
    """Nothing but rich's colours acts on the terminal, and no value starts a line of its own."""
    plain = RICH_COLOUR.sub("", output)
    acting = [c for c in plain if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert acting == [], f"control characters reached the terminal: {acting!r}\n{output}"
    for line in plain.splitlines():
        assert not line.lstrip(" │┃|").startswith(FORGED_ROW[:10]), f"forged row: {line!r}"


def wait_for_record(server: DevServer, integration: str, status: LogStatus) -> None:
    async def statuses() -> set[LogStatus]:
        redis = Redis.from_url(server.redis_url)
        try:
            records = await LogStore(redis, YOURAPP).query(integration_id=integration)
        finally:
            await redis.aclose()
        return {r.status for r in records}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if status in asyncio.run(statuses()):
            return
        time.sleep(0.3)
    raise AssertionError(f"no {status} record of {integration}:\n{server.process.output()}")


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_logs_of_hostile_ids_payloads_and_messages_are_safe_on_a_terminal(
    dev_server: DevServer,
) -> None:
    refused = post(dev_server, "/integration/" + quote(EVIL_ID, safe=""), b"{}", "127.0.0.9")
    assert refused == 403
    # A closing tag nothing opened: rich's markup parser raised MarkupError on it (exit 1).
    assert post(dev_server, "/integration/" + quote("[/oops]", safe=""), b"{}", "127.0.0.9") == 403
    body = json.dumps({"text": EVIL_MESSAGE}, ensure_ascii=False).encode()
    assert post(dev_server, "/integration/ECHO1", body, "127.0.0.1") == 200
    wait_for_record(dev_server, "ECHO1", LogStatus.FAILED)
    common = ["--config-dir", str(dev_server.config_dir), "--redis-url", dev_server.redis_url]

    code, table = run_in_pty([*retrieve_command(), "logs", *common, "--payload"])

    assert code == 0, table
    assert "MarkupError" not in table
    assert_terminal_safe(table)
    plain = RICH_COLOUR.sub("", table)
    # Shown, escaped, on the record's own row: markup as text, controls as escapes.
    assert "[bold red]x[/]\\x1b]0;pwned\\x07\\x1b[2J\\n" + FORGED_ROW + "\\u202e:smile:" in plain
    assert "[link=http://evil.example]click[/link]\\x1b]8;;" in plain
    assert "[/oops]" in plain
    assert "\\r\\n" + FORGED_ROW + "\\x85\\u2028\\x9b2J" in plain

    code, lines = run_in_pty([*retrieve_command(), "logs", *common, "--json"])
    assert code == 0, lines
    assert_terminal_safe(lines)
    records = [json.loads(line) for line in lines.split("\n") if line]
    assert {r["integration_id"] for r in records} >= {EVIL_ID, "ECHO1"}  # the data is intact
    assert EVIL_MESSAGE in {r["message"] for r in records}

    plugin = [sys.executable, "-m", "retrieve_cli.kubectl_plugin", "logs", "echo", *common]
    code, plugin_lines = run_in_pty(plugin)
    assert code == 0, plugin_lines
    assert_terminal_safe(plugin_lines)
    assert "done [link=http://evil.example]click[/link]\\x1b]8;;" in plugin_lines
    code, plugin_json = run_in_pty([*plugin, "--json"])
    assert code == 0, plugin_json
    assert_terminal_safe(plugin_json)
    messages = [json.loads(line)["message"] for line in plugin_json.split("\n") if line]
    assert messages == [EVIL_MESSAGE]


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_safe_text_leaves_nothing_a_terminal_acts_on_and_keeps_printable_text(text: str) -> None:
    shown = safe_text(text)
    assert not [c for c in shown if unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert cell(text).plain == shown
    kept = "".join(c for c in text if unicodedata.category(c) not in UNSAFE_CATEGORIES)
    assert safe_text(kept) == kept
    line = json_line({"text": text})
    assert line.isascii()
    assert "\x7f" not in line
    assert "\n" not in line
    assert json.loads(line) == {"text": text}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x9b1m", "\\x9b1m"),
        ("\u202eevil", "\\u202eevil"),
        ("\U000e0041tag", "\\U000e0041tag"),
        ("[bold]ok[/]", "[bold]ok[/]"),
        ("naïve ünïcode ✓", "naïve ünïcode ✓"),
    ],
)
def test_safe_text_escapes_visibly(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


HOSTILE_LINK_TAIL = "\x1b]0;pwned\x07\x1b[2J\x08\x9b31m\u202e\x85forged"
"""Controls a source can put in the path of a next-page link (a URL keeps all but CR, LF, tab)."""


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_retrieve_poll_shows_a_hostile_next_page_link_escaped_on_a_terminal(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    """SECURITY.md: every command that prints stored data, `retrieve poll` among them, "goes
    through `retrieve_cli.terminal`": a control character is "shown as a visible escape".

    The source links its next page elsewhere, to a URL full of terminal controls: the run
    fails naming that URL, and `retrieve poll` prints the failure in a real pty with the
    controls escaped.
    """
    source_port = free_port()
    hostile_link = f"http://127.0.0.2:{free_port()}/next{HOSTILE_LINK_TAIL}"

    async def orders(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": 1}], "links": {"next": hostile_link}})

    app = web.Application()
    app.router.add_get("/orders", orders)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", source_port).start()
    scheduled = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "restock", "namespace": "shop"},
        "spec": {
            "application": "yourapp",
            "integrationId": "RESTOCK1",
            "schedule": {
                "cron": "0 0 31 2 *",  # never by itself: polled by hand below
                "source": {"http": {
                    "url": f"http://127.0.0.1:{source_port}/orders", "items": "data",
                    "idField": "id", "pagination": {"nextLink": "links.next"},
                }},
            },
        },
    }  # fmt: skip
    config = write_config(tmp_path / "config", "http://127.0.0.1:9", [scheduled])
    args = ["poll", "restock", "--config-dir", str(config),
            "--redis-url", private_redis_server.url]  # fmt: skip
    try:
        code, output = await asyncio.to_thread(run_in_pty, [*retrieve_command(), *args])
    finally:
        await runner.cleanup()

    assert code == 1, output
    acting = [c for c in output if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert acting == [], f"control characters reached the terminal: {acting!r}\n{output}"
    assert "retrieve poll restock: failed: the next page http://127.0.0.2:" in output
    assert "/next\\x1b]0;pwned\\x07\\x1b[2J\\x08\\x9b31m\\u202e\\x85forged is not on" in output
