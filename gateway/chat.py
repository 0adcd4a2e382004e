"""POST /api/v1/chat/completions: the HTTP policy on top of the shared lifecycle (shared/dispatch.py).

The gateway never calls a provider: it admits the request, submits one attempt
(hold + job in one round trip), and relays what the worker publishes: SSE
chunks as they come, or one chat.completion.

A failure before anything reached the client may be retried (the one rule is
``shared.contracts.retry_kind``): on the next node for an upstream 429/5xx
(failover), or once on any live worker when the worker died. Each attempt is
its own request id with its own hold and settlement, so a retry can never be
billed twice or for free.
"""

from __future__ import annotations

import asyncio
import secrets

import orjson
import structlog
from aiohttp import web

from gateway.inputs import read_body
from gateway.state import GATEWAY, Gateway
from shared import relay
from shared.admission import check_request, estimated_tokens, plan_hold, refusal
from shared.contracts import ErrorCode, RequestStatus, RetryKind
from shared.dispatch import SILENT, WATCH_S, Admitted, InFlight, Retryable, error_from_frame
from shared.errors import ApiError, not_found, unavailable
from shared.metrics import FAILOVERS, GATEWAY_INFLIGHT
from shared.protocol import ChatCompletionRequest

log = structlog.get_logger()

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


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


async def admit(request: web.Request, gw: Gateway) -> Admitted:
    key = await gw.keys.authenticate(request)
    req = await read_body(request, ChatCompletionRequest)
    model = gw.catalog.models.get(req.model)
    if model is None:
        raise not_found(f"The model '{req.model}' does not exist. GET /api/v1/models lists the models.",
                        code="model_not_found", param="model")
    prompt_estimate = check_request(req, model, gw.settings.max_messages)
    job = {
        "account_id": key.account_id, "key_id": key.id, "model": model.id, "trace_id": request["request_id"],
        "stream": wants_stream(req.stream, request.headers.get("Accept", ""), gw.settings.stream_default),
        "include_usage": bool(req.stream_options and req.stream_options.include_usage),
        "body": req.model_dump(exclude_none=True, by_alias=True),
    }
    return Admitted(key, model, job, estimated_tokens(req, prompt_estimate),
                    plan_hold(req, model, gw.settings.min_output_tokens, key.price_multiplier_ppm))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    admitted = await admit(request, gw)
    failed_nodes: list[str] = []
    worker_retry_left = True
    last_error: ApiError | None = None
    while True:
        node = await gw.dispatch.pick_node(admitted.model, exclude=failed_nodes)
        if node is None:
            raise last_error or unavailable(
                f"No worker is serving model '{admitted.model.id}' right now "
                f"(nodes: {', '.join(admitted.model.nodes)}).", retry_after=2)
        flight = gw.dispatch.flight(admitted, node, "chatcmpl-" + secrets.token_hex(12))
        try:
            with GATEWAY_INFLIGHT.track_inprogress():
                response = await HttpRelay(request, flight).run()
        except Retryable as retry:
            last_error = retry
            FAILOVERS.labels(retry.code or "unknown").inc()
            if retry.kind is RetryKind.ANOTHER_NODE:
                gw.breaker.failure(node)
                failed_nodes.append(node)
            elif worker_retry_left:
                worker_retry_left = False
            else:
                raise
            log.info("retrying on another worker or node", node=node, code=retry.code)
            continue
        gw.breaker.success(node)
        return response


class HttpRelay:
    """One attempt relayed to one HTTP client: SSE as frames come, or one JSON answer."""

    def __init__(self, request: web.Request, flight: InFlight) -> None:
        self.request = request
        self.flight = flight
        self.response: web.StreamResponse | None = None

    async def run(self) -> web.StreamResponse:
        flight = self.flight
        try:
            reservation, queued = await flight.submit()
            self.request["reservation"] = reservation  # rate-limit headers (gateway/middleware.py)
            if not reservation.ok:
                raise refusal(reservation, flight.model, flight.key.limits, flight.admitted.estimated_tokens,
                              flight.admitted.hold.floor_micro)
            if not queued:
                await flight.refund(RequestStatus.REJECTED, ErrorCode.QUEUE_FULL)
                raise unavailable(f"Node {flight.node} is at capacity ({flight.d.settings.max_queue_depth} "
                                  "requests waiting); try again shortly.", retry_after=2)
            return await self._relay_guarded()
        finally:
            flight.close()

    async def _relay_guarded(self) -> web.StreamResponse:
        try:
            return await self._relay()
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): stop the work, bill what was produced.
            self.flight.d.spawn(self.flight.cancel())
            raise
        except ConnectionError:
            self.flight.d.spawn(self.flight.cancel())
            return self.response or web.Response(status=499)

    async def _next(self) -> bytes:
        waited = 0.0
        while (frames := await self.flight.next_frames()) is SILENT:
            waited += WATCH_S
            await self.flight.watch(waited)
        return frames

    async def _relay(self) -> web.StreamResponse:
        while True:
            try:
                frames = await self._next()
            except ApiError as exc:
                if self.response is None:
                    raise  # nothing sent yet: an error answer, or (Retryable) another attempt
                await self._end_with_error(exc.json())
                return self.response
            events: list[bytes] = []  # the SSE events of one message leave in one write
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.CHUNK:
                    events.append(b"data: " + payload + b"\n\n")
                elif kind == relay.STARTED:
                    self.flight.worker_id = payload.decode()
                elif kind == relay.DONE:  # an empty stream is still valid SSE
                    events.append(b"data: [DONE]\n\n")
                    await self._write_events(events)
                    await self.response.write_eof()
                    return self.response
                elif kind == relay.RESULT:
                    return web.Response(body=payload, content_type="application/json")
                elif kind == relay.ERROR:
                    if self.response is None and not events:
                        raise error_from_frame(payload)
                    await self._write_events(events)
                    await self._end_with_error(orjson.dumps({"error": orjson.loads(payload)["error"]}))
                    return self.response
            if events:
                await self._write_events(events)

    async def _write_events(self, events: list[bytes]) -> None:
        if self.response is None:
            self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
            await self.response.prepare(self.request)
        if events:
            await self.response.write(b"".join(events))

    async def _end_with_error(self, body: bytes) -> None:
        # Mid-stream failure: an error event makes the openai SDK raise; never a silent truncation.
        await self.response.write(b"data: " + body + b"\n\n")
        await self.response.write_eof()
