"""Where file bytes live: a ``BlobStore``, a local directory by default or any S3-compatible store.

Batch input files (uploads) and batch output and error files are blobs; their metadata is the
record's (``shared/file_store.py``, Postgres). Nothing here holds a whole blob: ``put`` consumes an
async iterator of chunks, ``read`` yields chunks, so a 200 MB file costs a chunk (local) or one
multipart part (S3) of memory.

Blob keys are made by the service (``files/<file id>``, ``batches/<batch id>/...``), never by a
client; a key is still checked to be a plain relative path before it names a file on disk.

Settings: ``APIINONE_BLOB_STORE`` = ``local`` (``APIINONE_BLOB_DIR``, default ``<data dir>/blobs``,
so ``var/blobs`` under ``make run``) or ``s3`` (``shared/blob_s3.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import AsyncIterator, Protocol

from shared.settings import Settings

CHUNK = 256 * 1024  # bytes per read from a blob
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*")


class BlobTooLarge(Exception):
    """A ``put`` went past its limit; nothing was stored. ``args[0]`` is the limit."""


class BlobMissing(Exception):
    """No blob under that key."""


def check_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key) or ".." in key:
        raise ValueError(f"blob key {key!r}")
    return key


class BlobStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes], limit: int | None = None) -> int:
        """Store the chunks under ``key`` (replacing a blob there) and return the size. Past ``limit`` bytes:
        ``BlobTooLarge``, and nothing is stored. The blob appears whole or not at all."""

    def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` on, a chunk at a time; ``BlobMissing`` when there is none."""

    async def delete(self, *keys: str) -> None:
        """Delete these blobs; a missing one is no error."""

    async def keys_under(self, prefix: str) -> list[str]:
        """The keys of every blob under ``prefix/``, sorted."""

    async def delete_under(self, prefix: str) -> int:
        """Delete every blob whose key starts with ``prefix/``; returns how many."""

    async def clear_abandoned(self, older_than_s: float) -> int:
        """Remove what a ``put`` cut short by a killed process left (a temporary file, an S3 multipart
        upload) once older than ``older_than_s``; returns how many."""

    async def close(self) -> None:
        ...


class LocalBlobStore:
    """Blobs as files under one directory. A ``put`` writes a temporary file beside the others and renames
    it into place once whole (and synced), so a reader never sees a half-written blob. File I/O runs in
    threads: a slow disk never stalls the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial = root / ".partial"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, chunks: AsyncIterator[bytes], limit: int | None = None) -> int:
        target = self.path(key)
        await asyncio.to_thread(self.partial.mkdir, parents=True, exist_ok=True)
        tmp = self.partial / (secrets.token_hex(8) + ".part")
        f = await asyncio.to_thread(open, tmp, "wb")
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise BlobTooLarge(limit)
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(_sync_close, f)
            await asyncio.to_thread(_move_into_place, tmp, target)
        except BaseException:
            await asyncio.to_thread(_discard, f, tmp)
            raise
        return size

    async def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self.path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        try:
            if offset:
                f.seek(offset)
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def delete(self, *keys: str) -> None:
        for key in keys:
            await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    async def keys_under(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        return await asyncio.to_thread(
            lambda: sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
            if folder.is_dir() else [])

    async def delete_under(self, prefix: str) -> int:
        found = await self.keys_under(prefix)
        await self.delete(*found)
        await asyncio.to_thread(shutil.rmtree, self.path(prefix), True)  # the emptied folders
        return len(found)

    async def clear_abandoned(self, older_than_s: float) -> int:
        return await asyncio.to_thread(_clear_old_files, self.partial, time.time() - older_than_s)

    async def close(self) -> None:
        pass


def _clear_old_files(folder: Path, before: float) -> int:
    cleared = 0
    for path in folder.glob("*.part") if folder.is_dir() else ():
        try:
            if path.stat().st_mtime < before:
                path.unlink()
                cleared += 1
        except FileNotFoundError:  # finished or cleared meanwhile
            pass
    return cleared


def _sync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _move_into_place(tmp: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _discard(f, tmp: Path) -> None:
    f.close()
    tmp.unlink(missing_ok=True)


def blob_store(settings: Settings) -> BlobStore:
    """The store the settings name (``APIINONE_BLOB_STORE``)."""
    if settings.blob_store == "s3":
        from shared.blob_s3 import S3BlobStore  # only a deployment that uses S3 loads its client

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.blob_dir or settings.data_dir.resolve() / "blobs")
