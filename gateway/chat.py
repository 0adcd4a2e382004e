"""POST /api/v1/chat/completions: admit, reserve, enqueue, relay.

The gateway never calls a provider: it validates the request, holds the
model's base cost, puts one job on a node queue, and relays what the worker
publishes: SSE chunks as they come, or one chat.completion.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.hub import LOST
from gateway.state import Gateway
from shared import keys, relay
from shared.catalog import Model
from shared.errors import ApiError, bad_request, insufficient_quota, not_found, unavailable
from shared.protocol import ChatCompletionRequest, parse_chat_request

log = structlog.get_logger()

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}
WATCH_S = 2.0  # how often a silent request checks that its worker is still alive


def wants_stream(explicit: bool | None, accept: str, stream_default: bool) -> bool:
    """An explicit ``stream`` wins; otherwise SSE only for clients that ask for it.

    The openai SDKs send ``Accept: application/json`` and the Vercel AI SDK
    ``*/*`` when they want one JSON answer, so the drop-in default is JSON.
    ``APIINONE_STREAM_DEFAULT=true`` gives the product page's literal default:
    SSE unless the client asks for JSON.
    """
    if explicit is not None:
        return explicit
    accept = accept.lower()
    if "text/event-stream" in accept:
        return True
    return stream_default and "application/json" not in accept


def estimate_prompt_tokens(req: ChatCompletionRequest) -> int:
    chars = 0
    for m in req.messages:
        content = m.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += sum(len(p.text) if p.type == "text" else 1032 for p in content)
    return chars // 4


def check_request(req: ChatCompletionRequest, model: Model) -> None:
    if req.n not in (None, 1):
        raise bad_request("Only n=1 is supported.", param="n", code="unsupported_value")
    if "image" not in model.input_types:
        for i, m in enumerate(req.messages):
            if m.role == "user" and isinstance(m.content, list) and any(p.type == "image_url" for p in m.content):
                raise bad_request(f"Model '{model.id}' does not accept image input.",
                                  param=f"messages[{i}].content", code="unsupported_content")
    estimate = estimate_prompt_tokens(req)
    if estimate > model.context_window:
        raise bad_request(
            f"This model's maximum context length is {model.context_window} tokens; your messages come to about "
            f"{estimate} tokens.", param="messages", code="context_length_exceeded")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    key = await gw.keys.authenticate(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request.", code="invalid_json") from None
    req = parse_chat_request(body)
    model = gw.catalog.models.get(req.model)
    if model is None:
        raise not_found(f"The model '{req.model}' does not exist. GET /api/v1/models lists the models.",
                        code="model_not_found", param="model")
    check_request(req, model)
    node = await gw.pick_node(model)
    stream = wants_stream(req.stream, request.headers.get("Accept", ""), gw.settings.stream_default)

    request_id = "chatcmpl-" + secrets.token_hex(12)
    now = time.time()
    deadline_ms = int((now + gw.settings.queue_timeout_s + gw.settings.request_timeout_s) * 1000)
    reservation = await gw.credits.reserve(key.account_id, request_id, model.base_cost_micro, deadline_ms, key.id)
    if not reservation.ok:
        raise insufficient_quota(
            f"Insufficient credits: this request holds {model.base_cost_micro / 1e6:g} credits and the account has "
            f"{(reservation.balance_micro - reservation.held_micro) / 1e6:g} available. Top up to continue.")

    job = {
        "id": request_id, "account_id": key.account_id, "key_id": key.id, "model": model.id, "node": node,
        "reply_to": gw.hub.channel, "stream": stream,
        "include_usage": bool(req.stream_options and req.stream_options.include_usage),
        "created": int(now), "enqueued_ms": int(now * 1000),
        "body": req.model_dump(exclude_none=True, by_alias=True),
    }
    replies = gw.hub.register(request_id)
    try:
        try:
            await gw.queue.enqueue(keys.node_queue(node), "chat", request_id, job,
                                   expires_ms=int((gw.settings.queue_timeout_s + 5) * 1000))
        except RedisError:
            await gw.refund_unstarted(key, request_id, model.id, node, "queue_unavailable")
            raise unavailable("The request queue is unavailable; try again shortly.") from None
        relay_ = Relay(request, gw, request_id, node, key, model.id, replies)
        return await relay_.run()
    finally:
        gw.hub.unregister(request_id)


class Relay:
    """Waits for one request's replies and writes them to the client."""

    def __init__(self, request, gw: Gateway, request_id: str, node: str, key, model_id: str, replies) -> None:
        self.request = request
        self.gw = gw
        self.request_id = request_id
        self.node = node
        self.key = key
        self.model_id = model_id
        self.replies: asyncio.Queue = replies
        self.worker_id: str | None = None
        self.response: web.StreamResponse | None = None

    async def run(self) -> web.StreamResponse:
        try:
            return await self._relay()
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): stop the work.
            self.gw.spawn(self.gw.cancel_request(self.key, self.request_id, self.model_id, self.node))
            raise
        except (ConnectionResetError, ConnectionError):
            self.gw.spawn(self.gw.cancel_request(self.key, self.request_id, self.model_id, self.node))
            return self.response or web.Response(status=499)

    async def _next(self):
        """The next batch of frames; fails the request if its worker or Redis is lost."""
        waited = 0.0
        while True:
            try:
                item = await asyncio.wait_for(self.replies.get(), WATCH_S)
            except asyncio.TimeoutError:
                waited += WATCH_S
                await self._watch(waited)
                continue
            if item is LOST:
                await self.gw.fail_lost(self.key, self.request_id, self.model_id, self.node, "reply_channel_lost")
                raise unavailable("The gateway lost its connection to Redis while waiting for the answer; "
                                  "the request was not billed.")
            return item

    async def _watch(self, waited: float) -> None:
        if self.worker_id is None:
            if waited < self.gw.settings.queue_timeout_s:
                return
            if await self.gw.queue.withdraw(keys.node_queue(self.node), self.request_id):
                await self.gw.refund_unstarted(self.key, self.request_id, self.model_id, self.node, "queue_timeout")
                raise unavailable(f"No worker on node {self.node} took the request within "
                                  f"{self.gw.settings.queue_timeout_s:g}s; it was not billed.", retry_after=2)
            return  # a worker claimed it just now; its STARTED frame is on the way
        if not await self.gw.worker_alive(self.worker_id):
            await self.gw.fail_lost(self.key, self.request_id, self.model_id, self.node, "worker_lost")
            raise ApiError(502, "The worker serving this request stopped; the request was not billed.",
                           "api_error", "worker_lost")

    async def _relay(self) -> web.StreamResponse:
        while True:
            try:
                frames = await self._next()
            except ApiError as exc:
                if self.response is None:
                    raise
                await self._write_error(exc.json())
                return self.response
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.CHUNK:
                    if self.response is None:
                        self.response = web.StreamResponse(status=200, headers={**SSE_HEADERS,
                                                                                 "X-Request-Id": self.request_id})
                        await self.response.prepare(self.request)
                    await self.response.write(b"data: " + payload + b"\n\n")
                elif kind == relay.STARTED:
                    self.worker_id = payload.decode()
                elif kind == relay.DONE:
                    if self.response is None:  # an empty stream: still a valid SSE answer
                        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
                        await self.response.prepare(self.request)
                    await self.response.write(b"data: [DONE]\n\n")
                    await self.response.write_eof()
                    return self.response
                elif kind == relay.RESULT:
                    return web.Response(body=payload, content_type="application/json",
                                        headers={"X-Request-Id": self.request_id})
                elif kind == relay.ERROR:
                    info = orjson.loads(payload)
                    if self.response is None:
                        err = ApiError.from_body(info["status"], info, info.get("retry_after"))
                        raise err
                    await self._write_error(orjson.dumps({"error": info["error"]}))
                    return self.response

    async def _write_error(self, body: bytes) -> None:
        # Mid-stream failure: an error event makes the openai SDK raise; never a silent truncation.
        await self.response.write(b"data: " + body + b"\n\n")
        await self.response.write_eof()
