"""The credit logic: reserve, settle, credit, balances, ledger, audit, reconcile.

Money is integer micro-credits (see ``shared/money.py``). Every mutation is one
Lua script over one account's keys (hash tag ``{acct:ID}``), so it is atomic
and runs unchanged on Redis Cluster. The invariant, checked by ``audit``:
``account.balance == sum(ledger.amount)``; holds are not balance changes, so
``available = balance - held``.

A hold's life: reserve.lua takes it (between a floor and the request's worst
case, within the balance and the key's limits, which count the key's open
holds); settle.lua charges at most it and releases it. Once a node worker has
queued the settlement, the hold's deadline moves a day on
(``settlement_pending_commands``), so a billing outage does not get it
reconciled; a hold the reconciler does release (expire.lua) is remembered a
week, and its settlement, if it comes, charges late.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from shared import audit, keys
from shared.contracts import Hold, RequestStatus, ReserveStatus
from shared.db.credits_record import AlsoRecord, CreditRecord
from shared.keys import AccountKeys
from shared.money import MICRO_PER_CREDIT, micro_to_credits
from shared.scripts import Scripts


class AccountNotFound(Exception):
    pass


class AccountFenced(Exception):
    """Redis restarted and this account waits for the recovery; nothing was changed."""


@dataclass(frozen=True)
class KeyLimits:
    """What one key may do; 0 means no limit."""

    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    credit_limit_micro: int = 0
    daily_credit_limit_micro: int = 0


NO_LIMITS = KeyLimits()
LISTED_REASONS = ("topup", "initial", "redeem")  # credits that are orders the customer sees (/billing/orders)
SETTLEMENT_PENDING_MS = 24 * 3600 * 1000  # a queued settlement keeps its hold this long before reconciliation
RELEASED_HOLD_TTL_MS = 7 * 24 * 3600 * 1000  # how long a released hold still takes a late settlement


@dataclass(frozen=True)
class Reservation:
    status: ReserveStatus
    balance_micro: int
    held_micro: int
    rpm_remaining: int = 0
    rpm_reset_ms: int = 0
    tpm_remaining: int = 0
    tpm_reset_ms: int = 0
    retry_after_ms: int = 0
    granted_micro: int = 0  # the amount held (0 when refused; a replay's: the existing hold's)

    @classmethod
    def from_reply(cls, reply: list) -> Reservation:
        status, *rest = (int(v) for v in reply)
        return cls(ReserveStatus(status), *rest)

    @property
    def ok(self) -> bool:
        return self.status >= 0

    @property
    def missing_account(self) -> bool:
        return self.status == ReserveStatus.NO_ACCOUNT


@dataclass(frozen=True)
class SettleOrder:
    """One request's settlement, for ``Credits.settle_many``."""

    account_id: str
    request_id: str
    charge_micro: int
    usage_row: dict
    key_id: str
    actual_tokens: int | None = None
    ledger_reason: str = ""


@dataclass(frozen=True)
class Settlement:
    applied: bool  # False: a replay (the request was settled or refunded already), or fenced
    balance_micro: int
    charged_micro: int
    late: bool = False  # the reconciler had released its hold: charged within what was still free
    fenced: bool = False  # not settled: the account waits for the recovery (Redis restarted); settle it later

    @classmethod
    def from_reply(cls, reply: list) -> Settlement:
        status, balance, charged = (int(v) for v in reply)
        return cls(applied=status > 0, balance_micro=balance, charged_micro=charged, late=status == 2,
                   fenced=status == -1)


def _settle_args(request_id: str, charge_micro: int, ledger_reason: str, actual_tokens: int | None,
                 usage_row: dict[str, object]) -> list[object]:
    """settle.lua's ARGV: request id, charge, ledger reason, actual tokens, then the usage row's pairs."""
    args: list[object] = [request_id, charge_micro, ledger_reason, "" if actual_tokens is None else actual_tokens]
    for field, value in usage_row.items():
        args += [field, "" if value is None else str(value)]
    return args


def _now_ms() -> int:
    return int(time.time() * 1000)


def settlement_pending_commands(account_id: str, request_id: str, now_ms: int | None = None) -> list[tuple]:
    """Mark a request's settlement as queued: its hold's deadline moves ``SETTLEMENT_PENDING_MS`` on.

    Raw commands, for the node worker to send in the round trip that queues the settlement (before
    it), so the reconciler does not release a hold whose settlement waits for the billing worker.
    ``XX``: a hold already settled gets no deadline back; ``GT``: a deadline never moves earlier.
    """
    until = (now_ms or _now_ms()) + SETTLEMENT_PENDING_MS
    return [("ZADD", AccountKeys(account_id).deadlines, "XX", "GT", until, request_id)]


