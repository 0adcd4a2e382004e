"""The batch worker (`apiinone batch-worker`): validates, runs and finalizes batches.

Life of a batch (OpenAI's statuses)::

    validating --> in_progress --> finalizing --> completed
         |              |  \\--> (window over) --> expired
         v              v
       failed       cancelling --> cancelled

Validation streams the input file (one page of lines in memory) and fails the
batch with OpenAI's ``errors`` object naming each bad line; nothing is
reserved before it passes. Execution feeds lines, in order, onto the model's
node batch queue (``keys.node_batch_queue``: node workers pop it only when the
interactive queue is empty) with at most ``batch_inflight_per_batch`` lines of
a batch (and ``batch_inflight_total`` of all) queued or running. Each line is
an ordinary non-stream chat request: reserved like any request (a line the
account cannot cover fails with ``insufficient_quota`` and the batch goes on),
run by a node worker, settled by the billing worker with the batch id on its
usage row.

Exactly once, across a SIGKILL of this process: a line is recorded in flight
(with the batch's cursor) before it is reserved; its request id is
deterministic (``<batch id>_<line>[_a<attempt>]``); the node worker stores the
line's final reply under a result key before it publishes or bills it; and
the output line is appended by a script that also removes the line from the
in-flight record, once. A line's node worker announces it with a STARTED
frame (its worker id) once it has run 0.2 s; the node worker took the job off
the queue by then, so that id, kept in the in-flight record, is what says the
line is running. A resumed worker probes each line still in flight: job still
queued, or started on a live worker -> wait for it; result stored -> write it;
started on a dead worker -> refund that attempt and run a new one; never
enqueued -> enqueue (reserving only if no hold exists). So no line is run to
completion twice, and no line is billed twice.

On a terminal status a batch with ``metadata.callback_url`` gets a POST of a
JSON event signed like standard-webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>`` with the account's secret),
retried with exponential backoff; every attempt shows in the batch object.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass

import aiohttp
import orjson
import structlog
from redis.exceptions import RedisError

from shared import keys, relay
from shared.batch_store import ACTIVE, CALLBACKS, PAGE, WAKE, BatchKeys, BatchStore, line_request_id, new_id, \
    webhook_secret
from shared.catalog import Catalog, Model, get_catalog
from shared.admission import check_request
from shared.contracts import Hold, ReserveStatus, WORKER_FAULTS
from shared.credits import Credits, KeyLimits
from shared.reply_hub import LOST, ReplyHub
from shared.errors import ApiError
from shared.keys import AccountKeys
from shared.nodes import live_worker_counts
from shared.protocol import ChatCompletionRequest, parse_chat_request
from shared.queue import NodeQueue, QueueFull
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings

log = structlog.get_logger()

LEASE_MS = 5000  # a batch is run by the worker holding its lease; a killed worker's lease lapses this fast
WATCH_S = 2.0  # a silent line is probed this often (lost replies, dead node workers)
MAX_ATTEMPTS = 2  # a line whose node worker died or shut down is run once more (a new request id)
MAX_ERRORS = 100  # validation errors reported per batch
QUEUE_ALLOWANCE_S = 3600.0  # how long a line may wait on the batch queue before its job lapses
STATUS_POLL_S = 0.5


class Stop(Exception):
    pass


@dataclass
class Outcome:
    kind: str  # ok | err | retry | drop
    payload: bytes = b""  # RESULT: the chat.completion
    status: int = 0
    error: dict | None = None  # {"error": {...}}


def _error_body(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BatchWorker:
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = catalog or get_catalog()
        url = self.settings.redis_url
        self.redis = make_redis(url)
        self.blocking = make_redis(url, max_connections=2, socket_timeout=None)
        self.pubsub_redis = make_redis(url, max_connections=2, socket_timeout=None, retries=0)
        self.store = BatchStore(self.redis, self.settings)
        self.credits = Credits(self.redis)
        self.queue = NodeQueue(self.redis, self.credits.scripts)
        self.worker_id = f"batch-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.hub = ReplyHub(self.pubsub_redis, self.worker_id, lambda _digest: None)
        self.total_slots = asyncio.Semaphore(self.settings.batch_inflight_total)
        self.running: dict[str, asyncio.Task] = {}
        self.live: dict[str, int] = {}
        self.http: aiohttp.ClientSession | None = None
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- process lifecycle ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.batch_callback_timeout_s))
        self.hub.start()
        loops = [asyncio.create_task(c) for c in (self._scan_loop(), self._lease_loop(), self._liveness_loop(),
                                                  self._callback_loop())]
        log.info("batch worker started", worker_id=self.worker_id)
        try:
            await stop.wait()
        finally:
            for task in loops + list(self.running.values()):
                task.cancel()
            await asyncio.gather(*loops, *self.running.values(), return_exceptions=True)
            try:  # hand our batches over at once instead of after the lease lapses
                for batch_id in list(self.running):
                    await self.store.renew_lease(BatchKeys(batch_id), self.worker_id, 1)
            except RedisError:
                pass
            await self.hub.stop()
            await self.http.close()
            for r in (self.redis, self.blocking, self.pubsub_redis):
                await r.aclose()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _scan_loop(self) -> None:
        while True:
            try:
                for member in await self.redis.zrange(ACTIVE, 0, -1):
                    batch_id = member.decode()
                    if batch_id in self.running:
                        continue
                    if await self.redis.set(BatchKeys(batch_id).lease, self.worker_id, nx=True, px=LEASE_MS):
                        self.running[batch_id] = asyncio.create_task(self._run_batch(batch_id))
                await self.blocking.blpop([WAKE], timeout=1)
            except RedisError as exc:
                log.warning("batch scan failed", error=str(exc))
                await asyncio.sleep(1)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_MS / 4000)
            for batch_id, task in list(self.running.items()):
                try:
                    if not await self.store.renew_lease(BatchKeys(batch_id), self.worker_id, LEASE_MS):
                        log.warning("lost the lease of a batch; stopping it here", batch_id=batch_id)
                        task.cancel()
                except RedisError as exc:
                    log.warning("lease renewal failed", batch_id=batch_id, error=str(exc))

    async def _liveness_loop(self) -> None:
        while True:
            try:
                self.live = await live_worker_counts(self.redis, list(self.catalog.nodes), self.settings.worker_lease_s)
            except RedisError:
                pass
            await asyncio.sleep(1.0)

    async def _run_batch(self, batch_id: str) -> None:
        b = BatchKeys(batch_id)
        try:
            raw = await self.store.raw_batch(batch_id)
            status = raw.get(b"status", b"").decode()
            if not raw:
                await self.redis.zrem(ACTIVE, batch_id)
                return
            if status == "validating":
                status = await self._validate(b, raw)
            if status in ("in_progress", "cancelling", "finalizing"):
                await BatchRun(self, b, await self.store.raw_batch(batch_id)).execute()
            elif status in ("completed", "failed", "cancelled", "expired"):
                await self.store.retain(b)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch run crashed; it will be resumed", batch_id=batch_id)
            await asyncio.sleep(1)
        finally:
            self.running.pop(batch_id, None)
            try:
                await self.store.renew_lease(b, self.worker_id, 1)  # release
            except RedisError:
                pass

    # --- validation -----------------------------------------------------------------------------
    async def _validate(self, b: BatchKeys, raw: dict[bytes, bytes]) -> str:
        s = self.settings
        account_id, endpoint = raw[b"account_id"].decode(), raw[b"endpoint"].decode()
        record = await self.store.get_file(account_id, raw[b"input_file_id"].decode())
        errors: list[dict] = []
        total = 0

        def error(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        if record is None:
            error("file_not_found", "The input file no longer exists.", param="input_file_id")
        elif int(record["bytes"]) > s.batch_max_file_bytes:
            error("file_too_large", f"The input file is larger than {s.batch_max_file_bytes} bytes.",
                  param="input_file_id")
        else:
            await self.redis.delete(b.ids)
            pending: list[tuple[int, str]] = []

            async def check_ids() -> None:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for _, cid in pending:
                        pipe.sadd(b.ids, cid)
                    added = await pipe.execute()
                for (line_no, cid), new in zip(pending, added):
                    if not new:
                        error("duplicate_custom_id", f"The custom_id {cid!r} is used by an earlier line; each "
                              "line needs its own.", line_no, "custom_id")
                pending.clear()

            async for index, line in self.store.iter_lines(record["lines_key"]):
                line_no = index + 1
                if not line.strip():
                    continue
                total += 1
                if total > s.batch_max_lines:
                    error("too_many_requests", f"A batch holds at most {s.batch_max_lines} requests.", line_no)
                    break
                cid = self._check_line(line, line_no, endpoint, error)
                if cid is not None:
                    pending.append((line_no, cid))
                    if len(pending) >= PAGE:
                        await check_ids()
                if len(errors) >= MAX_ERRORS:
                    break
            if pending:
                await check_ids()
            await self.redis.delete(b.ids)
            if total == 0 and not errors:
                error("empty_file", "The input file has no requests.", param="input_file_id")
        if errors:
            errors.sort(key=lambda e: e["line"] or 0)
            await self.store.transition(b.id, "failed", ("validating", "cancelling"), failed_at=int(time.time()),
                                        errors=orjson.dumps({"object": "list", "data": errors[:MAX_ERRORS]}),
                                        total=total)
            await self._terminal(b)
            log.info("batch failed validation", batch_id=b.id, errors=len(errors))
            return "failed"
        result = await self.store.transition(b.id, "in_progress", ("validating",), in_progress_at=int(time.time()),
                                             total=total)
        log.info("batch validated", batch_id=b.id, total=total)
        return "in_progress" if result == "ok" else result or "failed"

    def _check_line(self, line: bytes, line_no: int, endpoint: str, error) -> str | None:
        s = self.settings
        if len(line) > s.batch_max_line_bytes:
            error("line_too_large", f"Line {line_no} is {len(line)} bytes; the limit is {s.batch_max_line_bytes}.",
                  line_no)
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            error("invalid_json", f"Line {line_no} is not valid JSON.", line_no)
            return None
        if not isinstance(obj, dict):
            error("invalid_json", f"Line {line_no} is not a JSON object.", line_no)
            return None
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            error("missing_custom_id", "Each line needs a non-empty string 'custom_id'.", line_no, "custom_id")
            cid = None
        if obj.get("method") != "POST":
            error("invalid_method", "The 'method' of each line must be 'POST'.", line_no, "method")
        if obj.get("url") != endpoint:
            error("invalid_url", f"The 'url' of each line must be the batch's endpoint {endpoint!r}.", line_no, "url")
        body = obj.get("body")
        if not isinstance(body, dict):
            error("invalid_body", "The 'body' of each line must be a JSON object.", line_no, "body")
            return cid
        try:
            req = parse_chat_request(body)
            model = self.catalog.models.get(req.model)
            if model is None:
                error("model_not_found", f"The model {req.model!r} does not exist.", line_no, "body.model")
                return cid
            check_request(req, model, self.settings.max_messages)
        except ApiError as exc:
            error(exc.code or "invalid_request", exc.message, line_no, f"body.{exc.param}" if exc.param else "body")
        return cid

    # --- terminal statuses and the completion callback ---------------------------------------------
    async def _terminal(self, b: BatchKeys) -> None:
        raw = await self.store.raw_batch(b.id)
        if raw.get(b"callback_url") and not raw.get(b"callback_event_id"):
            await self.redis.hset(b.batch, mapping={"callback_event_id": new_id("evt_"), "callback_status": "pending"})
            await self.redis.zadd(CALLBACKS, {b.id: int(time.time() * 1000)})
        await self.store.retain(b)

    async def _callback_loop(self) -> None:
        while True:
            try:
                due = await self.redis.zrangebyscore(CALLBACKS, "-inf", int(time.time() * 1000), start=0, num=50)
                for member in due:
                    batch_id = member.decode()
                    if batch_id in self._delivering:
                        continue
                    # Claim the attempt: push the next due time past this attempt's timeout.
                    later = int((time.time() + self.settings.batch_callback_timeout_s + 5) * 1000)
                    if await self.redis.zadd(CALLBACKS, {batch_id: later}, xx=True, ch=True):
                        self._delivering.add(batch_id)
                        self.spawn(self._deliver(batch_id))
            except RedisError as exc:
                log.warning("callback scan failed", error=str(exc))
            await asyncio.sleep(0.25)

    async def _deliver(self, batch_id: str) -> None:
        b = BatchKeys(batch_id)
        try:
            raw = await self.store.raw_batch(batch_id)
            if not raw or not raw.get(b"callback_url"):
                await self.redis.zrem(CALLBACKS, batch_id)
                return
            url, event_id = raw[b"callback_url"].decode(), raw[b"callback_event_id"].decode()
            batch = BatchStore.batch_object(raw)
            batch.pop("callback", None)
            status = batch["status"]
            body = orjson.dumps({"id": event_id, "object": "event", "type": f"batch.{status}",
                                 "created_at": batch.get(f"{status}_at") or int(time.time()), "data": batch})
            secret = await webhook_secret(self.redis, raw[b"account_id"].decode())
            ts = str(int(time.time()))
            digest = hmac.new(base64.b64decode(secret.removeprefix("whsec_")),
                              f"{event_id}.{ts}.".encode() + body, hashlib.sha256).digest()
            headers = {"Content-Type": "application/json", "User-Agent": "apiinone-batch-callback/1",
                       "webhook-id": event_id, "webhook-timestamp": ts,
                       "webhook-signature": "v1," + base64.b64encode(digest).decode()}
            number = await self.redis.llen(b.callback) + 1
            started = time.monotonic()
            attempt: dict = {"attempt": number, "at": int(time.time()), "status_code": None, "error": None}
            try:
                async with self.http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    attempt["status_code"] = resp.status
                    await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                attempt["error"] = f"{exc.__class__.__name__}: {exc}"[:300]
            attempt["duration_ms"] = int((time.monotonic() - started) * 1000)
            ok = attempt["status_code"] is not None and 200 <= attempt["status_code"] < 300
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(b.callback, orjson.dumps(attempt))
                pipe.expire(b.callback, int(self.settings.batch_file_retention_s))
                if ok or number >= self.settings.batch_callback_attempts:
                    pipe.hset(b.batch, "callback_status", "delivered" if ok else "failed")
                    pipe.zrem(CALLBACKS, batch_id)
                else:
                    pipe.zadd(CALLBACKS, {batch_id: int((time.time() + 2 ** (number - 1)) * 1000)})
                await pipe.execute()
            log.info("batch callback", batch_id=batch_id, attempt=number, status_code=attempt["status_code"],
                     error=attempt["error"])
        except RedisError as exc:
            log.warning("callback delivery deferred", batch_id=batch_id, error=str(exc))
        finally:
            self._delivering.discard(batch_id)


class BatchRun:
    """One batch's execution in this process: feed, wait, finalize."""

    def __init__(self, w: BatchWorker, b: BatchKeys, raw: dict[bytes, bytes]) -> None:
        self.w = w
        self.b = b
        self.account_id = raw[b"account_id"].decode()
        self.key_id = raw[b"key_id"].decode()
        lim = orjson.loads(raw.get(b"key_limits") or b"{}")
        self.limits = KeyLimits(credit_limit_micro=int(lim.get("credit_limit_micro") or 0),
                                daily_credit_limit_micro=int(lim.get("daily_credit_limit_micro") or 0))
        self.cursor = int(raw.get(b"cursor") or 0)
        self.expires_at = int(raw.get(b"expires_at") or 0)
        self.status = raw[b"status"].decode()
        self.input_file_id = raw[b"input_file_id"].decode()
        self.slots = asyncio.Semaphore(w.settings.batch_inflight_per_batch)
        self.lines: dict[int, dict] = {}  # line no -> {"rid", "started", "queue", "model"}
        self.tasks: set[asyncio.Task] = set()
        self.my_holds: set[str] = set()  # request ids this run reserved whose hold may still exist
        self.stop_reason: str | None = None  # "cancelled" | "expired"
        if self.status == "cancelling":
            self.stop_reason = "cancelled"
        elif self.expires_at and time.time() >= self.expires_at:
            self.stop_reason = "expired"

    # --- the run ------------------------------------------------------------------------------------
    async def execute(self) -> None:
        w, b = self.w, self.b
        await asyncio.wait_for(w.hub.ready.wait(), 30)
        record = await w.store.get_file(self.account_id, self.input_file_id)
        lines_key = record["lines_key"] if record else None
        poller = asyncio.create_task(self._poll_status())
        try:
            if self.status != "finalizing":
                for line_no_b, value in (await w.redis.hgetall(b.inflight)).items():  # resume what was in flight
                    line_no = int(line_no_b)
                    attempt, _, started = value.decode().partition(":")
                    line = await w.redis.lindex(lines_key, line_no) if lines_key else None
                    await self._acquire()
                    self._spawn_line(line_no, line or b"", int(attempt or 0), resumed=True, started=started or None)
                if lines_key and self.stop_reason is None:
                    await self._feed(lines_key)
                if self.stop_reason is not None:
                    await self._withdraw_queued()
                if self.tasks:
                    await asyncio.gather(*self.tasks)
                if self.stop_reason == "expired" and lines_key:
                    await self._expire_unrun(lines_key)
        except asyncio.CancelledError:
            for task in list(self.tasks):  # shutdown or a lost lease: lines stay in flight for the next owner
                task.cancel()
            raise
        finally:
            poller.cancel()
        await self._finalize()

    async def _poll_status(self) -> None:
        while True:
            try:
                status, expires_at = await self.w.redis.hmget(self.b.batch, "status", "expires_at")
                self.expires_at = int(expires_at or 0)
                if status == b"cancelling":
                    self.stop_reason = "cancelled"
                elif self.expires_at and time.time() >= self.expires_at and self.stop_reason is None:
                    self.stop_reason = "expired"
            except RedisError:
                pass
            await asyncio.sleep(STATUS_POLL_S)

    async def _acquire(self) -> None:
        await self.slots.acquire()
        await self.w.total_slots.acquire()

    def _release(self) -> None:
        self.slots.release()
        self.w.total_slots.release()

    async def _feed(self, lines_key: str) -> None:
        w, b = self.w, self.b
        async for index, line in w.store.iter_lines(lines_key, start=self.cursor):
            if not line.strip():
                continue
            await self._acquire()
            if self.stop_reason is not None:
                self._release()
                return
            async with w.redis.pipeline(transaction=True) as pipe:
                pipe.hset(b.inflight, str(index), "0:")
                pipe.hset(b.batch, "cursor", index + 1)
                await pipe.execute()
            self.cursor = index + 1
            self._spawn_line(index, line, 0, resumed=False)

    def _spawn_line(self, line_no: int, line: bytes, attempt: int, resumed: bool, started: str | None = None) -> None:
        task = asyncio.create_task(self._line(line_no, line, attempt, resumed, started))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _line(self, line_no: int, line: bytes, attempt: int, resumed: bool, started: str | None) -> None:
        try:
            try:
                obj = orjson.loads(line)
                custom_id = obj["custom_id"]
                req = parse_chat_request(obj["body"])
                model = self.w.catalog.models[req.model]
            except Exception:  # validated already: only a file deleted under a running batch gets here
                await self._write(line_no, line_request_id(self.b.id, line_no, attempt), "", 0,
                                  Outcome("err", status=400, error=_error_body(
                                      "The request line could not be read back from the input file.",
                                      "invalid_line")))
                return
            while True:
                rid = line_request_id(self.b.id, line_no, attempt)
                outcome = await self._attempt(line_no, attempt, rid, req, model, resumed, started)
                if outcome.kind == "retry" and attempt + 1 < MAX_ATTEMPTS and self.stop_reason is None:
                    attempt, resumed, started = attempt + 1, False, None
                    await self.w.redis.hset(self.b.inflight, str(line_no), f"{attempt}:")
                    continue
                if outcome.kind == "retry":
                    outcome = Outcome("err", status=502, error=_error_body(
                        "The worker running this request stopped; it was not billed.", "worker_lost", "api_error"))
                charge = 0
                if outcome.kind == "ok":
                    usage = orjson.loads(outcome.payload).get("usage") or {}
                    charge = model.cost_micro(int(usage.get("prompt_tokens", 0)),
                                              int(usage.get("completion_tokens", 0)))
                await self._write(line_no, rid, custom_id, charge, outcome)
                return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch line crashed; it stays in flight and is resumed later", batch_id=self.b.id,
                          line=line_no)
        finally:
            self.lines.pop(line_no, None)
            self._release()

    async def _write(self, line_no: int, rid: str, custom_id: str, charge: int, o: Outcome) -> None:
        if o.kind == "drop":
            await self.w.store.finish_line(self.b, line_no, "none", b"", 0, rid)
            return
        if o.kind == "ok":
            response = {"status_code": 200, "request_id": rid, "body": orjson.Fragment(o.payload)}
        else:
            response = {"status_code": o.status, "request_id": rid, "body": o.error}
        out = orjson.dumps({"id": "batch_req_" + rid, "custom_id": custom_id, "response": response, "error": None})
        await self.w.store.finish_line(self.b, line_no, "ok" if o.kind == "ok" else "err", out, charge, rid)

    # --- one attempt of one line ------------------------------------------------------------------
    async def _attempt(self, line_no: int, attempt: int, rid: str, req: ChatCompletionRequest, model: Model,
                       resumed: bool, started: str | None) -> Outcome:
        w = self.w
        state = {"rid": rid, "started": started, "queue": w.hub.register(rid), "model": model, "node": None,
                 "line": line_no, "attempt": attempt, "recorded": started}
        self.lines[line_no] = state
        try:
            dispatch, reserve = True, True
            if resumed:
                probe, frame = await self._probe(rid, model)
                if probe == "running":  # announced, perhaps after this worker's predecessor died
                    state["started"] = started = frame.decode()
                if probe in ("live", "claimed"):  # queued, or just popped: _wait tells which way it goes
                    dispatch = False
                elif probe == "result":
                    return self._outcome(frame)
                elif started:  # a node worker took it off the queue and announced it
                    lost = await self._lost(rid, state)
                    if lost is not None:
                        return lost
                    dispatch = False  # still running there: wait for its result
                else:  # never enqueued: reserve unless the hold is already there
                    reserve = probe == "unsent"
            if dispatch:
                if reserve:
                    refused = await self._reserve(rid, model, req)
                    if refused is not None:
                        return refused
                if self.stop_reason is not None:
                    await self._refund(rid, model, "rejected", f"batch_{self.stop_reason}")
                    return Outcome("drop") if self.stop_reason == "cancelled" else self._expired_outcome()
                queued = await self._enqueue(rid, model, req, state)
                if not queued:
                    await self._refund(rid, model, "rejected", f"batch_{self.stop_reason}")
                    return Outcome("drop") if self.stop_reason == "cancelled" else self._expired_outcome()
            return await self._wait(rid, state, model)
        finally:
            w.hub.unregister(rid)

    @staticmethod
    def _expired_outcome() -> Outcome:
        return Outcome("err", status=408, error=_error_body(
            "This request could not be executed before the batch's completion window expired.", "batch_expired"))

    async def _reserve(self, rid: str, model: Model, req: ChatCompletionRequest) -> Outcome | None:
        w = self.w
        deadline_ms = int((time.time() + QUEUE_ALLOWANCE_S + w.settings.request_timeout_s + 60) * 1000)
        while True:
            r = await w.credits.reserve(self.account_id, rid, model.base_cost_micro, deadline_ms, self.key_id,
                                        self.limits, 0)
            if r.ok:
                self.my_holds.add(rid)
                return None
            if r.status == ReserveStatus.INSUFFICIENT:
                # Short only because of this batch's own holds? Wait for them to settle instead of failing.
                mine = await self._my_held_micro()
                if mine and r.balance_micro - (r.held_micro - mine) >= model.base_cost_micro:
                    await asyncio.sleep(0.05)
                    continue
                message = (f"Insufficient credits: a request to '{model.id}' holds "
                           f"{model.base_cost_micro / 1e6:g} credits and the account has "
                           f"{(r.balance_micro - r.held_micro) / 1e6:g} available. Top up to continue.")
            elif r.missing_account:
                message = "The account of this batch no longer exists."
            elif r.status == ReserveStatus.KEY_BUDGET and await self._my_held_micro():
                # The key's limit counts its open holds: this batch's own lines in flight free room as they settle.
                await asyncio.sleep(0.05)
                continue
            else:
                message = "This API key has reached its credit limit."
            return Outcome("err", status=402, error=_error_body(message, "insufficient_quota", "insufficient_quota"))

    async def _my_held_micro(self) -> int:
        if not self.my_holds:
            return 0
        rids = list(self.my_holds)
        holds = await self.w.redis.hmget(AccountKeys(self.account_id).holds, rids)
        total = 0
        for rid, hold in zip(rids, holds):
            if hold is None:
                self.my_holds.discard(rid)
            else:
                total += Hold.parse(hold).amount_micro
        return total

    async def _pick_node(self, model: Model) -> str | None:
        while self.stop_reason is None:
            live = [n for n in model.nodes if self.w.live.get(n)]
            if live:
                return live[0]
            await asyncio.sleep(0.5)
        return None

    async def _enqueue(self, rid: str, model: Model, req: ChatCompletionRequest, state: dict) -> bool:
        w, s = self.w, self.w.settings
        while True:
            node = await self._pick_node(model)
            if node is None:
                return False
            now = time.time()
            job = {"id": rid, "account_id": self.account_id, "key_id": self.key_id, "model": model.id,
                   "reply_to": w.hub.channel, "trace_id": rid, "stream": False, "include_usage": False,
                   "body": {**req.model_dump(exclude_none=True, by_alias=True), "stream": False},
                   "node": node, "created": int(now), "enqueued_ms": int(now * 1000), "batch_id": self.b.id,
                   "result_key": self.b.result(rid), "result_ttl_s": int(s.batch_file_retention_s)}
            try:
                await w.queue.enqueue(keys.node_batch_queue(node), "chat", rid, job,
                                      expires_ms=int(QUEUE_ALLOWANCE_S * 1000), max_depth=s.max_queue_depth)
                state["node"] = node
                return True
            except QueueFull:
                await asyncio.sleep(0.5)

    async def _wait(self, rid: str, state: dict, model: Model) -> Outcome:
        w = self.w
        silent_since = time.monotonic()
        while True:
            try:
                frames = await asyncio.wait_for(state["queue"].get(), WATCH_S)
            except asyncio.TimeoutError:
                frames = LOST
            if frames == "drop":
                return Outcome("drop")
            if frames == "expire":
                return self._expired_outcome()
            if frames is LOST:  # silent (or replies lost): look at the durable state
                probe, frame = await self._probe(rid, model)
                if probe == "result":
                    return self._outcome(frame)
                if probe == "running" and not state["started"]:  # its STARTED frame went astray
                    state["started"] = frame.decode()
                if probe == "claimed" and not state["started"]:
                    # A node worker popped it and announces it within ANNOUNCE_AFTER_S, unless it died.
                    seen = state.setdefault("claimed_seen", time.monotonic())
                    if time.monotonic() - seen <= w.settings.worker_lease_s + WATCH_S:
                        continue
                    await self._refund(rid, model, "failed", "job_lost")
                    return Outcome("retry")
                if probe in ("live", "claimed") or state["started"]:  # queued, or running where announced
                    if state["started"]:
                        lost = await self._lost(rid, state)
                        if lost is not None:
                            return lost
                    # A running job ends within the request timeout (arq's backstop is 30 s later).
                    budget = w.settings.request_timeout_s + 60 if state["started"] else \
                        QUEUE_ALLOWANCE_S + w.settings.request_timeout_s
                    if time.monotonic() - silent_since > budget:
                        await self._refund(rid, model, "failed", "job_lost")
                        return Outcome("retry")
                    continue
                # Neither queued, running nor answered: the job lapsed or its worker died before starting it.
                await self._refund(rid, model, "failed", "job_lost")
                return Outcome("retry")
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.STARTED:
                    state["started"] = payload.decode()
                    silent_since = time.monotonic()
                elif kind in (relay.RESULT, relay.ERROR):
                    return self._outcome(kind + payload)
            if state["started"] and state["recorded"] != state["started"]:
                await self._record_started(state)

    def _outcome(self, frame: bytes) -> Outcome:
        kind, payload = frame[:1], frame[1:].rstrip(b"\n")
        if kind == relay.RESULT:
            return Outcome("ok", payload=payload)
        info = orjson.loads(payload)
        error = info.get("error") or {}
        if error.get("code") in WORKER_FAULTS:
            return Outcome("retry")  # the node worker refunded that attempt itself
        return Outcome("err", status=int(info.get("status") or 500), error={"error": error})

    async def _probe(self, rid: str, model: Model) -> tuple[str, bytes | None]:
        """result | running (on the worker whose id comes back) | live (queued) | claimed (popped, not
        yet announced) | held (hold, not queued) | unsent (no hold).

        The job key holds the job's bytes, which are its member on the node's batch queue
        (shared/queue.py); the node worker that pops it rewrites the key to ``running-on:<worker id>``
        with the job's first publish (worker/node_worker.py), and the key lapses after the request
        timeout. Read in one transaction, so the answer is one moment's state.
        """
        w = self.w
        async with w.redis.pipeline(transaction=True) as pipe:
            pipe.get("arq:job:" + rid)
            pipe.get(self.b.result(rid))
            pipe.hexists(AccountKeys(self.account_id).holds, rid)
            job, frame, held = await pipe.execute()
        if frame:
            return "result", frame
        if job and job.startswith(keys.JOB_RUNNING_ON):
            return "running", job[len(keys.JOB_RUNNING_ON):]
        if job:
            async with w.redis.pipeline(transaction=False) as pipe:
                for node in model.nodes:
                    pipe.zscore(keys.node_batch_queue(node), job)
                scores = await pipe.execute()
            return ("live" if any(score is not None for score in scores) else "claimed"), None
        return ("held" if held else "unsent"), None

    async def _lost(self, rid: str, state: dict) -> Outcome | None:
        """A started line whose worker died without an answer: refunded, to be run again. None: still running."""
        if await self._worker_alive(state["started"]):
            return None
        probe, frame = await self._probe(rid, state["model"])  # it may have answered just before it died
        if probe == "result":
            return self._outcome(frame)
        await self._refund(rid, state["model"], "failed", "worker_lost")
        return Outcome("retry")

    async def _record_started(self, state: dict) -> None:
        """Keep the worker running the line in its in-flight record: a resumed batch worker waits for it."""
        try:
            await self.w.redis.hset(self.b.inflight, str(state["line"]), f"{state['attempt']}:{state['started']}")
            state["recorded"] = state["started"]
        except RedisError as exc:
            log.warning("could not record a started batch line", request_id=state["rid"], error=str(exc))

    async def _worker_alive(self, worker_id: str) -> bool:
        try:
            return bool(await self.w.redis.exists(keys.worker_info(worker_id)))
        except RedisError:
            return True

    async def _refund(self, rid: str, model: Model, status: str, code: str) -> None:
        row = {"request_id": rid, "model": model.id, "node": "", "key_id": self.key_id, "status": status,
               "error_code": code, "created": int(time.time()), "batch_id": self.b.id}
        try:
            await self.w.credits.settle(self.account_id, rid, 0, row, key_id=self.key_id, actual_tokens=0)
        except RedisError as exc:
            log.warning("batch refund deferred to reconciliation", request_id=rid, error=str(exc))

    # --- stopping and finishing -----------------------------------------------------------------------
    async def _withdraw_queued(self) -> None:
        """Cancel or expiry: take back the lines nobody started; let running ones finish."""
        for line_no, state in list(self.lines.items()):
            if state["started"]:
                continue
            for node in state["model"].nodes:
                if await self.w.queue.withdraw(keys.node_batch_queue(node), state["rid"]):
                    await self._refund(state["rid"], state["model"], "rejected", f"batch_{self.stop_reason}")
                    state["queue"].put_nowait("drop" if self.stop_reason == "cancelled" else "expire")
                    break

    async def _expire_unrun(self, lines_key: str) -> None:
        """Every line never fed gets a batch_expired error line, a page at a time."""
        w = self.w
        cursor = int(await w.redis.hget(self.b.batch, "cursor") or 0)
        while True:
            rows = await w.redis.lrange(lines_key, cursor, cursor + PAGE - 1)
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
                    "id": "batch_req_" + line_request_id(self.b.id, index, 0), "custom_id": custom_id,
                    "response": None, "error": {"code": "batch_expired", "message": "This request could not be "
                                                "executed before the batch's completion window expired."}}))
            if not await w.store.write_unrun(self.b, cursor, cursor + len(rows), out):
                return
            cursor += len(rows)

    async def _finalize(self) -> None:
        w, b = self.w, self.b
        final = "cancelled"
        if self.stop_reason != "cancelled":
            result = await w.store.transition(b.id, "finalizing", ("in_progress", "finalizing"),
                                              finalizing_at=int(time.time()))
            if result != "cancelling":
                final = "expired" if self.stop_reason == "expired" else "completed"
        allowed = ("cancelling",) if final == "cancelled" else ("finalizing",)
        raw = await w.store.raw_batch(b.id)
        files = {}
        for kind, key, count_field, bytes_field, name in (
                ("output_file_id", b.output, b"completed", b"output_bytes", "output"),
                ("error_file_id", b.errors, b"failed", b"error_bytes", "errors")):
            if raw.get(kind.encode()):
                continue
            count = int(raw.get(count_field) or 0)
            if count:
                fid = await w.store.create_result_file(self.account_id, b.id, key, int(raw.get(bytes_field) or 0),
                                                       count, f"{b.id}_{name}.jsonl")
                await w.redis.hset(b.batch, kind, fid)
                files[kind] = fid
        await w.store.transition(b.id, final, allowed, **{f"{final}_at": int(time.time())})
        await w._terminal(b)
        log.info("batch finished", batch_id=b.id, status=final, **files)


async def serve() -> None:
    worker = BatchWorker()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)
