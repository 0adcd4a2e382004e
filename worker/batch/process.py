"""The ``apiinone batch-worker`` process: which batches run here, and its loops.

Loops: the scan (take the lease of every active batch nobody runs, woken at
once by a create or cancel), the lease keeper (``leases.py``), the callback
deliveries (``callbacks.py``) and file retention (files and batch records past
their time deleted, bytes and rows: ``FileStore.sweep``); the shared lifecycle
(``shared/dispatch.py``) keeps its own view of the node workers. Each batch taken runs in its own task:
validation first (``validation.py``), then its execution (``run.py``, lines
admitted by ``admit.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid

import orjson
import structlog
from redis.exceptions import RedisError

from shared.batch_store import TERMINAL, BatchStatus, BatchStore
from shared.blob_store import blob_store
from shared.db.database import Database, DatabaseUnavailable
from shared.file_store import FileStore
from shared.file_store_upgrade import move_redis_files
from shared.catalog import Catalog, get_catalog
from shared.live_catalog import LiveCatalog, start_live_catalog
from shared.accounts import Accounts
from shared.dispatch import Dispatcher
from shared.keys import BATCHES_ACTIVE, BATCHES_WAKE, BatchKeys
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings
from worker.batch.callbacks import Callbacks
from worker.batch.finalize import mark_terminal
from worker.batch.leases import BatchLeases
from worker.batch.run import BatchRun
from worker.batch.validation import LineRules, LineValidator, Validation, check_file

log = structlog.get_logger()

RUNNABLE = (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING)


class BatchWorker:
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None,
                 live: LiveCatalog | None = None) -> None:
        self.settings = settings or get_settings()
        self.live = live or LiveCatalog(catalog or get_catalog(), None, None)  # default: a fixed catalog
        url = self.settings.redis_url
        self.redis = make_redis(url)
        self.blocking = make_redis(url, max_connections=2, socket_timeout=None)
        if not self.settings.database_url:
            raise RuntimeError("the batch worker needs the record: set DATABASE_URL")
        self.db = Database(self.settings.database_url, self.settings.database_pool_size)
        self.store = BatchStore(self.redis, self.settings, db=self.db)
        self.blobs = blob_store(self.settings)
        self.files = FileStore(self.db, self.blobs, self.settings)
        self.accounts = Accounts(self.redis)
        self.worker_id = f"batch-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Lines run through the same lifecycle as interactive requests (shared/dispatch.py).
        self.dispatch = Dispatcher(self.settings, self.catalog, self.worker_id)
        self.leases = BatchLeases(self.redis, self.store.scripts, self.worker_id)
        self.callbacks = Callbacks(self.redis, self.store, self.settings)
        self.total_slots = asyncio.Semaphore(self.settings.batch_inflight_total)
        self.running: dict[str, asyncio.Task] = {}
        self.live.on_swap(self.dispatch.use_catalog)

    @property
    def catalog(self) -> Catalog:
        return self.live.current

    async def run(self, stop: asyncio.Event) -> None:
        await self.callbacks.start()
        await self.dispatch.start()
        loops = [asyncio.create_task(c) for c in (self._scan_loop(), self.leases.keep(self.running),
                                                  self.callbacks.run(), self._retention_loop())]
        log.info("batch worker started", worker_id=self.worker_id)
        try:
            await stop.wait()
        finally:
            for task in loops + list(self.running.values()):
                task.cancel()
            await asyncio.gather(*loops, *self.running.values(), return_exceptions=True)
            for batch_id in list(self.running):  # hand our batches over at once instead of after the lease lapses
                await self.leases.release(batch_id)
            await self.callbacks.close()
            await self.dispatch.stop()
            await self.blobs.close()
            await self.db.close()
            for r in (self.redis, self.blocking):
                await r.aclose()

    async def _scan_loop(self) -> None:
        while True:
            try:
                for member in await self.redis.zrange(BATCHES_ACTIVE, 0, -1):
                    batch_id = member.decode()
                    if batch_id not in self.running and await self.leases.take(batch_id):
                        self.running[batch_id] = asyncio.create_task(self._run_batch(batch_id))
                await self.blocking.blpop([BATCHES_WAKE], timeout=1)
            except RedisError as exc:
                log.warning("batch scan failed", error=str(exc))
                await asyncio.sleep(1)

    async def _retention_loop(self) -> None:
        """Files an older version kept in Redis moved to the blob store (once), then retention, every minute."""
        redis_files_moved = False
        while True:
            try:
                if not redis_files_moved:
                    await move_redis_files(self.redis, self.files)
                    redis_files_moved = True
                deleted = await self.files.sweep()
                if deleted:
                    log.info("files past their retention deleted", files=deleted)
            except DatabaseUnavailable as exc:
                log.warning("file retention waits for the database", error=str(exc))
            except Exception:  # noqa: BLE001 - the blob store failed: the rows stay, swept next time
                log.exception("file retention failed; trying again")
            await asyncio.sleep(self.settings.file_retention_scan_s)

    async def _run_batch(self, batch_id: str) -> None:
        b = BatchKeys(batch_id)
        try:
            raw = await self.store.raw_batch(batch_id)
            if not raw:
                await self.redis.zrem(BATCHES_ACTIVE, batch_id)
                return
            status = raw.get(b"status", b"").decode()
            if status == BatchStatus.VALIDATING:
                status = await self._validate(b, raw)
            if status in RUNNABLE:
                await BatchRun(self, b, await self.store.raw_batch(batch_id)).execute()
            elif status in TERMINAL:
                await self.store.retain(b)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch run crashed; it will be resumed", batch_id=batch_id)
            await asyncio.sleep(1)
        finally:
            self.running.pop(batch_id, None)
            await self.leases.release(batch_id)

    async def _validate(self, b: BatchKeys, raw: dict[bytes, bytes]) -> str:
        """Read the input file once; fail the batch naming its bad lines, or start it. Returns the new status."""
        s = self.settings
        record = await self.files.get_file(raw[b"account_id"].decode(), raw[b"input_file_id"].decode())
        problem = check_file(record, s.batch_max_file_bytes)
        if problem is not None:
            validation = Validation([problem], 0)
        else:
            validator = LineValidator(LineRules.of(raw[b"endpoint"].decode(), self.catalog, s))
            async for index, _, line in self.files.lines(record):  # streamed from the blob store
                if not validator.feed(index, line):
                    break
            validation = validator.result()
        if not validation.ok:
            await self.store.transition(b.id, BatchStatus.FAILED, (BatchStatus.VALIDATING, BatchStatus.CANCELLING),
                                        failed_at=int(time.time()), errors=orjson.dumps(validation.errors_object()),
                                        total=validation.total)
            await mark_terminal(self.store, self.callbacks, b)
            log.info("batch failed validation", batch_id=b.id, errors=len(validation.errors))
            return BatchStatus.FAILED
        result = await self.store.transition(b.id, BatchStatus.IN_PROGRESS, (BatchStatus.VALIDATING,),
                                             in_progress_at=int(time.time()), total=validation.total)
        log.info("batch validated", batch_id=b.id, total=validation.total)
        return BatchStatus.IN_PROGRESS if result == "ok" else result or BatchStatus.FAILED


async def serve() -> None:
    settings = get_settings()
    worker = BatchWorker(settings, live=await start_live_catalog(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)
