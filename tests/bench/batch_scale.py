"""The batch scale run: a 50,000-line batch through the openai SDK on a running Stack.

    await run(stack, 50_000) -> {"lines", "seconds", "lines_per_s", "batch_worker_peak_rss_kb", ...}

Submits one batch of ``lines`` short prompts, watches it to completion,
streams the output file back and counts its lines, and reads the batch
worker's peak RSS (VmHWM) from /proc. Interactive latency (sequential
non-stream chat requests, 400 of each so p99 is not just the maximum) is
measured alone (half before the batch, half after it, after a warm-up) and
again while the batch runs.
Standalone: ``python -m tests.bench.batch_scale [LINES]`` starts its own stack.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import httpx
import orjson
from openai import AsyncOpenAI

URL = "/v1/chat/completions"
PROMPT = "Write one sentence about lighthouses. [[sim output_tokens=24 thinking_tokens=8]]"


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


async def interactive_latencies(base_url: str, key: str, count: int,
                                http: httpx.AsyncClient | None = None) -> list[float]:
    """Seconds per non-stream chat request, one at a time, on one kept-alive connection (pass ``http``
    to keep using the same one across calls: a new connection's first request is slower)."""
    body = orjson.dumps({"model": "gemini", "messages": [{"role": "user", "content": PROMPT}], "stream": False})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out = []
    own = http is None
    if own:
        http = httpx.AsyncClient(base_url=base_url, timeout=30)
    try:
        for _ in range(count):
            t = time.perf_counter()
            r = await http.post("/api/v1/chat/completions", content=body, headers=headers)
            out.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    finally:
        if own:
            await http.aclose()
    return out


def _pct(xs: list[float], q: int) -> float:
    return round(statistics.quantiles(xs, n=100)[q - 1] * 1000, 2) if len(xs) > 1 else 0.0


def _input(lines: int) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"line-{i}", "method": "POST", "url": URL,
                                  "body": {"model": "gemini", "messages": [{"role": "user", "content": PROMPT}]}})
                    + b"\n" for i in range(lines))


async def run(stack, lines: int = 50_000, probes: int = 400) -> dict:
    admin = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        account = (await http.post("/admin/accounts", headers=admin,
                                    json={"name": f"batch-bench-{uuid.uuid4().hex[:6]}",
                                          "credits": max(1000, lines // 20)})).json()
        key = (await http.post(f"/admin/accounts/{account['id']}/keys", headers=admin,
                               json={"name": "bench"})).json()["key"]
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=2, timeout=120)
    probe = httpx.AsyncClient(base_url=stack.base_url, timeout=30)  # one connection for every probe
    await interactive_latencies(stack.base_url, key, 50, probe)  # warm-up: connection, caches
    alone = await interactive_latencies(stack.base_url, key, probes // 2, probe)

    t0 = time.monotonic()
    f = await client.files.create(file=("batch.jsonl", _input(lines)), purpose="batch")
    upload_s = time.monotonic() - t0
    batch = await client.batches.create(input_file_id=f.id, endpoint=URL, completion_window="24h")
    started = None
    during: list[float] = []
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if batch.status == "in_progress" and started is None:
            started = time.monotonic()
        if started is not None and len(during) < probes:
            during += await interactive_latencies(stack.base_url, key, 20, probe)
        else:
            await asyncio.sleep(0.5)
        batch = await client.batches.retrieve(batch.id)
    finished = time.monotonic()
    run_s = finished - (started or t0)
    alone += await interactive_latencies(stack.base_url, key, probes - len(alone), probe)  # before and after
    await probe.aclose()

    output_lines = 0
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:
        async with http.stream("GET", f"/api/v1/files/{batch.output_file_id}/content",
                               headers={"Authorization": f"Bearer {key}"}) as resp:
            async for line in resp.aiter_lines():
                output_lines += bool(line.strip())
    return {
        "lines": lines,
        "status": batch.status,
        "completed": batch.request_counts.completed,
        "failed": batch.request_counts.failed,
        "output_lines": output_lines,
        "upload_s": round(upload_s, 2),
        "validate_and_run_s": round(finished - t0 - upload_s, 2),
        "seconds": round(run_s, 2),
        "lines_per_s": round(batch.request_counts.completed / run_s, 1) if run_s else 0.0,
        "credits_charged": batch.model_extra.get("credits_charged"),
        "batch_worker_peak_rss_kb": peak_rss_kb(stack.pid_of("batch")),
        "interactive_ms_alone": {"p50": _pct(alone, 50), "p99": _pct(alone, 99), "n": len(alone)},
        "interactive_ms_during_batch": {"p50": _pct(during, 50), "p99": _pct(during, 99), "n": len(during)},
    }


def main() -> None:
    import os
    import tempfile
    from pathlib import Path

    from apiinone.launcher import Stack, free_port
    from shared.settings import Settings

    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("GEMINI_API_KEY", None)
    with tempfile.TemporaryDirectory(prefix="apiinone-batch-bench-") as tmp:
        stack = Stack(Settings(host="127.0.0.1", port=free_port(), embedded_redis_port=free_port(), embedded_postgres_port=free_port(),
                               simulator_port=free_port(), data_dir=Path(tmp), redis_url=None, gemini_api_key=None,
                               admin_token="adm_bench_" + uuid.uuid4().hex), quiet=True)
        try:
            stack.start()
            print(orjson.dumps(asyncio.run(run(stack, lines)), option=orjson.OPT_INDENT_2).decode())
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
