"""Fixtures of the receiver tests: configs built from the spec models, the real app factory."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.provider import ConfigProvider
from retrieve_receiver.app import init_app
from retrieve_receiver.metrics import ReceiverMetrics
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


@pytest.fixture
def receiver_client(aiohttp_client: AiohttpClient, redis_server: RedisServer) -> ClientFactory:
    """A test client of the real app; `source` binds the client socket to that address."""

    async def make(
        provider: ConfigProvider,
        *,
        source: str | None = None,
        redis_url: str | None = None,
        metrics: ReceiverMetrics | None = None,
        **settings: Any,
    ) -> TestClient[web.Request, web.Application]:
        receiver_settings = ReceiverSettings(redis_url=redis_url or redis_server.url, **settings)
        app = init_app(receiver_settings, provider, metrics=metrics)
        kwargs: dict[str, Any] = {}
        if source is not None:
            kwargs["connector"] = aiohttp.TCPConnector(local_addr=(source, 0))
        return await aiohttp_client(app, **kwargs)

    return make


AsyncFactory = Callable[..., Awaitable[Any]]
