"""Gateway: what one gateway process holds, and the few operations its handlers share."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import KeyCache
from shared import keys
from shared.accounts import Accounts, KeyRecord
from shared.breaker import NodeBreaker
from shared.catalog import Catalog, Model
from shared.credits import Credits
from shared.nodes import live_worker_counts
from shared.queue import NodeQueue
from shared.redis_client import make_redis
from shared.reply_hub import ReplyHub
from shared.scripts import Scripts
from shared.settings import Settings

log = structlog.get_logger()

LIVENESS_REFRESH_S = 1.0


class Gateway:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gateway_id = uuid.uuid4().hex[:12]
        # A short socket timeout: with Redis gone, clients get a 503 within about a second, never a hang.
        self.redis = make_redis(settings.redis_url, socket_timeout=1.0)
        self.pubsub_redis = make_redis(settings.redis_url, max_connections=2, socket_timeout=None, retries=0)
        self.scripts = Scripts(self.redis)
        self.credits = Credits(self.redis, self.scripts)
        self.accounts = Accounts(self.redis, self.credits)
        self.queue = NodeQueue(self.redis, self.scripts)
        self.breaker = NodeBreaker(settings.breaker_threshold, settings.breaker_cooldown_s)
        self.keys = KeyCache(self.accounts)
        self.hub = ReplyHub(self.pubsub_redis, self.gateway_id, self.keys.revoke)
        self.live_workers: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            await self.scripts.load_all(self.redis)
        except RedisError as exc:  # loaded on first use instead
            log.warning("could not preload scripts", error=str(exc))
        self.hub.start()
        await self._refresh_liveness()
        self._refresher = asyncio.create_task(self._liveness_loop())

    async def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        await self.hub.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
        await self.pubsub_redis.aclose()

    def spawn(self, coro) -> None:
        """Run a follow-up that must outlive the (possibly cancelled) handler."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- routing -----------------------------------------------------------------
    async def _refresh_liveness(self) -> None:
        try:
            self.live_workers = await live_worker_counts(self.redis, list(self.catalog.nodes),
                                                         self.settings.worker_lease_s)
        except RedisError:
            self.live_workers = {}

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_REFRESH_S)
            await self._refresh_liveness()

    async def pick_node(self, model: Model, exclude: list[str] = ()) -> str | None:
        """A node for the model: among routes with a live worker and a closed circuit, the best
        priority, and within it a weighted random choice.

        The breaker only reorders: when every live node's circuit is open, the
        first live one gets the request anyway, as the probe. None: no live worker.
        """
        for attempt in range(2):
            live = [r for r in model.routes if self.live_workers.get(r.node) and r.node not in exclude]
            if live:
                usable = [r for r in live if self.breaker.allows(r.node)] or live[:1]
                best = [r for r in usable if r.priority == usable[0].priority]
                if len(best) == 1:
                    return best[0].node
                return random.choices(best, weights=[r.weight for r in best])[0].node
            if attempt == 0:
                await self._refresh_liveness()  # the snapshot may predate a worker that just started
        return None

    async def worker_alive(self, worker_id: str) -> bool:
        try:
            return bool(await self.redis.exists(keys.worker_info(worker_id)))
        except RedisError:
            return True  # cannot tell; the reply channel's own failure handling covers a Redis outage

    # --- ending requests that never reached (or lost) their worker -------------------------
    async def refund_unstarted(self, key: KeyRecord, request_id: str, model: str, node: str, code: str) -> None:
        await self._refund(key, request_id, model, node, "rejected", code)

    async def fail_lost(self, key: KeyRecord, request_id: str, model: str, node: str, code: str) -> None:
        await self._refund(key, request_id, model, node, "failed", code)

    async def _refund(self, key: KeyRecord, request_id: str, model: str, node: str, status: str, code: str) -> None:
        row = {"request_id": request_id, "model": model, "node": node, "key_id": key.id, "status": status,
               "error_code": code, "created": int(time.time())}
        try:
            await self.credits.settle(key.account_id, request_id, 0, row, key_id=key.id, actual_tokens=0)
        except RedisError as exc:  # the reconciler releases the hold later
            log.warning("refund deferred to reconciliation", request_id=request_id, error=str(exc))

    async def cancel_request(self, key: KeyRecord, request_id: str, model: str, node: str) -> None:
        """The client left: withdraw a queued job, or tell the node's workers to stop it."""
        try:
            if await self.queue.withdraw(keys.node_queue(node), request_id):
                await self.refund_unstarted(key, request_id, model, node, "client_disconnected")
            else:
                await self.redis.publish(keys.node_cancel_channel(node), request_id)
        except RedisError as exc:
            log.warning("cancel not delivered", request_id=request_id, error=str(exc))


GATEWAY = web.AppKey("gateway", Gateway)  # request.app[GATEWAY]: this process's Gateway
