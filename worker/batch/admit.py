"""A batch line's admission: exactly what an interactive request passes, through the shared lifecycle.

Each attempt of a line is admitted with the batch key's CURRENT record (revoked or expired: the
batch is cancelled with a clear error), its rate, concurrency and credit limits, and the same
worst-case hold (shared/admission.py); it is submitted with ``InFlight.submit`` (hold and job
in one round trip, the job only with its hold) on a node chosen by ``Dispatcher.pick_node``
(priority, weight, breaker). What differs is the waiting: a rate-limited line waits and tries
again, a full queue keeps the hold and enqueues again, and a line short of credits only because
of this batch's own holds waits for them to settle.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from shared.accounts import Accounts, KeyRecord
from shared.admission import check_request, estimated_tokens, plan_hold, refusal
from shared.catalog import Catalog, Model
from shared.contracts import Hold, ReserveStatus
from shared.dispatch import Admitted, Dispatcher, InFlight
from shared.keys import AccountKeys
from shared.protocol import ChatCompletionRequest
from shared.settings import Settings
from worker.batch import lines
from worker.batch.lines import Outcome

KEY_RECHECK_S = 1.0  # a revoked key stops a batch within this long
QUEUE_ALLOWANCE_S = 3600.0  # how long a line may wait on the batch queue before its job lapses
RETRY_PAUSE_S = 0.5  # no live worker, or the node's queue is full


class KeyRevoked(Exception):
    """The batch's key was revoked or expired: the batch is cancelled."""


class KeyWatch:
    """The batch key's record, re-read at most every KEY_RECHECK_S."""

    def __init__(self, accounts: Accounts, key_id: str) -> None:
        self.accounts = accounts
        self.key_id = key_id
        self._record: KeyRecord | None = None
        self._read_at = 0.0

    async def current(self) -> KeyRecord:
        if time.monotonic() - self._read_at > KEY_RECHECK_S:
            self._record = await self.accounts.key_by_id(self.key_id)
            self._read_at = time.monotonic()
        if self._record is None or self._record.expired(time.time()):
            raise KeyRevoked(self.key_id)
        return self._record


def admitted_line(key: KeyRecord, req: ChatCompletionRequest, model: Model, settings: Settings,
                  catalog: Catalog | None = None) -> Admitted:
    body = {**req.model_dump(exclude_none=True, by_alias=True), "stream": False}
    prompt_estimate = check_request(body, model, settings.max_messages)  # validated already: cannot refuse now
    job = {"account_id": key.account_id, "key_id": key.id, "model": model.id, "stream": False,
           "include_usage": False, "body": body}
    if req.model != model.id:  # an alias: the usage row keeps the name the line sent
        job["requested_model"] = req.model
    return Admitted(key, model, job, estimated_tokens(body, prompt_estimate),
                    plan_hold(body, model, settings.min_output_tokens, key.price_multiplier_ppm), catalog=catalog)


class LineSubmitter:
    """Submits one batch's line attempts; remembers the holds it took to tell its own from others'."""

    def __init__(self, dispatch: Dispatcher, keys: KeyWatch, batch_id: str, result_key: Callable[[str], str],
                 result_ttl_s: int) -> None:
        self.d = dispatch
        self.keys = keys
        self.batch_id = batch_id
        self.result_key = result_key
        self.result_ttl_s = result_ttl_s
        self.my_holds: set[str] = set()  # request ids this run holds credits for (as far as it knows)

    def flight(self, admitted: Admitted, node: str, rid: str) -> InFlight:
        """An attempt; ``node`` is "" for one resumed from a predecessor that never said where it ran."""
        return self.d.flight(admitted, node, rid, batch=True, queue_allowance_s=QUEUE_ALLOWANCE_S, trace_id=rid,
                             batch_id=self.batch_id, result_key=self.result_key(rid), result_ttl_s=self.result_ttl_s)

    async def submit(self, rid: str, req: ChatCompletionRequest, model: Model,
                     stopped: Callable[[], bool]) -> InFlight | Outcome | None:
        """The attempt queued (its InFlight), a refusal for the line (an Outcome), or None: the batch stopped.

        Raises KeyRevoked when the batch's key no longer admits anything.
        """
        while not stopped():
            admitted = admitted_line(await self.keys.current(), req, model, self.d.settings)
            node = await self.d.pick_node(model)
            if node is None:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            flight = self.flight(admitted, node, rid)
            reservation, queued = await flight.submit()
            if queued:
                self.my_holds.add(rid)
                return flight
            flight.close()
            if reservation.ok:  # the node's queue is full: the hold stays, the next submit finds it
                self.my_holds.add(rid)
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            wait = await self._wait_for(reservation, admitted)
            if wait is None:
                return lines.refused(refusal(reservation, model, admitted.key.limits, admitted.estimated_tokens,
                                             admitted.hold.floor_micro))
            await asyncio.sleep(wait)
        return None

    async def _wait_for(self, r, admitted: Admitted) -> float | None:
        """How long to wait before trying a refused line again; None: the refusal is the line's answer."""
        if r.status in (ReserveStatus.RPM_LIMITED, ReserveStatus.TPM_LIMITED, ReserveStatus.TOO_MANY_INFLIGHT,
                        ReserveStatus.FENCED):
            return max(0.05, r.retry_after_ms / 1000)
        if r.status not in (ReserveStatus.INSUFFICIENT, ReserveStatus.KEY_BUDGET):
            return None
        known = len(self.my_holds)
        mine = await self._my_held_micro(admitted.key.account_id)
        if len(self.my_holds) < known:
            # One of this batch's holds settled since this run last looked, perhaps after the refusal was decided:
            # try once more (at most once per settled hold) rather than fail a line that now fits.
            return 0.05
        if r.status == ReserveStatus.INSUFFICIENT:
            # Short only because of this batch's own holds? Wait for them to settle instead of failing.
            if mine and r.balance_micro - (r.held_micro - mine) >= admitted.hold.floor_micro:
                return 0.05
            return None
        return 0.05 if mine else None  # the key's limit counts its open holds: this batch's own lines free room

    async def _my_held_micro(self, account_id: str) -> int:
        if not self.my_holds:
            return 0
        rids = list(self.my_holds)
        holds = await self.d.redis.hmget(AccountKeys(account_id).holds, rids)
        total = 0
        for rid, hold in zip(rids, holds):
            if hold is None:
                self.my_holds.discard(rid)
            else:
                total += Hold.parse(hold).amount_micro
        return total
