"""Batches: their hot state in Redis while they run, their record in Postgres; the Batches API's storage.

A batch is a Redis hash (its object, its counters and the cursor of the next
line to feed, with the byte offset where that line starts in the input file)
plus, under the batch's own hash tag:

    inflight      hash   line no -> "<attempt>:<worker id>"   lines fed and not yet written out
    output        list   output lines (OpenAI's line shape) not yet moved to the blob store
    errors        list   error lines, likewise
    output_parts  list   blob keys of the output written to the blob store so far, in order
    errors_parts  list   the same for the error lines
    result:*      string the final reply frame of one line's request, written by the node
                         worker before it publishes or bills (``job["result_key"]``)
    callback      list   completion callback delivery attempts (JSON)

A line is written out exactly once: ``finish_line`` appends its output line
and removes it from ``inflight`` in one script, and does nothing when the
line is not in flight any more. Together with the deterministic request id of
each attempt (``batch_<id>_<line>[_a<n>]``) and the durable result this lets a
killed batch worker resume without running or billing a line twice. The batch
worker moves output and error lines on to the blob store a part at a time
(``worker/batch/spool.py``), so Redis holds seconds of output, never a file.

The record (``shared/db/batches_record.py``) gets the batch when it is created
and its final object when it ends (``retain``); listing pages the record and
shows a running batch's hot state from Redis. Files (input, output, errors) are
``shared/file_store.py``'s. Key names are in ``shared/keys.py``
(``aio:{batch:ID}:...``), the scripts in ``shared/lua/batch_*.lua``; a finished
batch's keys get a TTL of the retention time.
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum
from typing import Literal

import orjson
from redis.asyncio import Redis

from shared import ids
from shared.callback_targets import Delivery, status_outcome
from shared.db import batches_record
from shared.db.database import Database
from shared.keys import BATCHES_ACTIVE, BATCHES_WAKE, BatchKeys, account_active_batches
from shared.money import micro_to_credits
from shared.scripts import Scripts
from shared.settings import Settings


class BatchStatus(StrEnum):
    """OpenAI's batch statuses: validating -> in_progress -> finalizing -> completed, or failed
    (validation), expired (the completion window passed), cancelling -> cancelled."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)
# Each result file: (its id field on the batch, its spool kind, the count of its lines). Made by the batch
# worker's finalize, and by the restore for a batch a Redis loss cut off (worker/archiver/lost_batches.py).
RESULT_FILES = (("output_file_id", "output", b"completed"), ("error_file_id", "errors", b"failed"))
PAGE = 500  # lines per page of unrun lines written out on expiry (one script call)


def line_request_id(batch_id: str, line_no: int, attempt: int) -> str:
    """Deterministic per line and attempt: a resumed worker finds the same hold, job and result."""
    return f"{batch_id}_{line_no}" + (f"_a{attempt}" if attempt else "")


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _s(raw: dict[bytes, bytes], field: str, default: str = "") -> str:
    v = raw.get(field.encode())
    return v.decode() if v is not None else default


def _i(raw: dict[bytes, bytes], field: str) -> int | None:
    v = raw.get(field.encode())
    return int(v) if v not in (None, b"") else None


def _attempt_shown(raw: bytes) -> dict:
    """A callback attempt as its tenant sees it. One recorded before outcomes were coarse (with its
    exact status code and connection error text) is shown coarsely as well."""
    attempt = orjson.loads(raw)
    if "outcome" in attempt:
        return attempt
    code = attempt.get("status_code")
    return {"attempt": attempt.get("attempt"), "at": attempt.get("at"),
            "outcome": Delivery.FAILED if code is None else status_outcome(code),
            "duration_ms": attempt.get("duration_ms")}


