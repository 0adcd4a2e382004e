"""Files kept in Redis before the blob store existed: moved once into the blob store and the record.

Before, a file was a Redis hash ``aio:file:<id>`` (its object, ``account_id`` and ``lines_key``) and
a list of its lines (``aio:file:<id>:lines``, or a batch's output/error list for a result file). The
batch worker runs ``move_redis_files`` when it starts: each such file's lines are streamed into the
blob store (a page of lines in memory at a time), its row is recorded with its id, times and purpose,
and only then are its Redis keys deleted. Run again after a crash, a file already recorded is only
cleared from Redis. With none left, it is one SCAN.
"""

from __future__ import annotations

from typing import AsyncIterator

import structlog
from redis.asyncio import Redis

from shared.db import files_record
from shared.file_store import FileStore, blob_key
from shared.ids import FILE
from shared.keys import LEGACY_FILES_MATCH, legacy_account_files

log = structlog.get_logger()

PAGE = 500  # lines per LRANGE


async def _lines(redis: Redis, lines_key: str) -> AsyncIterator[bytes]:
    start = 0
    while rows := await redis.lrange(lines_key, start, start + PAGE - 1):
        start += len(rows)
        yield b"".join(row + b"\n" for row in rows)


async def move_redis_files(redis: Redis, files: FileStore) -> int:
    """Move every file Redis still keeps; returns how many were moved."""
    moved = 0
    async for name in redis.scan_iter(match=LEGACY_FILES_MATCH, count=500, _type="hash"):
        file_id = name.decode().rpartition(":")[2]
        raw = {k.decode(): v.decode() for k, v in (await redis.hgetall(name)).items()}
        if not FILE.matches(file_id) or "account_id" not in raw:
            continue
        lines_key = raw.get("lines_key") or f"{name.decode()}:lines"
        if await files_record.get(files.db, raw["account_id"], file_id) is None:
            size = await files.blobs.put(blob_key(file_id), _lines(redis, lines_key))
            await files_record.insert(files.db, {
                "id": file_id, "account_id": raw["account_id"], "purpose": raw.get("purpose", "batch"),
                "filename": raw.get("filename", "upload.jsonl"), "bytes": size, "blob_key": blob_key(file_id),
                "batch_id": raw.get("batch_id") or None, "created_at": int(raw.get("created_at") or 0),
                "expires_at": int(raw.get("expires_at") or 0)})
            moved += 1
        async with redis.pipeline(transaction=True) as pipe:
            if not raw.get("batch_id"):  # a result file's lines are its batch's list: they go with the batch
                pipe.delete(lines_key)
            pipe.delete(name)
            pipe.zrem(legacy_account_files(raw["account_id"]), file_id)
            await pipe.execute()
    if moved:
        log.info("files moved from Redis to the blob store", files=moved)
    return moved
