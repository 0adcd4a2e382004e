"""Files of the OpenAI Files API: bytes in the blob store, metadata in the record; never in Redis.

An upload streams into the blob store as it arrives (``BlobStore.put``: a chunk or one multipart
part in memory, whatever the file's size), then its row is recorded; a failed upload leaves no
blob and no row. Readers stream the blob back: ``content`` as bytes, ``lines`` split into the
file's lines with their byte offsets, so a batch resumes reading where it stopped (``Range``
on S3, ``seek`` on disk) instead of from the top.

Deleting a file deletes its row, then its blob; retention (``sweep``, the batch worker's loop)
deletes both for every file past ``expires_at``, and clears what uploads cut short by a killed
process left in the store. Batch result files are composed from the parts
the batch worker wrote while the batch ran (``worker/batch/spool.py``) and get an id derived from
their batch, so a finalize run again after a crash records the same file once.
"""

from __future__ import annotations

import hashlib
import time
from typing import AsyncIterator

from shared import ids
from shared.blob_store import BlobMissing, BlobStore, BlobTooLarge
from shared.db import batches_record, files_record
from shared.db.database import Database
from shared.db.files_record import Stored
from shared.filenames import safe_filename
from shared.settings import Settings

SWEEP_PAGE = 200
ABANDONED_AFTER_S = 86400.0  # an upload still unfinished after a day was cut short by a killed process


class FileTooLarge(Exception):
    pass


def blob_key(file_id: str) -> str:
    return f"files/{file_id}"


