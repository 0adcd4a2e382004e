"""Where a line's attempt is, read from Redis (not from replies, which may have been lost).

Used when a line has been silent for a while and when a resumed batch worker
picks up the lines its predecessor had in flight.
"""

from __future__ import annotations

from enum import Enum

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from shared import keys
from shared.catalog import Model
from shared.keys import AccountKeys, BatchKeys


class Probe(Enum):
    RESULT = "result"  # its final reply is stored: write it
    RUNNING = "running"  # a node worker popped and announced it (its worker id comes back)
    QUEUED = "queued"  # still on a node's batch queue
    CLAIMED = "claimed"  # popped by a node worker that has not announced it yet
    HELD = "held"  # never enqueued (or lapsed), its credits are held
    UNSENT = "unsent"  # never enqueued, nothing held


async def probe(redis: Redis, b: BatchKeys, account_id: str, rid: str, model: Model) -> tuple[Probe, bytes | None]:
    """The attempt's state, with the stored reply frame (RESULT) or the running worker's id (RUNNING).

    The job key holds the job's bytes, which are its member on the node's batch queue
    (shared/queue.py); the node worker that pops it rewrites the key to ``running-on:<worker id>``
    with the job's first publish (worker/node_worker.py), and the key lapses after the request
    timeout. Read in one transaction, so the answer is one moment's state.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(job_key_prefix + rid)
        pipe.get(b.result(rid))
        pipe.hexists(AccountKeys(account_id).holds, rid)
        job, frame, held = await pipe.execute()
    if frame:
        return Probe.RESULT, frame
    if job and job.startswith(keys.JOB_RUNNING_ON):
        return Probe.RUNNING, job[len(keys.JOB_RUNNING_ON):]
    if job:
        async with redis.pipeline(transaction=False) as pipe:
            for node in model.nodes:
                pipe.zscore(keys.node_batch_queue(node), job)
            scores = await pipe.execute()
        return (Probe.QUEUED if any(score is not None for score in scores) else Probe.CLAIMED), None
    return (Probe.HELD if held else Probe.UNSENT), None
