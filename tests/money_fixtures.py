"""The money scripts' test fixtures: each test runs on fakeredis (lupa) and on a real Valkey.

Imported by the modules that test the Lua money scripts directly (``test_credits_lua.py``,
``test_hold_swap.py``): fakeredis's Lua and its argument handling can differ from Valkey's.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis.asyncio as aioredis

from shared.credits import Credits


@pytest.fixture(params=["fakeredis", "valkey"])
async def redis(request):
    if request.param == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        client = aioredis.Redis(host="127.0.0.1", port=request.getfixturevalue("valkey_port"))
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def credits(redis) -> Credits:
    return Credits(redis)
