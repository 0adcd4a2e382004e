"""The record's stored Responses (``sql/0009_stored_responses.sql``): written by the archiver, read on a Redis miss.

``apply`` writes what the response archive stream says, in its order (a put, a delete), in one
transaction; ``read`` and ``delete`` serve ``GET``/``DELETE /api/v1/responses/{id}`` and
``previous_response_id`` when Redis no longer has a response; ``forget_expired`` drops what is past
its retention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from asyncpg import Connection

from shared.db.database import Database

UPSERT = """
INSERT INTO stored_responses (account_id, response_id, record, created_ms, expires_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::bigint[])
ON CONFLICT (account_id, response_id) DO UPDATE
   SET record = EXCLUDED.record, created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms
"""
DELETE_MANY = """
DELETE FROM stored_responses s USING unnest($1::text[], $2::text[]) AS d(a, r)
 WHERE s.account_id = d.a AND s.response_id = d.r
"""


@dataclass(frozen=True, slots=True)
class ArchiveOp:
    """One entry of the response archive stream."""

    put: bool  # False: a delete
    account_id: str
    response_id: str
    record: bytes = b""
    created_ms: int = 0


async def apply(conn: Connection, ops: list[ArchiveOp], retention_ms: int) -> None:
    """The entries' net effect: per response, its last entry wins (a put then a delete is a delete)."""
    last: dict[tuple[str, str], ArchiveOp] = {}
    for op in ops:
        last[(op.account_id, op.response_id)] = op
    puts = [op for op in last.values() if op.put]
    deletes = [op for op in last.values() if not op.put]
    if deletes:
        await conn.execute(DELETE_MANY, [op.account_id for op in deletes], [op.response_id for op in deletes])
    if puts:
        await conn.execute(UPSERT, [op.account_id for op in puts], [op.response_id for op in puts],
                           [op.record for op in puts], [op.created_ms for op in puts],
                           [op.created_ms + retention_ms for op in puts])


async def read(db: Database, account_id: str, response_id: str) -> bytes | None:
    return await db.fetchval("SELECT record FROM stored_responses WHERE account_id = $1 AND response_id = $2 "
                             "AND expires_ms > $3", account_id, response_id, int(time.time() * 1000))


async def delete(db: Database, account_id: str, response_id: str) -> bool:
    status = await db.execute("DELETE FROM stored_responses WHERE account_id = $1 AND response_id = $2 "
                              "AND expires_ms > $3", account_id, response_id, int(time.time() * 1000))
    return status != "DELETE 0"


async def forget_expired(db: Database) -> int:
    status = await db.execute("DELETE FROM stored_responses WHERE expires_ms <= $1", int(time.time() * 1000))
    return int(status.split()[-1])
