"""Stored Responses from Redis to Postgres: the response archive stream, applied in order, exactly once in effect.

response_put.lua / response_delete.lua append ``{op, a, id, rec}`` to ``keys.RESPONSE_ARCHIVE`` in
the same script call that stores or deletes the hot copy, so the request path pays nothing more. This
loop reads the stream with a consumer group (entries a dead archiver read and never acked are
taken over), writes their net effect in one transaction (``shared/db/stored_responses.py``), and
only after the commit acks and deletes them: a kill in between reads them again, and upserting
again changes nothing. Postgres down: nothing is acked, the loop waits. An entry Postgres refuses
on its own is logged and dropped, never a block on the ones behind it. Hourly, what is past its
retention is removed.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from asyncpg import PostgresError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.db import stored_responses
from shared.db.database import Database, DatabaseUnavailable
from shared.db.stored_responses import ArchiveOp
from shared.metrics import ARCHIVED, labelled
from worker.archiver.rows import split_id

log = structlog.get_logger()

ENTRIES_PER_READ = 200
BLOCK_MS = 200
RECLAIM_IDLE_MS = 15_000
EXPIRE_EVERY_S = 3600.0


def archive_op(entry_id: bytes, fields: dict[bytes, bytes]) -> ArchiveOp:
    return ArchiveOp(put=fields.get(b"op") == b"put", account_id=fields.get(b"a", b"").decode(),
                     response_id=fields.get(b"id", b"").decode(), record=fields.get(b"rec", b""),
                     created_ms=split_id(entry_id)[0])


class ResponseArchiver:
    def __init__(self, redis: Redis, db: Database, retention_s: float, consumer: str) -> None:
        self.redis = redis
        self.db = db
        self.retention_ms = int(retention_s * 1000)
        self.consumer = consumer
        self._expired_at = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.RESPONSE_ARCHIVE, keys.RESPONSE_ARCHIVE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.ensure_group()
                while not stopping.is_set():
                    await self.round()
                    await self._forget_expired()
            except RedisError as exc:  # NOGROUP (a wiped Redis) included: the group is made again
                log.warning("response archiver: Redis unreachable, retrying", error=str(exc))
                await asyncio.sleep(0.5)

    async def round(self, block_ms: int = BLOCK_MS) -> int:
        """One batch read (stale ones of dead archivers first), written, acked. Returns the entries."""
        _next, entries, *_ = await self.redis.xautoclaim(keys.RESPONSE_ARCHIVE, keys.RESPONSE_ARCHIVE_GROUP,
                                                         self.consumer, RECLAIM_IDLE_MS, "0-0", count=ENTRIES_PER_READ)
        entries = [(i, f) for i, f in entries if f]
        if not entries:
            reply = await self.redis.xreadgroup(keys.RESPONSE_ARCHIVE_GROUP, self.consumer,
                                                {keys.RESPONSE_ARCHIVE: ">"}, count=ENTRIES_PER_READ, block=block_ms)
            entries = reply[0][1] if reply else []
        if entries:
            await self._write([archive_op(i, f) for i, f in entries])
            labelled(ARCHIVED, "responses").inc(len(entries))
            ids = [i for i, _ in entries]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(keys.RESPONSE_ARCHIVE, keys.RESPONSE_ARCHIVE_GROUP, *ids)
                pipe.xdel(keys.RESPONSE_ARCHIVE, *ids)
                await pipe.execute()
        return len(entries)

    async def _write(self, ops: list[ArchiveOp]) -> None:
        pause = 0.2
        while True:
            try:
                try:
                    await self._commit(ops)
                except PostgresError:  # one entry it refuses must not hold back the others: one by one
                    await self._one_by_one(ops)
                return
            except DatabaseUnavailable as exc:
                log.warning("response archiver waiting for the database", error=str(exc), entries=len(ops))
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)

    async def _one_by_one(self, ops: list[ArchiveOp]) -> None:
        for op in ops:
            try:
                await self._commit([op])
            except PostgresError as exc:
                log.error("stored response not archived", response_id=op.response_id, error=str(exc))

    async def _commit(self, ops: list[ArchiveOp]) -> None:
        async with self.db.transaction() as conn:
            await stored_responses.apply(conn, ops, self.retention_ms)

    async def _forget_expired(self) -> None:
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        try:
            removed = await stored_responses.forget_expired(self.db)
        except (DatabaseUnavailable, PostgresError) as exc:
            log.warning("stored responses past their retention not removed; next hour", error=str(exc))
            return
        if removed:
            log.info("stored responses past their retention removed", removed=removed)
