"""The count job: a prompt's exact token count from the upstream's counter (Anthropic ``count_tokens``,
Gemini ``countTokens``), on the same queue, rate limits and settlement as a chat job.

It is free: admitted with a token hold (``shared.admission.count_hold``; the key's requests per minute
count it), it settles with no tokens and no charge, and its usage row says ``count_tokens``. Its one reply is a RESULT
``{"prompt_tokens": N}`` that each front end words its own way.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog

from shared import relay
from shared.contracts import ChatJob, JobKind, RequestStatus
from shared.metrics import JOBS, UPSTREAM_ERRORS, labelled
from worker.chat_job import Generation, JobOutcome, JobRuntime, build_settlement, job_model, start_job
from worker.chunks import ChunkBuilder
from worker.provider import ProviderError

log = structlog.get_logger()

FINISH = "count_tokens"  # the usage row's finish_reason of a count


async def _count(rt: JobRuntime, job: ChatJob) -> int:
    model = job_model(rt, job)
    adapter = rt.adapter(job["node"])
    async with asyncio.timeout(rt.settings.request_timeout_s):
        return await adapter.count(job["body"], model, native=job.get("kind") == JobKind.GEMINI_COUNT)


def _as_provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderError(504, "Counting tokens did not finish in time.", "request_timeout")
    if isinstance(exc, asyncio.CancelledError):
        return ProviderError(503, "The worker shut down while counting tokens.", "worker_shutdown", retryable=True,
                             retry_after=1.0)
    log.error("count job crashed", error=repr(exc))
    return ProviderError(500, f"Internal error: {exc.__class__.__name__}", "internal_error")


async def run_count(rt: JobRuntime, job: ChatJob, claimed: list = ()) -> JobOutcome:
    rid = job["id"]
    model, publisher, started, queue_ms = await start_job(rt, job, claimed)
    gen = Generation(ChunkBuilder(rid, model.id, job["created"]))
    gen.builder.finish_reason = FINISH
    try:
        tokens = await _count(rt, job)
        frames = relay.frame(relay.RESULT, orjson.dumps({"prompt_tokens": tokens}))
    except (Exception, asyncio.CancelledError) as exc:  # every end answers the client and settles
        error = _as_provider_error(exc)
        gen.status, gen.error = RequestStatus.FAILED, error
        labelled(UPSTREAM_ERRORS, job["node"], error.code).inc()
        frames = relay.error_frame(error.status, error.body(), error.retry_after)
    settlement = build_settlement(job, model, gen, False, int((time.monotonic() - started) * 1000), queue_ms)
    await rt.sink.finish(publisher, frames, settlement)
    labelled(JOBS, job["node"], model.id, gen.status).inc()
    log.info("count", status=gen.status, node=job["node"], model=model.id, api=job.get("api"),
             error=gen.error.code if gen.error else None)
    return JobOutcome(gen.status, gen.error, settlement, frames)
