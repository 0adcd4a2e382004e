"""POST /api/v1/chat/completions: admit, reserve, enqueue, relay.

The gateway never calls a provider: it validates the request, holds the
model's base cost, puts one job on a node queue, and relays what the worker
publishes: SSE chunks as they come, or one chat.completion.

A failure before anything reached the client may be retried: on the next
node for an upstream 429/5xx (failover), or once on any live worker when the
worker died. Each attempt is its own request id with its own hold and
settlement, so a retry can never be billed twice or for free.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.inputs import read_body
from gateway.state import GATEWAY, Gateway
from shared import keys, relay
from shared.accounts import KeyRecord
from shared.catalog import Model
from shared.admission import check_request, estimated_tokens, refusal
from shared.contracts import ErrorCode, RetryKind, retry_kind
from shared.credits import Reservation
from shared.errors import ApiError, not_found, unavailable
from shared.reply_hub import LOST
from shared.metrics import FAILOVERS, GATEWAY_INFLIGHT, RESERVATIONS, labelled
from shared.protocol import ChatCompletionRequest
from shared.keys import AccountKeys

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


class Retryable(Exception):
    """Nothing reached the client yet, and another attempt may succeed."""

    def __init__(self, error: ApiError, node_failed: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.node_failed = node_failed  # False: the worker died, the node may be fine


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    key = await gw.keys.authenticate(request)
    req = await read_body(request, ChatCompletionRequest)
    model = gw.catalog.models.get(req.model)
    if model is None:
        raise not_found(f"The model '{req.model}' does not exist. GET /api/v1/models lists the models.",
                        code="model_not_found", param="model")
    prompt_estimate = check_request(req, model, gw.settings.max_messages)
    job = {
        "account_id": key.account_id, "key_id": key.id, "model": model.id, "reply_to": gw.hub.channel,
        "trace_id": request["request_id"],
        "stream": wants_stream(req.stream, request.headers.get("Accept", ""), gw.settings.stream_default),
        "include_usage": bool(req.stream_options and req.stream_options.include_usage),
        "body": req.model_dump(exclude_none=True, by_alias=True),
    }
    estimated = estimated_tokens(req, prompt_estimate)
    failed_nodes: list[str] = []
    worker_retry_left = True
    last_error: ApiError | None = None
    while True:
        node = await gw.pick_node(model, exclude=failed_nodes)
        if node is None:
            raise last_error or unavailable(
                f"No worker is serving model '{model.id}' right now (nodes: {', '.join(model.nodes)}).",
                retry_after=2)
        try:
            with GATEWAY_INFLIGHT.track_inprogress():
                response = await Attempt(request, gw, key, model, node, job, estimated).run()
        except Retryable as retry:
            last_error = retry.error
            FAILOVERS.labels(retry.error.code or "unknown").inc()
            if retry.node_failed:
                gw.breaker.failure(node)
                failed_nodes.append(node)
            elif worker_retry_left:
                worker_retry_left = False
            else:
                raise retry.error from None
            log.info("retrying on another worker or node", node=node, code=retry.error.code)
            continue
        gw.breaker.success(node)
        return response


class Attempt:
    """One request id: reserve, enqueue, relay the replies."""

    def __init__(self, request: web.Request, gw: Gateway, key: KeyRecord, model: Model, node: str, job: dict,
                 estimated_tokens: int) -> None:
        self.request = request
        self.estimated_tokens = estimated_tokens
        self.gw = gw
        self.key = key
        self.model = model
        self.node = node
        self.request_id = "chatcmpl-" + secrets.token_hex(12)
        now = time.time()
        self.job = {**job, "id": self.request_id, "node": node, "created": int(now), "enqueued_ms": round(now * 1000, 3)}
        self.worker_id: str | None = None
        self.response: web.StreamResponse | None = None
        self.replies: asyncio.Queue | None = None

    async def run(self) -> web.StreamResponse:
        gw, s = self.gw, self.gw.settings
        deadline_ms = int((time.time() + s.queue_timeout_s + s.request_timeout_s) * 1000)
        # Reserve and enqueue in one round trip: the job is queued only if the hold was taken.
        reserve = gw.credits.reserve_call(self.key.account_id, self.request_id, self.model.base_cost_micro,
                                          deadline_ms, self.key.id, self.key.limits, self.estimated_tokens)
        enqueue = gw.queue.enqueue_call(keys.node_queue(self.node), "chat", self.request_id, self.job,
                                        int((s.queue_timeout_s + 5) * 1000), s.max_queue_depth,
                                        held_in=AccountKeys(self.key.account_id).holds)
        self.replies = gw.hub.register(self.request_id)  # before the job exists: no reply can be missed
        try:
            try:
                reply, queued = await gw.scripts.pipelined([reserve, enqueue])
            except RedisError:
                await self._refund_unstarted("queue_unavailable")
                raise unavailable("The request queue is unavailable; try again shortly.") from None
            reservation = Reservation.from_reply(reply)
            self.request["reservation"] = reservation  # rate-limit headers (gateway/middleware.py)
            labelled(RESERVATIONS, reservation.status.label).inc()
            if not reservation.ok:
                raise refusal(reservation, self.model, self.key.limits, self.estimated_tokens)
            if queued == 0:
                await self._refund_unstarted("queue_full")
                raise unavailable(f"Node {self.node} is at capacity ({s.max_queue_depth} requests waiting); "
                                  "try again shortly.", retry_after=2)
            return await self._relay_guarded()
        finally:
            gw.hub.unregister(self.request_id)

    async def _refund_unstarted(self, code: str) -> None:
        await self.gw.refund_unstarted(self.key, self.request_id, self.model.id, self.node, code)

    async def _relay_guarded(self) -> web.StreamResponse:
        try:
            return await self._relay()
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): stop the work, bill what was produced.
            self.gw.spawn(self.gw.cancel_request(self.key, self.request_id, self.model.id, self.node))
            raise
        except ConnectionError:
            self.gw.spawn(self.gw.cancel_request(self.key, self.request_id, self.model.id, self.node))
            return self.response or web.Response(status=499)

    async def _next(self) -> bytes:
        """The next batch of frames; fails the request if its worker or Redis is lost."""
        waited = 0.0
        while True:
            if not self.replies.empty():  # the common case under load: no timer, no await
                item = self.replies.get_nowait()
            else:
                try:
                    async with asyncio.timeout(WATCH_S):  # no extra task, unlike wait_for
                        item = await self.replies.get()
                except TimeoutError:
                    item = None
            if item is None:
                waited += WATCH_S
                await self._watch(waited)
                continue
            if item is LOST:
                await self.gw.fail_lost(self.key, self.request_id, self.model.id, self.node, "reply_channel_lost")
                raise unavailable("The gateway lost its connection to Redis while waiting for the answer; "
                                  "the request was not billed.")
            return item

    async def _watch(self, waited: float) -> None:
        if self.worker_id is None:
            timeout = self.gw.settings.queue_timeout_s
            if waited < timeout:
                return
            if await self.gw.queue.withdraw(keys.node_queue(self.node), self.request_id):
                await self._refund_unstarted("queue_timeout")
                raise unavailable(f"No worker on node {self.node} took the request within "
                                  f"{timeout:g}s; it was not billed.", retry_after=2)
            if waited < timeout + self.gw.settings.worker_lease_s + WATCH_S:
                return  # a worker claimed it just now; its STARTED frame is on the way
            # Claimed but never started (the job expired, or its worker died at once).
            await self.gw.fail_lost(self.key, self.request_id, self.model.id, self.node, "job_lost")
            raise Retryable(ApiError(503, "The request was lost between queue and worker; it was not billed.",
                                     "service_unavailable", "job_lost", retry_after=1), node_failed=False)
        if not await self.gw.worker_alive(self.worker_id):
            await self.gw.fail_lost(self.key, self.request_id, self.model.id, self.node, "worker_lost")
            error = ApiError(502, "The worker serving this request stopped; the request was not billed.",
                             "api_error", "worker_lost")
            if self.response is None:
                raise Retryable(error, node_failed=False)
            raise error

    async def _start_sse(self) -> web.StreamResponse:
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await self.response.prepare(self.request)
        return self.response

    async def _relay(self) -> web.StreamResponse:
        while True:
            try:
                frames = await self._next()
            except ApiError as exc:
                if self.response is None:
                    raise
                await self._end_with_error(exc.json())
                return self.response
            events: list[bytes] = []  # the SSE events of one message leave in one write
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.CHUNK:
                    events.append(b"data: " + payload + b"\n\n")
                elif kind == relay.STARTED:
                    self.worker_id = payload.decode()
                elif kind == relay.DONE:  # an empty stream is still valid SSE
                    events.append(b"data: [DONE]\n\n")
                    await self._write_events(events)
                    await self.response.write_eof()
                    return self.response
                elif kind == relay.RESULT:
                    return web.Response(body=payload, content_type="application/json")
                elif kind == relay.ERROR:
                    info = orjson.loads(payload)
                    if self.response is None and not events:
                        error = ApiError.from_body(info["status"], info, info.get("retry_after"))
                        kind = retry_kind(error.status, error.code)
                        if kind is not RetryKind.NONE:
                            raise Retryable(error, node_failed=kind is RetryKind.ANOTHER_NODE)
                        raise error
                    await self._write_events(events)
                    await self._end_with_error(orjson.dumps({"error": info["error"]}))
                    return self.response
            if events:
                await self._write_events(events)

    async def _write_events(self, events: list[bytes]) -> None:
        response = self.response or await self._start_sse()
        if events:
            await response.write(b"".join(events))

    async def _end_with_error(self, body: bytes) -> None:
        # Mid-stream failure: an error event makes the openai SDK raise; never a silent truncation.
        await self.response.write(b"data: " + body + b"\n\n")
        await self.response.write_eof()
