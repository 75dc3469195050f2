"""SECURITY.md, "Secrets": their values never appear in a status or an event.

The operator's only read of a Secret (`KubeApi.secret_keys`) keeps its key names; statuses,
conditions and events are built from those (`plan`, `notifyevents`), so no value can reach them.
Here against an API server on loopback answering a Secret with values in `data` and `stringData`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import kopf
import pytest
from aiohttp import web

from retrieve_operator.kube import KubeApi
from tests.support.ports import free_port

pytestmark = pytest.mark.unit

VALUE = "s3cr3t-value-never-kept"


@pytest.fixture
async def api_server() -> AsyncIterator[str]:
    async def secret(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": request.match_info["name"], "namespace": "shop"},
                "data": {"secret": base64.b64encode(VALUE.encode()).decode()},
                "stringData": {"token": VALUE},
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/shop/secrets/{name}", secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_operator_reads_a_secrets_key_names_and_never_its_values(api_server: str) -> None:
    api = KubeApi(kopf.ConnectionInfo(server=api_server, insecure=True))
    try:
        keys = await api.secret_keys("shop", "hmac")
    finally:
        await api.close()
    assert keys == frozenset({"secret", "token"})
    assert VALUE not in repr(keys)
