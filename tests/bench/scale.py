"""Scale scenarios of the worker pools (issue 6): queue pickup, idle Redis traffic, thousands of long streams.

    python -m tests.bench.scale [--streams 2000]

Each starts its own stack (the `make run` class) and returns a dict of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx
from redis.asyncio import Redis

from apiinone.launcher import Stack, free_port
from shared.settings import Settings


LOADED_RATE = 150  # requests/s for "pickup under load"


ADMIN_TOKEN = "adm_bench_" + uuid.uuid4().hex  # long enough for the gateway's check (gateway/app.py)


def _stack(tmp: str, **kw) -> Stack:
    settings = Settings(port=free_port(), embedded_redis_port=free_port(), embedded_postgres_port=free_port(), simulator_port=free_port(),
                        data_dir=Path(tmp), redis_url=None, gemini_api_key=None, admin_token=ADMIN_TOKEN)
    return Stack(settings, quiet=True, **kw)


def _key(stack: Stack, credits: int = 10_000_000) -> str:
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    acct = httpx.post(stack.base_url + "/admin/accounts", json={"name": "scale", "credits": credits}, headers=h).json()
    return httpx.post(stack.base_url + f"/admin/accounts/{acct['id']}/keys", json={"name": "k"}, headers=h).json()["key"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _commands(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def pickup_and_idle(requests: int = 300, idle_s: float = 10.0) -> dict:
    """Enqueue -> job start, from the workers' own job log lines, and Redis commands/s with nothing to do."""
    with tempfile.TemporaryDirectory(prefix="apiinone-scale-") as tmp:
        stack = _stack(tmp)
        stack.start()
        try:
            key = _key(stack)
            redis = Redis.from_url(stack.settings.redis_url)
            await asyncio.sleep(2)  # every process settled into its idle loop
            before = await _commands(redis)
            await asyncio.sleep(idle_s)
            idle = _delta(await _commands(redis), before)
            workers = sum(1 for n in stack.procs if n.startswith("worker:"))
            body = {"model": "gemini", "messages": [{"role": "user", "content": "hi [[sim output_tokens=8]]"}]}
            async with aiohttp.ClientSession() as http:
                for i in range(requests):  # sequential: pickup at idle
                    async with http.post(stack.base_url + "/api/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {key}"}) as r:
                        await r.read()
                idle_waits = await _queue_waits(stack, requests)

                async def one() -> None:
                    async with http.post(stack.base_url + "/api/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {key}"}) as r:
                        await r.read()

                # Under load: an open loop at LOADED_RATE req/s (busy, not saturated: saturation queues
                # requests in every process, which is throughput, not pickup).
                tasks = []
                for _ in range(requests):
                    tasks.append(asyncio.create_task(one()))
                    await asyncio.sleep(1 / LOADED_RATE)
                await asyncio.gather(*tasks)
                loaded_waits = (await _queue_waits(stack, requests * 2))[-requests:]
            await redis.aclose()
        finally:
            stack.stop()
    total_idle = sum(idle.values()) / idle_s
    return {
        "pickup_idle_ms": {"p50": _pct(idle_waits, 50), "p99": _pct(idle_waits, 99)},
        "pickup_loaded_ms": {"p50": _pct(loaded_waits, 50), "p99": _pct(loaded_waits, 99), "rate": LOADED_RATE},
        "idle_redis_commands_per_s": round(total_idle, 1),
        "idle_redis_commands_per_s_per_worker_process": round(total_idle / max(1, workers), 1),
        "idle_commands": {k: round(v / idle_s, 2) for k, v in sorted(idle.items())},
    }


async def _queue_waits(stack: Stack, at_least: int) -> list[float]:
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in stack.log_path("worker:node62:0").read_text().splitlines()
                   if line.startswith("{")]
        lines = [r for r in records if r.get("event") == "job"]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return [float(j["queue_ms"]) for j in lines]
        await asyncio.sleep(0.2)


