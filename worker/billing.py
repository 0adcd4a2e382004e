"""The billing worker (`apiinone billing-worker`): settles requests and reconciles holds.

Settlement is one Lua script per request (``shared/credits.py``): charge the
token cost, release the hold, append ledger and usage rows; idempotent per
request id. The price is computed here from the catalog, the one authority.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from arq.connections import ArqRedis
from arq.worker import func
from redis.exceptions import RedisError

from shared import keys
from shared.catalog import Catalog, get_catalog
from shared.credits import Credits
from shared.metrics import CREDITS_CHARGED, RECONCILED_HOLDS, SETTLE_FAILURES, SETTLEMENTS
from shared.queue import deserialize
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings
from worker.claiming import BlockingPopWorker

log = structlog.get_logger()

BILLABLE = ("succeeded", "cancelled")
SETTLE_TRIES = 8
USAGE_FIELDS = ("request_id", "model", "node", "key_id", "status", "error_code", "finish_reason", "stream",
                "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "latency_ms", "ttft_ms",
                "queue_ms", "created", "batch_id", "trace_id")


def charge_for(catalog: Catalog, settlement: dict) -> int:
    model = catalog.models.get(settlement["model"])
    if model is None or settlement["status"] not in BILLABLE:
        return 0
    return model.cost_micro(int(settlement["prompt_tokens"]), int(settlement["completion_tokens"]))


async def settle(ctx: dict, settlement: dict) -> int:
    worker: BillingWorker = ctx["worker"]
    charge = charge_for(worker.catalog, settlement)
    row = {f: settlement.get(f, "") for f in USAGE_FIELDS}
    for attempt in range(SETTLE_TRIES):
        try:
            result = await worker.credits.settle(
                settlement["account_id"], settlement["request_id"], charge, row, key_id=settlement["key_id"],
                actual_tokens=int(settlement["prompt_tokens"]) + int(settlement["completion_tokens"]))
            break
        except RedisError as exc:
            # The job was popped off the queue, so arq cannot retry it: retry here (settle is idempotent).
            SETTLE_FAILURES.inc()
            log.warning("settle failed, retrying", request_id=settlement["request_id"], error=str(exc))
            await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
    else:
        log.error("settle gave up; the hold will be reconciled", request_id=settlement["request_id"])
        return 0
    if not result.applied:
        SETTLEMENTS.labels("replay").inc()
        log.info("settlement replay ignored", request_id=settlement["request_id"])
    else:
        SETTLEMENTS.labels("applied").inc()
        CREDITS_CHARGED.labels(settlement["model"]).inc(result.charged_micro)
    return result.charged_micro


class BillingWorker(BlockingPopWorker):
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = catalog or get_catalog()
        pool = make_redis(self.settings.redis_url, cls=ArqRedis)
        self.credits = Credits(pool)
        super().__init__(
            functions=[func(settle, name="settle", max_tries=5)],
            queue_name=keys.BILLING_QUEUE,
            redis_pool=pool,
            claim_queues=[keys.BILLING_QUEUE],
            redis_url=self.settings.redis_url,
            max_jobs=64,
            keep_result=0,
            job_completion_wait=10,
            job_deserializer=deserialize,
            ctx={},
        )
        self.ctx["worker"] = self

    async def background(self) -> list:
        return [self._reconcile_loop()]

    async def _reconcile_loop(self) -> None:
        grace_ms = int(self.settings.hold_grace_s * 1000)
        while True:
            try:
                fixed = await self.credits.reconcile_expired_holds(grace_ms)
                if fixed:
                    RECONCILED_HOLDS.inc(fixed)
                    log.warning("reconciled expired holds", count=fixed)
            except RedisError as exc:
                log.warning("reconcile failed", error=str(exc))
            await asyncio.sleep(self.settings.reconcile_interval_s)


async def serve() -> None:
    worker = BillingWorker()
    log.info("billing worker starting", started=int(time.time()))
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()
