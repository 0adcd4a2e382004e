"""A batch's end: lines that never ran (expiry), the output and error files, the terminal status.

Every step can run again after a crash: a result file is made only when the
batch has none yet (and has an id derived from the batch: recorded once), unrun
lines are written a page at a time only while the cursor is where the page was
read, and a transition only moves from the statuses allowed. Result files are
composed from the parts ``spool.py`` moved to the blob store.
"""

from __future__ import annotations

import time

import orjson
import structlog

from shared.batch_store import PAGE, RESULT_FILES, BatchStatus, BatchStore, line_request_id
from shared.file_store import FileStore
from shared.keys import BatchKeys
from worker.batch.callbacks import Callbacks
from worker.batch.lines import EXPIRED_MESSAGE, StopReason
from worker.batch.spool import Spool

log = structlog.get_logger()


async def mark_terminal(store: BatchStore, callbacks: Callbacks, b: BatchKeys) -> None:
    """After the terminal transition: the callback is due, and the batch is kept for its retention time."""
    await callbacks.schedule(b)
    await store.retain(b)


async def expire_unrun(store: BatchStore, spool: Spool, b: BatchKeys, files: FileStore, record: dict) -> None:
    """Every line never fed gets a ``batch_expired`` error line, a page at a time (each page then moved on
    to the blob store)."""
    cursor_b, offset_b = await store.redis.hmget(b.batch, "cursor", "cursor_offset")
    cursor = int(cursor_b or 0)
    page: list[tuple[int, int, bytes]] = []
    async for item in files.lines_from_cursor(record, cursor, int(offset_b) if offset_b is not None else None):
        page.append(item)
        if len(page) == PAGE:
            if not await _write_unrun_page(store, b, cursor, page):
                return
            await spool.drain("errors")
            cursor, page = page[-1][0] + 1, []
    if page:
        await _write_unrun_page(store, b, cursor, page)


async def _write_unrun_page(store: BatchStore, b: BatchKeys, cursor: int, page: list[tuple[int, int, bytes]]) -> bool:
    out = []
    for index, _, line in page:
        if not line.strip():
            continue
        try:
            custom_id = orjson.loads(line).get("custom_id")
        except orjson.JSONDecodeError:
            custom_id = None
        out.append(orjson.dumps({
            "id": "batch_req_" + line_request_id(b.id, index, 0), "custom_id": custom_id, "response": None,
            "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}}))
    last_index, last_end, _ = page[-1]
    return await store.write_unrun(b, cursor, last_index + 1, last_end, out)


async def finalize(store: BatchStore, files: FileStore, spool: Spool, callbacks: Callbacks, b: BatchKeys,
                   account_id: str, stop: StopReason | None) -> None:
    """Make the result files and move the batch to completed, expired or cancelled."""
    final = BatchStatus.CANCELLED
    if stop != StopReason.CANCELLED:
        running = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)
        result = await store.transition(b.id, BatchStatus.FINALIZING, running, finalizing_at=int(time.time()))
        if result != BatchStatus.CANCELLING:  # a cancel that came first wins
            final = BatchStatus.EXPIRED if stop == StopReason.EXPIRED else BatchStatus.COMPLETED
    allowed = (BatchStatus.CANCELLING,) if final == BatchStatus.CANCELLED else (BatchStatus.FINALIZING,)
    raw = await store.raw_batch(b.id)
    made = {}
    for id_field, kind, count_field in RESULT_FILES:
        if raw.get(id_field.encode()) or not int(raw.get(count_field) or 0):
            continue
        await spool.drain(kind)
        parts = await spool.parts(kind)
        file_id = await files.create_result_file(account_id, b.id, kind, parts)
        await store.redis.hset(b.batch, id_field, file_id)
        await files.blobs.delete(*parts)  # composed into the file: the parts are spent
        made[id_field] = file_id
    # What is left under the batch's folder is known to no one: a part a crash cut off between its
    # write and its commit (spool.py). Every result file exists by now, so nothing there is needed.
    await files.blobs.delete_under(f"batches/{b.id}")
    await store.transition(b.id, final, allowed, **{f"{final}_at": int(time.time())})
    await mark_terminal(store, callbacks, b)
    log.info("batch finished", batch_id=b.id, status=final, **made)
