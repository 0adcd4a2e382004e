"""The archiver's hourly upkeep of the record: usage partitions made ahead, old months dropped.

``shared/db/usage_partitions.py`` does the work; this loop runs it at start and every
``EVERY_S``, logs what changed, and keeps going through a database outage (the next round
catches up: a missing month's rows wait in the default partition meanwhile).
"""

from __future__ import annotations

import asyncio

import structlog
from asyncpg import PostgresError

from shared.db.database import Database, DatabaseUnavailable
from shared.db.usage_partitions import maintain

log = structlog.get_logger()
EVERY_S = 3600.0
RETRY_S = 30.0


async def maintenance_loop(db: Database, retention_months: int, stopping: asyncio.Event,
                           every_s: float = EVERY_S) -> None:
    while not stopping.is_set():
        pause = every_s
        try:
            done = await maintain(db, retention_months)
            if done.created or done.dropped or done.stragglers_deleted:
                log.info("usage partitions maintained", created=done.created, dropped=done.dropped,
                         stragglers_deleted=done.stragglers_deleted, retention_months=retention_months)
            if done.postponed:
                log.warning("usage partition changes postponed: a long read held the table",
                            postponed=done.postponed)
                pause = RETRY_S
        except DatabaseUnavailable as exc:
            log.warning("usage partition maintenance: the database is unreachable; trying again", error=str(exc))
            pause = RETRY_S
        except PostgresError as exc:  # never the end of the loop: the next round tries again
            log.error("usage partition maintenance failed; trying again", error=str(exc))
            pause = RETRY_S
        try:
            await asyncio.wait_for(stopping.wait(), pause)
        except asyncio.TimeoutError:
            pass