class BatchStore:
    def __init__(self, redis: Redis, settings: Settings, scripts: Scripts | None = None,
                 db: Database | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = scripts or Scripts(redis)
        self.db = db  # the record; None only in unit tests of the hot state alone

    # --- batches ----------------------------------------------------------------------------
    async def active_batches(self, account_id: str) -> int:
        return await self.redis.scard(account_active_batches(account_id))

    async def create_batch(self, account_id: str, key_id: str, input_file_id: str, endpoint: str,
                           completion_window: str, metadata: dict | None, window_s: float) -> dict:
        batch_id = ids.BATCH.new()
        now = int(time.time())
        b = BatchKeys(batch_id)
        record = {
            "id": batch_id, "account_id": account_id, "key_id": key_id,
            "status": BatchStatus.VALIDATING, "input_file_id": input_file_id, "endpoint": endpoint,
            "completion_window": completion_window, "created_at": now, "expires_at": int(now + window_s),
            "metadata": orjson.dumps(metadata) if metadata is not None else "", "cursor": 0, "total": 0,
            "completed": 0, "failed": 0, "charged_micro": 0, "callback_url": (metadata or {}).get("callback_url", ""),
        }
        # The batch as created (validating), not as re-read: the batch worker may have moved it on already.
        created = self.batch_object({k.encode(): str(v).encode() if not isinstance(v, bytes) else v
                                     for k, v in record.items()})
        if self.db is not None:  # recorded first: a batch Redis runs is always one the record lists
            await batches_record.insert(self.db, created, account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(b.batch, mapping=record)
            pipe.zadd(BATCHES_ACTIVE, {batch_id: int(time.time() * 1000)})
            pipe.sadd(account_active_batches(account_id), batch_id)
            pipe.rpush(BATCHES_WAKE, batch_id)
            pipe.ltrim(BATCHES_WAKE, -1000, -1)
            await pipe.execute()
        return created

    async def raw_batch(self, batch_id: str) -> dict[bytes, bytes]:
        return await self.redis.hgetall(BatchKeys(batch_id).batch)

    async def get_batch(self, batch_id: str, account_id: str | None = None) -> dict | None:
        if not ids.BATCH.matches(batch_id):
            return None
        b = BatchKeys(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(b.batch)
            pipe.lrange(b.callback, 0, -1)
            raw, attempts = await pipe.execute()
        if not raw:  # Redis lost it (or let it go): the record's final object
            if self.db is None or account_id is None:
                return None
            return await batches_record.get(self.db, account_id, batch_id)
        if account_id is not None and _s(raw, "account_id") != account_id:
            return None
        return self.batch_object(raw, attempts)

    @staticmethod
    def batch_object(raw: dict[bytes, bytes], attempts: list[bytes] = ()) -> dict:
        errors = _s(raw, "errors")
        metadata = _s(raw, "metadata")
        charged = _i(raw, "charged_micro") or 0
        obj = {
            "id": _s(raw, "id"), "object": "batch", "endpoint": _s(raw, "endpoint"),
            "errors": orjson.loads(errors) if errors else None,
            "input_file_id": _s(raw, "input_file_id"), "completion_window": _s(raw, "completion_window"),
            "status": _s(raw, "status"),
            "output_file_id": _s(raw, "output_file_id") or None, "error_file_id": _s(raw, "error_file_id") or None,
            "created_at": _i(raw, "created_at"),
        }
        for f in ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                  "cancelling_at", "cancelled_at"):
            obj[f] = _i(raw, f)
        obj["request_counts"] = {"total": _i(raw, "total") or 0, "completed": _i(raw, "completed") or 0,
                                 "failed": _i(raw, "failed") or 0}
        obj["metadata"] = orjson.loads(metadata) if metadata else None
        obj["credits_charged"] = micro_to_credits(charged)
        obj["credits_charged_micro"] = charged
        url = _s(raw, "callback_url")
        if url:
            obj["callback"] = {"url": url, "status": _s(raw, "callback_status") or None,
                               "event_id": _s(raw, "callback_event_id") or None,
                               "attempts": [_attempt_shown(a) for a in attempts]}
        return obj

    async def list_batches(self, account_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """The record's page, newest first, each batch as Redis has it now while it is there."""
        if self.db is None:
            return [], False
        recorded, more = await batches_record.page(self.db, account_id, after, limit)
        return await self._live(recorded), more

    async def recent_batches(self, limit: int) -> list[tuple[str, dict]]:
        """(account, batch) of the newest batches of every account (operators), as Redis has them now."""
        if self.db is None:
            return []
        recorded = await batches_record.recent(self.db, limit)
        return list(zip([a for a, _ in recorded], await self._live([b for _, b in recorded])))

    async def _live(self, recorded: list[dict]) -> list[dict]:
        """Recorded batch objects with the hot state of those Redis still has (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch in recorded:
                b = BatchKeys(batch["id"])
                pipe.hgetall(b.batch)
                pipe.lrange(b.callback, 0, -1)
            hot = await pipe.execute()
        return [self.batch_object(hot[2 * i], hot[2 * i + 1]) if hot[2 * i] else batch
                for i, batch in enumerate(recorded)]

    async def transition(self, batch_id: str, to: str, allowed: tuple[str, ...], **fields: object) -> str | None:
        """Set ``status = to`` (and fields) only from one of ``allowed``. Returns "ok" or the current status."""
        args: list[object] = [to, *allowed, "--"]
        for k, v in fields.items():
            args += [k, v if isinstance(v, (bytes, str)) else str(v)]
        result = await self.scripts.batch_transition(keys=[BatchKeys(batch_id).batch], args=args)
        return result.decode() if isinstance(result, bytes) else result

    async def request_cancel(self, batch_id: str) -> str | None:
        allowed = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
        result = await self.transition(batch_id, BatchStatus.CANCELLING, allowed, cancelling_at=int(time.time()))
        if result == "ok":
            await self.redis.rpush(BATCHES_WAKE, batch_id)
        return result

    async def finish_line(self, b: BatchKeys, line_no: int, kind: Literal["ok", "err", "none"], line: bytes,
                          charge_micro: int, request_id: str) -> bool:
        """Write a line's output (ok) or error (err) line, or nothing (none: dropped), once."""
        return bool(await self.scripts.batch_finish_line(
            keys=[b.batch, b.inflight, b.output, b.errors, b.result(request_id)],
            args=[line_no, kind, line, charge_micro]))

    async def write_unrun(self, b: BatchKeys, first: int, next_cursor: int, next_offset: int,
                          lines: list[bytes]) -> bool:
        return bool(await self.scripts.batch_write_unrun(keys=[b.batch, b.errors],
                                                         args=[first, next_cursor, next_offset, *lines]))

    async def retain(self, b: BatchKeys) -> None:
        """A finished batch: its final object recorded, kept for the retention time; its scratch keys go now.

        The record is written first: with Postgres down this raises, the batch stays active and its
        worker comes back to it."""
        ttl = int(self.settings.batch_file_retention_s)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(b.batch)
            pipe.lrange(b.callback, 0, -1)
            raw, attempts = await pipe.execute()
        account_id = _s(raw, "account_id")
        if self.db is not None and raw:
            await batches_record.record_end(self.db, self.batch_object(raw, attempts), account_id,
                                            int(time.time()) + ttl)
        async with self.redis.pipeline(transaction=False) as pipe:
            if account_id:
                pipe.srem(account_active_batches(account_id), b.id)
            pipe.expire(b.batch, ttl)
            pipe.expire(b.callback, ttl)
            pipe.delete(b.inflight, b.lease, b.output, b.errors, b.output_parts, b.errors_parts)
            pipe.zrem(BATCHES_ACTIVE, b.id)
            await pipe.execute()
