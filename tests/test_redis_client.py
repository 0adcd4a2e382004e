"""The lean Redis connection (shared/redis_client.py) packs commands with hiredis' C packer: byte for byte
what redis-py's own Python packer sends, for any arguments, and redis-py's error for what neither takes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from shared.redis_client import LeanConnection, make_redis

STOCK, LEAN = Connection(), LeanConnection()
ARG = st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False), st.binary().map(memoryview))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(["SET", "EVALSHA", b"HSET", "CLIENT SETNAME", b"CONFIG GET"]), args=st.lists(ARG, max_size=40))
def test_the_c_packer_sends_what_redis_py_sends(name, args):
    assert LEAN.pack_command(name, *args) == [b"".join(STOCK.pack_command(name, *args))]


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}])
def test_what_redis_py_refuses_is_refused_alike(bad):
    with pytest.raises(DataError):
        STOCK.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        LEAN.pack_command("SET", "k", bad)


async def test_commands_and_pipelines_round_trip_through_valkey(valkey_port):
    redis = make_redis(f"redis://127.0.0.1:{valkey_port}")
    assert redis.connection_pool.connection_class is LeanConnection
    try:
        await redis.set("lean:s", "é" * 10_000)
        await redis.hset("lean:h", mapping={"i": 7, "f": 0.5, "b": b"\x00\xff"})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.get("lean:s").hgetall("lean:h").client_setname("lean")
            s, h, named = await pipe.execute()
        assert s.decode() == "é" * 10_000 and h == {b"i": b"7", b"f": b"0.5", b"b": b"\x00\xff"} and named
    finally:
        await redis.delete("lean:s", "lean:h")
        await redis.aclose()

