"""The record's scenario (issue 16): bounded Redis memory, archiver lag, history pages on a big account.

    python -m tests.bench.record [--requests 100000] [--rows 1000000]

1. ``--requests`` chat requests through the real path (gateway, worker, billing, archiver): Redis
   ``used_memory`` before and after (once the archiver has caught up), Postgres' usage rows, the
   archiver's lag sampled while the load runs (now minus the newest archived row), and the CPU
   seconds of the request path's processes, the archiver and Postgres, apart.
2. ``--rows`` usage rows for one account through the archiver's insert path (worker/archiver/rows.py),
   then ``/billing/usage`` p50/p99: the first page, by key, by model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from shared.db.database import Database
from tests.bench.scale import _key, _pct, _stack
from worker.archiver.rows import insert_usage

CONCURRENCY = 64
BODY = {"model": "gemini", "messages": [{"role": "user", "content": "hi [[sim output_tokens=8 thinking_tokens=0]]"}]}


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children still alive (Postgres' backends)."""
    total = 0.0
    for p in [pid] + [int(c.parent.name) for c in Path("/proc").glob("[0-9]*/stat") if _ppid(c) == pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            pass
    return total


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


async def _load(base: str, key: str, n: int) -> float:
    sent = 0
    started = time.monotonic()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async def one_lane() -> None:
            nonlocal sent
            while sent < n:
                sent += 1
                async with http.post(base + "/api/v1/chat/completions", json=BODY) as r:
                    await r.read()
        await asyncio.gather(*(one_lane() for _ in range(CONCURRENCY)))
    return time.monotonic() - started


async def _sample_lag(db: Database, account_id: str, until: asyncio.Event, lags: list[float]) -> None:
    """Now minus the newest archived row, sampled from the first row of the load on (before it the
    newest row is the warm-up's, as old as the pause)."""
    started_ms = time.time() * 1000
    while not until.is_set():
        newest = await db.fetchval("SELECT max(sid_ms) FROM usage WHERE account_id = $1", account_id)
        if newest and newest >= started_ms:
            lags.append(max(0.0, time.time() - newest / 1000))
        await asyncio.sleep(0.1)


async def memory_and_lag(requests: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="apiinone-record-") as tmp:
        stack = _stack(tmp, worker_concurrency=CONCURRENCY * 2)
        stack.start()
        try:
            key = _key(stack, credits=100_000_000)
            redis = Redis.from_url(stack.settings.redis_url)
            db = Database(stack.settings.database_url)
            account_id = (await db.fetchrow("SELECT id FROM accounts ORDER BY created DESC LIMIT 1"))["id"]
            await _load(stack.base_url, key, 200)  # warm: scripts loaded, pools open
            await asyncio.sleep(2)
            before = (await redis.info("memory"))["used_memory"]
            roles = {"request path": [p.pid for n, p in stack.procs.items() if n.split(":")[0] in
                                      ("gateway", "worker", "billing", "valkey")],
                     "archiver": [stack.pid_of("archiver")]}
            cpu0 = {r: sum(_cpu_s(p) for p in pids) for r, pids in roles.items()}
            pg = [int(c.parent.name) for c in Path("/proc").glob("[0-9]*/stat")
                  if "postgres" in Path(c.parent, "cmdline").read_bytes().decode(errors="replace")
                  and stack.settings.database_url.rsplit(":", 1)[-1].split("/")[0] in
                  Path(c.parent, "cmdline").read_bytes().decode(errors="replace")]
            pg0 = sum(_cpu_s(p) for p in pg)
            lags: list[float] = []
            done = asyncio.Event()
            sampler = asyncio.create_task(_sample_lag(db, account_id, done, lags))
            elapsed = await _load(stack.base_url, key, requests)
            deadline = time.monotonic() + 120
            while await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", account_id) < requests + 200:
                assert time.monotonic() < deadline, "the archiver did not catch up"
                await asyncio.sleep(0.2)
            done.set()
            await sampler
            cpu = {r: round(sum(_cpu_s(p) for p in pids) - cpu0[r], 2) for r, pids in roles.items()}
            cpu["postgres"] = round(sum(_cpu_s(p) for p in pg) - pg0, 2)
            await asyncio.sleep(1)
            after = (await redis.info("memory"))["used_memory"]
            rows = await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", account_id)
            await db.close()
            await redis.aclose()
        finally:
            stack.stop()
    return {"requests": requests, "throughput_rps": round(requests / elapsed, 1),
            "redis_used_memory_delta_mb": round((after - before) / 2**20, 2), "postgres_usage_rows": rows,
            "archiver_lag_s": {"p50": round(_pct(lags, 50), 3), "p99": round(_pct(lags, 99), 3)},
            "cpu_s": cpu}


async def history_pages(rows: int, samples: int = 200) -> dict:
    with tempfile.TemporaryDirectory(prefix="apiinone-history-") as tmp:
        stack = _stack(tmp)
        stack.start()
        try:
            key = _key(stack)
            db = Database(stack.settings.database_url)
            account_id = (await db.fetchrow("SELECT id FROM accounts ORDER BY created DESC LIMIT 1"))["id"]
            keys_, models = [f"key_{i:02d}" for i in range(20)], ["gemini", "gemini-pro", "gemini-lite"]
            now_ms = int(time.time() * 1000) - rows
            for start in range(0, rows, 10_000):
                batch = []
                for i in range(start, min(rows, start + 10_000)):
                    k, m = random.choice(keys_), random.choice(models)
                    fields = {"request_id": f"req_{i}", "model": m, "key_id": k, "status": "succeeded",
                              "prompt_tokens": "12", "completion_tokens": "30", "charged_micro": "5000"}
                    batch.append((account_id, f"req_{i}", "succeeded", now_ms + i, 0, k, m, 5000,
                                  json.dumps(fields)))
                async with db.transaction() as conn:
                    await insert_usage(conn, batch)
            await db.execute("ANALYZE usage")
            out = {}
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
                for name, params in (("first_page", {}), ("by_key", {"key": keys_[3]}),
                                     ("by_model", {"model": models[1]})):
                    times = []
                    for _ in range(samples):
                        t = time.perf_counter()
                        async with http.get(stack.base_url + "/billing/usage", params=params) as r:
                            assert r.status == 200 and len((await r.json())["data"]) == 20
                        times.append((time.perf_counter() - t) * 1000)
                    out[name] = {"p50_ms": round(_pct(times, 50), 2), "p99_ms": round(_pct(times, 99), 2)}
            await db.close()
        finally:
            stack.stop()
    return {"rows": rows, **out}


async def main(requests: int, rows: int) -> dict:
    return {"memory_and_lag": await memory_and_lag(requests), "history_pages": await history_pages(rows)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--rows", type=int, default=1_000_000)
    a = p.parse_args()
    print(json.dumps(asyncio.run(main(a.requests, a.rows)), indent=2))
