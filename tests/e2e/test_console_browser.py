"""The web console in a real headless Chromium, against a real `retrieve dev` (receiver + Redis).

Selenium drives Debian's `chromium` through Debian's `chromedriver` (both installed by
hack/setup.sh). The screenshot is saved to test-artifacts/console.png for the reader of CI runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from retrieve_cli.sink import Sink
from tests.receiver.dns_server import LoopbackDNS
from tests.support.processes import REPO, write_config
from tests.support.redis_server import RedisServer

from .conftest import EXTRA, DevServer
from .test_dev_mode import ORDER, post

pytestmark = pytest.mark.e2e

TOKEN = "console-test-token-7f3a"
SHOPIFY_ID = "507f1f77bcf86cd799439011"
FLAKY_ID = "FLAKY1"
ARTIFACT = REPO / "test-artifacts" / "console.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

FLAKY = {
    "apiVersion": "retrievetl.com/v1alpha1",
    "kind": "Integration",
    "metadata": {"name": "flaky-orders", "namespace": "shop"},
    "spec": {
        "application": "yourapp",
        "integrationId": FLAKY_ID,
        "destinations": [{"name": "sink", "http": {"url": "http://127.0.0.1:9/flaky"}}],
        "retry": {"maxAttempts": 2, "backoffSeconds": 0.2, "maxBackoffSeconds": 0.5},
    },
}

T = TypeVar("T")


@pytest.fixture
def console_server(
    tmp_path: Path, sink: Sink, private_redis_server: RedisServer, dns_server: LoopbackDNS
) -> Iterator[DevServer]:
    config = write_config(tmp_path / "config", sink.url, [*EXTRA, FLAKY])
    env = {
        "RETRIEVE_DNS_SERVERS": f"127.0.0.1:{dns_server.port}",
        "RETRIEVE_CONSOLE_TOKEN": TOKEN,
        "RETRIEVE_CONSOLE_SAMPLE_SECONDS": "0.5",
    }
    server = DevServer(config, private_redis_server.url, env).start()
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1500,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def admin_json(server: DevServer, path: str) -> Any:
    """An admin API answer; the log API, like the console, needs the token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


