"""The chat job: one request, from the node queue to its relaying process and the billing queue.

Outcomes and what they cost (ARCHITECTURE "Credits"):
  succeeded  -> charged the token cost
  cancelled  -> the client left; charged for what the provider produced (a stream whose usage
                comes only at its end is read on for it: CancelRegistry)
  failed     -> provider error (before or mid-stream), timeout, shutdown: refunded in full
Completed or cancelled output is never free: without usage from the upstream it is billed by
estimate (worker/usage_estimate.py).

``run_chat`` takes what it needs as a ``JobRuntime`` (adapter, publisher's pipeline, settlement
sink, cancel registry, catalog, settings) and returns a ``JobOutcome``; the settlement is built by
the pure ``build_settlement``. The node worker (worker/node_worker.py) supplies the real runtime;
tests supply a fake adapter and fakeredis.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Protocol

import orjson
import structlog

from shared import relay
from shared.catalog import Catalog, Model
from shared.coalesce import Coalescer
from shared.contracts import BILLABLE, USAGE_ESTIMATED, Api, ChatJob, ErrorCode, JobKind, RequestStatus, Settlement
from shared.metrics import JOB_DURATION, JOBS, QUEUE_WAIT, TOKENS, TTFT, UPSTREAM_ERRORS, labelled
from shared.pricing import Charge, TokenCounts, price
from shared.settings import Settings
from worker.chunks import ChunkBuilder
from worker.hold_clamp import clamp_native, clamp_to_hold, job_multiplier
from worker.provider import Adapter, Delta, ProviderError, Usage
from worker.publisher import ReplyPublisher
from worker.usage_estimate import estimate_usage

log = structlog.get_logger()

RETRY_BUDGET_S = 8.0  # total time spent retrying before the first token
LONGEST_IN_PLACE_WAIT_S = 2.0  # an upstream asking for a longer pause gets its error passed on at once


class CancelRegistry:
    """The jobs whose clients left, and what leaving does to each kind:

    - a non-stream job is one upstream call the provider generates and bills whole: it runs to its
      end (``finish_on_cancel``);
    - a stream whose adapter sends running usage (Gemini) is interrupted at once: the last usage it
      read is what the provider produced;
    - a stream whose usage comes only at its end (OpenAI-compatible upstreams) drains (``drain``:
      request id -> seconds): it reads on, relaying nothing, until the upstream ends (its usage with
      it) or the seconds are up, then it is interrupted.
    """

    def __init__(self) -> None:
        self.client_left: set[str] = set()
        self.finish_on_cancel: set[str] = set()
        self.drain: dict[str, float] = {}
        self._drain_ends: dict[str, asyncio.TimerHandle] = {}

    def cancel(self, request_id: str, task: asyncio.Task | None) -> None:
        if task is None or task.done() or request_id in self.client_left:
            return
        self.client_left.add(request_id)
        if request_id in self.finish_on_cancel:
            return
        drain_s = self.drain.get(request_id)
        if drain_s is None:
            task.cancel()
        else:
            self._drain_ends[request_id] = asyncio.get_running_loop().call_later(drain_s, task.cancel)

    def settle_client_left(self, request_id: str) -> bool:
        """Whether the client left; forgets the job (a pending end of its drain included)."""
        self.finish_on_cancel.discard(request_id)
        self.drain.pop(request_id, None)
        if (drain_end := self._drain_ends.pop(request_id, None)) is not None:
            drain_end.cancel()
        if request_id in self.client_left:
            self.client_left.discard(request_id)
            return True
        return False


class SettlementSink(Protocol):
    async def finish(self, publisher: ReplyPublisher, frames: bytes, settlement: Settlement) -> None:
        """The last frames to the relaying process and the settlement to billing, in one round trip."""

    async def store_result(self, job: ChatJob, final: bytes) -> None:
        """A batch line's final reply, kept where its batch worker finds it after a lost reply."""


@dataclass
class JobRuntime:
    """What a chat job needs from the process running it."""

    catalog: Catalog
    settings: Settings
    worker_id: str
    adapter: Callable[[str], Adapter]  # node -> that node's adapter
    coalescer: Coalescer  # the worker's shared pipeline (publishes)
    sink: SettlementSink
    cancels: CancelRegistry = field(default_factory=CancelRegistry)


@dataclass
class JobOutcome:
    status: RequestStatus
    error: ProviderError | None
    settlement: Settlement
    frames: bytes  # the last frames published


@dataclass
class Generation:
    """What the upstream call produced, and how it ended."""

    builder: ChunkBuilder
    status: RequestStatus = RequestStatus.SUCCEEDED
    error: ProviderError | None = None
    ttft_ms: int | None = None
    usage_estimated: bool = False  # the upstream never said its usage (worker/usage_estimate.py)
    native_result: dict | None = None  # a native Gemini job: the upstream's last event (its one answer)


