"""The archiver's loop: ledger entries and usage rows from Redis to Postgres, exactly once in effect.

1. Read account ids from the archive index (``keys.ARCHIVE_INDEX``) with a consumer group.
2. For each account: clear its "archive_pending" mark, then read its ledger and usage streams
   (after the mark is cleared, a new entry notes the account again: nothing is missed).
3. Upsert the rows by identity (``rows.py``) in one transaction, with the low-balance alerts the new
   ledger entries set off (``shared/low_balance.py``: queued in the mail outbox, sent by ``outbox.py``).
4. Only after the commit: trim each stream up to what was read (XTRIM MINID) and ack the notes.

A kill between 3 and 4 leaves the entries in Redis and the notes pending: they are read and
upserted again, which changes nothing. Postgres down: nothing is acked or trimmed; the loop
waits and retries (``apiinone_archiver_database_up`` 0, an error log line every 30 s), Redis
keeps growing until it is back, no entry is lost.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.db.database import Database, DatabaseUnavailable
from shared.keys import AccountKeys
from shared.low_balance import note_crossings
from shared.metrics import ARCHIVE_BACKLOG, ARCHIVE_DATABASE_UP, ARCHIVE_LAG, ARCHIVED, labelled
from worker.archiver.rows import insert_ledger, insert_usage, ledger_row, next_id, split_id, usage_row

log = structlog.get_logger()

NOTES_PER_READ = 500  # accounts per round
BLOCK_MS = 200
# Under load a round starts at most this often: the entries of ~a quarter second go in one read, one
# transaction and one trim, not one round per handful of requests (each round's fixed cost, Redis
# round trips and a commit, was most of the archiver's CPU). The lag stays well under a second.
ROUND_EVERY_S = 0.25
RECLAIM_IDLE_MS = 15_000  # notes a dead archiver read and never acked are taken over after this
ALERT_EVERY_S = 30.0


@dataclass
class Batch:
    """What one round read: the notes to ack and, per account, the rows and the last ids read."""

    note_ids: list[bytes] = field(default_factory=list)
    ledger: list[tuple] = field(default_factory=list)
    usage: list[tuple] = field(default_factory=list)
    last_ids: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (account, stream) -> id
    more: set[str] = field(default_factory=set)  # accounts with entries beyond this round's read


class Archiver:
    def __init__(self, redis: Redis, db: Database, per_account: int = 2000, consumer: str | None = None) -> None:
        self.redis = redis
        self.db = db
        self.per_account = per_account
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._down_since: float | None = None
        self._last_alert = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.ARCHIVE_INDEX, keys.ARCHIVE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stopping: asyncio.Event) -> None:
        await self.ensure_group()
        while not stopping.is_set():
            try:
                started = time.monotonic()
                if 0 < await self.round() < NOTES_PER_READ:  # caught up: let the next round's entries gather
                    await asyncio.sleep(max(0.0, ROUND_EVERY_S - (time.monotonic() - started)))
            except RedisError as exc:
                log.warning("archiver: Redis unreachable, retrying", error=str(exc))
                await asyncio.sleep(0.5)
                try:
                    await self.ensure_group()  # a restarted, emptied Redis has no group
                except RedisError:
                    pass

    async def round(self, block_ms: int = BLOCK_MS) -> int:
        """One round: notes read (stale ones of dead archivers first), archived, acked. Returns the notes."""
        try:
            notes = await self._reclaim()
            if not notes:
                reply = await self.redis.xreadgroup(keys.ARCHIVE_GROUP, self.consumer, {keys.ARCHIVE_INDEX: ">"},
                                                    count=NOTES_PER_READ, block=block_ms)
                notes = reply[0][1] if reply else []
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # a new (or wiped) Redis: the group starts at its beginning
            return 0
        if notes:
            await self.archive(notes)
        return len(notes)

    async def _reclaim(self) -> list:
        _next, claimed, *_ = await self.redis.xautoclaim(keys.ARCHIVE_INDEX, keys.ARCHIVE_GROUP, self.consumer,
                                                         RECLAIM_IDLE_MS, "0-0", count=NOTES_PER_READ)
        return [(i, f) for i, f in claimed if f]

    async def archive(self, notes: list) -> None:
        batch = await self.read(notes)
        await self.commit(batch)
        await self.trim_and_ack(batch)

    async def read(self, notes: list) -> Batch:
        batch = Batch(note_ids=[note_id for note_id, _ in notes])
        accounts = sorted({fields[b"a"].decode() for _, fields in notes if b"a" in fields})
        ARCHIVE_BACKLOG.set(await self.redis.xlen(keys.ARCHIVE_INDEX))
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in accounts:
                k = AccountKeys(account_id)
                pipe.hdel(k.account, "archive_pending")
                pipe.xrange(k.ledger, "-", "+", count=self.per_account)
                pipe.xrange(k.usage, "-", "+", count=self.per_account)
            replies = await pipe.execute()
        for i, account_id in enumerate(accounts):
            for stream, entries in (("ledger", replies[3 * i + 1]), ("usage", replies[3 * i + 2])):
                if not entries:
                    continue
                to_row = ledger_row if stream == "ledger" else usage_row
                getattr(batch, stream).extend(to_row(account_id, sid, fields) for sid, fields in entries)
                batch.last_ids[(account_id, stream)] = split_id(entries[-1][0])
                if len(entries) >= self.per_account:
                    batch.more.add(account_id)
        return batch

    async def commit(self, batch: Batch) -> None:
        """One transaction; waits (never gives up) while Postgres is down."""
        if not batch.ledger and not batch.usage:
            return
        pause = 0.2
        while True:
            try:
                async with self.db.transaction() as conn:
                    await insert_ledger(conn, batch.ledger)
                    await insert_usage(conn, batch.usage)
                    await note_crossings(conn, batch.ledger)  # low-balance alerts, off the request path
                break
            except DatabaseUnavailable as exc:
                self._database_down(exc, len(batch.ledger) + len(batch.usage))
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
        self._database_up()
        now_ms = time.time() * 1000
        for rows, kind, ms_at in ((batch.ledger, "ledger", 5), (batch.usage, "usage", 3)):
            labelled(ARCHIVED, kind).inc(len(rows))
            for row in rows:
                ARCHIVE_LAG.observe(max(0.0, (now_ms - row[ms_at]) / 1000))

    async def trim_and_ack(self, batch: Batch) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for (account_id, stream), last in batch.last_ids.items():
                k = AccountKeys(account_id)
                pipe.xtrim(k.ledger if stream == "ledger" else k.usage, minid=next_id(last), approximate=False)
            for account_id in batch.more:  # read again next round
                k = AccountKeys(account_id)
                pipe.hset(k.account, "archive_pending", "1")
                pipe.xadd(keys.ARCHIVE_INDEX, {"a": account_id})
            if batch.note_ids:
                pipe.xack(keys.ARCHIVE_INDEX, keys.ARCHIVE_GROUP, *batch.note_ids)
                pipe.xdel(keys.ARCHIVE_INDEX, *batch.note_ids)
            await pipe.execute()

    def _database_down(self, exc: Exception, waiting: int) -> None:
        ARCHIVE_DATABASE_UP.set(0)
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_alert >= ALERT_EVERY_S:
            self._last_alert = now
            log.error("archiver waiting for the database: ledger and usage entries stay in Redis until it is back",
                      error=str(exc), down_for_s=round(now - self._down_since, 1), entries_waiting=waiting)

    def _database_up(self) -> None:
        ARCHIVE_DATABASE_UP.set(1)
        if self._down_since is not None:
            log.warning("archiver: the database is back", was_down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since, self._last_alert = None, 0.0
