"""Which workers serve which node: read from the workers' heartbeats."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared import keys
from shared.catalog import Catalog


async def live_worker_counts(redis: Redis, nodes: list[str], lease_s: float) -> dict[str, int]:
    """Workers per node whose last heartbeat is younger than the lease; one round trip."""
    cutoff = int((time.time() - lease_s) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.zcount(keys.node_workers(node), cutoff, "+inf")
        counts = await pipe.execute()
    return dict(zip(nodes, counts))


async def node_status(redis: Redis, catalog: Catalog, lease_s: float) -> list[dict]:
    cutoff = int((time.time() - lease_s) * 1000)
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
        })
    return out
