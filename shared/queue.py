"""NodeQueue: put jobs on arq queues in one round trip, and take back unclaimed ones.

Jobs are arq jobs (arq's format, orjson-serialized) so arq's worker runs them.
arq's own ``enqueue_job`` costs two round trips (WATCH, then MULTI); request
ids are unique, so one MULTI/EXEC is enough here. Workers claim jobs with
BZPOPMIN (see ``worker/node_worker.py``), which removes them from the queue:
a queued job is a job nobody has started.
"""

from __future__ import annotations

import time

import orjson
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis


def serialize(data: dict) -> bytes:
    return orjson.dumps(data)


def deserialize(data: bytes) -> dict:
    return orjson.loads(data)


class NodeQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def enqueue(self, queue: str, function: str, job_id: str, payload: dict, expires_ms: int) -> None:
        now_ms = int(time.time() * 1000)
        job = serialize_job(function, (payload,), {}, None, now_ms, serializer=serialize)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.psetex(job_key_prefix + job_id, expires_ms, job)
            pipe.zadd(queue, {job_id: now_ms})
            await pipe.execute()

    async def withdraw(self, queue: str, job_id: str) -> bool:
        """Remove a job nobody claimed yet; False means a worker already has it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue, job_id)
            pipe.delete(job_key_prefix + job_id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def depth(self, queue: str) -> int:
        return await self.redis.zcard(queue)
