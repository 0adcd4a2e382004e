"""Completion callbacks: a signed event POSTed to a batch's ``metadata.callback_url`` when it ends.

Signed like standard-webhooks: ``webhook-id`` (the event id, the same on every
retry), ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`` keyed with the account's secret
(``GET /api/v1/webhook_secret``; after a rotation the old secret adds a second signature for a while:
``shared/webhook_secrets.py``). Retried with exponential backoff (1, 2, 4...
s) up to ``batch_callback_attempts``; a refused address is not retried.

Each attempt is recorded on the batch as ``{"attempt", "at", "outcome",
"duration_ms"}`` with a coarse outcome only (``egress.py``). An account gets
at most ``batch_callbacks_per_minute`` attempts per clock minute; the rest are
deferred to the next minute, not dropped and not counted as attempts.

Deliveries are due in a zset (``BATCH_CALLBACKS``: batch id -> due ms) that
every batch worker scans; a worker claims an attempt by pushing its due time
past the attempt's timeout, so a worker killed mid-attempt only delays it.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.batch_store import BatchStore, new_id
from shared.keys import BATCH_CALLBACKS, BatchKeys
from shared.settings import Settings
from shared.webhook_secrets import sign, signing_secrets
from shared.callback_targets import Delivery
from worker.batch.egress import CallbackSender

log = structlog.get_logger()

SCAN_S = 0.25  # how often due deliveries are looked for
SCAN_PAGE = 50


def event_body(raw: dict[bytes, bytes], event_id: str) -> bytes:
    """The event: ``{"id", "object": "event", "type": "batch.<status>", "created_at", "data": <batch>}``."""
    batch = BatchStore.batch_object(raw)
    batch.pop("callback", None)
    status = batch["status"]
    return orjson.dumps({"id": event_id, "object": "event", "type": f"batch.{status}",
                         "created_at": batch.get(f"{status}_at") or int(time.time()), "data": batch})


class CallbackBudget:
    """At most ``per_minute`` attempts per account in each clock minute (0: no limit)."""

    def __init__(self, redis: Redis, per_minute: int) -> None:
        self.redis = redis
        self.per_minute = per_minute

    async def admit(self, account_id: str) -> int | None:
        """None when the account may send an attempt now; else when to try again (epoch ms)."""
        if self.per_minute <= 0:
            return None
        window = int(time.time() // 60)
        key = keys.callback_budget(account_id, window)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        if count <= self.per_minute:
            return None
        return (window + 1) * 60_000 + random.randrange(1000)  # the next minute, spread over its first second


class Callbacks:
    def __init__(self, redis: Redis, store: BatchStore, settings: Settings,
                 sender: CallbackSender | None = None) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.sender = sender or CallbackSender(settings.batch_callback_timeout_s, settings.callback_allow_private)
        self.budget = CallbackBudget(redis, settings.batch_callbacks_per_minute)
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.sender.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sender.close()

    async def schedule(self, b: BatchKeys) -> None:
        """The batch reached a terminal status: its event is due now (once, whoever gets here twice)."""
        raw = await self.store.raw_batch(b.id)
        if raw.get(b"callback_url") and not raw.get(b"callback_event_id"):
            await self.redis.hset(b.batch, mapping={"callback_event_id": new_id("evt_"), "callback_status": "pending"})
            await self.redis.zadd(BATCH_CALLBACKS, {b.id: int(time.time() * 1000)})

    async def run(self) -> None:
        while True:
            try:
                due = await self.redis.zrangebyscore(BATCH_CALLBACKS, "-inf", int(time.time() * 1000), start=0,
                                                     num=SCAN_PAGE)
                for member in due:
                    batch_id = member.decode()
                    if batch_id in self._delivering:
                        continue
                    # Claim the attempt: push the next due time past this attempt's timeout.
                    later = int((time.time() + self.settings.batch_callback_timeout_s + 5) * 1000)
                    if await self.redis.zadd(BATCH_CALLBACKS, {batch_id: later}, xx=True, ch=True):
                        self._delivering.add(batch_id)
                        task = asyncio.create_task(self.deliver(batch_id))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
            except RedisError as exc:
                log.warning("callback scan failed", error=str(exc))
            await asyncio.sleep(SCAN_S)

    async def deliver(self, batch_id: str) -> None:
        """One claimed attempt: deferred if the account is over its rate, else sent and recorded."""
        b = BatchKeys(batch_id)
        try:
            raw = await self.store.raw_batch(batch_id)
            if not raw or not raw.get(b"callback_url"):
                await self.redis.zrem(BATCH_CALLBACKS, batch_id)
                return
            retry_at = await self.budget.admit(raw[b"account_id"].decode())
            if retry_at is not None:
                await self.redis.zadd(BATCH_CALLBACKS, {batch_id: retry_at}, xx=True)
                log.info("batch callback deferred: the account is over its callback rate", batch_id=batch_id)
                return
            event_id = raw[b"callback_event_id"].decode()
            body = event_body(raw, event_id)
            timestamp = str(int(time.time()))
            signing = await signing_secrets(self.redis, raw[b"account_id"].decode())  # two while rotating
            headers = {"Content-Type": "application/json", "User-Agent": "apiinone-batch-callback/1",
                       "webhook-id": event_id, "webhook-timestamp": timestamp,
                       "webhook-signature": sign(signing, event_id, timestamp, body)}
            number = await self.redis.llen(b.callback) + 1
            at = int(time.time())
            outcome, duration_ms = await self.sender.post(raw[b"callback_url"].decode(), body, headers)
            await self._record(b, {"attempt": number, "at": at, "outcome": outcome, "duration_ms": duration_ms})
        except RedisError as exc:
            log.warning("callback delivery deferred", batch_id=batch_id, error=str(exc))
        finally:
            self._delivering.discard(batch_id)

    async def _record(self, b: BatchKeys, attempt: dict) -> None:
        """Append the attempt; settle the callback's status or schedule the next attempt."""
        number, outcome = attempt["attempt"], attempt["outcome"]
        final = outcome in (Delivery.DELIVERED, Delivery.REFUSED) or number >= self.settings.batch_callback_attempts
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(b.callback, orjson.dumps(attempt))
            pipe.expire(b.callback, int(self.settings.batch_file_retention_s))
            if final:
                pipe.hset(b.batch, "callback_status", "delivered" if outcome == Delivery.DELIVERED else "failed")
                pipe.zrem(BATCH_CALLBACKS, b.id)
            else:
                pipe.zadd(BATCH_CALLBACKS, {b.id: int((time.time() + 2 ** (number - 1)) * 1000)})
            await pipe.execute()
        log.info("batch callback", batch_id=b.id, attempt=number, outcome=outcome)
