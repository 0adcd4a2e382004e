"""File metadata in the record (``sql/0007_files_and_batches.sql``): rows, pages, storage counters, expiry.

The bytes are the blob store's (``shared/blob_store.py``); ``shared/file_store.py`` keeps the two
together. ``account_storage`` is kept by a trigger on every insert and delete of a file row, so
what an account stores is one row to read, for the upload cap and for ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.database import Database

COLUMNS = "id, account_id, purpose, filename, bytes, blob_key, batch_id, created_at, expires_at"


@dataclass(frozen=True)
class Stored:
    files: int = 0
    bytes: int = 0


async def insert(db: Database, row: dict) -> bool:
    """Record a file; False when its id is recorded already (a result file made again after a crash)."""
    status = await db.execute(
        f"""INSERT INTO files ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (id) DO NOTHING""",
        row["id"], row["account_id"], row["purpose"], row["filename"], row["bytes"], row["blob_key"],
        row.get("batch_id"), row["created_at"], row["expires_at"])
    return status.endswith(" 1")


async def get(db: Database, account_id: str, file_id: str) -> dict | None:
    row = await db.fetchrow(f"SELECT {COLUMNS} FROM files WHERE id = $1 AND account_id = $2", file_id, account_id)
    return dict(row) if row else None


async def delete(db: Database, account_id: str, file_id: str) -> dict | None:
    """Delete the row (the trigger uncounts it); the deleted row, or None when there was none."""
    row = await db.fetchrow(f"DELETE FROM files WHERE id = $1 AND account_id = $2 RETURNING {COLUMNS}",
                            file_id, account_id)
    return dict(row) if row else None


async def page(db: Database, account_id: str, after: str | None, limit: int, purpose: str | None
               ) -> tuple[list[dict], bool]:
    """Newest first, from just after the file ``after`` (an unknown ``after``: an empty page)."""
    args: list = [account_id, limit + 1]
    where = "account_id = $1"
    if purpose:
        args.append(purpose)
        where += f" AND purpose = ${len(args)}"
    if after:
        args.append(after)
        where += f" AND seq < (SELECT seq FROM files WHERE id = ${len(args)} AND account_id = $1)"
    rows = await db.fetch(f"SELECT {COLUMNS} FROM files WHERE {where} ORDER BY seq DESC LIMIT $2", *args)
    return [dict(r) for r in rows[:limit]], len(rows) > limit


async def expired(db: Database, now: int, limit: int) -> list[dict]:
    rows = await db.fetch(f"SELECT {COLUMNS} FROM files WHERE expires_at < $1 ORDER BY expires_at LIMIT $2",
                          now, limit)
    return [dict(r) for r in rows]


async def delete_ids(db: Database, file_ids: list[str]) -> int:
    status = await db.execute("DELETE FROM files WHERE id = ANY($1::text[])", file_ids)
    return int(status.split()[-1])


async def stored(db: Database, account_id: str) -> Stored:
    row = await db.fetchrow("SELECT files, bytes FROM account_storage WHERE account_id = $1", account_id)
    return Stored(int(row["files"]), int(row["bytes"])) if row else Stored()


async def stored_by_account(db: Database, account_ids: list[str] | None = None) -> dict[str, Stored]:
    """Each account's files and bytes (every account that stores something, or just ``account_ids``)."""
    if account_ids is None:
        rows = await db.fetch("SELECT account_id, files, bytes FROM account_storage WHERE files > 0")
    else:
        rows = await db.fetch("SELECT account_id, files, bytes FROM account_storage WHERE account_id = ANY($1::text[])",
                              account_ids)
    out = {account_id: Stored() for account_id in account_ids or ()}
    out.update({r["account_id"]: Stored(int(r["files"]), int(r["bytes"])) for r in rows})
    return out
