"""One admitted request, relayed over HTTP in its front end's wire format, with failover.

Every front end (chat completions, Responses, Messages, native Gemini) runs the same loop on the
shared lifecycle (shared/dispatch.py): pick a node, submit one attempt (hold + job in one round
trip), relay what the worker publishes. A failure before anything reached the client may be
retried (the one rule is ``shared.contracts.retry_kind``): on the next node for an upstream
429/5xx (failover), or once on any live worker when the worker died. Each attempt is its own
request id with its own hold and settlement, so a retry can never be billed twice or for free; its
hold replaces the failed attempt's in the same step (reserve.lua), so a retry never needs both.
When no node of the model can serve it (or the prompt is too long for the model), the request moves
to the model's fallbacks in turn (catalog ``fallbacks``), still only before any output: it is then
charged at the model that served it, which the answer's ``model`` and the usage row name.

What differs between front ends is only the wording: a ``Renderer`` turns the worker's frames
(shared/relay.py) into its API's SSE events or one JSON answer, and its errors into its shape.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Callable, Protocol

import orjson
import structlog
from aiohttp import web

from gateway.state import GATEWAY, Gateway
from shared import relay
from shared.admission import refusal
from shared.contracts import ErrorCode, RequestStatus, RetryKind
from shared.dispatch import SILENT, WATCH_S, Admitted, InFlight, Retryable, error_from_frame
from shared.errors import ApiError, unavailable
from shared.fallback_counts import record_fallback
from shared.metrics import FAILOVERS, FALLBACKS, GATEWAY_INFLIGHT

log = structlog.get_logger()

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


class Renderer(Protocol):
    """How one front end words one attempt's replies (a new renderer per attempt)."""

    headers: dict[str, str]  # of the streamed answer

    def chunk(self, payload: bytes) -> list[bytes]:
        """The bytes to send for one CHUNK frame (a chat.completion.chunk, or a native Gemini event)."""

    def done(self) -> list[bytes]:
        """The bytes that end a stream (DONE)."""

    def result(self, payload: bytes) -> web.Response:
        """The one answer of a non-stream request (RESULT)."""

    def stream_error(self, error: ApiError) -> bytes:
        """The event that ends a stream that failed after it began."""

    async def finish(self) -> None:
        """After the answer is complete (``done`` or ``result``), before it is sent: e.g. store it."""