async def long_streams(streams: int = 2000, chunks: int = 50, delay_ms: int = 200) -> dict:
    """`streams` concurrent SSE streams through one gateway and one worker; errors, RSS over time, Redis cost."""
    with tempfile.TemporaryDirectory(prefix="apiinone-streams-") as tmp:
        stack = _stack(tmp, worker_concurrency=streams + 100, env={"APIINONE_MAX_QUEUE_DEPTH": str(streams * 2)})
        stack.start()
        try:
            key = _key(stack)
            redis = Redis.from_url(stack.settings.redis_url)
            body = {"model": "gemini", "stream": True, "messages": [{"role": "user", "content":
                    f"tell a long story [[sim output_tokens={chunks * 8} thinking_tokens=0 delay_ms={delay_ms}]]"}]}
            gw, wk = stack.pid_of("gateway:0"), stack.pid_of("worker:node62:0")
            rss: list[tuple[float, float, float]] = []
            errors: list[str] = []
            done = 0
            before = await _commands(redis)
            started = time.monotonic()

            async def one(http: aiohttp.ClientSession) -> None:
                nonlocal done
                try:
                    async with http.post(stack.base_url + "/api/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {key}"}) as r:
                        text = (await r.read()).decode()
                    if r.status != 200 or not text.rstrip().endswith("data: [DONE]"):
                        errors.append(f"{r.status}: {text[-200:]}")
                    else:
                        done += 1
                except Exception as exc:  # noqa: BLE001 - counted as an error of the scenario
                    errors.append(repr(exc))

            async def sample() -> None:
                while True:
                    rss.append((round(time.monotonic() - started, 1), _rss_mb(gw), _rss_mb(wk)))
                    await asyncio.sleep(2)

            sampler = asyncio.create_task(sample())
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=300)) as http:
                await asyncio.gather(*[one(http) for _ in range(streams)])
            sampler.cancel()
            elapsed = time.monotonic() - started
            await asyncio.sleep(2)  # settlements land
            spent = _delta(await _commands(redis), before)
            await redis.aclose()
        finally:
            stack.stop()
    publishes = spent.get("publish", 0)
    total = sum(spent.values())
    return {
        "streams": streams, "chunks_each": chunks, "delay_ms": delay_ms, "completed": done, "errors": len(errors),
        "first_errors": errors[:3], "wall_s": round(elapsed, 1),
        "rss_mb_gateway_peak": max(r[1] for r in rss), "rss_mb_worker_peak": max(r[2] for r in rss),
        "rss_mb_samples": rss,
        "redis_commands_per_stream": round(total / streams, 1),
        "redis_commands_per_stream_besides_publish": round((total - publishes) / streams, 1),
        "publishes_per_stream": round(publishes / streams, 1),
        "commands": spent,
    }


async def batch(lines: int = 50_000) -> dict:
    """A `lines`-line batch on its own stack (tests/bench/batch_scale.py): lines/s, peak RSS, interactive p99."""
    from tests.bench import batch_scale

    with tempfile.TemporaryDirectory(prefix="apiinone-batch-") as tmp:
        stack = _stack(tmp)
        stack.start()
        try:
            return await batch_scale.run(stack, lines)
        finally:
            stack.stop()


async def run_all(quick: bool = False, say=print) -> dict:
    """Every scale scenario, as `make bench` runs them (smaller with --quick)."""
    out = {}
    say("scale: queue pickup and idle Redis traffic")
    out["pickup"] = await pickup_and_idle(100 if quick else 300, 5 if quick else 10)
    streams = 300 if quick else 2000
    say(f"scale: {streams} concurrent long streams through one gateway and one worker")
    out["long_streams"] = await long_streams(streams)
    lines = 2000 if quick else 50_000
    say(f"scale: a {lines}-line batch")
    out["batch"] = await batch(lines)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args(argv)
    out = {"pickup": asyncio.run(pickup_and_idle()), "long_streams": asyncio.run(long_streams(args.streams))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
