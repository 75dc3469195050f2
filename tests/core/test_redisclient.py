"""The Redis URL chooses the client: parsing, the CRD pattern, the client each mode gets."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis, RedisCluster

from retrieve_core.models import RedisSpec
from retrieve_core.redisclient import (
    REDIS_URL_PATTERN,
    SentinelPrimary,
    Timeouts,
    connect_redis,
    is_redis_failure,
    parse_redis_url,
)
from tests.support.redis_faults import send_on_torn_down_connection
from tests.support.redis_server import RedisServer

ACCEPTED = [
    "redis://127.0.0.1:6379/0",
    "rediss://user:secret@redis.example.com:6380/2?ssl_cert_reqs=none",
    "unix:///run/redis.sock?db=1",
    "redis+cluster://10.0.0.1:7000",
    "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002/",
    "rediss+cluster://default:p%40ss@node-1:6379,node-2?ssl_ca_certs=/etc/ca.pem",
    "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster",
    "redis+sentinel://s1/mymaster/3",
    "rediss+sentinel://user:pw@[::1]:26380/primary/0?ssl_cert_reqs=required",
]

REFUSED = [
    "http://127.0.0.1:6379",
    "redis:/127.0.0.1",
    "redis+cluster://",
    "redis+cluster://h1:7000/3",  # a cluster has one database
    "redis+sentinel://s1:26379",  # no service
    "redis+sentinel://s1:26379/",
    "redis+sentinel://s1:26379/mymaster/db1",
    "redis+cluster://h1:70000",
    "redis+cluster://h1:port",
    "redis+cluster://h1:7000?socket_timeout=1",
    "redis+cluster://h1:7000?ssl_cert_reqs=maybe",
    "valkey+cluster://h1:7000",
]


@pytest.mark.unit
@pytest.mark.parametrize("url", ACCEPTED)
def test_the_spec_accepts_every_supported_scheme(url: str) -> None:
    assert RedisSpec(url=url).url == url
    assert re.match(REDIS_URL_PATTERN, url)


@pytest.mark.unit
@pytest.mark.parametrize("url", REFUSED)
def test_the_spec_refuses_other_urls_and_names_the_problem(url: str) -> None:
    with pytest.raises(ValidationError):
        RedisSpec(url=url)
    with pytest.raises(ValueError, match=r"Redis URL|host:port|option|ssl_cert_reqs"):
        parse_redis_url(url)


@pytest.mark.unit
def test_a_cluster_url_gives_its_seeds_credentials_and_tls() -> None:
    target = parse_redis_url("rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,node-3")
    assert target.mode == "cluster"
    assert target.tls
    assert (target.username, target.password) == ("app", "p@ss")
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("node-3", 6379))


@pytest.mark.unit
def test_a_sentinel_url_gives_its_sentinels_service_and_database() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1,s2:26380/mymaster/4")
    assert target.mode == "sentinel"
    assert not target.tls
    assert (target.username, target.password) == (None, "pw")
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db) == ("mymaster", 4)


@pytest.mark.unit
def test_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError, match="bad host:port") as raised:
        parse_redis_url("redis+cluster://user:hunter2@h1:99999")
    assert "hunter2" not in str(raised.value)
    assert "***" in str(raised.value)


@pytest.mark.unit
async def test_each_scheme_gets_its_client_with_the_same_timeouts() -> None:
    timeouts = Timeouts(socket=1.5, connect=0.5)
    standalone = connect_redis("redis://127.0.0.1:1/0", timeouts)
    cluster = connect_redis("redis+cluster://127.0.0.1:1,127.0.0.1:2", timeouts)
    sentinel = connect_redis("rediss+sentinel://u:p@127.0.0.1:1/svc/2", timeouts)
    try:
        assert type(standalone) is Redis
        assert isinstance(cluster, RedisCluster)
        assert isinstance(sentinel, SentinelPrimary)
        std_kwargs = standalone.connection_pool.connection_kwargs
        assert (std_kwargs["socket_timeout"], std_kwargs["socket_connect_timeout"]) == (1.5, 0.5)
        node_kwargs = cluster.nodes_manager.startup_nodes["127.0.0.1:1"].connection_kwargs
        assert (node_kwargs["socket_timeout"], node_kwargs["socket_connect_timeout"]) == (1.5, 0.5)
        primary_kwargs = sentinel.connection_pool.connection_kwargs
        assert primary_kwargs["socket_timeout"] == 1.5
        assert (primary_kwargs["username"], primary_kwargs["password"]) == ("u", "p")
        assert primary_kwargs["db"] == 2
        assert sentinel.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    finally:
        await standalone.aclose()
        await cluster.aclose()
        await sentinel.aclose()


@pytest.mark.redis
async def test_a_transport_error_redis_py_lets_out_counts_as_a_redis_failure(
    redis_server: RedisServer,
) -> None:
    with pytest.raises(AttributeError) as leaked:
        await send_on_torn_down_connection("127.0.0.1", redis_server.port)
    assert is_redis_failure(leaked.value)
    assert is_redis_failure(ConnectionError("refused"))
    assert is_redis_failure(TimeoutError())


@pytest.mark.unit
def test_the_same_errors_from_our_own_code_are_bugs_not_redis_failures() -> None:
    writer: Any = None
    with pytest.raises(AttributeError) as attribute_error:
        writer.writelines([])
    with pytest.raises(TypeError) as type_error:
        writer()
    assert not is_redis_failure(attribute_error.value)
    assert not is_redis_failure(type_error.value)
    assert not is_redis_failure(AttributeError("never raised"))
    assert not is_redis_failure(ValueError("bad input"))
