"""A client that leaves a stream on an OpenAI-compatible upstream, end to end (issue 15 item 2).

Such upstreams send the usage only in the last chunk. A stack of real processes (Valkey, gateway,
worker, billing worker) routes model ``cut`` through the OpenAI-compatible adapter to ``ShapedUpstream``,
a tiny OpenAI-shaped server in this process: 40 content chunks of "word ", the usage after them.
It stops after its 38th chunk until the test lets it go on, and the test lets it go on only once the
gateway has published the cancel of the client that read 38 chunks and left (plus a margin for the
worker to take it in): so the cut always falls between chunks 38 and 39.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aredis
from aiohttp import web

from apiinone.launcher import Stack, free_port
from shared import keys
from shared.settings import Settings
from tests.pg_session import new_database_url
from tests.conftest import Admin, wait_settled

CHUNKS, CUT = 40, 38
USAGE = {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60}
IN_PRICE, OUT_PRICE = 50, 300  # micro-credits per token (the catalog below)


def sse(payload: dict | str) -> bytes:
    return b"data: " + (payload.encode() if isinstance(payload, str) else orjson.dumps(payload)) + b"\n\n"


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class ShapedUpstream:
    """OpenAI's ``/v1/chat/completions`` stream, in its own thread and event loop.

    A prompt containing "break" has its connection dropped after chunk 39, before any usage.
    ``finished`` lists the prompts whose stream was written to its end (the reader did not hang up).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.finished: list[str] = []
        self.loop = asyncio.new_event_loop()
        self._go_on: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def go_on(self) -> None:
        self.loop.call_soon_threadsafe(self._go_on.set)

    async def _serve(self) -> None:
        self._go_on = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        prompt = body["messages"][-1]["content"]
        self._go_on.clear()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(CHUNKS):
            if i == CUT:
                await asyncio.wait_for(self._go_on.wait(), 30)
            await asyncio.sleep(0.02)
            await response.write(sse(chunk({"role": "assistant", "content": "word "} if i == 0 else
                                           {"content": "word "})))
            if "break" in prompt and i == CUT:
                request.transport.close()  # the upstream breaks: no more chunks, no usage
                return response
        await response.write(sse(chunk({}, "stop")))
        await response.write(sse({"id": "up-1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}))
        await response.write(sse("[DONE]"))
        await response.write_eof()
        self.finished.append(prompt)
        return response


def catalog(upstream_base_url: str) -> str:
    return "\n".join([
        f'[providers.shaped]\nadapter = "openai"\nbase_url = "{upstream_base_url}"\napi_key_env = "SHAPED_KEY"\n',
        '[nodes.u1]\nprovider = "shaped"\n',
        '[models.cut]\ndisplay_name = "cut"\nprovider = "shaped"\nnodes = ["u1"]\nupstream_model = "up"\n'
        'base_cost_credits = 5\ninput_price_credits_per_1m = "50"\noutput_price_credits_per_1m = "300"\n'
        'context_window = 131072\nmax_output_tokens = 8192\n',
    ])


@pytest.fixture(scope="module")
def upstream():
    server = ShapedUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shaped_stack(upstream):
    with tempfile.TemporaryDirectory(prefix="apiinone-cut-") as tmp:
        path = Path(tmp) / "catalog.toml"
        path.write_text(catalog(f"http://127.0.0.1:{upstream.port}/v1"))
        settings = Settings(host="127.0.0.1", port=free_port(), embedded_redis_port=free_port(), database_url=new_database_url(),
                            simulator_port=free_port(), data_dir=Path(tmp) / "data", redis_url=None,
                            gemini_api_key="no-gemini-here", admin_token="adm_cut_" + uuid.uuid4().hex)
        st = Stack(settings, quiet=not os.environ.get("APIINONE_TEST_VERBOSE"))
        st.env.update({"APIINONE_CATALOG": str(path), "SHAPED_KEY": "sk-shaped"})
        try:
            st.start()
            yield st
        finally:
            st.stop()


async def read_then_leave(st: Stack, upstream: ShapedUpstream, key: str, prompt: str) -> tuple[str, int]:
    """Read CUT content chunks and disconnect; let the upstream go on once the cancel is on its way."""
    listener = aredis.from_url(st.settings.redis_url)
    cancels = listener.pubsub()
    await cancels.subscribe(keys.node_cancel_channel("u1"))
    request_id, seen = None, 0
    try:
        async with httpx.AsyncClient(base_url=st.base_url, timeout=30) as own:
            async with own.stream("POST", "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "cut", "stream": True,
                                        "messages": [{"role": "user", "content": prompt}]}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        request_id = request_id or event["id"]
                        seen += bool(event["choices"] and event["choices"][0]["delta"].get("content"))
                    if seen == CUT:
                        break  # leave: the connection closes with the stream half read
        async with asyncio.timeout(10):
            while (message := await cancels.get_message(ignore_subscribe_messages=True, timeout=1)) is None \
                    or message["data"].decode() != request_id:
                pass
        await asyncio.sleep(0.5)  # the worker's cancel listener takes it in
    finally:
        upstream.go_on()
        await cancels.aclose()
        await listener.aclose()
    return request_id, seen


async def test_a_client_that_leaves_at_38_of_40_chunks_pays_the_final_usage(shaped_stack, upstream):
    admin = Admin(shaped_stack.base_url, shaped_stack.settings.admin_token)
    account, key = admin.account_with_key(100)
    request_id, seen = await read_then_leave(shaped_stack, upstream, key, "tell me forty words")
    assert seen == CUT
    async with httpx.AsyncClient(base_url=shaped_stack.base_url, timeout=30) as http:
        [row] = await wait_settled(http, key, 1, timeout=20)
    assert row["request_id"] == request_id and row["status"] == "cancelled"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (20, 40), "the usage of the last chunk"
    assert row["error_code"] == ""
    assert row["charged_micro"] == 20 * IN_PRICE + 40 * OUT_PRICE
    assert "tell me forty words" in upstream.finished, "the worker read the upstream to its end"
    assert admin.get_account(account["id"])["balance_micro"] == 100_000_000 - row["charged_micro"]
    audit = admin.audit()
    assert audit["ok"], [a for a in audit["data"] if not a["ok"]]


async def test_a_cut_stream_whose_upstream_breaks_before_the_usage_pays_the_estimate(shaped_stack, upstream):
    admin = Admin(shaped_stack.base_url, shaped_stack.settings.admin_token)
    _, key = admin.account_with_key(100)
    prompt = "break after thirty-nine words"  # 29 characters: 29 // 4 = 7 prompt tokens
    request_id, seen = await read_then_leave(shaped_stack, upstream, key, prompt)
    async with httpx.AsyncClient(base_url=shaped_stack.base_url, timeout=30) as http:
        [row] = await wait_settled(http, key, 1, timeout=20)
    assert row["request_id"] == request_id and row["status"] == "cancelled"
    # 39 chunks of "word " were read (38 delivered, one during the drain): ceil(195 / 4) = 49
    assert (row["prompt_tokens"], row["completion_tokens"], row["error_code"]) == (7, 49, "usage_estimated")
    assert row["charged_micro"] == 7 * IN_PRICE + 49 * OUT_PRICE
    audit = admin.audit()
    assert audit["ok"], [a for a in audit["data"] if not a["ok"]]
