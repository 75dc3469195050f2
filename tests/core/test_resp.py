"""The shared RESP packer: the bytes redis-py would send for the same command."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from retrieve_core.resp import bulk, command, evalsha_head

pytestmark = pytest.mark.unit

SHA = b"0123456789abcdef0123456789abcdef01234567"


def _redis_py(*args: bytes | int | str) -> bytes:
    return b"".join(Connection().pack_command(*args))


def test_an_evalsha_head_and_bulk_strings_are_the_call_redis_py_packs() -> None:
    keys = [b"{app}:jobs", "{app}:log:é".encode()]
    args = [b"", b"\r\n binary \x00", b"%d" % 3600]
    packed = evalsha_head(SHA, len(keys), len(args)) + b"".join(map(bulk, [*keys, *args]))
    assert packed == _redis_py("EVALSHA", SHA, len(keys), *keys, *args)


def test_a_call_without_keys_or_arguments_is_just_the_head() -> None:
    assert evalsha_head(SHA, 0, 0) == _redis_py("EVALSHA", SHA, 0)


def test_command_packs_any_command_like_redis_py() -> None:
    assert command(b"WAIT", b"1", b"100") == _redis_py("WAIT", 1, 100)
