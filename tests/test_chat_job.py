"""The chat job runtime in process: a fake adapter, fakeredis for the publishes, a recording sink.

The real-process suite (test_chat_path, test_worker_pools, test_credits_e2e) drives the same
code through the node worker; these tests reach the outcomes that are hard to provoke there
(each ending's status, charge and frames) in milliseconds.
"""

from __future__ import annotations

import asyncio

import fakeredis
import orjson
import pytest

from shared import relay
from shared.catalog import get_catalog
from shared.coalesce import Coalescer
from shared.contracts import PRICE_FIELDS, USAGE_FIELDS, RequestStatus
from shared.settings import Settings
from worker.chat_job import CancelRegistry, JobRuntime, build_settlement, run_chat
from worker.provider import Delta, ProviderError, Usage

CHANNEL = "aio:gw:test"


class FakeAdapter:
    """Yields the given deltas (with a pause between them), then raises ``fail`` if given.

    Its usage counts as running (like Gemini's): a client that leaves interrupts it at once.
    """

    running_usage = True

    def __init__(self, deltas: list[Delta], fail: ProviderError | None = None, pause_s: float = 0.0) -> None:
        self.deltas, self.fail, self.pause_s = deltas, fail, pause_s
        self.calls = 0

    async def stream(self, body, model, incremental=True):
        self.calls += 1
        for d in self.deltas:
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            yield d
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        pass


class RecordingSink:
    def __init__(self) -> None:
        self.settlements: list[dict] = []
        self.results: dict[str, bytes] = {}
        self.frames: list[bytes] = []

    async def finish(self, publisher, frames, settlement) -> None:
        await publisher.close(frames)
        self.frames.append(frames)
        self.settlements.append(settlement)

    async def store_result(self, job, final) -> None:
        self.results[job["result_key"]] = final


def answer(tokens_out: int = 12, reasoning: int = 4) -> list[Delta]:
    usage = Usage(prompt_tokens=20, completion_tokens=tokens_out, reasoning_tokens=reasoning)
    return [Delta(reasoning="thinking"), Delta(content="Hello"), Delta(content=" world", finish_reason="stop",
                                                                        usage=usage)]


@pytest.fixture
async def redis():
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def runtime(redis, adapter, settings: Settings | None = None) -> JobRuntime:
    settings = settings or Settings(redis_url="redis://unused", request_timeout_s=5, upstream_retries=0)
    return JobRuntime(get_catalog(), settings, "worker-test", lambda node: adapter, Coalescer(redis),
                      RecordingSink(), CancelRegistry())


