"""OpenAI's Files API for batches: /api/v1/files (the account's API key).

Uploads are multipart (``purpose`` and ``file``, as the openai SDK sends
them) and stream into the blob store while they arrive (``shared/file_store.py``:
bytes in the blob store, metadata in the record): the gateway never holds a
whole file, and a file over ``APIINONE_BATCH_MAX_FILE_BYTES`` is refused with
413. Contents stream back from the blob store the same way.
"""

from __future__ import annotations

import re
from typing import AsyncIterator

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.account_caps import upload_room
from gateway.auth import request_key
from gateway.inputs import Paging, QueryParam
from shared import ids
from shared.batch_store import BatchStore
from shared.blob_store import BlobMissing
from shared.errors import ApiError, bad_request, not_found
from shared.file_store import FileStore, FileTooLarge, file_object
from shared.filenames import content_disposition

PURPOSES = ("batch",)  # what an upload may name; the worker writes "batch_output" files too
PURPOSE_FILTER = re.compile(r"[a-z0-9_\-]{1,64}")  # the shape of OpenAI's purposes (a NUL must not reach Postgres)
READ_CHUNK = 64 * 1024
PAGING = Paging(10_000, 10_000, "The id of the last file of the previous page.", ids.FILE.matches, ids.FILE.pattern)
LIST_FILTERS = (QueryParam("purpose", {"type": "string"}, "Only files with this purpose."),)


BATCH_STORE = web.AppKey("batch_store", BatchStore)
FILE_STORE = web.AppKey("file_store", FileStore)


def store(request: web.Request) -> BatchStore:
    return request.app[BATCH_STORE]


def file_store(request: web.Request) -> FileStore:
    files = request.app.get(FILE_STORE)
    if files is None:
        raise ApiError(503, "Files need the record: this gateway has no database (DATABASE_URL).", "api_error",
                       "database_unavailable")
    return files


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(READ_CHUNK):
        yield chunk


async def upload(request: web.Request) -> web.Response:
    key = request_key(request)
    if not request.content_type.startswith("multipart/"):
        raise bad_request("Upload the file as multipart/form-data with fields 'purpose' and 'file'.",
                          code="invalid_content_type")
    room = await upload_room(request, file_store(request), key)
    try:
        purpose, created = await _read_upload(request, key, room)
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's words for a malformed multipart body
        raise bad_request(f"Malformed multipart/form-data body: {exc}", code="invalid_multipart") from None
    if purpose is None:
        if created:
            await file_store(request).delete_file(key.account_id, created["id"])
        raise bad_request("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if created is None:
        raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    return web.json_response(created)


async def _read_upload(request: web.Request, key, room: int) -> tuple[str | None, dict | None]:
    """The upload's purpose and stored file; a malformed body (ValueError) leaves no file behind."""
    purpose: str | None = None
    created: dict | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()
                if purpose not in PURPOSES:
                    raise bad_request(f"Invalid value for 'purpose': {purpose!r}; this service accepts 'batch'.",
                                      param="purpose", code="invalid_value")
            elif part.name == "file" and created is None:
                try:
                    created = await file_store(request).create_file(key.account_id, part.filename or "upload.jsonl",
                                                               purpose or "batch", _chunks(part), limit=room)
                except FileTooLarge as exc:
                    raise ApiError(413, f"File too large: the limit is {exc.args[0]} bytes (one file's limit, or "
                                   "what is left of the account's storage).",
                                   "invalid_request_error", "file_too_large", "file") from None
            else:
                await part.release()
    except (ValueError, HttpProcessingError, ApiError):
        if created:
            await file_store(request).delete_file(key.account_id, created["id"])
        raise
    return purpose, created


async def _owned(request: web.Request) -> tuple[dict, object]:
    key = request_key(request)
    file_id = request.match_info["file_id"]
    record = await file_store(request).get_file(key.account_id, file_id)
    if record is None:
        raise not_found(f"No such File object: {file_id}", param="id")
    return record, key


async def get_file(request: web.Request) -> web.Response:
    record, _ = await _owned(request)
    return web.json_response(file_object(record))


async def content(request: web.Request) -> web.StreamResponse:
    record, _ = await _owned(request)
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl",
                                           "Content-Disposition": content_disposition(record["filename"])})
    response.content_length = int(record["bytes"])
    chunks = file_store(request).content(record)
    try:
        first = await anext(chunks, b"")
    except BlobMissing:  # deleted (or swept) since its row was read
        raise not_found(f"No such File object: {record['id']}", param="id") from None
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:  # as the blob store hands it over: one chunk in memory
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_file(request: web.Request) -> web.Response:
    record, key = await _owned(request)
    await file_store(request).delete_file(key.account_id, record["id"])
    return web.json_response({"id": record["id"], "object": "file", "deleted": True})


async def list_files(request: web.Request) -> web.Response:
    key = request_key(request)
    limit, after = PAGING.read(request)
    purpose = request.query.get("purpose")
    if purpose is not None and not PURPOSE_FILTER.fullmatch(purpose):  # no file can have it: nothing to ask the record
        return web.json_response({"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None})
    data, more = await file_store(request).list_files(key.account_id, after, limit, purpose)
    return web.json_response({"object": "list", "data": data, "has_more": more,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})
