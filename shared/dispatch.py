"""The request lifecycle every front end shares: route, reserve + enqueue, replies, liveness, refund.

    admit (shared/admission.py)
      -> pick a node: routes, live workers, breaker, exclusions (shared/routing.py)
      -> submit: reserve.lua + enqueue.lua in one round trip; the job is queued only if its hold
         was taken (enqueue.lua's guard), so there is never a job without its hold
      -> replies arrive on this process's one channel (shared/reply_hub.py), routed by request id
      -> while silent: the job's queue timeout, the claiming worker's lease (``InFlight.watch``)
      -> the end: the worker hands the settlement to billing; or we refund (``InFlight.refund``)

A front end is a policy on top of this: the gateway's chat handler relays frames over HTTP and
retries a failed attempt on another worker or node (gateway/chat.py); the batch worker keeps
each line's state durable so that a restart resumes it (worker/batch/).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.accounts import KeyRecord
from shared.admission import HoldPlan
from shared.breaker import NodeBreaker
from shared.catalog import Catalog, Model
from shared.contracts import Api, ErrorCode, RequestStatus, RetryKind, retry_kind
from shared.credits import Credits, Reservation
from shared.errors import ApiError, unavailable
from shared.keys import AccountKeys
from shared.metrics import RESERVATIONS, labelled
from shared.nodes import Liveness
from shared.queue import NodeQueue
from shared.redis_client import make_redis
from shared.reply_hub import LOST, ReplyHub
from shared.routing import choose_node
from shared.scripts import Scripts
from shared.settings import Settings

log = structlog.get_logger()

WATCH_S = 2.0  # how often a silent request checks that its worker is still alive
SILENT = None  # what ``InFlight.next_frames`` returns when nothing came for WATCH_S
HOLD_PLACEHOLDER = -1  # a job's hold_micro until enqueue.lua writes the granted hold (shared/lua/enqueue.lua)


class Retryable(ApiError):
    """An attempt failed before any output, and another attempt may succeed (``kind`` says where)."""

    def __init__(self, error: ApiError, kind: RetryKind) -> None:
        super().__init__(error.status, error.message, error.type, error.code, error.param, error.retry_after)
        self.kind = kind


def error_from_frame(payload: bytes) -> ApiError:
    """A worker's ERROR frame as an error; Retryable when the one retry rule (contracts) allows."""
    info = orjson.loads(payload)
    error = ApiError.from_body(info["status"], info, info.get("retry_after"))
    kind = retry_kind(error.status, error.code)
    return error if kind is RetryKind.NONE else Retryable(error, kind)


@dataclass(slots=True)
class Admitted:
    """A request that passed admission: what every attempt of it shares."""

    key: KeyRecord
    model: Model
    job: dict  # the ChatJob fields every attempt shares (the attempt adds id, node, reply_to, times)
    estimated_tokens: int  # charged to the key's tokens/min bucket at admission
    hold: HoldPlan  # the worst case and the floor of its hold (shared/admission.py)
    # The models to try next when this one cannot serve it (catalog fallbacks), in order, and how the
    # same request is admitted for one of them (its checks, job and hold; raises ApiError when that
    # model cannot take it). No refit: no fallbacks (token counts, native Gemini calls, batch lines).
    fallbacks: tuple[str, ...] = ()
    refit: Callable[[Model, tuple[str, ...]], Admitted] | None = None

    def next_fallback(self, catalog: Catalog) -> Admitted | None:
        """This request admitted for the first of its fallbacks that takes it; None: none does."""
        return first_fallback(catalog, self.fallbacks, self.refit) if self.refit else None


def first_fallback(catalog: Catalog, fallbacks: tuple[str, ...],
                   admit_for: Callable[[Model, tuple[str, ...]], Admitted]) -> Admitted | None:
    """The request admitted (``admit_for``) for the first of ``fallbacks`` whose checks it passes (its
    prompt fits, its max_tokens and inputs are allowed), with the ones after it as its own fallbacks."""
    for i, name in enumerate(fallbacks):
        model = catalog.models.get(name)
        if model is None:  # gone from the catalog since
            continue
        try:
            return admit_for(model, fallbacks[i + 1:])
        except ApiError:
            continue
    return None


