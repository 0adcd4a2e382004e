"""A batch's output and error lines on their way out of Redis: into the blob store a part at a time.

``finish_line`` (Lua) appends each line's output or error line to a Redis list, exactly once; the
spool moves the list's head into a blob (a "part", ``batches/<id>/<kind>/<n>-<token>``) once
``SPOOL_BYTES`` or ``SPOOL_LINES`` wait or a line has waited ``SPOOL_EVERY_S``, while the batch
runs, and once more when it ends. A part is read from Redis ``READ_LINES`` at a time. A part
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
BYTES_FIELD = {"output": "output_bytes", "errors": "error_bytes"}  # what finish_line.lua counts on the batch
SPOOL_LINES = 200  # lines per part at most
PART_BYTES = 4 * 1024 * 1024  # a part ends once it holds this much (S3: under one multipart part, one request)
READ_LINES = 10  # lines per LRANGE while a part is written: what the worker holds at once
SPOOL_BYTES = 1024 * 1024  # a part is written once this much output waits in Redis...
SPOOL_EVERY_S = 1.0  # ...or once a line has waited this long: Redis holds about a second of output
CHECK_S = 0.1


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
                pipe.llen(lines_key)
                pipe.llen(parts_key)
                waiting, count = await pipe.execute()
            if not waiting:
                return moved
            part = f"batches/{self.b.id}/{kind}/{count:06d}-{secrets.token_hex(4)}"
            taken = [0]
            await self.blobs.put(part, self._part_body(lines_key, min(waiting, SPOOL_LINES), taken))
            if not await self.scripts.batch_spool_commit(keys=[lines_key, parts_key], args=[count, taken[0], part]):
                await self.blobs.delete(part)  # another writer named its part first; these lines are in it
                return moved
            moved += taken[0]

    async def _part_body(self, lines_key: str, most: int, taken: list[int]) -> AsyncIterator[bytes]:
        """The list's first lines, READ_LINES at a time, up to ``most`` lines or PART_BYTES; ``taken[0]`` counts them."""
        size = 0
        while taken[0] < most and size < PART_BYTES:
            rows = await self.redis.lrange(lines_key, taken[0], min(taken[0] + READ_LINES, most) - 1)
            if not rows:
                return
            taken[0] += len(rows)
            body = b"".join(row + b"\n" for row in rows)
            size += len(body)
            yield body

    async def parts(self, kind: Kind) -> list[str]:
        return [p.decode() for p in await self.redis.lrange(self._keys(kind)[1], 0, -1)]

    async def run(self) -> None:
        """While the batch runs: a part whenever SPOOL_BYTES or SPOOL_LINES wait in a list, or a line has
        waited SPOOL_EVERY_S."""
        since: dict[Kind, float | None] = {kind: None for kind in KINDS}  # when the oldest waiting line was seen
        spooled: dict[Kind, int | None] = {kind: None for kind in KINDS}  # the byte count at the last part
        while True:
            await asyncio.sleep(CHECK_S)
            for kind in KINDS:
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.llen(self._keys(kind)[0])
                        pipe.hget(self.b.batch, BYTES_FIELD[kind])
                        waiting, written = await pipe.execute()
                    written = int(written or 0)
                    if not waiting:
                        since[kind] = None
                        continue
                    now = time.monotonic()
                    since[kind] = since[kind] or now
                    if (waiting >= SPOOL_LINES or spooled[kind] is None or written - spooled[kind] >= SPOOL_BYTES
                            or now - since[kind] >= SPOOL_EVERY_S):
                        await self.drain(kind)
                        spooled[kind], since[kind] = written, None
                except Exception as exc:  # noqa: BLE001 - tried again next time; the lines wait in Redis meanwhile
                    log.warning("batch output not moved to the blob store yet", batch_id=self.b.id, error=str(exc))
