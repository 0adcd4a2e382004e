"""Coalescer: the Redis commands of concurrent requests leave together, one pipeline at a time.

Every request on the hot path sends a few commands in one round trip (reserve and
enqueue; a job's last frames and its billing hand-off). Sent one pipeline per
request, each round trip is a socket write and read on both ends: on a busy box
those system calls, not the commands, are most of the CPU. Here the commands of
every request that is ready while a pipeline is in flight wait for it and then
leave in the next one (group commit): one request alone goes at once, as before;
under load the round trips per request fall as the load rises. Replies go back
to each caller in order, its errors its own.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

Command = tuple  # ("EVALSHA", sha, 2, key, key, arg, ...) as redis-py's execute_command takes it

MAX_CALLERS = 512  # per pipeline: a burst leaves in several, so no reply waits behind a huge one


class Coalescer:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiting: list[tuple[list[Command], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def execute(self, commands: list[Command]) -> list:
        """The replies to ``commands``, in order; an error reply comes back as its exception
        object (``raise_on_error=False``); a lost connection raises for every caller in that pipeline."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, future))
        if self._flusher is None:
            # Starts on the loop's next turn: every request handled in this turn joins the first pipeline.
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_CALLERS], self._waiting[MAX_CALLERS:]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for commands, _ in batch:
                            for command in commands:
                                pipe.execute_command(*command)
                        replies = await pipe.execute(raise_on_error=False)
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of this pipeline
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                start = 0
                for commands, future in batch:
                    if not future.done():  # a caller cancelled meanwhile (its client left)
                        future.set_result(replies[start:start + len(commands)])
                    start += len(commands)
        finally:
            self._flusher = None
            for _, future in self._waiting:  # only if this task was cancelled (shutdown)
                if not future.done():
                    future.cancel()
            self._waiting = []
