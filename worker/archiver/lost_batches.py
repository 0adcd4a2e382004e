"""Batches a Redis loss cut off mid-run, ended by `apiinone admin restore` instead of left running forever.

A running batch's hot state (status, cursor, counters, the list of its spooled parts) lives in Redis;
after a wipe only its record row and the output parts already spooled to the blob store are left,
and no batch worker will pick it up again. Running its lines again is not safe (a line that ran was
billed, and nothing says which did), so the batch ends ``failed`` with the error ``batch_state_lost``:

- its output and error files are composed from the parts the blob store holds, each line once (a
  part a crash wrote twice, committed or not, holds lines another part holds: kept by ``custom_id``);
- its request counts and credits charged are the usage rows the record has for it (lines whose usage
  rows had not been archived yet are lost with Redis, in the customer's favour).
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import orjson
from redis.asyncio import Redis

from shared.batch_store import RESULT_FILES, TERMINAL, BatchStatus
from shared.blob_store import BlobStore
from shared.db import batches_record
from shared.db.database import Database
from shared.file_store import FileStore, split_lines
from shared.keys import BatchKeys
from shared.money import micro_to_credits

LOST = "batch_state_lost"
JUST_CREATED_S = 10


async def end_lost_batches(redis: Redis, db: Database, files: FileStore, retention_s: float) -> int:
    """End every batch the record has running and Redis no longer knows; returns how many."""
    rows = await db.fetch("SELECT account_id, body FROM batches WHERE status <> ALL($1::text[]) ORDER BY seq",
                          [s.value for s in TERMINAL])
    ended = 0
    for row in rows:
        batch, account_id = row["body"], row["account_id"]
        if batch["created_at"] > time.time() - JUST_CREATED_S:
            continue  # recorded a moment before its Redis hash is written (shared/batch_store.py create_batch)
        if await redis.exists(BatchKeys(batch["id"]).batch):
            continue  # still running: its batch worker has it
        await batches_record.record_end(db, await _ended(db, files, batch, account_id), account_id,
                                        int(time.time() + retention_s))
        ended += 1
    return ended


async def _ended(db: Database, files: FileStore, batch: dict, account_id: str) -> dict:
    batch_id, now = batch["id"], int(time.time())
    counts = await db.fetchrow(
        """SELECT count(*) FILTER (WHERE status = 'succeeded') AS completed,
                  count(*) FILTER (WHERE status <> 'succeeded') AS failed,
                  COALESCE(sum(charged_micro), 0) AS charged
             FROM usage WHERE account_id = $1 AND fields->>'batch_id' = $2""", account_id, batch_id)
    made = {}
    for id_field, kind, _count in RESULT_FILES:
        parts = await files.blobs.keys_under(f"batches/{batch_id}/{kind}")
        if parts:
            made[id_field] = await files.create_result_file_of(account_id, batch_id, kind,
                                                               each_line_once(files.blobs, parts))
    await files.blobs.delete_under(f"batches/{batch_id}")
    total = (batch.get("request_counts") or {}).get("total") or 0
    charged = int(counts["charged"])
    return {**batch, **made, "status": BatchStatus.FAILED.value, "failed_at": now,
            "errors": {"object": "list", "data": [{
                "code": LOST, "line": None, "param": None,
                "message": "The service lost this batch's running state (a Redis loss) and ended it. The lines "
                           "that ran are in its output and error files and were billed; the others did not run."}]},
            "request_counts": {"total": max(total, counts["completed"] + counts["failed"]),
                               "completed": counts["completed"], "failed": counts["failed"]},
            "credits_charged": micro_to_credits(charged), "credits_charged_micro": charged}


async def each_line_once(blobs: BlobStore, parts: list[str]) -> AsyncIterator[bytes]:
    """The parts' lines in order, a line whose ``custom_id`` came already left out."""
    seen: set[str] = set()
    for key in parts:
        async for _, _, line in split_lines(blobs.read(key), 0, 0):
            try:
                custom_id = orjson.loads(line).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                custom_id = None
            if custom_id is not None:
                if custom_id in seen:
                    continue
                seen.add(custom_id)
            yield line + b"\n"
