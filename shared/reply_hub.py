"""ReplyHub: a relaying process's one pub/sub connection (the gateway's, the batch worker's).

Every worker reply for a request this process owns arrives on the gateway's
own channel and is routed here to that request's queue by request id; no
per-request SUBSCRIBE. The same connection hears key revocations.

If the connection drops, replies published meanwhile are lost, so every
request in flight is failed (the client sees a clear 503, its hold is
refunded by its settlement) instead of hanging.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, relay
from shared.errors import unavailable

log = structlog.get_logger()

REVOCATIONS = keys.REVOCATIONS.encode()
LOST = object()  # put on a request's queue when its replies may have been lost


class ReplyHub:
    def __init__(self, redis: Redis, gateway_id: str, on_revocation: Callable[[str | None], None]) -> None:
        self.redis = redis
        self.channel = keys.gateway_channel(gateway_id)
        self.on_revocation = on_revocation
        self.waiters: dict[str, asyncio.Queue] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def register(self, request_id: str) -> asyncio.Queue:
        if not self.ready.is_set():
            raise unavailable("The gateway has lost its connection to Redis; try again shortly.")
        queue: asyncio.Queue = asyncio.Queue()
        self.waiters[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        self.waiters.pop(request_id, None)

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, keys.REVOCATIONS)
                self.on_revocation(None)  # revocations may have been missed while disconnected
                self.ready.set()
                while True:
                    message = await pubsub.parse_response(block=True)
                    self._dispatch(message)
            except (RedisError, OSError) as exc:
                log.warning("reply channel lost, reconnecting", error=str(exc))
            finally:
                self.ready.clear()
                for queue in self.waiters.values():
                    queue.put_nowait(LOST)
                await pubsub.aclose()
            await asyncio.sleep(0.25)

    def _dispatch(self, message: list) -> None:
        # RESP2 pub/sub push: [b"message", channel, data]
        if not message or message[0] != b"message":
            return
        channel, data = message[1], message[2]
        if channel == REVOCATIONS:
            self.on_revocation(data.decode())
            return
        request_id, frames = relay.split_message(data)
        queue = self.waiters.get(request_id)
        if queue is not None:
            queue.put_nowait(frames)
