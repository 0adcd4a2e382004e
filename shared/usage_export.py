"""An account's usage rows for an export: every matching row, newest first, in constant memory.

Two parts, read in this order so that no row is missed or listed twice:

1. Redis' tail (rows not archived, or archived and not yet trimmed), newest first, a page of
   ``XREVRANGE`` at a time, down to the oldest entry the stream still has (or the filter's start).
2. Postgres, rows older than the oldest tail entry read, through a server-side cursor on a
   connection of its own (``Database.dedicated``): rows are fetched ``batch`` at a time as the
   caller consumes them, so an export of millions of rows holds one batch in memory.

The archiver trims a stream only after its rows are committed, so everything older than the
oldest tail entry read is in Postgres by the time part 2 starts. Any time range the account has is
exported (the filter's range; no row budget). Postgres down: the tail is exported and then
``DatabaseUnavailable`` is raised (the caller ends the response short; it never pretends it is whole).
"""

from __future__ import annotations

from typing import AsyncIterator

from redis.asyncio import Redis

from shared.db.database import Database
from shared.db.history_reads import usage_export_query
from shared.history import RowFilter, decode
from shared.keys import AccountKeys

BATCH = 1000


async def _tail(redis: Redis, account_id: str, f: RowFilter, batch: int,
                oldest: list[str]) -> AsyncIterator[list[dict]]:
    """The Redis tail's matching rows; ``oldest[0]`` ends as the oldest entry id read (matching or not)."""
    stream, upper = AccountKeys(account_id).usage, f.max_id
    while True:
        entries = await redis.xrevrange(stream, max=upper, min=f.min_id, count=batch)
        rows = []
        for rid, fields in entries:
            row = decode(fields)
            row["id"] = rid.decode()
            if f.matches(row):
                rows.append(row)
        if entries:
            oldest[:] = [entries[-1][0].decode()]
            upper = f"({oldest[0]}"
        if rows:
            yield rows
        if len(entries) < batch:
            return


async def _archived(db: Database, account_id: str, f: RowFilter, before: str | None,
                    batch: int) -> AsyncIterator[list[dict]]:
    query, args = usage_export_query(account_id, f, before)
    async with db.dedicated() as conn, conn.transaction(readonly=True):
        rows: list[dict] = []
        async for r in conn.cursor(query, *args, prefetch=batch):
            rows.append({**r["fields"], "id": f"{r['sid_ms']}-{r['sid_seq']}"})
            if len(rows) >= batch:
                yield rows
                rows = []
        if rows:
            yield rows


async def usage_export(redis: Redis, db: Database | None, account_id: str, f: RowFilter,
                       batch: int = BATCH) -> AsyncIterator[list[dict]]:
    """Every row matching ``f``, newest first, ``batch`` rows at a time (each with its ``id``)."""
    oldest: list[str] = []
    async for rows in _tail(redis, account_id, f, batch, oldest):
        yield rows
    if db is None:
        return
    async for rows in _archived(db, account_id, f, oldest[0] if oldest else None, batch):
        yield rows
