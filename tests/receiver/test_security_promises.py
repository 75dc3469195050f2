"""SECURITY.md promises that had no test of their own (issue 12: every promise backed by one).

Each test names the promise it keeps and fails when the defence is taken away.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_core.config import SecretStore
from retrieve_core.logstore import LogStore
from retrieve_core.models import RewriteSpec, VerifySpec
from retrieve_core.sandbox import Sandbox, code_key
from retrieve_receiver import signatures
from retrieve_receiver.parsing import MAX_FORM_FIELDS, PayloadError, parse_form
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider
from tests.receiver.test_app import jobs
from tests.receiver.vectors import github_signature


@pytest.mark.redis
async def test_signature_headers_authorization_and_cookies_never_reach_a_job(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """Jobs: "Signature headers, `Authorization` and cookies are never copied into jobs", not even
    when the integration dedupes on one of them."""
    app = make_app(integrations=[make_integration("H1", dedupe={"header": "Cookie"})])
    client = await receiver_client(make_provider(app))
    sensitive = {
        "Authorization": "Bearer t",
        "Proxy-Authorization": "Basic eA==",
        "Cookie": "session=s",
        "X-Hub-Signature-256": "sha256=00",
        "X-Shopify-Hmac-Sha256": "AA==",
        "Stripe-Signature": "t=1,v1=00",
        "Webhook-Signature": "v1,AA==",
    }
    response = await client.post(
        "/integration/H1", json={}, headers={**sensitive, "X-GitHub-Event": "push"}
    )
    assert response.status == 200
    [job] = await jobs(redis_client, app.keys)
    assert job.headers.get("x-github-event") == "push"  # selected headers are copied
    assert not {name.lower() for name in sensitive} & set(job.headers)


@pytest.mark.redis
@pytest.mark.parametrize("length", [200, 5000])  # within the lean path's id grammar, and past it
async def test_a_long_unknown_id_is_echoed_and_logged_cut_to_128_characters(
    receiver_client: ClientFactory, redis_client: Redis, length: int
) -> None:
    """An id from the URL is echoed in the 404 and kept in its log record: a request line may
    be 8 KiB long, so both keep at most 128 characters of it."""
    app = make_app(integrations=[make_integration("Ab1")])
    client = await receiver_client(make_provider(app))
    long_id = "x" * length
    response = await client.post(f"/integration/{long_id}", json={})
    assert response.status == 404
    shown = "x" * 127 + "…"
    assert await response.json() == {"result": False, "error": f"Integration {shown} not found"}
    [record] = await LogStore(redis_client, app.keys).query()
    assert record.integration_id == shown


@pytest.mark.redis
async def test_a_generic_schemes_own_signature_header_never_reaches_a_job(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """SECURITY.md: a generic scheme's signature header (a name the user chose, not one of the
    known ones) is not copied into jobs either, even when the integration dedupes on it."""
    verify = {
        "preset": "generic", "secretRefs": [{"name": "s", "key": "k"}], "header": "X-Acme-Mac",
        "algorithm": "hmac-sha256", "encoding": "hex",
    }  # fmt: skip
    app = make_app(
        integrations=[make_integration("G1", verify=verify, dedupe={"header": "X-Acme-Mac"})]
    )
    secrets = SecretStore()
    secrets.put_secret(app.namespace, "s", {"k": b"acme-secret"})
    client = await receiver_client(make_provider(app, secrets=secrets))
    body = b'{"order": 1}'
    mac = hmac.new(b"acme-secret", body, hashlib.sha256).hexdigest()
    response = await client.post(
        "/integration/G1", data=body,
        headers={"X-Acme-Mac": mac, "Content-Type": "application/json", "X-Request-Id": "r1"},
    )  # fmt: skip
    assert response.status == 200, await response.text()
    [job] = await jobs(redis_client, app.keys)
    assert "x-acme-mac" not in job.headers
    assert mac not in json.dumps(job.headers)
    again = await client.post(
        "/integration/G1", data=body,
        headers={"X-Acme-Mac": mac, "Content-Type": "application/json"},
    )  # fmt: skip
    assert again.status == 200
    assert len(await jobs(redis_client, app.keys)) == 1  # deduped on the header all the same


@pytest.mark.redis
async def test_ids_are_matched_exactly_and_an_unknown_id_writes_only_its_log_record(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """Lookup: "Ids are matched exactly (no path normalisation, no file access); an unknown id
    creates no Redis keys except its bounded log record"."""
    app = make_app(integrations=[make_integration("Ab1")])
    client = await receiver_client(make_provider(app))
    before = {k async for k in redis_client.scan_iter(match=f"*{app.keys.tag}*")}
    statuses = {}
    for path in (
        "ab1",
        "AB1",
        "Ab1%20",
        "Ab1%2F",
        "x%2F..%2FAb1",
        "..%2F..%2Fetc%2Fpasswd",
    ):
        response = await client.post(f"/integration/{path}", json={})
        statuses[path] = response.status
    assert set(statuses.values()) == {404}, statuses
    created = {k async for k in redis_client.scan_iter(match=f"*{app.keys.tag}*")} - before
    records = {k for k in created if k.startswith(app.keys.log_record_prefix.encode())}
    # No counters: their keys would carry the id the sender chose.
    assert created - records <= {app.keys.log_index.encode()}
    assert len(records) == len(statuses)
    assert not await redis_client.exists(app.keys.jobs)


@pytest.mark.unit
def test_a_form_body_is_bounded_in_field_count() -> None:
    """Parsing: "Form bodies are bounded in field count": one field past the bound is a 400."""
    assert (
        len(parse_form(b"&".join(b"f%d=1" % n for n in range(MAX_FORM_FIELDS)))) == MAX_FORM_FIELDS
    )
    with pytest.raises(PayloadError) as refused:
        parse_form(b"&".join(b"f%d=1" % n for n in range(MAX_FORM_FIELDS + 1)))
    assert refused.value.message.startswith("Invalid JSON payload: ")


@pytest.mark.unit
def test_signatures_are_compared_in_constant_time_against_every_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compared "in constant time": `hmac.compare_digest`, and no early exit, so the time taken
    does not say which of the rotated secrets matched."""
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what `signatures` calls
    spec = VerifySpec.model_validate(
        {"preset": "github", "secretRefs": [{"name": "s", "key": "k"}]}
    )
    scheme = signatures.compile_scheme(spec, [b"first", b"second", b"third"])
    body = b'{"a": 1}'
    headers = {"X-Hub-Signature-256": github_signature(b"first", body)}
    assert signatures.verify(scheme, headers, body, time.time())
    assert len(compared) == 3  # the first secret matched; the other two were compared anyway


@pytest.mark.unit
async def test_globals_a_rewrite_sets_are_never_seen_by_another_integration() -> None:
    """Sandbox: "globals a function sets can be seen by its next job — never by another
    integration"."""
    code = (
        "const seen = globalThis.leaked; globalThis.leaked = jobData.job.data.data;"
        " return {jobStatus: 1, data: seen === undefined ? null : seen};"
    )
    spec = RewriteSpec(javascript=code)

    def job(payload: str) -> dict[str, Any]:
        return {"job": {"data": {"data": payload}}}

    async with Sandbox() as sandbox:
        assert (await sandbox.run(code_key("one", spec), spec, job("from one"))).data is None
        assert (await sandbox.run(code_key("one", spec), spec, job("again"))).data == "from one"
        assert (await sandbox.run(code_key("two", spec), spec, job("from two"))).data is None
