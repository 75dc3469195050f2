"""Fixtures of the receiver tests: configs built from the spec models, the real app factory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient
from yarl import URL

from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.connections import GuardedSite
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.provider import ConfigProvider
from retrieve_receiver.app import init_app
from retrieve_receiver.metrics import ReceiverMetrics
from retrieve_receiver.serving import public_site, stop_public_site
from retrieve_receiver.settings import ReceiverSettings
from tests.support.redis_server import RedisServer

ORDER_ID = "507f1f77bcf86cd799439011"


def make_integration(integration_id: str, app: str = "yourapp", **spec: Any) -> IntegrationConfig:
    return IntegrationConfig(
        id=integration_id,
        name=f"int-{integration_id.lower()}",
        spec=IntegrationSpec.model_validate({"application": app, **spec}),
    )


def make_app(
    name: str = "yourapp",
    *,
    namespace: str | None = None,
    allowed: Sequence[str] = ("127.0.0.1",),
    trusted: Sequence[str] = (),
    integrations: Sequence[IntegrationConfig] = (),
    **spec: Any,
) -> ApplicationConfig:
    return ApplicationConfig(
        namespace=namespace or f"ns-{uuid.uuid4().hex[:8]}",
        name=name,
        spec=RetrieveApplicationSpec.model_validate(
            {
                "webhook": {"enabled": True, "domain": "retrievetl.com"},
                "allowedList": list(allowed),
                "trustedProxies": list(trusted),
                **spec,
            }
        ),
        integrations=tuple(integrations),
    )


def make_provider(*apps: ApplicationConfig, secrets: SecretStore | None = None) -> ConfigProvider:
    provider = ConfigProvider()
    provider.update(tuple(apps), secrets or SecretStore())
    return provider


class ClientFactory(Protocol):
    def __call__(
        self,
        provider: ConfigProvider,
        *,
        source: str | None = None,
        redis_url: str | None = None,
        metrics: ReceiverMetrics | None = None,
        **settings: Any,
    ) -> Awaitable[TestClient[web.Request, web.Application]]: ...


class PublicPortServer(TestServer):
    """The app served the way `retrieve receiver` serves its public port (`public_site`: the
    connection guard, and the lean HTTP path unless the settings turn it off)."""

    _site: GuardedSite | None = None

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **_: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self.runner = runner
        await runner.setup()
        self._site = site = public_site(runner, self.host, 0)
        await site.start()
        self.port = site.bound_port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._site is not None and not self.closed:
            await stop_public_site(self._site, 5)
        await super().close()


@pytest.fixture(params=["lean", "aiohttp"])
def receiver_client(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> ClientFactory:
    """A test client of the real app on the public port's site; `source` binds the client
    socket to that address. Every test runs twice: with the lean HTTP path (as deployed) and
    with aiohttp alone (`RETRIEVE_LEAN_HTTP=0`)."""
    lean_http = request.param == "lean"

    async def make(
        provider: ConfigProvider,
        *,
        source: str | None = None,
        redis_url: str | None = None,
        metrics: ReceiverMetrics | None = None,
        **settings: Any,
    ) -> TestClient[web.Request, web.Application]:
        settings.setdefault("lean_http", lean_http)
        # Refused requests' records are best-effort within 0.5 s when deployed; the tests that
        # read them back must not lose one to a loaded machine's slow fsync.
        settings.setdefault("log_write_timeout", 10.0)
        receiver_settings = ReceiverSettings(redis_url=redis_url or redis_server.url, **settings)
        app = init_app(receiver_settings, provider, metrics=metrics)
        kwargs: dict[str, Any] = {}
        if source is not None:
            kwargs["connector"] = aiohttp.TCPConnector(local_addr=(source, 0))
        client: Any = await aiohttp_client(PublicPortServer(app), **kwargs)
        return cast("TestClient[web.Request, web.Application]", client)

    return make


AsyncFactory = Callable[..., Awaitable[Any]]
