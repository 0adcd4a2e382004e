"""Slow clients: a deadline for each request's head, on top of aiohttp's idle keep-alive timeout.

aiohttp closes a connection that waits for a request longer than
``keepalive_timeout`` (``APIINONE_KEEPALIVE_TIMEOUT_S``), counted from the
connection's start or its last answer; bytes of an unfinished head do not
reset it, but neither does anything shorter bound it. So each connection's
protocol is wrapped in a ``HeadDeadline``: from the first byte of a request
(for a connection's first request, from connecting) its head must be complete
within ``APIINONE_HEADER_TIMEOUT_S``, or the connection is closed. A client
that sends nothing, or a header line every few seconds (slowloris), holds a
connection for that long, not for the keep-alive time. Request bodies and
responses (long SSE streams) are not bounded by it.

The wrapper knows a head is complete when the ``mark_requests`` middleware
sees the request; it finds the wrapper through the request's transport.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class HeadDeadline(asyncio.Protocol):
    """An aiohttp connection protocol, closed when a request's head is not complete in time."""

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.in_request = False  # a head arrived and its request is being handled
        self._timer: asyncio.TimerHandle | None = None

    # --- the state, from the middleware ---
    def request_started(self) -> None:
        self.in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self.in_request = False  # idle: aiohttp's keep-alive timeout applies until the next byte

    # --- asyncio.Protocol, forwarded to aiohttp's handler ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()  # the first request's head is due within the deadline of connecting
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self._timer is None:
            self._arm()  # the first byte of the next request (or of a body the handler did not read)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- the deadline ---
    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self.in_request and self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # nothing to answer: no request arrived in time


@web.middleware
async def mark_requests(request: web.Request, handler):
    """Tell the connection's ``HeadDeadline`` that a head arrived, and when its request is done."""
    guard = request.transport.get_protocol() if request.transport is not None else None
    if not isinstance(guard, HeadDeadline):  # an app served some other way (tests' in-process clients)
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


async def listen(runner: web.AppRunner, host: str, port: int, header_timeout_s: float) -> asyncio.AbstractServer:
    """Accept connections for a set-up runner, each behind a ``HeadDeadline``.

    In place of ``web.TCPSite``, whose protocol factory cannot be wrapped: ``runner.server`` is aiohttp's
    factory; ``runner.cleanup()`` still shuts its connections down gracefully. Close the returned server first.
    """
    factory = runner.server
    assert factory is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HeadDeadline(factory(), header_timeout_s), host, port, backlog=2048,
                                    reuse_address=True)
