"""One batch's execution in this process: feed its lines, run each line's attempts, then finalize.

Lines are fed in order onto the model's node batch queue (``keys.node_batch_queue``:
node workers pop it only when the interactive queue is empty), at most
``batch_inflight_per_batch`` lines of a batch (and ``batch_inflight_total`` of all)
queued or running at once. Each line is an ordinary non-stream chat request:
reserved like any request (a line the account cannot cover fails with
``insufficient_quota`` and the batch goes on), run by a node worker, settled by the
billing worker with the batch id on its usage row.

Exactly once, across a SIGKILL of this process: a line is recorded in flight (with
the batch's cursor) before it is reserved; its request id is deterministic
(``<batch id>_<line>[_a<attempt>]``); the node worker stores the line's final reply
under a result key before it publishes or bills it; and the output line is
appended by a script that also removes the line from the in-flight record, once. A
line's node worker announces it with a STARTED frame (its worker id) once it has
run 0.2 s; the node worker took the job off the queue by then, so that id, kept in
the in-flight record, is what says the line is running. A resumed worker probes
each line still in flight (``probe.py``): job still queued, or started on a live
worker -> wait for it; result stored -> write it; started on a dead worker ->
refund that attempt and run a new one; never enqueued -> enqueue (reserving only
if no hold exists). So no line is run to completion twice, and no line is billed
twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
import structlog
from redis.exceptions import RedisError

from shared import keys, relay
from shared.batch_store import BatchStatus, line_request_id
from shared.catalog import Catalog, Model
from shared.contracts import ErrorCode, RequestStatus
from shared.dispatch import SILENT, WATCH_S, InFlight
from shared.keys import BatchKeys
from shared.protocol import ChatCompletionRequest, parse_chat_request
from worker.batch import lines
from worker.batch.admit import QUEUE_ALLOWANCE_S, KeyRevoked, KeyWatch, LineSubmitter, admitted_line
from worker.batch.finalize import expire_unrun, finalize
from worker.batch.lines import RETRY, LineState, Outcome, OutcomeKind, StopReason
from worker.batch.probe import Probe, probe
from worker.batch.spool import Spool

if TYPE_CHECKING:
    from worker.batch.process import BatchWorker

log = structlog.get_logger()

MAX_ATTEMPTS = 2  # a line whose node worker died or shut down is run once more (a new request id)
STATUS_POLL_S = 0.5


class BatchRun:
    def __init__(self, w: BatchWorker, b: BatchKeys, raw: dict[bytes, bytes]) -> None:
        self.w = w
        self.b = b
        self.account_id = raw[b"account_id"].decode()
        self.submitter = LineSubmitter(w.dispatch, KeyWatch(w.accounts, raw[b"key_id"].decode()), b.id, b.result,
                                       int(w.settings.batch_file_retention_s))
        self.cursor = int(raw.get(b"cursor") or 0)
        self.expires_at = int(raw.get(b"expires_at") or 0)
        self.status = raw[b"status"].decode()
        self.input_file_id = raw[b"input_file_id"].decode()
        self.slots = asyncio.Semaphore(w.settings.batch_inflight_per_batch)
        self.lines: dict[int, LineState] = {}  # line no -> its running attempt
        self.tasks: set[asyncio.Task] = set()
        self.stop_reason: StopReason | None = None
        if self.status == BatchStatus.CANCELLING:
            self.stop_reason = StopReason.CANCELLED
        elif self.expires_at and time.time() >= self.expires_at:
            self.stop_reason = StopReason.EXPIRED

    # --- the run ------------------------------------------------------------------------------------
    async def execute(self) -> None:
        w = self.w
        await asyncio.wait_for(w.dispatch.hub.ready.wait(), 30)
        record = await w.files.get_file(self.account_id, self.input_file_id)
        spool = Spool(w.redis, w.store.scripts, w.blobs, self.b)
        tasks = [asyncio.create_task(self._poll_status()), asyncio.create_task(spool.run())]
        try:
            if self.status != BatchStatus.FINALIZING:
                await self._resume_in_flight(record)
                if record and self.stop_reason is None:
                    await self._feed(record)
                if self.stop_reason is not None:
                    await self._withdraw_queued()
                if self.tasks:
                    await asyncio.gather(*self.tasks)
                if await w.redis.hlen(self.b.inflight):  # a line not written out (Redis failed it): not final yet
                    raise RuntimeError("batch lines still in flight; the batch is resumed later")
                if self.stop_reason == StopReason.EXPIRED and record:
                    await expire_unrun(w.store, spool, self.b, w.files, record)
        except asyncio.CancelledError:
            for task in list(self.tasks):  # shutdown or a lost lease: lines stay in flight for the next owner
                task.cancel()
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await finalize(w.store, w.files, spool, w.callbacks, self.b, self.account_id, self.stop_reason)

    async def _resume_in_flight(self, record: dict | None) -> None:
        """The lines a previous owner of this batch had in flight (none on a first run), read from the input
        file's start up to the last of them (a resume is rare; feeding goes on from the cursor's offset)."""
        w = self.w
        inflight = {int(n): v.decode() for n, v in (await w.redis.hgetall(self.b.inflight)).items()}
        wanted: dict[int, bytes] = {}
        if inflight and record:
            last = max(inflight)
            async for index, _, line in w.files.lines(record):
                if index in inflight:
                    wanted[index] = line
                if index >= last:
                    break
        for line_no, value in sorted(inflight.items()):
            attempt, _, started = value.partition(":")
            await self._acquire()
            self._spawn_line(line_no, wanted.get(line_no, b""), int(attempt or 0), resumed=True,
                             started=started or None)

    async def _poll_status(self) -> None:
        while True:
            try:
                status, expires_at = await self.w.redis.hmget(self.b.batch, "status", "expires_at")
                self.expires_at = int(expires_at or 0)
                if status == BatchStatus.CANCELLING.encode():
                    self.stop_reason = StopReason.CANCELLED
                elif self.expires_at and time.time() >= self.expires_at and self.stop_reason is None:
                    self.stop_reason = StopReason.EXPIRED
            except RedisError:
                pass
            await asyncio.sleep(STATUS_POLL_S)

    async def _acquire(self) -> None:
        await self.slots.acquire()
        await self.w.total_slots.acquire()

    def _release(self) -> None:
        self.slots.release()
        self.w.total_slots.release()

    async def _feed(self, record: dict) -> None:
        """Lines from the cursor on, streamed from the input file where the cursor's line starts."""
        w, b = self.w, self.b
        offset = await w.redis.hget(b.batch, "cursor_offset")
        async for index, end, line in w.files.lines_from_cursor(record, self.cursor,
                                                                int(offset) if offset is not None else None):
            if not line.strip():
                continue
            await self._acquire()
            if self.stop_reason is not None:
                self._release()
                return
            async with w.redis.pipeline(transaction=True) as pipe:
                pipe.hset(b.inflight, str(index), "0:")
                pipe.hset(b.batch, mapping={"cursor": index + 1, "cursor_offset": end})
                await pipe.execute()
            self.cursor = index + 1
            self._spawn_line(index, line, 0, resumed=False)

    def _spawn_line(self, line_no: int, line: bytes, attempt: int, resumed: bool, started: str | None = None) -> None:
        task = asyncio.create_task(self._line(line_no, line, attempt, resumed, started))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- one line: its attempts, then its output line -----------------------------------------------
    async def _line(self, line_no: int, line: bytes, attempt: int, resumed: bool, started: str | None) -> None:
        try:
            custom_id = ""
            try:
                obj = orjson.loads(line)
                custom_id = obj["custom_id"]
                req = parse_chat_request(obj["body"])
                catalog = self.w.catalog  # the line's attempts run at this version (its model and prices)
                model = catalog.resolve(req.model)  # an alias: its target
                if model is None:
                    raise KeyError(req.model)
            except Exception:  # validated already: only a file deleted under a running batch gets here
                await self._write(line_no, line_request_id(self.b.id, line_no, attempt), "", 0, lines.unreadable())
                return
            while True:
                rid = line_request_id(self.b.id, line_no, attempt)
                try:
                    outcome = await self._attempt(line_no, attempt, rid, req, model, catalog, resumed, started)
                except KeyRevoked:
                    await self._stop_for_revoked_key()
                    outcome = lines.stopped(StopReason.CANCELLED)
                if outcome.kind == OutcomeKind.RETRY and attempt + 1 < MAX_ATTEMPTS and self.stop_reason is None:
                    attempt, resumed, started = attempt + 1, False, None
                    await self.w.redis.hset(self.b.inflight, str(line_no), f"{attempt}:")
                    continue
                if outcome.kind == OutcomeKind.RETRY:
                    outcome = lines.worker_lost()
                await self._write(line_no, rid, custom_id, lines.charge_micro(outcome), outcome)
                return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: refund the attempt and write the line as failed, never leave it hanging
            log.exception("batch line crashed; refunded and written as failed", batch_id=self.b.id, line=line_no)
            await self._fail_crashed(line_no, line_request_id(self.b.id, line_no, attempt), custom_id)
        finally:
            self.lines.pop(line_no, None)
            self._release()

    async def _fail_crashed(self, line_no: int, rid: str, custom_id: str) -> None:
        state = self.lines.get(line_no)
        try:
            if state is not None:
                await state.flight.refund(RequestStatus.FAILED, ErrorCode.INTERNAL_ERROR)
            await self._write(line_no, rid, custom_id, 0, lines.error(
                500, "The request failed inside the batch worker; it was not billed.", ErrorCode.INTERNAL_ERROR,
                "api_error"))
        except Exception:  # noqa: BLE001 - Redis is failing too: the line stays in flight, resumed later
            log.exception("a crashed batch line could not be written out", batch_id=self.b.id, line=line_no)

    async def _stop_for_revoked_key(self) -> None:
        """The batch's key was revoked or expired: cancel the batch, saying why (OpenAI's errors object)."""
        if self.stop_reason is None:
            self.stop_reason = StopReason.CANCELLED
            errors = {"object": "list", "data": [{
                "code": "api_key_revoked", "line": None, "param": None,
                "message": "The API key that created this batch was revoked or has expired; the batch was "
                           "cancelled and its remaining requests were not run."}]}
            await self.w.store.transition(self.b.id, BatchStatus.CANCELLING, (BatchStatus.IN_PROGRESS,),
                                          cancelling_at=int(time.time()), errors=orjson.dumps(errors))
            log.warning("batch cancelled: its key was revoked or expired", batch_id=self.b.id)

    async def _write(self, line_no: int, rid: str, custom_id: str, charge: int, outcome: Outcome) -> None:
        kind, out = lines.output_line(rid, custom_id, outcome)
        await self.w.store.finish_line(self.b, line_no, kind, out, charge, rid)

    # --- one attempt of one line ------------------------------------------------------------------
    async def _attempt(self, line_no: int, attempt: int, rid: str, req: ChatCompletionRequest, model: Model,
                       catalog: Catalog, resumed: bool, started: str | None) -> Outcome:
        """Resume the attempt where its durable state says it is, or submit it; then wait for its end."""
        submitter = self.submitter
        state = LineState(line=line_no, attempt=attempt, rid=rid, model=model, started=started, recorded=started,
                          flight=submitter.flight(admitted_line(await submitter.keys.current(), req, model,
                                                                self.w.settings, catalog), "", rid))
        state.flight.listen()
        self.lines[line_no] = state
        try:
            submit = True
            if resumed:
                where, frame = await probe(self.w.redis, self.b, self.account_id, rid, model)
                if where == Probe.RESULT:
                    return lines.from_frame(frame)
                if where == Probe.RUNNING:  # announced, perhaps after this worker's predecessor died
                    state.started = frame.decode()
                if where in (Probe.QUEUED, Probe.CLAIMED):  # queued, or just popped: _wait tells which way it goes
                    submit = False
                elif state.started:  # a node worker took it off the queue and announced it
                    lost = await self._lost(state)
                    if lost is not None:
                        return lost
                    submit = False  # still running there: wait for its result
                # else never enqueued (held or not): submit; reserve.lua finds a hold that exists (REPLAY)
            if submit:
                state.flight.close()
                queued = await submitter.submit(rid, req, model, lambda: self.stop_reason is not None)
                if not isinstance(queued, InFlight):
                    if queued is None:  # the batch stopped meanwhile: give back a hold a full queue left
                        await state.flight.refund(RequestStatus.REJECTED, f"batch_{self.stop_reason}")
                        return lines.stopped(self.stop_reason)
                    return queued
                state.flight, state.node = queued, queued.node
            return await self._wait(state)
        finally:
            state.flight.close()

    async def _wait(self, state: LineState) -> Outcome:
        """Until the attempt answers, or the durable state says it will not (see ``_silent``)."""
        silent_since = time.monotonic()
        while True:
            frames = await state.flight.next_frames()
            if isinstance(frames, StopReason):  # withdrawn from the queue (cancel, expiry)
                return lines.stopped(frames)
            if frames is SILENT:  # silent (or replies lost): look at the durable state
                outcome = await self._silent(state, silent_since)
                if outcome is not None:
                    return outcome
                continue
            for kind, payload in relay.iter_frames(frames):
                if kind == relay.STARTED:
                    state.started = payload.decode()
                    silent_since = time.monotonic()
                elif kind in (relay.RESULT, relay.ERROR):
                    return lines.from_frame(kind + payload)
            if state.started and state.recorded != state.started:
                await self._record_started(state)

    async def _silent(self, state: LineState, silent_since: float) -> Outcome | None:
        """A silent attempt, by its durable state: its outcome, a retry, or None to go on waiting."""
        w, rid, model = self.w, state.rid, state.model
        where, frame = await probe(w.redis, self.b, self.account_id, rid, model)
        if where == Probe.RESULT:
            return lines.from_frame(frame)
        if where == Probe.RUNNING and not state.started:  # its STARTED frame went astray
            state.started = frame.decode()
        if where == Probe.CLAIMED and not state.started:
            # A node worker popped it and announces it within ANNOUNCE_AFTER_S, unless it died.
            if state.claimed_since is None:
                state.claimed_since = time.monotonic()
            if time.monotonic() - state.claimed_since <= w.settings.worker_lease_s + WATCH_S:
                return None
            await state.flight.refund(RequestStatus.FAILED, ErrorCode.JOB_LOST)
            return RETRY
        if where in (Probe.QUEUED, Probe.CLAIMED) or state.started:  # queued, or running where announced
            if state.started:
                lost = await self._lost(state)
                if lost is not None:
                    return lost
            # A running job ends within the request timeout (arq's backstop is 30 s later).
            budget = w.settings.request_timeout_s + 60 if state.started else \
                QUEUE_ALLOWANCE_S + w.settings.request_timeout_s
            if time.monotonic() - silent_since > budget:
                await state.flight.refund(RequestStatus.FAILED, ErrorCode.JOB_LOST)
                return RETRY
            return None
        # Neither queued, running nor answered: the job lapsed or its worker died before starting it.
        await state.flight.refund(RequestStatus.FAILED, ErrorCode.JOB_LOST)
        return RETRY

    async def _lost(self, state: LineState) -> Outcome | None:
        """A started line whose worker died without an answer: refunded, to be run again. None: still running."""
        if await self.w.dispatch.liveness.worker_alive(state.started):
            return None
        where, frame = await probe(self.w.redis, self.b, self.account_id, state.rid, state.model)
        if where == Probe.RESULT:  # it may have answered just before it died
            return lines.from_frame(frame)
        await state.flight.refund(RequestStatus.FAILED, ErrorCode.WORKER_LOST)
        return RETRY

    async def _record_started(self, state: LineState) -> None:
        """Keep the worker running the line in its in-flight record: a resumed batch worker waits for it."""
        try:
            await self.w.redis.hset(self.b.inflight, str(state.line), f"{state.attempt}:{state.started}")
            state.recorded = state.started
        except RedisError as exc:
            log.warning("could not record a started batch line", request_id=state.rid, error=str(exc))

    async def _withdraw_queued(self) -> None:
        """Cancel or expiry: take back the lines nobody started; let running ones finish."""
        for state in list(self.lines.values()):
            if state.started:
                continue
            for node in state.model.nodes:
                if await self.w.dispatch.queue.withdraw(keys.node_batch_queue(node), state.rid):
                    await state.flight.refund(RequestStatus.REJECTED, f"batch_{self.stop_reason}")
                    state.flight.replies.put_nowait(self.stop_reason)
                    break