async def stream_with_retries(adapter: Adapter, body: dict, model: Model, retries: int,
                              incremental: bool = True, native: bool = False) -> AsyncIterator[Delta]:
    """Retry 429/5xx while nothing has been produced; never after output began. ``native``: the body is a
    native Gemini request, sent as is, and each delta carries the upstream's event (``Delta.raw``)."""
    attempt, spent = 0, 0.0
    while True:
        produced = False
        try:
            source = adapter.stream_native(body, model, incremental) if native else adapter.stream(body, model,
                                                                                                 incremental)
            async for delta in source:
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


def job_charge(job: ChatJob, model: Model, usage: Usage) -> Charge:
    """What the request costs: the one pricing function, with the job's multiplier (billing prices alike)."""
    return price(model.prices, job_multiplier(job),
                 TokenCounts(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens))


def build_settlement(job: ChatJob, model: Model, gen: Generation, billable: bool, latency_ms: int,
                     queue_ms: float) -> Settlement:
    """The settlement the billing worker prices and applies: a pure function of the job's end."""
    u = gen.builder.usage if billable else Usage()
    return {
        "request_id": job["id"], "account_id": job["account_id"], "key_id": job["key_id"], "model": model.id,
        "requested_model": job.get("requested_model") or model.id, "node": job["node"], "status": gen.status,
        "error_code": gen.error.code if gen.error else USAGE_ESTIMATED if gen.usage_estimated else "",
        "finish_reason": gen.builder.finish_reason or "", "stream": int(job["stream"]),
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "reasoning_tokens": u.reasoning_tokens, "cached_tokens": u.cached_tokens,
        "price_multiplier_ppm": job_multiplier(job), "price_version": job.get("price_version", ""),
        "latency_ms": latency_ms, "ttft_ms": gen.ttft_ms if gen.ttft_ms is not None else "",
        "queue_ms": int(queue_ms), "created": job["created"], "batch_id": job.get("batch_id", ""),
        "trace_id": job.get("trace_id", ""), "api": job.get("api", Api.CHAT),
    }


async def _relay(rt: JobRuntime, job: ChatJob, model: Model, adapter: Adapter, gen: Generation,
                 publisher: ReplyPublisher) -> None:
    """Read the upstream to its end, relaying its chunks while the client is there (after it left:
    reading on, relaying nothing, until the job is interrupted)."""
    rid, stream = job["id"], job["stream"]
    native = job.get("kind") == JobKind.GEMINI
    started = time.monotonic()
    body = clamp_native(job, model) if native else clamp_to_hold(job, model)
    deltas = stream_with_retries(adapter, body, model, rt.settings.upstream_retries, incremental=stream,
                                 native=native)
    async with asyncio.timeout(rt.settings.request_timeout_s):
        async for delta in deltas:
            chunks = gen.builder.add(delta)
            if chunks and gen.ttft_ms is None:
                gen.ttft_ms = int((time.monotonic() - started) * 1000)
            if native:  # the upstream's own events are the reply (the builder only keeps the account)
                gen.native_result = delta.raw
                chunks = [delta.raw] if delta.raw is not None else []
            if stream and rid not in rt.cancels.client_left:
                for chunk in chunks:
                    publisher.send(relay.frame(relay.CHUNK, orjson.dumps(chunk)))
    if gen.builder.finish_reason is None:
        raise ProviderError(502, "The upstream stream ended before the answer was complete.",
                            ErrorCode.UPSTREAM_STREAM_BROKEN)


async def _generate(rt: JobRuntime, job: ChatJob, model: Model, publisher: ReplyPublisher) -> Generation:
    """Call the upstream and relay its chunks; how it ended is in the result, never an exception."""
    rid, stream = job["id"], job["stream"]
    gen = Generation(ChunkBuilder(rid, model.id, job["created"]))
    try:
        adapter = rt.adapter(job["node"])
        if not stream:
            # One answer, one upstream call: a client that leaves meanwhile does not interrupt it
            # (the provider generates and bills the whole answer anyway); it is billed when it ends.
            rt.cancels.finish_on_cancel.add(rid)
        elif not adapter.running_usage:
            # The usage comes only at the end: a client that leaves does not stop the read (CancelRegistry).
            rt.cancels.drain[rid] = rt.settings.drain_after_cancel_s
        await _relay(rt, job, model, adapter, gen, publisher)
    except ProviderError as exc:
        gen.error = exc
    except TimeoutError:
        gen.error = ProviderError(504, f"The request did not finish within {rt.settings.request_timeout_s:g}s.",
                                  ErrorCode.REQUEST_TIMEOUT)
    except asyncio.CancelledError:
        if rid not in rt.cancels.client_left:
            gen.error = ProviderError(503, "The worker shut down before the answer was complete.",
                                      ErrorCode.WORKER_SHUTDOWN, retryable=True, retry_after=1.0)
    except Exception as exc:  # a bug must still end the request and refund it
        log.exception("chat job crashed", request_id=rid)
        gen.status, gen.error = RequestStatus.FAILED, ProviderError(
            500, f"Internal error: {exc.__class__.__name__}", ErrorCode.INTERNAL_ERROR)
    _conclude(gen, job, client_left=rt.cancels.settle_client_left(rid))
    return gen


