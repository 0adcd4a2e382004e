"""Usage's monthly partitions: made ahead of time, and dropped whole when retention says so.

``sql/0002_usage_partitions.sql`` partitions ``usage`` by month of ``sid_ms`` (UTC) into tables named
``usage_YYYYMM``, with ``usage_default`` for rows no month covers yet. ``maintain`` (the archiver
runs it at start and every hour) creates this month's and the next ``AHEAD`` months' partitions,
so rows land in their month and not in the default, and drops every month before the retention
window: with ``retention_months`` N, the current month and the N before it are kept, so a row
lives at least N months. Dropping a partition is one ``DROP TABLE``: no row-by-row delete, no bloat.
Stragglers in the default partition older than the window are deleted too. The ledger and orders
are separate tables and are never touched: balance == sum of the ledger forever.

One maintenance at a time across archivers: an advisory lock, tried, not waited on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from asyncpg import Connection, LockNotAvailableError

from shared.db.database import Database

AHEAD = 2  # months made ahead of the current one
MAINTENANCE_LOCK = 0x61706970  # "apip": one partition maintenance at a time
LOCK_WAIT = "2s"  # how long a drop waits for the table's readers before it is postponed
_PARTITION = re.compile(r"usage_(\d{4})(\d{2})")


@dataclass
class Maintenance:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    postponed: list[str] = field(default_factory=list)  # to make or drop; a long read held a table
    stragglers_deleted: int = 0
    skipped: bool = False  # another archiver held the lock


def month_start(day: date, months_back: int = 0) -> date:
    """The first day of ``day``'s month, ``months_back`` months earlier (negative: later)."""
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def month_ms(first_day: date) -> int:
    return int(datetime(first_day.year, first_day.month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def partition_name(first_day: date) -> str:
    return f"usage_{first_day:%Y%m}"


async def partitions(db: Database | Connection) -> list[str]:
    """The monthly partitions, oldest first (the default partition is not listed)."""
    rows = await db.fetch("""SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                              WHERE i.inhparent = 'usage'::regclass""")
    return sorted(r["relname"] for r in rows if _PARTITION.fullmatch(r["relname"]))


async def maintain(db: Database, retention_months: int, today: date | None = None) -> Maintenance:
    """Make the coming months' partitions; drop those retention no longer keeps (0: keep every month)."""
    today = today or datetime.now(timezone.utc).date()
    done = Maintenance()
    async with db.connection() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
            done.skipped = True
            return done
        try:
            for ahead in range(AHEAD + 1):
                await _ensure(conn, month_start(today, -ahead), done)
            if retention_months > 0:
                await _retire(conn, month_start(today, retention_months), done)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
    return done


async def _ensure(conn: Connection, first: date, done: Maintenance) -> None:
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")  # attaching locks usage_default
            if await conn.fetchval("SELECT usage_ensure_partition($1::date)", first):
                done.created.append(partition_name(first))
    except LockNotAvailableError:
        done.postponed.append(partition_name(first))


async def _retire(conn: Connection, keep_from: date, done: Maintenance) -> None:
    """Drop the months before ``keep_from``, one transaction each. DROP TABLE needs the parent's
    exclusive lock, which a long read (an export's cursor) holds off: rather than queue every other
    read and insert behind it, a drop gives up after ``LOCK_WAIT`` and is tried again next round."""
    for name in await partitions(conn):
        m = _PARTITION.fullmatch(name)
        if not m or date(int(m[1]), int(m[2]), 1) >= keep_from:
            continue
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
                await conn.execute(f'DROP TABLE "{name}"')  # name matched usage_NNNNNN: nothing to quote
            done.dropped.append(name)
        except LockNotAvailableError:
            done.postponed.append(name)
    status = await conn.execute("DELETE FROM usage_default WHERE sid_ms < $1", month_ms(keep_from))
    done.stragglers_deleted = int(status.split()[-1])
