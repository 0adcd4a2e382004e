"""What an account may keep and start: a positive balance to upload or batch, caps on files, bytes, batches.

A file or a batch costs nothing until its lines run, so without these any account (an empty or
negative one included) could fill the store with uploads or the batch worker with batches.
"""

from __future__ import annotations

from aiohttp import web

from gateway.state import GATEWAY
from shared.accounts import KeyRecord
from shared.batch_store import BatchStore
from shared.file_store import FileStore
from shared.errors import ApiError, insufficient_quota


def _limit_error(message: str, code: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


async def require_positive_balance(request: web.Request, key: KeyRecord, what: str) -> None:
    balance = await request.app[GATEWAY].credits.balance(key.account_id)
    if balance["available_micro"] <= 0:
        raise insufficient_quota(f"{what} needs a positive balance; the account has "
                                 f"{balance['available']:g} credits available. Top up to continue.")


async def upload_room(request: web.Request, files_store: FileStore, key: KeyRecord) -> int:
    """The bytes this upload may have: one file's limit, or what is left of the account's storage (the
    record's counters: one row read)."""
    s = request.app[GATEWAY].settings
    await require_positive_balance(request, key, "Uploading a file")
    now = await files_store.stored(key.account_id)
    files, stored = now.files, now.bytes
    if files >= s.account_max_files:
        raise _limit_error(f"The account keeps {files} files, the most it may; delete some first.",
                           "file_limit_exceeded", "file")
    room = s.account_max_stored_bytes - stored
    if room <= 0:
        raise _limit_error(f"The account's files take {stored} bytes, the most it may keep; delete some first.",
                           "storage_limit_exceeded", "file")
    return min(s.batch_max_file_bytes, room)


async def require_batch_room(request: web.Request, store: BatchStore, key: KeyRecord) -> None:
    s = request.app[GATEWAY].settings
    await require_positive_balance(request, key, "Creating a batch")
    active = await store.active_batches(key.account_id)
    if active >= s.account_max_active_batches:
        raise _limit_error(f"The account has {active} batches not yet finished, the most it may; wait for one "
                           "to end or cancel one.", "batch_limit_exceeded")
