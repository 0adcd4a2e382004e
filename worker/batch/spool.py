"""A batch's output and error lines on their way out of Redis: into the blob store a part at a time.

``finish_line`` (Lua) appends each line's output or error line to a Redis list, exactly once; the
spool moves the list's head into a blob (a "part", ``batches/<id>/<kind>/<n>-<token>``) every
``SPOOL_EVERY_S`` or ``SPOOL_LINES`` lines while the batch runs, and once more when it ends. A part
is written first, then committed by ``batch_spool_commit.lua``, which trims those lines off the
list and names the part in the batch's parts list only while the part count is still what the
writer read: a line is in exactly one named part, even with two batch workers on one batch. A
part that lost is deleted; one left by a crash between write and commit is never named, so never
served (a later part has another token); it stays behind as an orphan blob.

So Redis holds seconds of a batch's output, never its files; ``finalize.py`` composes the named
parts, in order, into the batch's output and error files (``FileStore.create_result_file``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import AsyncIterator, Literal

import structlog
from redis.asyncio import Redis

from shared.blob_store import BlobStore
from shared.keys import BatchKeys
from shared.scripts import Scripts

log = structlog.get_logger()

Kind = Literal["output", "errors"]
KINDS: tuple[Kind, ...] = ("output", "errors")
SPOOL_LINES = 200  # lines per part at most (one LRANGE in memory)
SPOOL_EVERY_S = 5.0  # while lines arrive, a part is written at least this often
CHECK_S = 0.5


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class Spool:
    def __init__(self, redis: Redis, scripts: Scripts, blobs: BlobStore, b: BatchKeys) -> None:
        self.redis = redis
        self.scripts = scripts
        self.blobs = blobs
        self.b = b

    def _keys(self, kind: Kind) -> tuple[str, str]:
        return (self.b.output, self.b.output_parts) if kind == "output" else (self.b.errors, self.b.errors_parts)

    async def drain(self, kind: Kind) -> int:
        """Move every line the list holds now into parts; returns the lines moved."""
        lines_key, parts_key = self._keys(kind)
        moved = 0
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrange(lines_key, 0, SPOOL_LINES - 1)
                pipe.llen(parts_key)
                rows, count = await pipe.execute()
            if not rows:
                return moved
            part = f"batches/{self.b.id}/{kind}/{count:06d}-{secrets.token_hex(4)}"
            await self.blobs.put(part, _once(b"".join(row + b"\n" for row in rows)))
            if not await self.scripts.batch_spool_commit(keys=[lines_key, parts_key], args=[count, len(rows), part]):
                await self.blobs.delete(part)  # another writer named its part first; these lines are in it
                return moved
            moved += len(rows)
            if len(rows) < SPOOL_LINES:
                return moved

    async def parts(self, kind: Kind) -> list[str]:
        return [p.decode() for p in await self.redis.lrange(self._keys(kind)[1], 0, -1)]

    async def run(self) -> None:
        """While the batch runs: a part whenever a list holds SPOOL_LINES lines, or lines older than SPOOL_EVERY_S."""
        last = {kind: time.monotonic() for kind in KINDS}
        while True:
            await asyncio.sleep(CHECK_S)
            for kind in KINDS:
                try:
                    waiting = await self.redis.llen(self._keys(kind)[0])
                    if waiting >= SPOOL_LINES or (waiting and time.monotonic() - last[kind] >= SPOOL_EVERY_S):
                        await self.drain(kind)
                        last[kind] = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - tried again next time; the lines wait in Redis meanwhile
                    log.warning("batch output not moved to the blob store yet", batch_id=self.b.id, error=str(exc))
