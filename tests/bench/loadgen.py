"""The one load generator every target gets: aiohttp client, keep-alive, N closed loops.

A scenario runs ``concurrency`` loops, each sending one request after the other
on its own kept-alive connection: a warm-up (not counted; at least ``warmup_s``
and until every loop has finished one request, so a slow target is in its
steady state) and then a measurement window of ``duration_s``. What is reported is what finished inside
the window: throughput = completions in the window / window length, latencies
of those completions, and the CPU the target's processes used over exactly the
same window (sampled by the ``on_window`` callbacks). When the window closes the
loops stop starting requests and the ones in flight are allowed to finish (they
are not counted), so no target is left with half-read streams or cancelled
jobs that would bleed into the next scenario.

Per request it records:
  ttfb   time to the response headers
  ttft   streams: time to the first event that carries generated text (the
         ``first_token`` marker of the target); non-stream: time to the whole body
  total  time to the end of the body
and checks the answer is complete (status 200 and the target's ``done`` marker
in the body), otherwise it is an error with a short reason.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request against one target, replayed identically by every loop."""

    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    done: bytes  # must appear in a complete answer (streams: in some event, e.g. the finish reason)
    first_token: re.Pattern[bytes] | None = None  # streams: the first event with generated text


@dataclass
class Sample:
    start: float
    ttfb: float
    ttft: float
    total: float
    end: float
    nbytes: int


@dataclass
class LoadResult:
    concurrency: int
    window_s: float
    samples: list[Sample] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # reason -> count, inside the window
    errors_outside: int = 0  # warm-up and drain
    started: int = 0
    drained_timeout: int = 0  # requests still running when the drain deadline passed (cancelled)
    warmup_s: float = 0.0  # how long the warm-up really took

    @property
    def completed(self) -> int:
        return len(self.samples)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.completed / self.window_s if self.window_s else 0.0


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


class _Failure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _one(session: aiohttp.ClientSession, spec: RequestSpec, timeout: aiohttp.ClientTimeout) -> Sample:
    t0 = time.perf_counter()
    ttft = None
    nbytes = 0
    async with session.post(spec.url, data=spec.body, headers=spec.headers, timeout=timeout) as resp:
        t_head = time.perf_counter()
        if resp.status != 200:
            body = await resp.read()
            raise _Failure(f"HTTP {resp.status}: {body[:160]!r}")
        if spec.stream:
            tail = b""
            pattern = spec.first_token
            done = False
            async for data in resp.content.iter_any():
                nbytes += len(data)
                window = tail + data  # a marker may straddle two reads
                if ttft is None and pattern is not None and pattern.search(window):
                    ttft = time.perf_counter()
                if not done and spec.done in window:
                    done = True
                tail = window[-64:]
            if not done:
                raise _Failure(f"stream ended without {spec.done.decode()}; tail {tail!r}")
        else:
            body = await resp.read()
            nbytes = len(body)
            if spec.done not in body:
                raise _Failure(f"incomplete body {body[:160]!r}")
    t_end = time.perf_counter()
    if ttft is None:
        ttft = t_end
    return Sample(start=t0, ttfb=t_head - t0, ttft=ttft - t0, total=t_end - t0, end=t_end, nbytes=nbytes)


async def probe(spec: RequestSpec, timeout_s: float = 30.0) -> str | None:
    """One request; None if the answer is complete (and, for streams, carries a first-token event), else why not."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession() as session:
            sample = await _one(session, spec, timeout)
    except _Failure as exc:
        return exc.reason
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    if spec.stream and sample.ttft >= sample.total:
        return "the stream carried no event with generated text"
    return None


async def run_load(spec: RequestSpec, concurrency: int, duration_s: float, warmup_s: float,
                   on_window: Callable[[str], Awaitable[None] | None] | None = None,
                   request_timeout_s: float = 60.0, drain_timeout_s: float = 60.0,
                   max_warmup_s: float = 30.0) -> LoadResult:
    """Closed-loop load: ``concurrency`` loops, a warm-up, then a ``duration_s`` window.

    The warm-up lasts ``warmup_s`` and, beyond that, until as many requests
    have ended as there are loops (a slow target at concurrency 256 must reach
    its steady state before the window opens; at most ``max_warmup_s``).
    ``on_window("start")`` and ``on_window("end")`` are called at the window's
    edges (CPU samples are taken there).
    """
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False,
                                     enable_cleanup_closed=True, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=10)
    result = LoadResult(concurrency=concurrency, window_s=duration_s)
    stop = asyncio.Event()
    state: dict[str, float | None] = {"t0": None, "t1": None}
    ended = [0]  # requests that ended (answered or failed): the warm-up waits for one per loop

    def in_window(t_end: float) -> bool:
        t0, t1 = state["t0"], state["t1"]
        return t0 is not None and t_end >= t0 and (t1 is None or t_end <= t1)

    def record_error(reason: str) -> None:
        ended[0] += 1
        if in_window(time.perf_counter()):
            result.errors[reason] += 1
        else:
            result.errors_outside += 1

    async def loop() -> None:
        while not stop.is_set():
            result.started += 1
            try:
                sample = await _one(session, spec, timeout)
            except _Failure as exc:
                record_error(exc.reason)
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                record_error(f"{exc.__class__.__name__}: {str(exc)[:120]}")
                await asyncio.sleep(0.01)  # a refused connection must not spin
                continue
            ended[0] += 1
            if in_window(sample.end):
                result.samples.append(sample)

    async def edge(name: str) -> None:
        if on_window is not None:
            maybe = on_window(name)
            if asyncio.iscoroutine(maybe):
                await maybe

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
        try:
            t_begin = time.perf_counter()
            await asyncio.sleep(warmup_s)
            while ended[0] < concurrency and time.perf_counter() - t_begin < max_warmup_s:
                await asyncio.sleep(0.05)
            result.warmup_s = time.perf_counter() - t_begin
            await edge("start")
            state["t0"] = time.perf_counter()
            await asyncio.sleep(duration_s)
            state["t1"] = time.perf_counter()
            await edge("end")
            result.window_s = state["t1"] - state["t0"]
            stop.set()
            _done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            result.drained_timeout = len(pending)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return result


def summarize(result: LoadResult) -> dict:
    """Figures of one run, times in milliseconds."""
    ms = 1000.0
    ttfb = [s.ttfb * ms for s in result.samples]
    ttft = [s.ttft * ms for s in result.samples]
    total = [s.total * ms for s in result.samples]
    return {
        "concurrency": result.concurrency,
        "window_s": round(result.window_s, 3),
        "warmup_s": round(result.warmup_s, 2),
        "completed": result.completed,
        "errors": result.error_count,
        "error_reasons": dict(result.errors.most_common(5)),
        "errors_outside_window": result.errors_outside,
        "drain_timeouts": result.drained_timeout,
        "rps": round(result.throughput, 1),
        "ttfb_p50_ms": _r(percentile(ttfb, 50)),
        "ttft_p50_ms": _r(percentile(ttft, 50)),
        "ttft_p99_ms": _r(percentile(ttft, 99)),
        "total_p50_ms": _r(percentile(total, 50)),
        "total_p99_ms": _r(percentile(total, 99)),
        "bytes_per_response": round(sum(s.nbytes for s in result.samples) / result.completed) if result.completed
        else None,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
