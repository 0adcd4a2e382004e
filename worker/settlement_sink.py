"""Where a finished job's settlement goes: the billing queue, in the same round trip as its last frames."""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.contracts import ChatJob, Settlement
from shared.credits import settlement_pending_commands
from shared.queue import NodeQueue
from worker.publisher import ReplyPublisher

log = structlog.get_logger()

HAND_OFF_TRIES = 5


def settlement_commands(settlement: Settlement) -> list[tuple]:
    """Queue the settlement, and first mark its hold as pending so the reconciler leaves it be."""
    return (settlement_pending_commands(settlement["account_id"], settlement["request_id"])
            + NodeQueue.enqueue_commands(keys.BILLING_QUEUE, "settle", settlement))


class BillingQueueSink:
    """The node worker's SettlementSink (worker/chat_job.py)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def finish(self, publisher: ReplyPublisher, frames: bytes, settlement: Settlement) -> None:
        try:
            await publisher.close(frames, also=settlement_commands(settlement))
        except RedisError as exc:
            log.warning("final publish failed; retrying the billing hand-off", error=str(exc))
            await self.hand_to_billing(settlement)

    async def hand_to_billing(self, settlement: Settlement) -> None:
        """Queue the settlement alone; retried briefly so a Redis blip does not lose a charge."""
        for attempt in range(HAND_OFF_TRIES):
            try:
                for command in settlement_commands(settlement):
                    await self.redis.execute_command(*command)
                return
            except RedisError as exc:
                log.warning("billing hand-off failed", request_id=settlement["request_id"], error=str(exc))
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("billing hand-off gave up; the hold will be reconciled", request_id=settlement["request_id"])

    async def store_result(self, job: ChatJob, final: bytes) -> None:
        for attempt in range(HAND_OFF_TRIES):
            try:
                await self.redis.set(job["result_key"], final, ex=int(job.get("result_ttl_s") or 86400))
                return
            except RedisError as exc:
                log.warning("batch result not stored, retrying", request_id=job["id"], error=str(exc))
                await asyncio.sleep(0.2 * 2**attempt)
