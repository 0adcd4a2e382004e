"""/healthz (alive), /readyz (Redis answers and every node has a live worker), /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway.state import GATEWAY
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
    except RedisError as exc:
        counts = {}
        reasons.append(f"redis unreachable: {exc.__class__.__name__}")
    if not gw.hub.ready.is_set():
        reasons.append("reply channel not subscribed")
    body = {"status": "ready" if not reasons else "not ready", "reasons": reasons, "nodes": counts}
    return web.json_response(body, status=200 if not reasons else 503)


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics, plus the restarts `apiinone run`'s supervisor reported to Redis."""
    try:
        supervised = supervisor_metrics(await supervisor_status(request.app[GATEWAY].redis))
    except RedisError:
        supervised = b""
    return web.Response(body=generate_latest() + supervised, headers={"Content-Type": CONTENT_TYPE_LATEST})
