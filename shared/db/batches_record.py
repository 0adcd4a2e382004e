"""Batches in the record (``sql/0007_files_and_batches.sql``): the row made at creation, the whole object
written again when the batch ends, pages newest first by cursor, and expiry.

While a batch runs its hot state (status, counters, cursor) is in Redis (``shared/batch_store.py``);
readers overlay it on these rows. A finished batch's row holds its final object and outlives the
Redis hash (kept ``batch_file_retention_s``, like its files).
"""

from __future__ import annotations

from shared.db.database import Database


async def insert(db: Database, batch: dict, account_id: str) -> None:
    await db.execute(
        """INSERT INTO batches (id, account_id, status, body, created_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (id) DO NOTHING""", batch["id"], account_id, batch["status"], batch, batch["created_at"])


async def record_end(db: Database, batch: dict, account_id: str, retain_until: int) -> None:
    """The batch's final object (written again after a crash: an upsert)."""
    await db.execute(
        """INSERT INTO batches (id, account_id, status, body, created_at, retain_until)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, body = EXCLUDED.body,
                                          retain_until = EXCLUDED.retain_until""",
        batch["id"], account_id, batch["status"], batch, batch["created_at"], retain_until)


async def get(db: Database, account_id: str, batch_id: str) -> dict | None:
    return await db.fetchval("SELECT body FROM batches WHERE id = $1 AND account_id = $2", batch_id, account_id)


async def page(db: Database, account_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """Recorded objects, newest first, from just after the batch ``after`` (unknown: an empty page)."""
    args: list = [account_id, limit + 1]
    where = "account_id = $1"
    if after:
        args.append(after)
        where += " AND seq < (SELECT seq FROM batches WHERE id = $3 AND account_id = $1)"
    rows = await db.fetch(f"SELECT body FROM batches WHERE {where} ORDER BY seq DESC LIMIT $2", *args)
    return [r["body"] for r in rows[:limit]], len(rows) > limit


async def recent(db: Database, limit: int) -> list[tuple[str, dict]]:
    """(account, recorded object) of the newest batches of every account."""
    rows = await db.fetch("SELECT account_id, body FROM batches ORDER BY seq DESC LIMIT $1", limit)
    return [(r["account_id"], r["body"]) for r in rows]


async def delete_expired(db: Database, now: int, limit: int) -> int:
    status = await db.execute(
        """DELETE FROM batches WHERE id IN (SELECT id FROM batches WHERE retain_until < $1 LIMIT $2)""", now, limit)
    return int(status.split()[-1])
