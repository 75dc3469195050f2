"""Sends error notifications (`RetrieveApplication.spec.notifications`), best-effort.

A worker claims due messages (`retrieve_core.notifications.claim_due`) for the applications it
serves and sends each in a task of its own: a short retry (3 attempts within a few seconds, for
no answer, 5xx, 408 and 429), never on the path of a job. Every attempt is recorded (the
notification log stream, `retrieve_worker_notifications_total`); a failed one also reaches the
RetrieveApplication's Events through the operator's status poll.

As with destinations, redirects are not followed (a 3xx is a failure: headers from Secrets never
go to another address) and at most 64 KiB of an answer is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Final

import aiohttp

from retrieve_core.config import SecretStore
from retrieve_core.models import NotificationSpec
from retrieve_core.notifications import Notice, NotificationAttempt

from .destinations import USER_AGENT, is_retryable

log = logging.getLogger(__name__)

ATTEMPTS: Final = 3
TIMEOUT_SECONDS: Final = 5.0
RETRY_DELAY_SECONDS: Final = 0.5
READ_LIMIT_BYTES: Final = 64 * 1024


class MissingSecret(Exception):
    pass


def notification_headers(
    spec: NotificationSpec, namespace: str, secrets: SecretStore
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **spec.headers}
    for header in spec.headers_from:
        value = secrets.get(namespace, header.secret_key_ref)
        if value is None:
            ref = header.secret_key_ref
            raise MissingSecret(f"Secret {ref.name} has no key {ref.key} (header {header.name})")
        headers[header.name] = header.prefix + value.decode("utf-8", "replace").strip()
    return headers


class Notifier:
    """The notification HTTP client of one worker process (opened on first use)."""

    def __init__(
        self, *, attempts: int = ATTEMPTS, retry_delay: float = RETRY_DELAY_SECONDS
    ) -> None:
        self.attempts = attempts
        self.retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
            )
        return self._session

    async def send(
        self, spec: NotificationSpec, notice: Notice, secrets: SecretStore
    ) -> NotificationAttempt:
        """Sends one message; never raises for the target's failures (they are the result)."""
        status: int | None = None
        error = ""
        tries = 0
        try:
            headers = notification_headers(spec, notice.namespace, secrets)
        except MissingSecret as exc:
            return self._attempt(notice, None, str(exc), 0)
        body = notice.render(spec)
        while tries < self.attempts:
            tries += 1
            status, error = await self._post(spec.url, body, headers)
            if status is not None and 200 <= status < 300:
                return self._attempt(notice, status, "", tries)
            if not is_retryable(status):
                break
            if tries < self.attempts:
                await asyncio.sleep(self.retry_delay * 2 ** (tries - 1))
        return self._attempt(notice, status, error, tries)

    async def _post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, str]:
        try:
            async with self._open().post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as answer:
                await answer.content.read(READ_LIMIT_BYTES)  # the rest is never read
                if 200 <= answer.status < 300:
                    return answer.status, ""
                return answer.status, f"answered {answer.status}"
        except TimeoutError:
            return None, f"timed out after {TIMEOUT_SECONDS:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"unreachable: {type(exc).__name__}: {exc}"[:500]

    @staticmethod
    def _attempt(notice: Notice, status: int | None, error: str, tries: int) -> NotificationAttempt:
        ok = status is not None and 200 <= status < 300
        return NotificationAttempt(
            ts=time.time(),
            notification=notice.notification,
            event=notice.event.value,
            integration_id=notice.integration_id,
            integration=notice.integration,
            job_id=notice.job_id,
            count=notice.count,
            result="sent" if ok else "failed",
            http_status=status,
            error=error,
            attempts=tries,
        )

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