def result_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: the same however often its finalize runs."""
    digest = hashlib.blake2b(f"{batch_id}:{kind}".encode(), digest_size=ids.FILE.hex_digits // 2).hexdigest()
    return ids.FILE.prefix + digest


def file_object(record: dict) -> dict:
    return {"id": record["id"], "object": "file", "bytes": int(record["bytes"]),
            "created_at": int(record["created_at"]), "filename": record["filename"],
            "purpose": record["purpose"], "status": "processed", "expires_at": int(record["expires_at"]),
            "status_details": None}


async def split_lines(chunks: AsyncIterator[bytes], start_line: int, start_offset: int
                      ) -> AsyncIterator[tuple[int, int, bytes]]:
    """(line index, offset just past the line, line) for each line of ``chunks``, read from ``start_offset``
    (where line ``start_line`` begins). A line ends at ``\\n`` (a ``\\r`` before it is dropped); a last line
    without one counts unless it is blank."""
    index, pos, tail = start_line, start_offset, b""
    async for chunk in chunks:
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            pos += len(part) + 1
            yield index, pos, part[:-1] if part.endswith(b"\r") else part
            index += 1
    if tail.strip():
        yield index, pos + len(tail), tail[:-1] if tail.endswith(b"\r") else tail


class FileStore:
    def __init__(self, db: Database, blobs: BlobStore, settings: Settings) -> None:
        self.db = db
        self.blobs = blobs
        self.settings = settings

    async def stored(self, account_id: str) -> Stored:
        return await files_record.stored(self.db, account_id)

    async def create_file(self, account_id: str, filename: str, purpose: str, chunks: AsyncIterator[bytes],
                          limit: int | None = None) -> dict:
        """Stream an upload into the blob store and record it; raises FileTooLarge past ``limit`` (default:
        one file's limit). The client's ``filename`` is stored cleaned (``shared/filenames.py``)."""
        file_id = ids.FILE.new()
        limit = self.settings.batch_max_file_bytes if limit is None else limit
        try:
            size = await self.blobs.put(blob_key(file_id), chunks, limit)
        except BlobTooLarge:
            raise FileTooLarge(limit) from None
        record = self._record(file_id, account_id, safe_filename(filename), purpose, size)
        try:
            await files_record.insert(self.db, record)
        except BaseException:
            await self.blobs.delete(record["blob_key"])
            raise
        return file_object(record)

    async def create_result_file(self, account_id: str, batch_id: str, kind: str, parts: list[str]) -> str:
        """A batch's output or error file, composed from its parts (blob keys, in order), recorded once."""
        return await self.create_result_file_of(account_id, batch_id, kind, self._concatenated(parts))

    async def create_result_file_of(self, account_id: str, batch_id: str, kind: str,
                                    content: AsyncIterator[bytes]) -> str:
        file_id = result_file_id(batch_id, kind)
        key = blob_key(file_id)
        size = await self.blobs.put(key, content)
        record = self._record(file_id, account_id, f"{batch_id}_{kind}.jsonl", "batch_output", size, batch_id)
        await files_record.insert(self.db, record)
        return file_id

    async def _concatenated(self, keys: list[str]) -> AsyncIterator[bytes]:
        for key in keys:
            async for chunk in self.blobs.read(key):
                yield chunk

    def _record(self, file_id: str, account_id: str, filename: str, purpose: str, size: int,
                batch_id: str | None = None) -> dict:
        now = int(time.time())
        return {"id": file_id, "account_id": account_id, "purpose": purpose, "filename": filename, "bytes": size,
                "blob_key": blob_key(file_id), "batch_id": batch_id, "created_at": now,
                "expires_at": now + int(self.settings.batch_file_retention_s)}

    async def get_file(self, account_id: str, file_id: str) -> dict | None:
        if not ids.FILE.matches(file_id):
            return None
        record = await files_record.get(self.db, account_id, file_id)
        if record is None or record["expires_at"] < time.time():  # past retention: gone, whether swept or not
            return None
        return record

    def content(self, record: dict) -> AsyncIterator[bytes]:
        return self.blobs.read(record["blob_key"])

    async def lines(self, record: dict, start_line: int = 0, start_offset: int = 0
                    ) -> AsyncIterator[tuple[int, int, bytes]]:
        """The file's lines from line ``start_line`` at byte ``start_offset`` (see ``split_lines``); a file
        whose blob is gone has none."""
        try:
            async for item in split_lines(self.blobs.read(record["blob_key"], start_offset), start_line,
                                          start_offset):
                yield item
        except BlobMissing:
            return

    async def lines_from_cursor(self, record: dict, cursor: int, offset: int | None
                                ) -> AsyncIterator[tuple[int, int, bytes]]:
        """A batch's input lines from line ``cursor`` on, read from ``offset`` where that line starts; without
        an offset (a batch fed before offsets were kept) read from the top and skip the lines before it."""
        if offset is None and cursor:
            async for item in self.lines(record):
                if item[0] >= cursor:
                    yield item
            return
        async for item in self.lines(record, cursor, offset or 0):
            yield item

    async def delete_file(self, account_id: str, file_id: str) -> bool:
        record = await files_record.delete(self.db, account_id, file_id)
        if record is None:
            return False
        await self.blobs.delete(record["blob_key"])
        return True

    async def list_files(self, account_id: str, after: str | None, limit: int, purpose: str | None
                         ) -> tuple[list[dict], bool]:
        rows, more = await files_record.page(self.db, account_id, after, limit, purpose)
        return [file_object(r) for r in rows], more

    async def sweep(self, now: int | None = None) -> int:
        """Delete every file past its retention (blob first: a crash in between leaves a row to sweep again,
        never a blob nobody knows), and batch records past theirs. Returns the files deleted."""
        now = int(time.time()) if now is None else now
        deleted = 0
        while rows := await files_record.expired(self.db, now, SWEEP_PAGE):
            await self.blobs.delete(*[r["blob_key"] for r in rows])
            deleted += await files_record.delete_ids(self.db, [r["id"] for r in rows])
            if len(rows) < SWEEP_PAGE:
                break
        while await batches_record.delete_expired(self.db, now, SWEEP_PAGE) == SWEEP_PAGE:
            pass
        await self.blobs.clear_abandoned(ABANDONED_AFTER_S)
        return deleted
