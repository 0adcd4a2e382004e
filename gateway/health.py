"""/healthz (alive), /readyz (Redis and Postgres answer, every node has a live worker, the credit store
recovered after a Redis restart), /metrics (this process's, the supervisors' restarts, and what each
account stores: ``shared/account_storage.py``; each upstream key's state: ``shared/key_state.py``)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway.state import GATEWAY
from shared import keys
from shared.account_storage import storage_metrics
from shared.db.database import DatabaseUnavailable
from shared.key_state import pool_metrics, pool_status
from shared.nodes import live_worker_counts
from shared.supervision import supervisor_metrics, supervisor_status


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    reasons = []
    try:
        await gw.redis.ping()
        counts = await live_worker_counts(gw.redis, list(gw.catalog.nodes), gw.settings.worker_lease_s)
        gw.dispatch.liveness.live_workers = counts  # routing sees at least what readiness reported
        reasons += [f"node {n} has no live worker" for n, c in counts.items() if not c]
        if gw.db is not None and not await credits_recovered(gw.redis):
            reasons.append("credit store recovering: Redis restarted and the archiver has not yet re-applied "
                           "the record (accounts answer 503 until it has)")
    except RedisError as exc:
        counts = {}
        reasons.append(f"redis unreachable: {exc.__class__.__name__}")
    if not gw.hub.ready.is_set():
        reasons.append("reply channel not subscribed")
    # Postgres down does not stop chat (no request needs it): the gateway stays in rotation, degraded,
    # and says so; history reads and admin writes answer 503 naming the database meanwhile.
    degraded = []
    if gw.db is not None:
        try:
            await gw.db.ping()
        except DatabaseUnavailable as exc:
            degraded.append(f"database unreachable: {exc}")
    status = "not ready" if reasons else "degraded" if degraded else "ready"
    body = {"status": status, "reasons": reasons, "degraded": degraded, "nodes": counts}
    return web.json_response(body, status=200 if not reasons else 503)


async def credits_recovered(redis) -> bool:
    """Whether the archiver's recovery has run since this Redis started (worker/archiver/recovery.py): until
    then the money scripts fence every account they recovered before, so serving would be 503s."""
    run_id = (await redis.info("server"))["run_id"]
    recovered = await redis.get(keys.RECOVERED_RUN)
    return recovered is not None and recovered.decode() == run_id


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics, plus the restarts `apiinone run`'s supervisor reported to Redis."""
    gw = request.app[GATEWAY]
    try:
        supervised = supervisor_metrics(await supervisor_status(gw.redis))
        key_pools = pool_metrics(await pool_status(gw.redis, list(gw.catalog.nodes)))
    except RedisError:
        supervised = key_pools = b""
    try:  # the record's counters (kept on write: shared/account_storage.py)
        storage = await storage_metrics(gw.db, gw.settings.account_max_files, gw.settings.account_max_stored_bytes)
    except DatabaseUnavailable:
        storage = b""
    return web.Response(body=generate_latest() + supervised + storage + key_pools,
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