class Credits:
    def __init__(self, redis: Redis, scripts: Scripts | None = None, record: CreditRecord | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)
        # Postgres: credits are recorded there before Redis applies them (None: Redis only, e.g. unit tests)
        self.record = record

    # --- the request path -------------------------------------------------
    async def reserve(self, account_id: str, request_id: str, amount_micro: int, deadline_ms: int, key_id: str,
                      limits: KeyLimits = NO_LIMITS, estimated_tokens: int = 0, *,
                      min_amount_micro: int | None = None, replaces: str = "") -> Reservation:
        """Admit a request (key rate limits and credit limits) and hold what it may cost, atomically.

        ``amount_micro`` is its worst case; the hold (``granted_micro``) is that, or less where the
        balance or the key's limits leave less, but never below ``min_amount_micro`` (default: the
        amount itself): below it the request is refused.
        """
        script, keys_, args = self.reserve_call(account_id, request_id, amount_micro, deadline_ms, key_id, limits,
                                                estimated_tokens, min_amount_micro=min_amount_micro,
                                                replaces=replaces)
        return Reservation.from_reply(await self.scripts.run(script, keys_, args))

    def reserve_call(self, account_id: str, request_id: str, amount_micro: int, deadline_ms: int, key_id: str,
                     limits: KeyLimits = NO_LIMITS, estimated_tokens: int = 0, *,
                     min_amount_micro: int | None = None, replaces: str = ""):
        """``reserve`` as a script call, to run in one pipeline with what follows it (``Scripts.pipelined``).

        ``replaces``: the request id of a previous attempt of the same request (it failed before any
        output): its hold, if still open, is released in the same step as this one is taken, and
        left alone when this one is refused (reserve.lua).
        """
        if amount_micro < 1 or min_amount_micro is not None and not 0 < min_amount_micro <= amount_micro:
            raise ValueError("a hold is positive, and its floor at most its worst case")
        k = AccountKeys(account_id)
        keys_ = [k.account, k.holds, k.deadlines, k.key_state(key_id), k.limit_state]
        args = [request_id, amount_micro, deadline_ms, key_id, limits.rpm, limits.tpm, estimated_tokens,
                limits.max_concurrent, limits.credit_limit_micro, limits.daily_credit_limit_micro,
                "" if min_amount_micro is None else min_amount_micro]
        if replaces:
            keys_ += [k.released, k.released_at]
            args.append(replaces)
        return self.scripts.call("reserve", keys_, args)

    async def settle(
        self, account_id: str, request_id: str, charge_micro: int, usage_row: dict[str, object],
        ledger_reason: str = "", key_id: str | None = None, actual_tokens: int | None = None,
    ) -> Settlement:
        """Charge ``charge_micro`` (0 = full refund; never more than the hold) and release the hold, once.

        ``key_id`` defaults to the usage row's; ``actual_tokens`` corrects the key's
        tokens-per-minute bucket from the admission estimate. After reconciliation released
        the hold, the settlement is late: charged within what is free (``Settlement.late``).
        """
        if charge_micro < 0:
            raise ValueError("a charge is never negative")
        k = AccountKeys(account_id)
        key_id = key_id or str(usage_row.get("key_id") or "") or await self._hold_key_id(k, request_id)
        args = _settle_args(request_id, charge_micro, ledger_reason, actual_tokens, usage_row)
        return Settlement.from_reply(await self.scripts.settle(keys=k.money(key_id), args=args))

    async def settle_many(self, orders: list[SettleOrder]) -> list[Settlement]:
        """Many settlements in one round trip (settle.lua calls, each atomic on its own)."""
        replies = await self.scripts.pipelined([
            self.scripts.call("settle", AccountKeys(o.account_id).money(o.key_id),
                              _settle_args(o.request_id, o.charge_micro, o.ledger_reason, o.actual_tokens, o.usage_row))
            for o in orders])
        return [Settlement.from_reply(reply) for reply in replies]

    async def _hold_key_id(self, k: AccountKeys, request_id: str) -> str:
        hold = await self.redis.hget(k.holds, request_id) or await self.redis.hget(k.released, request_id)
        return Hold.parse(hold).key_id if hold else ""

    # --- credits in -------------------------------------------------------
    async def credit(
        self, account_id: str, amount_micro: int, reference: str, reason: str = "topup", note: str = "",
        also_record: AlsoRecord | None = None,
    ) -> tuple[dict, bool]:
        """Top up (reason "topup", creates an order) or adjust; idempotent per reference.

        Returns (order, created_now). This is the seam a payment provider's webhook calls. With a
        record (Postgres), the credit is committed there first (raising ``DatabaseUnavailable``
        when it cannot be), so an answered credit survives the loss of Redis' last writes: the
        recovery applies what Postgres has and Redis lacks (worker/archiver/recovery.py).
        ``also_record`` records more in that transaction (a redemption's use), when it is recorded now.
        """
        k = AccountKeys(account_id)
        listed = reason in LISTED_REASONS
        order = {
            "id": "order_" + uuid.uuid4().hex[:20],
            "object": "billing.order",
            "reference": reference,
            "kind": reason,
            "amount_micro": amount_micro,
            "credits": micro_to_credits(amount_micro),
            "status": "paid",
            "note": note,
            "created": int(time.time()),
        }
        recorded_now = None
        if self.record is not None:
            if not await self.redis.exists(k.account):
                raise AccountNotFound(account_id)
            order, recorded_now = await self.record.record_credit(account_id, order, listed, also_record)
        status, stored, _balance = await self.scripts.credit(
            keys=k.credit(), args=[reference, order["amount_micro"], order["kind"], orjson.dumps(order),
                                   "1" if listed else "0"])
        if status == -1:
            raise AccountNotFound(account_id)
        if status == -2:  # fenced: recorded, and the recovery will apply it
            if recorded_now is None:
                raise AccountFenced(account_id)
            return order, recorded_now
        return orjson.loads(stored), status == 1 if recorded_now is None else recorded_now

    # --- reads ------------------------------------------------------------
    async def balance(self, account_id: str) -> dict:
        raw = await self.redis.hmget(AccountKeys(account_id).account, "balance", "held")
        if raw[0] is None:
            raise AccountNotFound(account_id)
        balance, held = int(raw[0]), int(raw[1] or 0)
        return {
            "object": "billing.credits",
            "account_id": account_id,
            "balance": micro_to_credits(balance),
            "balance_micro": balance,
            "held_micro": held,
            "available_micro": balance - held,
            "available": micro_to_credits(balance - held),
            "unit": "credits",
            "micro_per_credit": MICRO_PER_CREDIT,
        }

    async def page(self, stream: str, limit: int, after: str | None) -> tuple[list[tuple[str, dict]], bool]:
        """Newest-first page of a stream; ``after`` is the last id of the previous page."""
        upper = f"({after}" if after else "+"
        rows = await self.redis.xrevrange(stream, max=upper, min="-", count=limit + 1)
        decoded = [(rid.decode(), {f.decode(): v.decode() for f, v in fields.items()}) for rid, fields in rows]
        return decoded[:limit], len(decoded) > limit

    # --- integrity --------------------------------------------------------
    async def audit_account(self, account_id: str) -> dict:
        """``shared/audit.py``'s audit of one account, with this Credits' record (if any)."""
        return await audit.audit_account(self.redis, self.record.db if self.record else None, account_id)

    async def audit(self) -> list[dict]:
        return await audit.audit(self.redis, self.record.db if self.record else None)

    async def reconcile_expired_holds(self, grace_ms: int, now_ms: int | None = None) -> int:
        """Release every hold whose deadline passed ``grace_ms`` ago; returns how many.

        A hold outlives its request only when the request vanished (worker
        killed, job lost) before its settlement was queued (that moves the
        deadline on): such a request produced nothing billable we know of, so the
        hold is refunded, with a zero-amount ledger entry for the trail, and
        remembered for ``RELEASED_HOLD_TTL_MS`` in case its settlement turns up.
        expire.lua checks the deadline again, so a hand-off that lands after the
        scan keeps its hold. Released holds older than that are forgotten here.
        """
        now = now_ms or _now_ms()
        cutoff = now - grace_ms
        fixed = 0
        for member in await self.redis.smembers(keys.ACCOUNTS):
            k = AccountKeys(member.decode())
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(k.deadlines, "-inf", cutoff)
                pipe.zrangebyscore(k.released_at, "-inf", now - RELEASED_HOLD_TTL_MS)
                due, forgotten = await pipe.execute()
            for rid in due:
                fixed += await self._expire(k, rid.decode(), cutoff, now)
            if forgotten:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(k.released, *forgotten)
                    pipe.zrem(k.released_at, *forgotten)
                    await pipe.execute()
        return fixed

    async def _expire(self, k: AccountKeys, request_id: str, cutoff_ms: int, now_ms: int) -> int:
        """expire.lua for one hold: 1 if it was released, 0 if it was settled or its settlement queued meanwhile."""
        key_id = await self._hold_key_id(k, request_id)
        row = {"request_id": request_id, "key_id": key_id, "status": RequestStatus.EXPIRED, "created": now_ms // 1000}
        args = [request_id, cutoff_ms, now_ms, *(str(v) for pair in row.items() for v in pair)]
        released, _balance = await self.scripts.expire(keys=k.money(key_id), args=args)
        return max(0, int(released))  # -1: fenced (the recovery runs first); tried again next round
