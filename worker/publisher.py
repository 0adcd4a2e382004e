"""ReplyPublisher: one request's events to its gateway, in order, coalesced.

While one PUBLISH is in flight, new frames queue up and leave together in the
next one: no timer, no added latency when idle, and Redis load that stops
growing with token rate once it outpaces the round trip.

The STARTED announcement rides with the first frame the job sends, and goes
alone only if the job stays silent for ``ANNOUNCE_AFTER_S``: a short request
costs one PUBLISH in all. PUBLISHes share the worker's pipeline with the other
jobs' commands (``shared/coalesce.py``).
"""

from __future__ import annotations

import asyncio

import structlog
from redis.exceptions import RedisError

from shared import relay
from shared.coalesce import Coalescer, Command

log = structlog.get_logger()

ANNOUNCE_AFTER_S = 0.2


class ReplyPublisher:
    def __init__(self, coalescer: Coalescer, channel: str, request_id: str, first: list[Command] = ()) -> None:
        self.coalescer = coalescer
        self._first = list(first)  # commands to send with the first PUBLISH (e.g. the claimed job's key DEL)
        self.channel = channel
        self.request_id = request_id
        self._buffer: list[bytes] = []
        self._flushing: asyncio.Task | None = None
        self._announcement: bytes | None = None
        self._announce_timer: asyncio.TimerHandle | None = None

    def announce(self, frame: bytes) -> None:
        """Send ``frame`` first: with the next frame, or alone after ANNOUNCE_AFTER_S."""
        self._announcement = frame
        self._announce_timer = asyncio.get_running_loop().call_later(ANNOUNCE_AFTER_S, self.send, b"")

    def send(self, frame: bytes) -> None:
        if self._announcement is not None:
            self._buffer.append(self._announcement)
            self._announcement = None
            self._announce_timer.cancel()
        if frame:
            self._buffer.append(frame)
        if self._flushing is None and self._buffer:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._buffer:
                frames = b"".join(self._buffer)
                self._buffer.clear()
                commands, self._first = self._first, []
                commands.append(("PUBLISH", self.channel, relay.message(self.request_id, frames)))
                for reply in await self.coalescer.execute(commands):
                    if isinstance(reply, Exception):
                        raise reply
        except RedisError as exc:
            # The gateway notices the silence through the worker's lease and fails the request.
            log.warning("reply publish failed", request_id=self.request_id, error=str(exc))
            self._buffer.clear()
        finally:
            self._flushing = None

    async def close(self, frames: bytes, also: list[Command] = ()) -> None:
        """The request's last frames and, in the same round trip, the commands ``also``.

        Earlier frames go first (in order); raises RedisError so the caller can retry ``also``.
        """
        if self._announcement is not None:
            if frames:
                self.send(b"")  # the announcement leads
            else:  # the job ends having said nothing (its client left): nobody is listening
                self._announce_timer.cancel()
                self._announcement = None
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        frames = b"".join(self._buffer) + frames
        self._buffer.clear()
        commands, self._first = self._first, []
        if frames:
            commands.append(("PUBLISH", self.channel, relay.message(self.request_id, frames)))
        for reply in await self.coalescer.execute(commands + list(also)):
            if isinstance(reply, Exception):
                raise reply
