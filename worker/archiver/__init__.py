"""The archiver (`apiinone archiver`): Redis' ledger and usage entries to Postgres, and the recovery.

- ``archive.py``  the loop: the archive index's consumer group, batched upserts, trim after commit
- ``rows.py``     stream entries as rows; the insert path (also the benchmark's, for 1,000,000 rows)
- ``recovery.py`` after Redis restarts: re-apply what Postgres has and Redis lost, lift the fences
- ``restore.py``  accounts Redis lost entirely, rebuilt from Postgres (`apiinone admin restore`)
- ``maintenance.py`` hourly: usage's monthly partitions made ahead, months past retention dropped
- ``responses.py`` stored Responses (the response archive stream) to Postgres, and past their retention out
- ``redemption_reconcile.py`` redemption-code uses a dead gateway claimed and never recorded: credited once
- ``outbox.py``     low-balance alerts the record queued (mail, signed webhooks), sent off the request path
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from redis.exceptions import RedisError

from shared.credits import Credits
from shared.db.credits_record import CreditRecord
from shared.db.database import Database, DatabaseUnavailable
from shared.mail import Mailer
from shared.db.migrations import migrate
from shared.redemption import RedemptionCodes
from shared.redis_client import make_redis
from shared.scripts import Scripts
from shared.settings import Settings, get_settings
from worker.archiver.archive import Archiver
from worker.archiver.maintenance import maintenance_loop
from worker.archiver.outbox import Outbox, outbox_loop
from worker.archiver.recovery import Recovery
from worker.archiver.redemption_reconcile import reconcile_loop
from worker.archiver.responses import ResponseArchiver
from worker.batch.egress import CallbackSender

log = structlog.get_logger()
RECOVERY_CHECK_S = 0.25


async def _migrated(db: Database, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await migrate(db)
            return
        except DatabaseUnavailable as exc:
            log.error("archiver: the database is unreachable; waiting for it", error=str(exc))
            await asyncio.sleep(1)


async def recovery_loop(recovery: Recovery, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await recovery.check()
        except (RedisError, DatabaseUnavailable) as exc:
            log.warning("recovery check failed; trying again", error=str(exc))
        await asyncio.sleep(RECOVERY_CHECK_S)


def _redemption_codes(redis, db: Database) -> RedemptionCodes:
    scripts = Scripts(redis)
    return RedemptionCodes(redis, scripts, Credits(redis, scripts, CreditRecord(db)), db)


def _outbox(settings: Settings, redis, db: Database) -> Outbox:
    sender = CallbackSender(settings.batch_callback_timeout_s, settings.callback_allow_private)
    return Outbox(db, redis, Mailer(settings), sender, settings.public_base_url)


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set: the archiver moves Redis' entries to Postgres")
    redis = make_redis(settings.redis_url, max_connections=8)
    db = Database(settings.database_url, pool_size=2)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await _migrated(db, stopping)
    archiver = Archiver(redis, db, per_account=settings.archive_batch)
    log.info("archiver started", consumer=archiver.consumer)
    tasks = [asyncio.create_task(archiver.run(stopping)),
             asyncio.create_task(recovery_loop(Recovery(redis, db), stopping)),
             asyncio.create_task(maintenance_loop(db, settings.usage_retention_months, stopping)),
             asyncio.create_task(ResponseArchiver(redis, db, settings.responses_retention_days * 86400,
                                                  archiver.consumer).run(stopping)),
             asyncio.create_task(reconcile_loop(_redemption_codes(redis, db), settings.redemption_reconcile_after_s,
                                                stopping)),
             asyncio.create_task(outbox_loop(_outbox(settings, redis, db), stopping))]
    try:
        await stopping.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
        await redis.aclose()
