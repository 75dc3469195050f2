"""Property: a receiver serving several applications is no oracle of their integration ids.

Issue 12, defect 8: an unauthorized sender got 403 for another application's id and 404 for an
unknown one. For any ids hypothesis makes up (other applications' ids, unknown ids, in any Host),
a sender gets the same answer for an id that exists in an application that does not admit it as
for an id that exists nowhere: same status, same body (a 404 names the id sent, nothing else).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from retrieve_core.config import SecretStore
from retrieve_core.provider import ConfigProvider
from tests.receiver.conftest import ClientFactory, make_app, make_integration

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

# What a URL path segment carries unchanged (no `/`, no `%`, never `.` or `..` alone), plus
# a few letters a client percent-encodes: the id the receiver sees is the id sent.
integration_ids = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.~é✓", min_size=1, max_size=40
).filter(lambda i: i not in (".", ".."))
hosts = st.sampled_from(
    [
        None,
        "webhook-shop.retrievetl.com",
        "webhook-blog.retrievetl.com",
        "webhook-nowhere.retrievetl.com",
        "10.0.0.5:8080",
    ]
)


@dataclass
class Fleet:
    """One receiver app serving `shop` (admits 127.0.0.2) and `blog` (admits 127.0.0.4)."""

    provider: ConfigProvider
    senders: dict[str, TestClient[web.Request, web.Application]]

    def configure(self, shop_ids: list[str], blog_ids: list[str]) -> None:
        shop = make_app(
            "shop",
            namespace="oracle",
            allowed=["127.0.0.2"],
            integrations=[make_integration(i, app="shop") for i in shop_ids],
        )
        blog = make_app(
            "blog",
            namespace="oracle",
            allowed=["127.0.0.4"],
            integrations=[make_integration(i, app="blog") for i in blog_ids],
        )
        self.provider.update((shop, blog), SecretStore())


@pytest.fixture(params=[False, True], ids=["one-receiver-several-apps", "dev-mode"])
async def fleet(receiver_client: ClientFactory, request: pytest.FixtureRequest) -> Fleet:
    provider = ConfigProvider()
    provider.update((), SecretStore())
    senders = {
        source: await receiver_client(provider, source=source, dev_mode=request.param)
        for source in ("127.0.0.2", "127.0.0.3")  # shop's sender, nobody's sender
    }
    return Fleet(provider, senders)


async def answer(
    client: TestClient[web.Request, web.Application], integration_id: str, host: str | None
) -> tuple[int, Any]:
    headers = {"Host": host} if host is not None else {}
    response = await client.post(f"/integration/{integration_id}", json={}, headers=headers)
    body = await response.json()
    if body["error"] == f"Integration {integration_id} not found":  # it names the id it was sent
        body["error"] = "Integration <id> not found"
    return response.status, body


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(integration_ids, min_size=1, max_size=3, unique=True),
    st.lists(integration_ids, min_size=1, max_size=3, unique=True),
    integration_ids,
    hosts,
)
@example(["S1"], ["B1"], "NOPE", None)
@example(["S1"], ["B1"], "NOPE", "webhook-blog.retrievetl.com")
async def test_another_applications_id_is_answered_as_an_unknown_id(
    fleet: Fleet, shop_ids: list[str], blog_ids: list[str], unknown: str, host: str | None
) -> None:
    assume(not set(shop_ids) & set(blog_ids) and unknown not in shop_ids + blog_ids)
    fleet.configure(shop_ids, blog_ids)
    for client in fleet.senders.values():  # neither sender is admitted by blog
        for blog_id in blog_ids:
            assert await answer(client, blog_id, host) == await answer(client, unknown, host)
