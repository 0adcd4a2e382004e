"""The batch lease: a batch is run by the one batch worker holding its lease.

The lease is a key with a TTL, taken with SET NX and renewed four times per
lease by its owner only (``shared/lua/batch_lease_renew.lua``). A killed
worker's lease lapses within ``LEASE_MS`` and another worker resumes the
batch; a worker that stops normally hands its batches over at once.
"""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.keys import BatchKeys
from shared.scripts import Scripts

log = structlog.get_logger()

LEASE_MS = 5000


class BatchLeases:
    def __init__(self, redis: Redis, scripts: Scripts, owner: str) -> None:
        self.redis = redis
        self.scripts = scripts
        self.owner = owner

    async def take(self, batch_id: str) -> bool:
        return bool(await self.redis.set(BatchKeys(batch_id).lease, self.owner, nx=True, px=LEASE_MS))

    async def renew(self, batch_id: str, ttl_ms: int = LEASE_MS) -> bool:
        return bool(await self.scripts.batch_lease_renew(keys=[BatchKeys(batch_id).lease], args=[self.owner, ttl_ms]))

    async def release(self, batch_id: str) -> None:
        """Hand the batch over now instead of when the lease lapses (best effort)."""
        try:
            await self.renew(batch_id, 1)
        except RedisError:
            pass

    async def keep(self, running: dict[str, asyncio.Task]) -> None:
        """Renew the lease of every batch running here; stop a batch whose lease was lost."""
        while True:
            await asyncio.sleep(LEASE_MS / 4000)
            for batch_id, task in list(running.items()):
                try:
                    if not await self.renew(batch_id):
                        log.warning("lost the lease of a batch; stopping it here", batch_id=batch_id)
                        task.cancel()
                except RedisError as exc:
                    log.warning("lease renewal failed", batch_id=batch_id, error=str(exc))
