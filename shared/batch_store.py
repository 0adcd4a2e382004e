"""Files and batches in Redis: the OpenAI Files + Batches API's storage.

A file is a hash (its object) and a Redis list of lines; nothing reads a
whole file at once: uploads are appended in slices as they arrive, and
readers page with LRANGE. A batch is a hash (its object, its counters and the
cursor of the next line to feed) plus, under the batch's own hash tag:

    inflight   hash   line no -> "<attempt>:<worker id>"   lines fed and not yet written out
    output     list   output file lines (OpenAI's line shape), in completion order
    errors     list   error file lines
    result:*   string the final reply frame of one line's request, written by the node
                      worker before it publishes or bills (``job["result_key"]``)
    callback   list   completion callback delivery attempts (JSON)

A line is written out exactly once: ``finish_line`` appends its output line
and removes it from ``inflight`` in one script, and does nothing when the
line is not in flight any more. Together with the deterministic request id of
each attempt (``batch_<id>_<line>[_a<n>]``) and the durable result this lets a
killed batch worker resume without running or billing a line twice.

Key names are in ``shared/keys.py`` (``aio:file:...`` / ``aio:{batch:ID}:...``), the
scripts in ``shared/lua/batch_*.lua``; retention is a TTL set on every key of a
file and of a finished batch.
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum
from typing import AsyncIterator, Literal

import orjson
from redis.asyncio import Redis

from shared import ids
from shared.callback_targets import Delivery, status_outcome
from shared.filenames import safe_filename
from shared.keys import BATCHES_ACTIVE, BATCHES_WAKE, BatchKeys, account_active_batches, \
    account_batches, account_files, file_key, file_lines_key
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
PAGE = 500  # lines per LRANGE / RPUSH


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


class FileTooLarge(Exception):
    pass


class BatchStore:
    def __init__(self, redis: Redis, settings: Settings, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = scripts or Scripts(redis)

    # --- files ----------------------------------------------------------------------------
    async def stored(self, account_id: str) -> tuple[int, int]:
        """(files, bytes) the account keeps now; forgets the files retention already deleted."""
        index = account_files(account_id)
        file_ids = [m.decode() for m in await self.redis.zrange(index, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in file_ids:
                pipe.hget(file_key(fid), "bytes")
            sizes = await pipe.execute()
        gone = [fid for fid, size in zip(file_ids, sizes) if size is None]
        if gone:
            await self.redis.zrem(index, *gone)
        return len(file_ids) - len(gone), sum(int(size) for size in sizes if size is not None)

    async def active_batches(self, account_id: str) -> int:
        return await self.redis.scard(account_active_batches(account_id))

    async def create_file(self, account_id: str, filename: str, purpose: str, chunks: AsyncIterator[bytes],
                          limit: int | None = None) -> dict:
        """Store an upload line by line as it arrives; raises FileTooLarge past ``limit`` (default: the size
        limit of one file).

        The client's ``filename`` is stored cleaned (``shared/filenames.py``): it comes back in headers.
        """
        filename = safe_filename(filename)
        file_id = ids.FILE.new()
        lines_key = file_lines_key(file_id)
        limit = self.settings.batch_max_file_bytes if limit is None else limit
        ttl = int(self.settings.batch_file_retention_s)
        size, count, tail, pending = 0, 0, b"", []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise FileTooLarge(limit)
                parts = (tail + chunk).split(b"\n")
                tail = parts.pop()
                pending.extend(p[:-1] if p.endswith(b"\r") else p for p in parts)
                if len(pending) >= PAGE:
                    count += len(pending)
                    await self._append(lines_key, pending, ttl)
                    pending = []
            if tail.strip():
                pending.append(tail[:-1] if tail.endswith(b"\r") else tail)
            if pending:
                count += len(pending)
                await self._append(lines_key, pending, ttl)
        except BaseException:
            await self.redis.delete(lines_key)
            raise
        now = int(time.time())
        record = {"id": file_id, "object": "file", "bytes": size, "created_at": now, "filename": filename,
                  "purpose": purpose, "status": "processed", "expires_at": now + ttl, "account_id": account_id,
                  "lines_key": lines_key, "lines": count}
        await self._save_file(record, ttl)
        return self.file_object(record)

    async def _append(self, key: str, lines: list[bytes], ttl: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, *lines)
            pipe.expire(key, ttl)
            await pipe.execute()

    async def _save_file(self, record: dict, ttl: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(file_key(record["id"]), mapping={k: str(v) for k, v in record.items()})
            pipe.expire(file_key(record["id"]), ttl)
            pipe.zadd(account_files(record["account_id"]), {record["id"]: int(time.time() * 1000)})
            await pipe.execute()

    async def create_result_file(self, account_id: str, batch_id: str, lines_key: str, size: int, count: int,
                                 filename: str) -> str:
        """The object for a batch's output or error list (the list itself is already there)."""
        file_id = ids.FILE.new()
        ttl = int(self.settings.batch_file_retention_s)
        now = int(time.time())
        record = {"id": file_id, "object": "file", "bytes": size, "created_at": now, "filename": filename,
                  "purpose": "batch_output", "status": "processed", "expires_at": now + ttl,
                  "account_id": account_id, "lines_key": lines_key, "lines": count, "batch_id": batch_id}
        await self._save_file(record, ttl)
        await self.redis.expire(lines_key, ttl)
        return file_id

    @staticmethod
    def file_object(record: dict) -> dict:
        return {"id": record["id"], "object": "file", "bytes": int(record["bytes"]),
                "created_at": int(record["created_at"]), "filename": record["filename"],
                "purpose": record["purpose"], "status": record.get("status", "processed"),
                "expires_at": int(record["expires_at"]) if record.get("expires_at") else None,
                "status_details": None}

    async def get_file(self, account_id: str, file_id: str) -> dict | None:
        if not ids.FILE.matches(file_id):  # e.g. "<id>:lines", the name of the file's list
            return None
        raw = await self.redis.hgetall(file_key(file_id))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        return record if record.get("account_id") == account_id else None

    async def iter_lines(self, lines_key: str, start: int = 0, page: int = PAGE) -> AsyncIterator[tuple[int, bytes]]:
        """(index, line) from ``start``, one page in memory at a time."""
        index = start
        while True:
            rows = await self.redis.lrange(lines_key, index, index + page - 1)
            for row in rows:
                yield index, row
                index += 1
            if len(rows) < page:
                return

    async def delete_file(self, account_id: str, file_id: str) -> bool:
        record = await self.get_file(account_id, file_id)
        if record is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(file_id), record["lines_key"])
            pipe.zrem(account_files(account_id), file_id)
            await pipe.execute()
        return True

    async def list_ids(self, index_key: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Newest first, from just after ``after``."""
        start = 0
        if after:
            rank = await self.redis.zrevrank(index_key, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = [m.decode() for m in await self.redis.zrevrange(index_key, start, start + limit)]
        return ids[:limit], len(ids) > limit

    async def list_files(self, account_id: str, after: str | None, limit: int, purpose: str | None
                         ) -> tuple[list[dict], bool]:
        out: list[dict] = []
        index = account_files(account_id)
        while True:
            ids, more = await self.list_ids(index, after, limit)
            for fid in ids:
                after = fid
                record = await self.get_file(account_id, fid)
                if record is None:
                    await self.redis.zrem(index, fid)  # expired by retention
                    continue
                if purpose and record["purpose"] != purpose:
                    continue
                out.append(self.file_object(record))
                if len(out) == limit:
                    return out, more or fid != ids[-1]
            if not more:
                return out, False

    # --- batches ----------------------------------------------------------------------------
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(b.batch, mapping=record)
            pipe.zadd(account_batches(account_id), {batch_id: int(time.time() * 1000)})
            pipe.zadd(BATCHES_ACTIVE, {batch_id: int(time.time() * 1000)})
            pipe.sadd(account_active_batches(account_id), batch_id)
            pipe.rpush(BATCHES_WAKE, batch_id)
            pipe.ltrim(BATCHES_WAKE, -1000, -1)
            await pipe.execute()
        # The batch as created (validating), not as re-read: the batch worker may have moved it on already.
        return self.batch_object({k.encode(): str(v).encode() if not isinstance(v, bytes) else v
                                  for k, v in record.items()})

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
        if not raw or (account_id is not None and _s(raw, "account_id") != account_id):
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
        out: list[dict] = []
        index = account_batches(account_id)
        ids, more = await self.list_ids(index, after, limit)
        for bid in ids:
            batch = await self.get_batch(bid, account_id)
            if batch is None:
                await self.redis.zrem(index, bid)
                continue
            out.append(batch)
        return out, more

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

    async def write_unrun(self, b: BatchKeys, first: int, next_cursor: int, lines: list[bytes]) -> bool:
        return bool(await self.scripts.batch_write_unrun(keys=[b.batch, b.errors], args=[first, next_cursor, *lines]))

    async def retain(self, b: BatchKeys) -> None:
        """A finished batch keeps its object for the retention time; its scratch keys go now."""
        ttl = int(self.settings.batch_file_retention_s)
        account_id = await self.redis.hget(b.batch, "account_id")
        async with self.redis.pipeline(transaction=False) as pipe:
            if account_id:
                pipe.srem(account_active_batches(account_id.decode()), b.id)
            pipe.expire(b.batch, ttl)
            pipe.expire(b.callback, ttl)
            pipe.delete(b.inflight, b.lease)
            pipe.zrem(BATCHES_ACTIVE, b.id)
            await pipe.execute()