def _conclude(gen: Generation, job: ChatJob, client_left: bool) -> None:
    """The status, and the usage when the upstream never said it (ARCHITECTURE "Credits").

    A stream whose client left is ``cancelled`` however its read ended (the upstream broke during
    the drain, the drain or the request timed out): what was delivered is billed. Otherwise an
    error refunds: a stream the upstream cut, our timeout, a shutdown, a bug.
    """
    if gen.status == RequestStatus.FAILED:  # a bug (internal_error): refunded whoever left
        return
    if client_left and (job["stream"] or gen.error is None):
        if gen.error is not None:
            log.info("upstream read ended after the client left", request_id=job["id"], code=gen.error.code)
        gen.status, gen.error = RequestStatus.CANCELLED, None
    elif gen.error is not None:
        gen.status = RequestStatus.FAILED
        return
    if gen.builder.usage is None and gen.builder.produced_output:
        gen.builder.usage, gen.usage_estimated = estimate_usage(job["body"], gen.builder), True


def final_frames(job: ChatJob, gen: Generation, charge_micro: int) -> tuple[bytes, bytes | None]:
    """(every last frame, the one that is the request's answer or error: kept for batch lines)."""
    frames, final = b"", None
    if gen.status == RequestStatus.SUCCEEDED:
        if job.get("kind") == JobKind.GEMINI:  # Gemini's events carry their own usageMetadata
            if job["stream"]:
                frames += relay.frame(relay.DONE)
            else:
                final = relay.frame(relay.RESULT, orjson.dumps(gen.native_result or {}))
        elif job["stream"]:
            if job.get("include_usage"):
                frames += relay.frame(relay.CHUNK, orjson.dumps(gen.builder.usage_chunk(charge_micro)))
            frames += relay.frame(relay.DONE)
        else:
            final = relay.frame(relay.RESULT, orjson.dumps(gen.builder.completion(charge_micro)))
    elif gen.error is not None:
        final = relay.error_frame(gen.error.status, gen.error.body(), gen.error.retry_after)
    return frames + (final or b""), final


def start_job(rt: JobRuntime, job: ChatJob, claimed: list) -> tuple[Model, ReplyPublisher, float, float]:
    """A claimed job begins: its log context, its model, its publisher (announcing the worker running it),
    when it started (monotonic) and how long it waited between enqueue and start (ms)."""
    rid = job["id"]
    structlog.contextvars.bind_contextvars(request_id=job.get("trace_id"), completion_id=rid)
    model = rt.catalog.models[job["model"]]  # first: a job for a model this worker lacks announces nothing
    publisher = ReplyPublisher(rt.coalescer, job["reply_to"], rid, first=claimed)
    publisher.announce(relay.frame(relay.STARTED, rt.worker_id.encode()))
    queue_ms = round(max(0.0, time.time() * 1000 - job["enqueued_ms"]), 2)  # enqueue to start (pickup)
    return model, publisher, time.monotonic(), queue_ms


async def run_chat(rt: JobRuntime, job: ChatJob, claimed: list = ()) -> JobOutcome:
    model, publisher, started, queue_ms = start_job(rt, job, claimed)
    labelled(QUEUE_WAIT, job["node"]).observe(queue_ms / 1000)

    gen = await _generate(rt, job, model, publisher)
    usage = gen.builder.usage
    billable = gen.status in BILLABLE and usage is not None
    charge = job_charge(job, model, usage).total_micro if billable else 0
    frames, final = final_frames(job, gen, charge)
    if final is not None and job.get("result_key"):
        await rt.sink.store_result(job, final)  # batch lines: the answer outlives a lost reply, stored before billing
    elapsed = time.monotonic() - started
    settlement = build_settlement(job, model, gen, billable, int(elapsed * 1000), queue_ms)
    await rt.sink.finish(publisher, frames, settlement)
    _observe(job, model, gen, billable, elapsed, queue_ms)
    return JobOutcome(gen.status, gen.error, settlement, frames)


def _observe(job: ChatJob, model: Model, gen: Generation, billable: bool, elapsed: float, queue_ms: float) -> None:
    node, usage, error = job["node"], gen.builder.usage, gen.error
    labelled(JOBS, node, model.id, gen.status).inc()
    labelled(JOB_DURATION, node, model.id).observe(elapsed)
    if gen.ttft_ms is not None:
        labelled(TTFT, node, model.id).observe(gen.ttft_ms / 1000)
    if error is not None:
        labelled(UPSTREAM_ERRORS, node, error.code).inc()
    if billable:
        labelled(TOKENS, node, model.id, "prompt").inc(usage.prompt_tokens)
        labelled(TOKENS, node, model.id, "completion").inc(usage.completion_tokens)
        labelled(TOKENS, node, model.id, "reasoning").inc(usage.reasoning_tokens)
    log.info("job", status=gen.status, node=node, model=model.id, api=job.get("api", Api.CHAT), ms=int(elapsed * 1000),
             ttft_ms=gen.ttft_ms,
             queue_ms=queue_ms, error=error.code if error else None,
             prompt_tokens=usage.prompt_tokens if usage else 0,
             completion_tokens=usage.completion_tokens if usage else 0)
