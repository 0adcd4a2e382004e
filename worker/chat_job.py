"""The chat job: one request, from the node queue to its gateway and the billing queue.

Outcomes and what they cost (ARCHITECTURE "Credits"):
  succeeded  -> charged the token cost
  cancelled  -> the client left; charged for what the provider produced
  failed     -> provider error (before or mid-stream), timeout, shutdown: refunded in full
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, AsyncIterator

import orjson
import structlog
from redis.exceptions import RedisError

from shared import relay
from shared.catalog import Model
from shared.metrics import JOB_DURATION, JOBS, QUEUE_WAIT, TOKENS, TTFT, UPSTREAM_ERRORS, labelled
from worker.chunks import ChunkBuilder
from worker.provider import Adapter, Delta, ProviderError
from worker.publisher import ReplyPublisher

if TYPE_CHECKING:
    from worker.node_worker import NodeWorker

log = structlog.get_logger()

RETRY_BUDGET_S = 8.0  # total time spent retrying before the first token
LONGEST_IN_PLACE_WAIT_S = 2.0  # an upstream asking for a longer pause gets its error passed on at once


async def stream_with_retries(adapter: Adapter, body: dict, model: Model, retries: int,
                             incremental: bool = True) -> AsyncIterator[Delta]:
    """Retry 429/5xx while nothing has been produced; never after output began."""
    attempt, spent = 0, 0.0
    while True:
        produced = False
        try:
            async for delta in adapter.stream(body, model, incremental):
                produced = produced or bool(delta.content or delta.reasoning or delta.tool_calls)
                yield delta
            return
        except ProviderError as exc:
            pause = max(0.2 * 2**attempt, exc.retry_after or 0.0)
            if (produced or not exc.retryable or attempt >= retries or spent + pause > RETRY_BUDGET_S
                    or (exc.retry_after or 0) > LONGEST_IN_PLACE_WAIT_S):
                raise  # the gateway may fail over to another node; else the client gets Retry-After
            log.info("upstream retry", code=exc.code, attempt=attempt + 1, pause_s=pause)
            await asyncio.sleep(pause)
            attempt, spent = attempt + 1, spent + pause


async def store_result(worker: NodeWorker, job: dict, final: bytes) -> None:
    for attempt in range(5):
        try:
            await worker.pool.set(job["result_key"], final, ex=int(job.get("result_ttl_s") or 86400))
            return
        except RedisError as exc:
            log.warning("batch result not stored, retrying", request_id=job["id"], error=str(exc))
            await asyncio.sleep(0.2 * 2**attempt)


async def run_chat(ctx: dict, job: dict) -> str:
    worker: NodeWorker = ctx["worker"]
    rid = job["id"]
    structlog.contextvars.bind_contextvars(request_id=job.get("trace_id"), completion_id=rid)
    model = worker.catalog.models[job["model"]]
    publisher = ReplyPublisher(worker.coalescer, job["reply_to"], rid, first=ctx.get("claimed", ()))
    publisher.announce(relay.frame(relay.STARTED, worker.worker_id.encode()))
    builder = ChunkBuilder(rid, model.id, job["created"])
    stream = job["stream"]
    started = time.monotonic()
    queue_ms = round(max(0.0, time.time() * 1000 - job["enqueued_ms"]), 2)  # enqueue to start (pickup)
    labelled(QUEUE_WAIT, job["node"]).observe(queue_ms / 1000)
    ttft_ms: int | None = None
    status, error = "succeeded", None
    try:
        if not stream:
            # One answer, one upstream call: a client that leaves meanwhile does not interrupt it
            # (the provider generates and bills the whole answer anyway); it is billed when it ends.
            worker.finish_on_cancel.add(rid)
        deltas = stream_with_retries(worker.adapter(job["node"]), job["body"], model, worker.settings.upstream_retries,
                                     incremental=stream)
        async with asyncio.timeout(worker.settings.request_timeout_s):
            async for delta in deltas:
                chunks = builder.add(delta)
                if chunks and ttft_ms is None:
                    ttft_ms = int((time.monotonic() - started) * 1000)
                if stream:
                    for chunk in chunks:
                        publisher.send(relay.frame(relay.CHUNK, orjson.dumps(chunk)))
        if builder.finish_reason is None:
            raise ProviderError(502, "The upstream stream ended before the answer was complete.",
                                "upstream_stream_broken")
    except ProviderError as exc:
        status, error = "failed", exc
    except TimeoutError:
        status, error = "failed", ProviderError(
            504, f"The request did not finish within {worker.settings.request_timeout_s:g}s.", "request_timeout")
    except asyncio.CancelledError:
        if worker.cancel_reasons.pop(rid, None) == "client":
            status = "cancelled"
        else:
            status, error = "failed", ProviderError(503, "The worker shut down before the answer was complete.",
                                                    "worker_shutdown", retryable=True, retry_after=1.0)
    except Exception as exc:  # a bug must still end the request and refund it
        log.exception("chat job crashed", request_id=rid)
        status, error = "failed", ProviderError(500, f"Internal error: {exc.__class__.__name__}", "internal_error")

    worker.finish_on_cancel.discard(rid)
    if worker.cancel_reasons.pop(rid, None) == "client" and status == "succeeded":
        status = "cancelled"  # the client left a non-stream request that still ran to its end
    usage = builder.usage
    billable = status in ("succeeded", "cancelled") and usage is not None
    charge = model.cost_micro(usage.prompt_tokens, usage.completion_tokens) if billable else 0
    frames = b""
    final = None
    if status == "succeeded":
        if stream:
            if job.get("include_usage"):
                frames += relay.frame(relay.CHUNK, orjson.dumps(builder.usage_chunk(charge)))
            frames += relay.frame(relay.DONE)
        else:
            final = relay.frame(relay.RESULT, orjson.dumps(builder.completion(charge)))
    elif error is not None:
        final = relay.error_frame(error.status, error.body(), error.retry_after)
    if final is not None and job.get("result_key"):
        # Batch lines: the answer outlives a lost reply (worker/batch.py), stored before it is billed.
        await store_result(worker, job, final)
    if final is not None:
        frames += final

    elapsed = time.monotonic() - started
    u = usage
    settlement = {
        "request_id": rid,
        "account_id": job["account_id"],
        "key_id": job["key_id"],
        "model": model.id,
        "node": job["node"],
        "status": status,
        "error_code": error.code if error else "",
        "finish_reason": builder.finish_reason or "",
        "stream": int(stream),
        "prompt_tokens": u.prompt_tokens if billable else 0,
        "completion_tokens": u.completion_tokens if billable else 0,
        "reasoning_tokens": u.reasoning_tokens if billable else 0,
        "cached_tokens": u.cached_tokens if billable else 0,
        "latency_ms": int(elapsed * 1000),
        "ttft_ms": ttft_ms if ttft_ms is not None else "",
        "queue_ms": int(queue_ms),
        "created": job["created"],
        "batch_id": job.get("batch_id", ""),
        "trace_id": job.get("trace_id", ""),
    }
    await worker.finish(publisher, frames, settlement)

    labelled(JOBS, job["node"], model.id, status).inc()
    labelled(JOB_DURATION, job["node"], model.id).observe(elapsed)
    if ttft_ms is not None:
        labelled(TTFT, job["node"], model.id).observe(ttft_ms / 1000)
    if error is not None:
        labelled(UPSTREAM_ERRORS, job["node"], error.code).inc()
    if billable:
        labelled(TOKENS, job["node"], model.id, "prompt").inc(usage.prompt_tokens)
        labelled(TOKENS, job["node"], model.id, "completion").inc(usage.completion_tokens)
        labelled(TOKENS, job["node"], model.id, "reasoning").inc(usage.reasoning_tokens)
    log.info("job", status=status, node=job["node"], model=model.id, ms=int(elapsed * 1000), ttft_ms=ttft_ms,
             queue_ms=queue_ms, error=error.code if error else None,
             prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0)
    return status