class Dispatcher:
    """One process's side of the lifecycle: its Redis clients, scripts, reply channel and node view."""

    def __init__(self, settings: Settings, catalog: Catalog, owner_id: str,
                 on_revocation: Callable[[str | None], None] = lambda _digest: None) -> None:
        self.settings = settings
        self.catalog = catalog
        # A short socket timeout: with Redis gone, clients get a 503 within about a second, never a hang.
        self.redis: Redis = make_redis(settings.redis_url, socket_timeout=1.0)
        self.pubsub_redis: Redis = make_redis(settings.redis_url, max_connections=2, socket_timeout=None, retries=0)
        self.scripts = Scripts(self.redis)
        self.credits = Credits(self.redis, self.scripts)
        self.queue = NodeQueue(self.redis, self.scripts)
        self.breaker = NodeBreaker(settings.breaker_threshold, settings.breaker_cooldown_s)
        self.hub = ReplyHub(self.pubsub_redis, owner_id, on_revocation)
        self.liveness = Liveness(self.redis, list(catalog.nodes), settings.worker_lease_s)
        self._tasks: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            await self.scripts.load_all(self.redis)
        except RedisError as exc:  # loaded on first use instead
            log.warning("could not preload scripts", error=str(exc))
        self.hub.start()
        await self.liveness.refresh()
        self._refresher = asyncio.create_task(self.liveness.run())

    async def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        await self.hub.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
        await self.pubsub_redis.aclose()

    def spawn(self, coro) -> None:
        """Run a follow-up that must outlive the (possibly cancelled) caller."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def pick_node(self, model: Model, exclude: list[str] = ()) -> str | None:
        """A node for the model (``choose_node``); None: no route has a live worker."""
        for attempt in range(2):
            node = choose_node(model.routes, self.liveness.live_workers, self.breaker.allows, exclude)
            if node is not None or attempt:
                return node
            await self.liveness.refresh()  # the snapshot may predate a worker that just started
        return None

    def flight(self, admitted: Admitted, node: str, request_id: str, *, batch: bool = False,
               queue_allowance_s: float | None = None, replaces: str = "", **job_extra: object) -> InFlight:
        """One attempt of ``admitted`` on ``node`` under ``request_id``. A batch line's (``batch``) goes
        on the node's batch queue, and a lost reply channel is silence to it: it has a durable state
        to look at (worker/batch/probe.py) where an HTTP relay can only give up. ``replaces``: the
        request id of the previous attempt (failed before any output), whose hold this one takes over."""
        return InFlight(self, admitted, node, request_id, batch, queue_allowance_s, job_extra, replaces)


class InFlight:
    """One request id, from its hold and job to its last reply.

    ``submit`` registers for replies before the job exists, so no reply can be missed; ``close``
    unregisters. A front end reads ``next_frames`` until its request ends, and on silence calls
    ``watch`` (or its own durable probe, for batch lines).
    """

    def __init__(self, d: Dispatcher, admitted: Admitted, node: str, request_id: str, batch: bool,
                 queue_allowance_s: float | None, job_extra: dict, replaces: str = "") -> None:
        s = d.settings
        self.d = d
        self.admitted = admitted
        self.node = node
        self.request_id = request_id
        now = time.time()
        # hold_micro comes first: enqueue.lua writes the granted hold over its placeholder (the first
        # occurrence in the job's bytes, so nothing a client sent can stand in its place).
        # The prices it was admitted with travel with it: the worker clamps and prices, and billing charges,
        # with the same multiplier the hold was planned with (shared/pricing.py).
        self.job = {"hold_micro": HOLD_PLACEHOLDER, "prompt_bound_tokens": admitted.hold.prompt_bound_tokens,
                    "price_multiplier_ppm": admitted.hold.multiplier_ppm,
                    "price_version": admitted.model.prices.version, **admitted.job, "id": request_id, "node": node, "reply_to": d.hub.channel,
                    "created": int(now), "enqueued_ms": round(now * 1000, 3), **job_extra}
        self.batch = batch
        self.queue_name = keys.node_batch_queue(node) if batch else keys.node_queue(node)
        allowance = s.queue_timeout_s if queue_allowance_s is None else queue_allowance_s
        self.queue_expires_ms = int((allowance + 5) * 1000)  # a worker drops the job after this
        self.hold_deadline_ms = int((now + allowance + s.request_timeout_s) * 1000)
        self.worker_id: str | None = None  # from the STARTED frame: whose lease to watch
        self.replies: asyncio.Queue | None = None
        self.replaces = replaces  # a previous attempt's request id: its hold is released as this one's is taken

    @property
    def key(self) -> KeyRecord:
        return self.admitted.key

    @property
    def model(self) -> Model:
        return self.admitted.model

    # --- start and end -----------------------------------------------------------------------
    async def submit(self) -> tuple[Reservation, bool]:
        """Reserve and enqueue in one round trip: (the reservation, whether the job was queued).

        A refused reservation queues nothing; a full queue leaves the hold in place for the
        caller to refund (the gateway) or to enqueue again later (a batch line: a repeated
        submit finds the hold, reserve.lua answers REPLAY, and the job is queued).
        """
        d, key, s = self.d, self.key, self.d.settings
        plan = self.admitted.hold
        reserve = d.credits.reserve_call(key.account_id, self.request_id, plan.worst_micro, self.hold_deadline_ms,
                                         key.id, key.limits, self.admitted.estimated_tokens,
                                         min_amount_micro=plan.floor_micro, replaces=self.replaces)
        enqueue = d.queue.enqueue_call(self.queue_name, "chat", self.request_id, self.job, self.queue_expires_ms,
                                       s.max_queue_depth, held_in=AccountKeys(key.account_id).holds)
        self.listen()
        try:
            reply, queued = await d.scripts.pipelined([reserve, enqueue])
        except RedisError:
            await self.refund(RequestStatus.REJECTED, ErrorCode.QUEUE_UNAVAILABLE)
            raise unavailable("The request queue is unavailable; try again shortly.") from None
        reservation = Reservation.from_reply(reply)
        labelled(RESERVATIONS, reservation.status.label).inc()
        return reservation, reservation.ok and queued == 1

    def listen(self) -> None:
        """Register for this request's replies (before its job exists, so none can be missed)."""
        if self.replies is None:
            self.replies = self.d.hub.register(self.request_id)

    def close(self) -> None:
        self.d.hub.unregister(self.request_id)

    async def refund(self, status: RequestStatus, code: str) -> None:
        """End a request that never reached (or lost) its worker: release the hold, write its usage row."""
        key = self.key
        row = {"request_id": self.request_id, "model": self.model.id,
               "requested_model": self.job.get("requested_model") or self.model.id, "node": self.node, "key_id": key.id,
               "status": status, "error_code": code, "created": int(time.time()),
               "batch_id": self.job.get("batch_id", ""), "trace_id": self.job.get("trace_id", ""),
               "api": self.job.get("api", Api.CHAT)}
        try:
            await self.d.credits.settle(key.account_id, self.request_id, 0, row, key_id=key.id, actual_tokens=0)
        except RedisError as exc:  # the reconciler releases the hold later
            log.warning("refund deferred to reconciliation", request_id=self.request_id, error=str(exc))

    async def withdraw(self) -> bool:
        """Take the job back if no worker claimed it yet (then nothing will run)."""
        return await self.d.queue.withdraw(self.queue_name, self.request_id)

    async def cancel(self) -> None:
        """The requester left: withdraw a queued job (refunded), or tell the node's workers to stop it."""
        try:
            if await self.withdraw():
                await self.refund(RequestStatus.REJECTED, ErrorCode.CLIENT_DISCONNECTED)
            else:
                await self.d.redis.publish(keys.node_cancel_channel(self.node), self.request_id)
        except RedisError as exc:
            log.warning("cancel not delivered", request_id=self.request_id, error=str(exc))

    # --- replies -----------------------------------------------------------------------------
    async def next_frames(self) -> bytes | None:
        """The next batch of frames (or what a front end put on the queue itself), SILENT after WATCH_S
        without any; raises when replies were lost (SILENT for a batch line: it probes instead)."""
        if not self.replies.empty():  # the common case under load: no timer, no await
            item = self.replies.get_nowait()
        else:
            try:
                async with asyncio.timeout(WATCH_S):  # no extra task, unlike wait_for
                    item = await self.replies.get()
            except TimeoutError:
                return SILENT
        if item is LOST:
            if self.batch:
                return SILENT
            await self.refund(RequestStatus.FAILED, ErrorCode.REPLY_CHANNEL_LOST)
            raise unavailable("The connection to Redis was lost while waiting for the answer; the request was "
                              "not billed.")
        return item

    async def watch(self, waited: float) -> None:
        """A silent request: fail it if it can no longer end by itself; raises the error to report."""
        s = self.d.settings
        if self.worker_id is None:
            if waited < s.queue_timeout_s:
                return
            if await self.withdraw():
                await self.refund(RequestStatus.REJECTED, ErrorCode.QUEUE_TIMEOUT)
                raise unavailable(f"No worker on node {self.node} took the request within {s.queue_timeout_s:g}s; "
                                  "it was not billed.", retry_after=2)
            if waited < s.queue_timeout_s + s.worker_lease_s + WATCH_S:
                return  # a worker claimed it just now; its STARTED frame is on the way
            # Claimed but never started (the job expired, or its worker died at once).
            await self.refund(RequestStatus.FAILED, ErrorCode.JOB_LOST)
            raise Retryable(ApiError(503, "The request was lost between queue and worker; it was not billed.",
                                     "service_unavailable", ErrorCode.JOB_LOST, retry_after=1),
                            RetryKind.ANOTHER_WORKER)
        if not await self.d.liveness.worker_alive(self.worker_id):
            await self.refund(RequestStatus.FAILED, ErrorCode.WORKER_LOST)
            raise Retryable(ApiError(502, "The worker serving this request stopped; the request was not billed.",
                                     "api_error", ErrorCode.WORKER_LOST), RetryKind.ANOTHER_WORKER)