async def wait_for_status(server: DevServer, integration: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = await asyncio.to_thread(
            admin_json,
            server,
            f"/api/logs?namespace=shop&app=yourapp&integration={integration}&status={status}",
        )
        if data["records"]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {status} record for {integration}:\n{server.process.output()}")


def poll(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Retry `check` (the page re-renders every few seconds, so elements may go stale)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except WebDriverException as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def choose(driver: Any, select_id: str, visible_text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_visible_text(visible_text)


def log_rows(driver: Any) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [
        (str(row.get_attribute("data-status")), str(row.text))
        for row in driver.find_elements(By.CSS_SELECTOR, "#log-rows tr")
    ]


def open_console_and_check_overview(driver: Any, console: str) -> None:
    driver.get(f"{console}?token={TOKEN}")
    # The token went into a cookie and out of the address bar.
    assert "token=" not in driver.current_url
    overview = poll(
        lambda: (
            text_of(driver, "#applications")
            if "shopify-orders" in text_of(driver, "#applications")
            else None
        ),
        "the integrations table",
    )
    for name in ("shop/yourapp", "shopify-orders", "legacy-xml-orders", "flaky-orders"):
        assert name in overview
    assert f"https://webhook-yourapp.retrievetl.com/integration/{SHOPIFY_ID}" in overview
    assert f"https://webhook-yourapp.retrievetl.com/integration/{SHOPIFY_ID}/xml" in overview
    # Counters of the last hour: one accepted shopify order, one rejected legacy request.
    received = poll(
        lambda: text_of(driver, f'tr[data-integration="{SHOPIFY_ID}"] td.received').strip() or None,
        "the received counter",
    )
    assert received == "1"
    assert text_of(driver, 'tr[data-integration="ABC123"] td.rejected').strip() == "1"
    poll(lambda: "dead letters 1" in text_of(driver, "#applications"), "one dead letter")
    # The queue-depth chart has samples (the sampler runs every 0.5 s in this test).
    poll(lambda: "samples" in text_of(driver, "#queue-caption"), "the queue chart")
    assert driver.find_elements("css selector", "#queue-chart svg polyline")


def filter_and_open_event(driver: Any) -> None:
    choose(driver, "log-integration", "shop/yourapp: all integrations")
    choose(driver, "log-status", "rejected")
    rejected = poll(lambda: log_rows(driver), "rejected rows")
    assert {status for status, _ in rejected} == {"rejected"}
    assert any("isn't authorized on Retrieve" in text for _, text in rejected)

    choose(driver, "log-integration", "yourapp / flaky-orders")
    choose(driver, "log-status", "dead_letter")
    dead = poll(
        lambda: [r for r in log_rows(driver) if r[0] == "dead_letter"] or None, "dead letters"
    )
    assert len(dead) == 1

    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#log-rows tr").click()
    payload = poll(
        lambda: text_of(driver, "#event-payload") or None, "the event's payload", timeout=10
    )
    assert '"marker": "dead-letter-me"' in payload
    result = text_of(driver, "#event-result")
    assert "dead_letter" in result
    assert "attempts\n2" in result or "attempts 2" in result
    assert "500" in result  # the destination's answer, per attempt record


def replay_from_console(driver: Any) -> str:
    button = f'button.replay[data-integration="{FLAKY_ID}"]'
    poll(
        lambda: driver.execute_script(
            "const b = document.querySelector(arguments[0]);"
            "if (!b || b.disabled) return false; b.click(); return true;",
            button,
        ),
        "the replay button",
    )
    return poll(
        lambda: text_of(driver, "#notice") if "Replayed" in text_of(driver, "#notice") else None,
        "the replay notice",
    )


def screenshot(driver: Any) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACT))


async def test_console_shows_integrations_logs_and_replays_a_dead_letter_in_chromium(
    console_server: DevServer, sink: Sink, browser: Any
) -> None:
    base = console_server.url
    ok, _ = await post(f"{base}/integration/{SHOPIFY_ID}", json.dumps(ORDER).encode())
    assert ok == 200
    await sink.wait_for(1, "/orders")
    refused, _ = await post(f"{base}/integration/ABC123", b"{}", source="127.0.0.7")
    assert refused == 403
    sink.status = 500
    body = json.dumps({"marker": "dead-letter-me", "order": {"id": 7}}).encode()
    accepted, _ = await post(f"{base}/integration/{FLAKY_ID}", body)
    assert accepted == 200
    await wait_for_status(console_server, FLAKY_ID, "dead_letter")
    sink.status = 200

    console = f"http://127.0.0.1:{console_server.admin_port}/console/"
    # Selenium blocks: run it in a thread so this loop keeps serving the sink.
    await asyncio.to_thread(open_console_and_check_overview, browser, console)
    await asyncio.to_thread(filter_and_open_event, browser)
    await asyncio.to_thread(screenshot, browser)
    notice = await asyncio.to_thread(replay_from_console, browser)
    assert "Replayed 1 dead letter(s) of flaky-orders" in notice
    await sink.wait_for(1, "/flaky")
    assert sink.bodies("/flaky") == [{"marker": "dead-letter-me", "order": {"id": 7}}]
    await wait_for_status(console_server, FLAKY_ID, "succeeded")
    assert ARTIFACT.stat().st_size > 10_000


async def test_console_refuses_requests_without_the_token(console_server: DevServer) -> None:
    console = f"http://127.0.0.1:{console_server.admin_port}/console/"

    def status_of(request: urllib.request.Request) -> int:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert await asyncio.to_thread(status_of, urllib.request.Request(console)) == 401
    wrong = urllib.request.Request(
        f"{console}api/overview", headers={"Cookie": "retrieve_console=x"}
    )
    assert await asyncio.to_thread(status_of, wrong) == 401
    no_csrf_header = urllib.request.Request(
        f"{console}api/replay?integration={FLAKY_ID}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert await asyncio.to_thread(status_of, no_csrf_header) == 403


HOSTILE = (
    "<img src=x id=injected onerror=\"document.title='pwned'\">"
    "<script>document.title='pwned'</script>&amp;"
)


def hostile_rows_and_event(driver: Any, console: str) -> tuple[list[str], str, dict[str, Any]]:
    driver.get(f"{console}?token={TOKEN}")
    poll(lambda: "shopify-orders" in text_of(driver, "#applications"), "the integrations table")
    choose(driver, "log-integration", "shop/yourapp: all integrations")
    choose(driver, "log-status", "any")
    rows = poll(
        lambda: [t for _, t in log_rows(driver) if "<img" in t] or None, "the hostile id's row"
    )

    def open_event() -> str | None:  # the rows re-render every few seconds: click, then look
        driver.execute_script(
            "for (const row of document.querySelectorAll('#log-rows tr'))"
            " if (row.textContent.includes(arguments[0])) { row.click(); break; }",
            SHOPIFY_ID,
        )
        return text_of(driver, "#event-payload") or None

    payload = poll(open_event, "the hostile payload")
    dom = driver.execute_script(
        "return {title: document.title,"
        " injected: document.querySelectorAll('#injected, #injected2, #log-rows img,"
        " #event-detail img, #log-rows script, #event-detail script').length}"
    )
    return rows, payload, dom


async def test_what_senders_wrote_shows_as_text_in_chromium_never_as_markup(
    console_server: DevServer, browser: Any
) -> None:
    """docs/user-guide.md: the console shows payloads and sender-chosen ids as text: markup in
    them creates no element and runs nothing (every value goes in through `textContent`, and the
    CSP would block inline script besides)."""
    base = console_server.url
    body = json.dumps({"note": HOSTILE}).encode()
    accepted, _ = await post(f"{base}/integration/{SHOPIFY_ID}", body)
    assert accepted == 200
    unknown = urllib.parse.quote("<img src=x id=injected2>", safe="")
    missing, _ = await post(f"{base}/integration/{unknown}", b"{}")
    assert missing == 404

    console = f"http://127.0.0.1:{console_server.admin_port}/console/"
    rows, payload, dom = await asyncio.to_thread(hostile_rows_and_event, browser, console)
    assert any("<img src=x id=injected2>" in row for row in rows), rows  # the id, as text
    assert json.loads(payload) == {"note": HOSTILE}  # the payload, as text
    assert dom == {"title": "Retrieve console", "injected": 0}
