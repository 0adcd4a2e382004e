"""Which workers serve which node: read from the workers' heartbeats."""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.catalog import Catalog
from shared.key_state import pool_status

log = structlog.get_logger()

LIVENESS_REFRESH_S = 1.0


async def live_worker_counts(redis: Redis, nodes: list[str], lease_s: float) -> dict[str, int]:
    """Workers per node whose last heartbeat is younger than the lease; one round trip."""
    cutoff = int((time.time() - lease_s) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.zcount(keys.node_workers(node), cutoff, "+inf")
        counts = await pipe.execute()
    return dict(zip(nodes, counts))


class Liveness:
    """A process's view of which nodes have live workers, refreshed every second, and of one worker."""

    def __init__(self, redis: Redis, nodes: list[str], lease_s: float) -> None:
        self.redis = redis
        self.nodes = nodes
        self.lease_s = lease_s
        self.live_workers: dict[str, int] = {}

    async def refresh(self) -> dict[str, int]:
        try:
            self.live_workers = await live_worker_counts(self.redis, self.nodes, self.lease_s)
        except RedisError:
            self.live_workers = {}
        return self.live_workers

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_REFRESH_S)
            await self.refresh()

    async def worker_alive(self, worker_id: str) -> bool:
        try:
            return bool(await self.redis.exists(keys.worker_info(worker_id)))
        except RedisError:
            return True  # cannot tell; the reply channel's own failure handling covers a Redis outage


async def node_status(redis: Redis, catalog: Catalog, lease_s: float) -> list[dict]:
    cutoff = int((time.time() - lease_s) * 1000)
    pools = await pool_status(redis, list(catalog.nodes))
    out = []
    for node in catalog.nodes:
        await redis.zremrangebyscore(keys.node_workers(node), "-inf", cutoff - 3_600_000)  # forget the long dead
        ids = [w.decode() for w in await redis.zrangebyscore(keys.node_workers(node), cutoff, "+inf")]
        workers = []
        for wid in ids:
            raw = await redis.hgetall(keys.worker_info(wid))
            if raw:
                info = {k.decode(): v.decode() for k, v in raw.items()}
                workers.append({
                    "id": wid, "host": info.get("host"), "pid": int(info.get("pid", 0)),
                    "concurrency": int(info.get("concurrency", 0)), "inflight": int(info.get("inflight", 0)),
                    "draining": info.get("draining") == "1", "started": int(info.get("started", 0)),
                    "last_heartbeat_ms": int(info.get("heartbeat_ms", 0)),
                })
        out.append({
            "id": node,
            "object": "node",
            "provider": catalog.nodes[node].provider,
            "models": sorted(m.id for m in catalog.models.values() if node in m.nodes),
            "workers_alive": len(workers),
            "capacity": sum(w["concurrency"] for w in workers),
            "inflight": sum(w["inflight"] for w in workers),
            "queue_depth": await redis.zcard(keys.node_queue(node)),
            "batch_queue_depth": await redis.zcard(keys.node_batch_queue(node)),
            "workers": workers,
            "keys": pools.get(node, []),  # upstream keys, by their last 4 characters (shared/key_state.py)
        })
    return out
