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

from arq.jobs import deserialize_job_raw

from shared import keys
from shared.catalog import Catalog, get_catalog
from shared.contracts import BILLABLE, USAGE_FIELDS
from shared.pricing import PPM, Charge, TokenCounts, price
from shared.credits import Credits, SettleOrder, Settlement
from shared.metrics import (CREDITS_CHARGED, LATE_SHORTFALL, RECONCILED_HOLDS, SETTLE_FAILURES, SETTLEMENTS,
                            labelled)
from shared.queue import deserialize
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings
from worker.claiming import BlockingPopWorker

log = structlog.get_logger()

NUMERIC_PRICE_FIELDS = ("input_tokens", "input_micro", "cached_input_micro", "output_micro")  # 0 when unbilled
SETTLE_TRIES = 8
FENCED_TRIES = 1200  # 10 minutes of 0.5 s waits for a recovery fence to lift
BATCH = 256  # settlements claimed and settled in one pipeline
LINGER_S = 0.025


def charge_for(catalog: Catalog, settlement: dict) -> Charge | None:
    """The price of a settled request: the one pricing function, with the multiplier it was admitted with.
    None when nothing is billed (a failed or rejected request, or a model gone from the catalog)."""
    model = catalog.models.get(settlement["model"])
    if model is None or settlement["status"] not in BILLABLE:
        return None
    if settlement.get("price_version") and settlement["price_version"] != model.prices.version:
        # Admitted under other prices (the catalog changed in between): priced with these, within its hold.
        log.warning("settlement priced with a newer catalog than its hold", request_id=settlement["request_id"],
                    admitted=settlement["price_version"], pricing=model.prices.version)
    return price(model.prices, int(settlement.get("price_multiplier_ppm") or PPM),
                 TokenCounts(int(settlement["prompt_tokens"]), int(settlement["completion_tokens"]),
                             int(settlement.get("cached_tokens") or 0)))


def settle_order(catalog: Catalog, settlement: dict) -> SettleOrder:
    charge = charge_for(catalog, settlement)
    row = {f: settlement.get(f, "") for f in USAGE_FIELDS}
    row.update(charge.usage_fields() if charge else {f: 0 for f in NUMERIC_PRICE_FIELDS})
    if charge is None:
        row["price_multiplier_ppm"] = int(settlement.get("price_multiplier_ppm") or PPM)
    return SettleOrder(
        account_id=settlement["account_id"], request_id=settlement["request_id"],
        charge_micro=charge.total_micro if charge else 0, usage_row=row, key_id=settlement["key_id"],
        actual_tokens=int(settlement["prompt_tokens"]) + int(settlement["completion_tokens"]))


def count_settlement(order: SettleOrder, result: Settlement) -> None:
    """Metrics of one settlement. A late one (its hold was reconciled, e.g. during a billing outage)
    is counted apart, with what it could not charge: money the outage cost."""
    if not result.applied:
        labelled(SETTLEMENTS, "replay").inc()
        return
    # A late settlement with nothing to charge (a failed attempt whose hold its retry took over,
    # shared/lua/reserve.lua) only writes its usage row: nothing was lost, nothing to report.
    late = result.late and order.charge_micro > 0
    labelled(SETTLEMENTS, "late" if late else "applied").inc()
    labelled(CREDITS_CHARGED, str(order.usage_row.get("model", ""))).inc(result.charged_micro)
    if late:
        LATE_SHORTFALL.inc(order.charge_micro - result.charged_micro)
        log.warning("late settlement: its hold had been reconciled", request_id=order.request_id,
                    charge=order.charge_micro, charged=result.charged_micro)


async def settle(ctx: dict, settlement: dict) -> int:
    """The arq job function, for a stock arq worker; BillingWorker settles in batches instead."""
    worker: BillingWorker = ctx["worker"]
    order = settle_order(worker.catalog, settlement)
    (result,) = await worker.credits.settle_many([order])
    count_settlement(order, result)
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

    async def _claim_loop(self, claimer) -> None:
        """Claim settlements in batches: what queued up while the last batch ran goes in one pipeline.

        arq's per-job bookkeeping (in-progress and retry keys, results) costs ~10 Redis commands
        and a task per settlement; settle.lua is idempotent and needs none of it. The queue's
        members are the jobs themselves (arq's format): two round trips a batch, the pop and
        the settlements.
        """
        while self.allow_pick_jobs:
            try:
                # BZMPOP: block until settlements wait, then take up to BATCH of them at once.
                popped = await claimer.bzmpop(self.idle_timeout_s, 1, [keys.BILLING_QUEUE], min=True, count=BATCH)
            except RedisError as exc:
                log.warning("billing queue unreachable, retrying", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if not popped:
                continue
            jobs = [member for member, _score in popped[1]]
            # A shutdown must not drop a batch already taken off the queue: shielded, and listed
            # in arq's tasks so its drain (job_completion_wait) and close() wait for it.
            batch = asyncio.ensure_future(self.settle_batch(jobs))
            self.track("settle-batch", batch)
            await asyncio.shield(batch)
            if len(jobs) < BATCH:
                # Linger a moment after a small batch so the next one is bigger: under load this
                # trades a few ms of settlement delay for far fewer round trips per settlement;
                # at rest the next settlement still wakes BZMPOP at once.
                await asyncio.sleep(LINGER_S)

    async def settle_batch(self, jobs: list[bytes]) -> None:
        settlements = []
        for raw in jobs:
            try:
                settlements.append(deserialize_job_raw(raw, deserializer=deserialize)[1][0])
            except Exception:  # noqa: BLE001 - one unreadable job must not hold up the others
                log.exception("unreadable settlement dropped; its hold will be reconciled", job=raw[:200])
        orders = [settle_order(self.catalog, s) for s in settlements]
        for waited in range(FENCED_TRIES):
            orders = await self._settle_orders(orders, len(jobs))
            if not orders:
                return
            # Fenced: Redis restarted and these accounts wait for the recovery (the archiver's); soon done.
            if waited == 0:
                log.warning("settlements wait for the recovery of their accounts", count=len(orders))
            await asyncio.sleep(0.5)
        log.error("settlements gave up waiting for the recovery; the holds will be reconciled", count=len(orders))

    async def _settle_orders(self, orders: list[SettleOrder], size: int) -> list[SettleOrder]:
        """Settle; returns the orders refused by a recovery fence, to try again."""
        for attempt in range(SETTLE_TRIES):
            try:
                results = await self.credits.settle_many(orders)
                break
            except RedisError as exc:
                SETTLE_FAILURES.inc()
                log.warning("settle batch failed, retrying", size=size, error=str(exc))
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
        else:
            log.error("settle batch gave up; the holds will be reconciled", size=size)
            return []
        fenced = []
        for order, result in zip(orders, results):
            if result.fenced:
                fenced.append(order)
            else:
                count_settlement(order, result)
        return fenced

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