class Refused(Exception):
    """The attempt's reservation was refused (credits, rate limits): ``error`` is the client's answer."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class ModelUnavailable(Exception):
    """No node of the model could serve the request before any output (``error`` says why), or its prompt
    is too long for it: a fallback model may. ``request_id``: its last attempt's, whose hold may be open."""

    def __init__(self, error: ApiError, request_id: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


async def exchange(request: web.Request, admitted: Admitted, renderer: Callable[[], Renderer],
                   id_prefix: str) -> web.StreamResponse:
    """Run ``admitted`` on its model's nodes (``_on_model``); when none can serve it before any output, on
    its fallback models in turn (catalog fallbacks). Each fallback's hold replaces the last attempt's in
    one step (reserve.lua); one the account cannot cover is skipped. None left: the first model's error."""
    gw: Gateway = request.app[GATEWAY]
    # The model it names (its job's requested_model may be an alias of it); admission may have fallen back already.
    requested = (admitted.catalog or gw.catalog).model_id(admitted.job.get("requested_model") or admitted.model.id)
    candidate, first_error, replaces = admitted, None, ""
    while True:
        fallback = candidate.model.id != requested
        try:
            response = await _on_model(request, gw, candidate, renderer, id_prefix, replaces)
        except Refused as refused:
            if candidate is admitted:
                raise refused.error from None
            _count_fallback(gw, requested, candidate, "skipped")
        except ModelUnavailable as down:
            first_error, replaces = first_error or down.error, down.request_id
            if fallback:
                _count_fallback(gw, requested, candidate, "failed")
        else:
            if fallback:
                _count_fallback(gw, requested, candidate, "served")
            return response
        candidate = candidate.next_fallback(gw.catalog)
        if candidate is None:
            raise first_error
        log.info("falling back to another model", model=admitted.model.id, fallback=candidate.model.id,
                 code=first_error.code)


def _count_fallback(gw: Gateway, requested: str, fallback: Admitted, outcome: str) -> None:
    """This process's metric, and the count every gateway shares (the nodes page), off the answer's path."""
    FALLBACKS.labels(requested, fallback.model.id, outcome).inc()
    gw.dispatch.spawn(record_fallback(gw.redis, requested, fallback.model.id, outcome))


async def _on_model(request: web.Request, gw: Gateway, admitted: Admitted, renderer: Callable[[], Renderer],
                   id_prefix: str, replaces: str) -> web.StreamResponse:
    """Run ``admitted`` on a node of its model, failing over as ``retry_kind`` allows; the answer in
    ``renderer``'s words. Each attempt takes over the hold of the one before it (``replaces``)."""
    failed_nodes: list[str] = []
    worker_retry_left = True
    last_error: ApiError | None = None
    while True:
        node = await gw.dispatch.pick_node(admitted.model, exclude=failed_nodes)
        if node is None:
            raise ModelUnavailable(last_error or unavailable(
                f"No worker is serving model '{admitted.model.id}' right now "
                f"(nodes: {', '.join(admitted.model.nodes)}).", retry_after=2), replaces)
        flight = gw.dispatch.flight(admitted, node, id_prefix + secrets.token_hex(12), replaces=replaces)
        try:
            with GATEWAY_INFLIGHT.track_inprogress():
                response = await HttpRelay(request, flight, renderer()).run()
        except Retryable as retry:
            last_error, replaces = retry, flight.request_id
            FAILOVERS.labels(retry.code or "unknown").inc()
            if retry.kind is RetryKind.ANOTHER_NODE:
                gw.breaker.failure(node)
                failed_nodes.append(node)
            elif worker_retry_left:
                worker_retry_left = False
            else:
                raise ModelUnavailable(retry, replaces) from None
            log.info("retrying on another worker or node", node=node, code=retry.code)
            continue
        except ApiError as exc:
            if exc.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED:  # the worker's exact count: too long for this model
                raise ModelUnavailable(exc, flight.request_id) from None
            raise
        gw.breaker.success(node)
        return response


class HttpRelay:
    """One attempt relayed to one HTTP client: events as frames come, or one answer."""

    def __init__(self, request: web.Request, flight: InFlight, renderer: Renderer) -> None:
        self.request = request
        self.flight = flight
        self.renderer = renderer
        self.response: web.StreamResponse | None = None

    async def run(self) -> web.StreamResponse:
        flight = self.flight
        try:
            reservation, queued = await flight.submit()
            if reservation.ok or "reservation" not in self.request:  # not a skipped fallback's refusal
                self.request["reservation"] = reservation  # rate-limit headers (gateway/middleware.py)
            if not reservation.ok:
                raise Refused(refusal(reservation, flight.model, flight.key.limits, flight.admitted.estimated_tokens,
                                      flight.admitted.hold.floor_micro))
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
        render = self.renderer
        while True:
            try:
                frames = await self._next()
            except ApiError as exc:
                if self.response is None:
                    raise  # nothing sent yet: an error answer, or (Retryable) another attempt
                await self._end_with_error(exc)
                return self.response
            events: list[bytes] = []  # the events of one message leave in one write
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.CHUNK:
                    events.extend(render.chunk(payload))
                elif kind == relay.STARTED:
                    self.flight.worker_id = payload.decode()
                elif kind == relay.DONE:  # an empty stream is still a valid stream
                    events.extend(render.done())
                    await render.finish()
                    await self._write_events(events)
                    await self.response.write_eof()
                    return self.response
                elif kind == relay.RESULT:
                    response = render.result(payload)
                    await render.finish()
                    return response
                elif kind == relay.ERROR:
                    if self.response is None and not events:
                        raise error_from_frame(payload)
                    await self._write_events(events)
                    await self._end_with_error(error_from_frame(payload))
                    return self.response
            if events:
                await self._write_events(events)

    async def _write_events(self, events: list[bytes]) -> None:
        if self.response is None:
            self.response = web.StreamResponse(status=200, headers=self.renderer.headers)
            await self.response.prepare(self.request)
        if events:
            await self.response.write(b"".join(events))

    async def _end_with_error(self, error: ApiError) -> None:
        # Mid-stream failure: an error event makes the SDKs raise; never a silent truncation.
        await self.response.write(self.renderer.stream_error(error))
        await self.response.write_eof()


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