def job(stream: bool, **extra) -> dict:
    return {"id": "chatcmpl-test" + str(stream), "account_id": "acct_x", "key_id": "key_x", "model": "gemini",
            "node": "node62", "reply_to": CHANNEL, "trace_id": "req_1", "stream": stream, "include_usage": True,
            "body": {"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}, "created": 1,
            "enqueued_ms": 0, **extra}


@pytest.fixture
async def frames_seen(redis):
    """Every frame published on the job's channel, in order, read back through a subscription."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    async def read() -> list[tuple[bytes, bytes]]:
        out = []
        while (message := await pubsub.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                _rid, frames = relay.split_message(message["data"])
                out += list(relay.iter_frames(frames))
        return out

    yield read
    await pubsub.aclose()


async def test_a_stream_that_completes_is_charged_its_tokens(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer()))
    outcome = await run_chat(rt, job(stream=True))
    model = rt.catalog.models["gemini"]
    assert outcome.status == RequestStatus.SUCCEEDED and outcome.error is None
    s = outcome.settlement
    assert (s["prompt_tokens"], s["completion_tokens"], s["reasoning_tokens"]) == (20, 12, 4)
    kinds = [k for k, _ in await frames_seen()]
    assert kinds[0] == relay.STARTED and kinds[-1] == relay.DONE and relay.CHUNK in kinds
    usage_chunk = orjson.loads([p for k, p in relay.iter_frames(outcome.frames) if k == relay.CHUNK][-1])
    assert usage_chunk["usage"]["credits_charged"] == (20 * 50 + 12 * 300) / 1_000_000  # README: the charge
    assert rt.sink.settlements == [s]


async def test_a_non_stream_answer_is_one_result_frame(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer()))
    outcome = await run_chat(rt, job(stream=False))
    (kind, payload), = list(relay.iter_frames(outcome.frames))
    assert kind == relay.RESULT
    body = orjson.loads(payload)
    assert body["choices"][0]["message"]["content"] == "Hello world"
    assert body["choices"][0]["message"]["reasoning_content"] == "thinking"


async def test_a_provider_error_before_output_is_refunded_and_reported(redis, frames_seen):
    error = ProviderError(503, "upstream unavailable", "upstream_unavailable", retryable=True)
    rt = runtime(redis, FakeAdapter([], fail=error))
    outcome = await run_chat(rt, job(stream=True))
    assert outcome.status == RequestStatus.FAILED and outcome.error is error
    assert outcome.settlement["completion_tokens"] == 0 and outcome.settlement["error_code"] == "upstream_unavailable"
    (kind, payload), = list(relay.iter_frames(outcome.frames))
    assert kind == relay.ERROR and orjson.loads(payload)["status"] == 503


async def test_a_stream_cut_by_the_upstream_is_a_failure_not_a_charge(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer()[:2]))  # no finish reason: the stream broke
    outcome = await run_chat(rt, job(stream=True))
    assert outcome.status == RequestStatus.FAILED
    assert outcome.error.code == "upstream_stream_broken"
    assert outcome.settlement["prompt_tokens"] == 0


async def test_a_client_that_leaves_a_stream_pays_for_what_was_produced(redis, frames_seen):
    usage = Usage(prompt_tokens=20, completion_tokens=30)
    deltas = [Delta(content="a", usage=usage)] * 50 + [Delta(content="z", finish_reason="stop", usage=usage)]
    rt = runtime(redis, FakeAdapter(deltas, pause_s=0.01))
    j = job(stream=True)
    task = asyncio.create_task(run_chat(rt, j))
    await asyncio.sleep(0.1)
    rt.cancels.cancel(j["id"], task)  # what the node worker's cancel listener does
    outcome = await task
    assert outcome.status == RequestStatus.CANCELLED
    assert outcome.settlement["completion_tokens"] == 30, "disconnecting is never free generation"
    assert not rt.cancels.client_left, "the registry forgets the job"


async def test_a_non_stream_job_runs_to_its_end_when_its_client_leaves(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer(), pause_s=0.05))
    j = job(stream=False)
    task = asyncio.create_task(run_chat(rt, j))
    await asyncio.sleep(0.02)
    rt.cancels.cancel(j["id"], task)
    outcome = await task
    assert outcome.status == RequestStatus.CANCELLED
    assert outcome.settlement["completion_tokens"] == 12, "billed once, for the whole answer"


async def test_a_worker_shutdown_fails_the_job_retryably(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer(), pause_s=0.05))
    task = asyncio.create_task(run_chat(rt, job(stream=True)))
    await asyncio.sleep(0.02)
    task.cancel()  # arq's shutdown cancels running jobs
    outcome = await task
    assert outcome.status == RequestStatus.FAILED and outcome.error.code == "worker_shutdown"
    assert outcome.settlement["completion_tokens"] == 0


async def test_a_batch_line_keeps_its_answer_before_it_is_billed(redis, frames_seen):
    rt = runtime(redis, FakeAdapter(answer()))
    outcome = await run_chat(rt, job(stream=False, batch_id="batch_1", result_key="aio:result:1"))
    assert rt.sink.results["aio:result:1"] == outcome.frames
    assert outcome.settlement["batch_id"] == "batch_1"


def test_a_settlement_carries_every_usage_field():
    from worker.chat_job import Generation
    from worker.chunks import ChunkBuilder

    gen = Generation(ChunkBuilder("r", "gemini", 1))
    model = get_catalog().models["gemini"]
    settlement = build_settlement(job(stream=True), model, gen, billable=False, latency_ms=5, queue_ms=1.5)
    # The price breakdown is the billing worker's (worker/billing.py settle_order prices the settlement).
    assert set(USAGE_FIELDS) - set(PRICE_FIELDS) <= set(settlement), "settle.lua's usage row is built from these"
    from worker.billing import settle_order
    assert set(settle_order(get_catalog(), settlement).usage_row) == set(USAGE_FIELDS)
    assert settlement["ttft_ms"] == "" and settlement["queue_ms"] == 1


# --- cut streams: what a client who leaves pays (issue 15 item 2) --------------------------------
class GatedAdapter(FakeAdapter):
    """An OpenAI-compatible upstream: usage only at the end (``running_usage = False``).

    Before yielding delta number ``cut_at`` (or at the end when there are fewer) it sets
    ``reached`` and waits for ``resume``: the test cancels the job exactly there. ``hang``: it never
    resumes (an upstream that stalls after the cancel).
    """

    running_usage = False

    def __init__(self, deltas: list[Delta], cut_at: int, fail: ProviderError | None = None,
                 hang: bool = False) -> None:
        super().__init__(deltas, fail)
        self.cut_at, self.hang = cut_at, hang
        self.reached, self.resume = asyncio.Event(), asyncio.Event()
        self.yielded = 0

    async def _gate(self) -> None:
        self.reached.set()
        await (asyncio.Event().wait() if self.hang else self.resume.wait())

    async def stream(self, body, model, incremental=True):
        for i, d in enumerate(self.deltas):
            if i == self.cut_at:
                await self._gate()
            self.yielded += 1
            yield d
        if self.cut_at >= len(self.deltas):
            await self._gate()
        if self.fail is not None:
            raise self.fail


PROMPT = "x" * 403  # the admission's estimate: 403 // 4 = 100 tokens
THOUGHT = "thinking about it"  # 17 characters


def forty_chunks(usage: Usage | None = Usage(prompt_tokens=20, completion_tokens=40)) -> list[Delta]:
    """40 deltas of 5 characters, the first also thinking; usage (if any) and the finish on the last."""
    deltas = [Delta(content="word ") for _ in range(40)]
    deltas[0] = Delta(reasoning=THOUGHT, content="word ")
    deltas[-1] = Delta(content="word ", finish_reason="stop", usage=usage)
    return deltas


async def cut_after(rt: JobRuntime, adapter: GatedAdapter, j: dict):
    """Run ``j``; cancel it as the node worker's listener does once ``adapter`` reached its cut."""
    task = asyncio.create_task(run_chat(rt, j))
    await adapter.reached.wait()
    rt.cancels.cancel(j["id"], task)
    adapter.resume.set()
    return await task


def chunks_published(frames: list[tuple[bytes, bytes]]) -> list[dict]:
    return [orjson.loads(p) for k, p in frames if k == relay.CHUNK]


async def test_a_stream_cut_before_its_final_usage_drains_and_pays_the_real_usage(redis, frames_seen):
    adapter = GatedAdapter(forty_chunks(), cut_at=38)
    rt = runtime(redis, adapter)
    outcome = await cut_after(rt, adapter, job(stream=True, body={"model": "gemini", "messages": [
        {"role": "user", "content": PROMPT}]}))
    s = outcome.settlement
    assert outcome.status == RequestStatus.CANCELLED
    assert (s["prompt_tokens"], s["completion_tokens"]) == (20, 40), "the usage of the last chunk, read after the cut"
    assert s["error_code"] == ""
    chunks = chunks_published(await frames_seen())
    # 38 deltas relayed: the first one is two chunks (thinking, then text); nothing after the cut.
    assert len(chunks) == 39 and not any(c["choices"][0]["finish_reason"] for c in chunks)
    assert outcome.frames == b""
    assert not rt.cancels.client_left and not rt.cancels.drain, "the registry forgets the job"


async def test_a_cut_stream_whose_usage_never_comes_pays_the_estimate(redis, frames_seen):
    broken = ProviderError(502, "The upstream stream broke", "upstream_stream_broken")
    adapter = GatedAdapter(forty_chunks(usage=None)[:38], cut_at=38, fail=broken)
    rt = runtime(redis, adapter)
    outcome = await cut_after(rt, adapter, job(stream=True, body={"model": "gemini", "messages": [
        {"role": "user", "content": PROMPT}]}))
    s = outcome.settlement
    assert outcome.status == RequestStatus.CANCELLED and outcome.error is None
    # prompt: the admission's estimate; output: ceil((38 * 5 + 17) / 4) = ceil(207 / 4) = 52
    assert (s["prompt_tokens"], s["completion_tokens"], s["reasoning_tokens"]) == (100, 52, 0)
    assert s["error_code"] == "usage_estimated"
    assert len(chunks_published(await frames_seen())) == 39


async def test_a_cut_stream_stops_draining_after_the_bound(redis, frames_seen):
    adapter = GatedAdapter(forty_chunks(), cut_at=38, hang=True)  # the upstream stalls after the cut
    settings = Settings(redis_url="redis://unused", request_timeout_s=30, upstream_retries=0,
                        drain_after_cancel_s=0.2)
    rt = runtime(redis, adapter, settings)
    outcome = await cut_after(rt, adapter, job(stream=True, body={"model": "gemini", "messages": [
        {"role": "user", "content": PROMPT}]}))
    s = outcome.settlement
    assert outcome.status == RequestStatus.CANCELLED
    assert (s["prompt_tokens"], s["completion_tokens"], s["error_code"]) == (100, 52, "usage_estimated")


async def test_a_stream_the_upstream_cuts_is_refunded_even_after_output(redis, frames_seen):
    broken = ProviderError(502, "The upstream stream broke", "upstream_stream_broken")
    rt = runtime(redis, FakeAdapter(forty_chunks(usage=None)[:38], fail=broken))
    outcome = await run_chat(rt, job(stream=True))
    s = outcome.settlement
    assert outcome.status == RequestStatus.FAILED and outcome.error is broken
    assert (s["prompt_tokens"], s["completion_tokens"], s["error_code"]) == (0, 0, "upstream_stream_broken")


async def test_a_running_usage_stream_is_stopped_at_once(redis, frames_seen):
    """Gemini sends the usage so far on every event: a cut needs no drain, the last one is the bill."""
    deltas = [Delta(content="word ", usage=Usage(prompt_tokens=20, completion_tokens=i + 1)) for i in range(40)]
    adapter = GatedAdapter(deltas, cut_at=38)
    adapter.running_usage = True
    rt = runtime(redis, adapter)
    outcome = await cut_after(rt, adapter, job(stream=True))
    assert outcome.status == RequestStatus.CANCELLED and adapter.yielded == 38, "not one delta read after the cut"
    assert (outcome.settlement["prompt_tokens"], outcome.settlement["completion_tokens"]) == (20, 38)


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_without_usage_pays_the_estimate(redis, frames_seen, stream):
    """Some OpenAI-compatible servers send no usage at all: the delivered answer is not free."""
    deltas = [Delta(reasoning=THOUGHT), Delta(content="Hello world", finish_reason="stop")]
    rt = runtime(redis, FakeAdapter(deltas))
    outcome = await run_chat(rt, job(stream=stream, body={"model": "gemini", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]}))
    s = outcome.settlement
    assert outcome.status == RequestStatus.SUCCEEDED
    # prompt: (8 + 403) // 4 = 102; output: ceil((17 + 11) / 4) = 7
    assert (s["prompt_tokens"], s["completion_tokens"], s["error_code"]) == (102, 7, "usage_estimated")
    model = rt.catalog.models["gemini"]
    if not stream:
        (kind, payload), = list(relay.iter_frames(outcome.frames))
        usage = orjson.loads(payload)["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (102, 7)
        assert usage["charged_micro"] == 102 * 50 + 7 * 300, "the answer shows what it is billed"


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "MALFORMED_FUNCTION_CALL"])
async def test_finishes_a_tenant_can_provoke_are_completions(redis, frames_seen, reason):
    from worker.gemini import GeminiStreamReader

    reader = GeminiStreamReader()
    usage = {"promptTokenCount": 20, "candidatesTokenCount": 9}
    deltas = [reader.delta({"candidates": [{"content": {"parts": [{"text": "Once upon"}]}}], "usageMetadata": usage}),
              reader.delta({"candidates": [{"finishReason": reason}], "usageMetadata": usage})]
    rt = runtime(redis, FakeAdapter(deltas))
    outcome = await run_chat(rt, job(stream=True))
    assert outcome.status == RequestStatus.SUCCEEDED
    assert (outcome.settlement["prompt_tokens"], outcome.settlement["completion_tokens"]) == (20, 9)


def test_the_estimate_counts_every_output_character():
    from worker.chunks import ChunkBuilder
    from worker.provider import ToolCallDelta
    from worker.usage_estimate import estimate_usage

    builder = ChunkBuilder("r", "gemini", 1)
    builder.add(Delta(reasoning="abc", content="defg"))
    builder.add(Delta(tool_calls=[ToolCallDelta(index=0, id="c1", name="get_weather", arguments='{"city":"Oslo"}')]))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "12345678"},
                                                      {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    usage = estimate_usage(body, builder)
    # prompt: (8 + 1032) // 4 = 260; output: 3 + 4 + 11 + 15 = 33 characters -> ceil(33 / 4) = 9
    assert (usage.prompt_tokens, usage.completion_tokens) == (260, 9)
