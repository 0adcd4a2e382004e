"""A batch's end: lines that never ran (expiry), the output and error files, the terminal status.

Every step can run again after a crash: a result file is made only when the
batch has none yet, unrun lines are written a page at a time only while the
cursor is where the page was read, and a transition only moves from the
statuses allowed.
"""

from __future__ import annotations

import time

import orjson
import structlog

from shared.batch_store import PAGE, BatchStatus, BatchStore, line_request_id
from shared.keys import BatchKeys
from worker.batch.callbacks import Callbacks
from worker.batch.lines import EXPIRED_MESSAGE, StopReason

log = structlog.get_logger()

# Each result list: (the file id field, the list key's attribute, its count and byte fields, the file name part).
RESULT_FILES = (("output_file_id", "output", b"completed", b"output_bytes", "output"),
                ("error_file_id", "errors", b"failed", b"error_bytes", "errors"))


async def mark_terminal(store: BatchStore, callbacks: Callbacks, b: BatchKeys) -> None:
    """After the terminal transition: the callback is due, and the batch is kept for its retention time."""
    await callbacks.schedule(b)
    await store.retain(b)


async def expire_unrun(store: BatchStore, b: BatchKeys, lines_key: str) -> None:
    """Every line never fed gets a ``batch_expired`` error line, a page at a time."""
    cursor = int(await store.redis.hget(b.batch, "cursor") or 0)
    while True:
        rows = await store.redis.lrange(lines_key, cursor, cursor + PAGE - 1)
        if not rows:
            return
        out = []
        for index, line in enumerate(rows, start=cursor):
            if not line.strip():
                continue
            try:
                custom_id = orjson.loads(line).get("custom_id")
            except orjson.JSONDecodeError:
                custom_id = None
            out.append(orjson.dumps({
                "id": "batch_req_" + line_request_id(b.id, index, 0), "custom_id": custom_id, "response": None,
                "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}}))
        if not await store.write_unrun(b, cursor, cursor + len(rows), out):
            return
        cursor += len(rows)


async def finalize(store: BatchStore, callbacks: Callbacks, b: BatchKeys, account_id: str,
                   stop: StopReason | None) -> None:
    """Make the result files and move the batch to completed, expired or cancelled."""
    final = BatchStatus.CANCELLED
    if stop != StopReason.CANCELLED:
        running = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)
        result = await store.transition(b.id, BatchStatus.FINALIZING, running, finalizing_at=int(time.time()))
        if result != BatchStatus.CANCELLING:  # a cancel that came first wins
            final = BatchStatus.EXPIRED if stop == StopReason.EXPIRED else BatchStatus.COMPLETED
    allowed = (BatchStatus.CANCELLING,) if final == BatchStatus.CANCELLED else (BatchStatus.FINALIZING,)
    raw = await store.raw_batch(b.id)
    files = {}
    for id_field, list_attr, count_field, bytes_field, name in RESULT_FILES:
        if raw.get(id_field.encode()):
            continue
        count = int(raw.get(count_field) or 0)
        if count:
            file_id = await store.create_result_file(account_id, b.id, getattr(b, list_attr),
                                                     int(raw.get(bytes_field) or 0), count, f"{b.id}_{name}.jsonl")
            await store.redis.hset(b.batch, id_field, file_id)
            files[id_field] = file_id
    await store.transition(b.id, final, allowed, **{f"{final}_at": int(time.time())})
    await mark_terminal(store, callbacks, b)
    log.info("batch finished", batch_id=b.id, status=final, **files)
