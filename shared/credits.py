"""The credit logic: reserve, settle, credit, balances, ledger, audit, reconcile.

Money is integer micro-credits (see ``shared/money.py``). Every mutation is one
Lua script over one account's keys (hash tag ``{acct:ID}``), so it is atomic
and runs unchanged on Redis Cluster. The invariant, checked by ``audit``:
``account.balance == sum(ledger.amount)``; holds are not balance changes, so
``available = balance - held``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.keys import AccountKeys
from shared.scripts import Scripts


class AccountNotFound(Exception):
    pass


@dataclass(frozen=True)
class Reservation:
    ok: bool
    balance_micro: int
    held_micro: int
    missing_account: bool = False


@dataclass(frozen=True)
class Settlement:
    applied: bool  # False: the request had no hold (already settled or refunded)
    balance_micro: int
    charged_micro: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class Credits:
    def __init__(self, redis: Redis, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)

    # --- the request path -------------------------------------------------
    async def reserve(self, account_id: str, request_id: str, amount_micro: int, deadline_ms: int, key_id: str) -> Reservation:
        k = AccountKeys(account_id)
        status, balance, held = await self.scripts.reserve(
            keys=[k.account, k.holds, k.deadlines], args=[request_id, amount_micro, deadline_ms, key_id]
        )
        return Reservation(ok=status >= 0, balance_micro=int(balance), held_micro=int(held), missing_account=status == -1)

    async def settle(
        self, account_id: str, request_id: str, charge_micro: int, usage_row: dict[str, object], ledger_reason: str = ""
    ) -> Settlement:
        """Charge ``charge_micro`` (0 = full refund) and release the hold, once."""
        if charge_micro < 0:
            raise ValueError("a charge is never negative")
        k = AccountKeys(account_id)
        args: list[object] = [request_id, charge_micro, ledger_reason]
        for field, value in usage_row.items():
            args += [field, "" if value is None else str(value)]
        applied, balance, charged = await self.scripts.settle(keys=k.money(), args=args)
        return Settlement(applied=bool(applied), balance_micro=int(balance), charged_micro=int(charged))

    # --- credits in -------------------------------------------------------
    async def credit(
        self, account_id: str, amount_micro: int, reference: str, reason: str = "topup", note: str = ""
    ) -> tuple[dict, bool]:
        """Top up (reason "topup", creates an order) or adjust; idempotent per reference.

        Returns (order, created_now). This is the seam a payment provider's webhook calls.
        """
        k = AccountKeys(account_id)
        order = {
            "id": "order_" + uuid.uuid4().hex[:20],
            "object": "billing.order",
            "reference": reference,
            "kind": reason,
            "amount_micro": amount_micro,
            "credits": amount_micro / 1_000_000,
            "status": "paid",
            "note": note,
            "created": int(time.time()),
        }
        status, stored, _balance = await self.scripts.credit(
            keys=[k.account, k.ledger, k.orders, k.order_refs],
            args=[reference, amount_micro, reason, orjson.dumps(order), "1" if reason in ("topup", "initial") else "0"],
        )
        if status == -1:
            raise AccountNotFound(account_id)
        return orjson.loads(stored), status == 1

    # --- reads ------------------------------------------------------------
    async def balance(self, account_id: str) -> dict:
        raw = await self.redis.hmget(AccountKeys(account_id).account, "balance", "held")
        if raw[0] is None:
            raise AccountNotFound(account_id)
        balance, held = int(raw[0]), int(raw[1] or 0)
        return {
            "object": "billing.credits",
            "account_id": account_id,
            "balance": balance / 1_000_000,
            "balance_micro": balance,
            "held_micro": held,
            "available_micro": balance - held,
            "available": (balance - held) / 1_000_000,
            "unit": "credits",
            "micro_per_credit": 1_000_000,
        }

    async def page(self, stream: str, limit: int, after: str | None) -> tuple[list[tuple[str, dict]], bool]:
        """Newest-first page of a stream; ``after`` is the last id of the previous page."""
        upper = f"({after}" if after else "+"
        rows = await self.redis.xrevrange(stream, max=upper, min="-", count=limit + 1)
        decoded = [(rid.decode(), {f.decode(): v.decode() for f, v in fields.items()}) for rid, fields in rows]
        return decoded[:limit], len(decoded) > limit

    # --- integrity --------------------------------------------------------
    async def audit_account(self, account_id: str) -> dict:
        """Compare the balance with the sum of the ledger; report the difference."""
        k = AccountKeys(account_id)
        total, last = 0, "-"
        while True:
            rows = await self.redis.xrange(k.ledger, min=last, max="+", count=1000)
            if last != "-":
                rows = rows[1:]
            if not rows:
                break
            for rid, fields in rows:
                total += int(fields[b"amount"])
            last = rows[-1][0].decode()
        raw = await self.redis.hmget(k.account, "balance", "held")
        holds = await self.redis.hvals(k.holds)
        balance, held = int(raw[0] or 0), int(raw[1] or 0)
        held_sum = sum(int(h.split(b":")[0]) for h in holds)
        return {
            "account_id": account_id,
            "balance_micro": balance,
            "ledger_sum_micro": total,
            "held_micro": held,
            "holds_sum_micro": held_sum,
            "ok": balance == total and held == held_sum,
        }

    async def audit(self) -> list[dict]:
        ids = sorted(m.decode() for m in await self.redis.smembers(keys.ACCOUNTS))
        return [await self.audit_account(a) for a in ids]

    async def reconcile_expired_holds(self, grace_ms: int, now_ms: int | None = None) -> int:
        """Release every hold whose deadline passed ``grace_ms`` ago; returns how many.

        A hold outlives its request only when the request vanished (worker
        killed, job lost): such a request produced nothing billable we know of,
        so the hold is refunded, with a zero-amount ledger entry for the trail.
        """
        cutoff = (now_ms or _now_ms()) - grace_ms
        fixed = 0
        for member in await self.redis.smembers(keys.ACCOUNTS):
            account_id = member.decode()
            k = AccountKeys(account_id)
            for rid in await self.redis.zrangebyscore(k.deadlines, "-inf", cutoff):
                request_id = rid.decode()
                settled = await self.settle(
                    account_id,
                    request_id,
                    0,
                    {"request_id": request_id, "status": "expired", "created": int(time.time())},
                    ledger_reason="hold_expired",
                )
                fixed += settled.applied
        return fixed
