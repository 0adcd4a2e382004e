"""BlockingPopWorker: arq's worker with its polling loop replaced by a blocking pop (BZMPOP).

arq polls its queue every ``poll_delay`` (0.5 s: ~250 ms added to every
request), leaves running jobs in the queue, and re-examines all of them on
every poll. Here a worker blocks on BZMPOP over its queues, in priority
order, only while it has a free slot, and takes as many waiting jobs as it has
free slots: the pop is the claim (exactly one worker gets each job, in ~one
round trip), a queued job is one nobody has started, and an idle worker sends
one command per ``idle_timeout_s``.

Queue members are the serialized jobs (``shared/queue.py``), so the pop hands
over the job too; the job's key (its bytes by id, for withdrawing it while it
waits) is deleted with the job's first write, or for a batch line rewritten to
name the worker running it (``claimed_commands``, ``ctx["claimed"]``). The job
function runs under its timeout in a task arq's signal handling drains and
cancels as its own. arq's ``run_job`` would add two transactions per job
(in-progress and retry keys, results) that serve its re-run-after-crash model,
which streams must not use: a stream that published output is never run again,
and lost jobs are handled by the gateway's lease on the worker.

Priority: ``claim_queues`` are in priority order, and a worker pops a lower
queue (batch) only while it runs nothing from the first one (interactive): a
batch line never takes a worker's CPU from a conversation already running
there. While first-queue jobs run, the pop waits on the first queue alone, for
``PRIORITY_RECHECK_S`` at a time.

Jobs must not be deferred (arq's ``_defer_by``/cron): the pop ignores scores.
"""

from __future__ import annotations

import asyncio
import logging
import time

import structlog
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job_raw
from arq.worker import Worker
from redis.exceptions import RedisError

from shared.redis_client import make_redis

log = structlog.get_logger()
logging.getLogger("arq").setLevel(logging.WARNING)  # arq logs two lines per job


# The members of arq's Worker this module relies on (checked by tests/test_architecture.py);
# no other module touches them: they go through running_job(), track() and inflight().
ARQ_INTERNALS = ("allow_pick_jobs", "loop", "job_tasks", "tasks", "job_counter", "jobs_complete", "jobs_failed",
                 "functions", "job_timeout_s", "ctx", "pool", "on_startup", "max_jobs", "job_deserializer",
                 "_release_sem_dec_counter_on_complete")

PRIORITY_RECHECK_S = 0.05
CLAIM_AT_ONCE = 16  # most jobs one pop may claim (no more than the worker's free slots)


class BlockingPopWorker(Worker):
    idle_timeout_s = 1.0
    first_queue_running = 0  # jobs from claim_queues[0] in flight

    def __init__(self, *args, claim_queues: list[str], redis_url: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.claim_queues = claim_queues
        self.redis_url = redis_url
        self.sem = asyncio.BoundedSemaphore(self.max_jobs)

    async def background(self) -> list:
        """Coroutines to run beside the claim loop (heartbeats, listeners)."""
        return []

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        claimer = make_redis(self.redis_url, max_connections=1, socket_timeout=None)
        helpers = [asyncio.create_task(c) for c in await self.background()]
        try:
            await self._claim_loop(claimer)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await claimer.aclose()

    async def _claim_loop(self, claimer) -> None:
        while True:
            if not self.allow_pick_jobs:
                await asyncio.sleep(0.1)
                continue
            await self.sem.acquire()
            slots = 1
            while slots < CLAIM_AT_ONCE and not self.sem.locked():  # free slots: claim that many at once
                await self.sem.acquire()
                slots += 1
            queues, timeout = self.claim_queues, self.idle_timeout_s
            if self.first_queue_running and len(queues) > 1:
                queues, timeout = queues[:1], PRIORITY_RECHECK_S
            try:
                # BZMPOP: block until a job waits, then take up to `slots` of the jobs waiting in
                # the first non-empty queue: under load one round trip claims several jobs.
                popped = await claimer.bzmpop(timeout, len(queues), queues, min=True, count=slots)
            except RedisError as exc:
                self._release(slots)
                log.warning("queue unreachable, retrying", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            except BaseException:
                self._release(slots)
                raise
            if not popped:
                self._release(slots)
                continue
            queue, jobs = popped[0], popped[1]
            self._release(slots - len(jobs))
            if not self.allow_pick_jobs:  # a drain began while we were blocked: give them back
                await self.pool.zadd(queue, {job: float(score) for job, score in jobs})
                self._release(len(jobs))
                continue
            first_queue = queue.decode() == self.claim_queues[0]
            for job, score in jobs:
                self.start_claimed(job, int(float(score)), first_queue=first_queue)

    def _release(self, slots: int) -> None:
        for _ in range(slots):
            self.sem.release()

    def start_claimed(self, raw: bytes, score: int, first_queue: bool = True) -> None:
        """Run one popped job (its serialized arq job: queue members are the jobs themselves)."""
        try:
            name, args, kwargs, _try, enqueue_ms = deserialize_job_raw(raw, deserializer=self.job_deserializer)
            job_id = args[0]["id"]
        except Exception:  # noqa: BLE001 - one bad job must not stop the claim loop
            log.exception("unreadable job dropped", job=raw[:200])
            self.sem.release()
            return
        self.job_counter += 1
        self.first_queue_running += first_queue
        task = self.loop.create_task(self.run_claimed(job_id, name, args, kwargs, enqueue_ms, score))
        self.tasks[job_id] = task

        def done(_task: asyncio.Task, job_id: str = job_id) -> None:
            self._release_sem_dec_counter_on_complete()
            self.first_queue_running -= first_queue
            self.tasks.pop(job_id, None)

        task.add_done_callback(done)

    async def run_claimed(self, job_id: str, name: str, args: tuple, kwargs: dict, enqueue_ms: int,
                          score: int) -> None:
        expires_at_ms = args[0].get("expires_at_ms")
        if expires_at_ms and time.time() * 1000 > expires_at_ms:  # its owner has given up on it
            log.warning("claimed job expired", job_id=job_id)
            return
        function = self.functions[name]
        ctx = {**self.ctx, "job_id": job_id, "job_try": 1, "score": score, "enqueue_time_ms": enqueue_ms,
               "claimed": self.claimed_commands(job_id, args[0])}
        # The job runs in this task (no second task and wait_for per job): cancelling it, as
        # arq's shutdown and the cancel listener do, cancels the job.
        self.job_tasks[job_id] = asyncio.current_task()
        try:
            async with asyncio.timeout(function.timeout_s or self.job_timeout_s):
                await function.coroutine(ctx, *args, **kwargs)
            self.jobs_complete += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.jobs_failed += 1
            log.exception("job failed", job_id=job_id, function=name)
        finally:
            self.job_tasks.pop(job_id, None)

    def claimed_commands(self, job_id: str, job: dict) -> list[tuple]:
        """What a claimed job's first write also sends: its key (the job's bytes, found by id while
        it waited) is no longer needed."""
        return [("DEL", job_key_prefix + job_id)]

    def inflight(self) -> int:
        return self.job_counter

    def running_job(self, job_id: str) -> asyncio.Task | None:
        """The task running a claimed job, if it runs here."""
        return self.job_tasks.get(job_id)

    def track(self, name: str, task: asyncio.Future) -> None:
        """Have arq's drain (``job_completion_wait``) and ``close()`` wait for ``task`` as for a job."""
        self.tasks[name] = task
        task.add_done_callback(lambda _task: self.tasks.pop(name, None))
