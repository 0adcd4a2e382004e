"""NodeQueue: put jobs on arq queues in one round trip, and take back unclaimed ones.

Jobs are arq jobs (arq's format, orjson-serialized) so arq's worker runs them.
arq's own ``enqueue_job`` costs two round trips (WATCH, then MULTI); request
ids are unique, so one script (``shared/lua/enqueue.lua``) is enough here, and
it also bounds the queue's depth. A queue's members are the serialized jobs
themselves: workers claim jobs with BZMPOP (see ``worker/claiming.py``), which
removes them from the queue and hands over the job in the same round trip; a
queued job is a job nobody has started. Each job also says when it lapses
(``expires_at_ms``): a worker drops a job whose owner has given up on it.
"""

from __future__ import annotations

import time

import orjson
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from shared.scripts import Scripts


def serialize(data: dict) -> bytes:
    return orjson.dumps(data)


def deserialize(data: bytes) -> dict:
    return orjson.loads(data)


class QueueFull(Exception):
    pass


class NodeQueue:
    def __init__(self, redis: Redis, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)

    async def enqueue(self, queue: str, function: str, job_id: str, payload: dict, expires_ms: int,
                      max_depth: int = 0) -> None:
        """Queue a job; raises ``QueueFull`` when ``max_depth`` jobs already wait."""
        script, keys_, args = self.enqueue_call(queue, function, job_id, payload, expires_ms, max_depth)
        if not await self.scripts.run(script, keys_, args):
            raise QueueFull(queue)

    def enqueue_call(self, queue: str, function: str, job_id: str, payload: dict, expires_ms: int,
                     max_depth: int = 0, held_in: str | None = None):
        """``enqueue`` as a script call for ``Scripts.pipelined``; with ``held_in`` (an account's holds
        hash) the job is queued only if the request holds credits there (result -1 otherwise)."""
        now_ms = int(time.time() * 1000)
        job = serialize_job(function, ({**payload, "expires_at_ms": now_ms + expires_ms},), {}, None, now_ms,
                            serializer=serialize)
        keys_ = [job_key_prefix + job_id, queue] + ([held_in] if held_in else [])
        return self.scripts.call("enqueue", keys_, [job, expires_ms, now_ms, job_id, max_depth, job_id])

    @staticmethod
    def enqueue_commands(queue: str, function: str, payload: dict) -> list[tuple]:
        """Queue a job on an unbounded queue whose jobs are never withdrawn (billing): the
        command, to send with others in one round trip."""
        now_ms = int(time.time() * 1000)
        return [("ZADD", queue, now_ms, serialize_job(function, (payload,), {}, None, now_ms, serializer=serialize))]

    async def withdraw(self, queue: str, job_id: str) -> bool:
        """Remove a job nobody claimed yet; False means a worker already has it (or it lapsed).

        Atomic (withdraw.lua): the member the job key names is removed, or a worker popped it first.
        """
        return bool(await self.scripts.withdraw(keys=[queue, job_key_prefix + job_id], args=[]))

    async def depth(self, queue: str) -> int:
        return await self.redis.zcard(queue)
