"""The money scripts against a plain Python model: random interleavings, checked after every step.

Issue 15 item 9. Hypothesis drives one account on a real Valkey through reserve (a worst case and a
floor, under key credit limits), settle, refund, the node worker's settlement hand-off mark,
reconciliation (now, and a week on), late settle, replays, top-up (and its replay), payment refund,
new keys with limits, and key revocation. After every step Redis must agree with the model, and:
balance == sum(ledger) == the model's, held == sum(holds), every key's open holds are counted,
nothing is charged twice, no key spends past its limit, and usage never drives a balance below zero.

`make test` runs the short profile: 100 examples of up to 30 steps (well under a minute). A soak run
(2,000 examples of up to 100 steps):

    APIINONE_MONEY_PROFILE=money-soak .venv/bin/pytest -q tests/test_money_model.py
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test

from shared.accounts import Accounts
from shared.contracts import Hold, ReserveStatus
from shared.credits import RELEASED_HOLD_TTL_MS, SETTLEMENT_PENDING_MS, Credits, SettleOrder, \
    settlement_pending_commands
from shared.keys import AccountKeys

M = 1_000_000
BASE = 5 * M  # the base cost of model "gemini": the usual floor
GRACE_MS = 120_000
DAY_MS = 86_400_000
INF = float("inf")

settings.register_profile("money", max_examples=100, stateful_step_count=30, deadline=None,
                          report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("money-soak", max_examples=2_000, stateful_step_count=100, deadline=None,
                          report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])

# Amounts mostly in half-credit steps, so holds, limits and balances meet exactly now and then.
amounts = st.integers(min_value=1, max_value=24).map(lambda n: n * M // 2) | st.integers(min_value=1, max_value=30 * M)
limits = st.sampled_from([0, M // 2, 6 * M, 12 * M, 30 * M])
floors = st.none() | st.just(BASE) | st.integers(1, 10 * M)


@dataclass
class KeyModel:
    id: str
    api_key: str
    limit: int
    daily: int
    spend: int = 0
    spend_today: int = 0
    revoked: bool = False


@dataclass
class HoldModel:
    amount: int
    key_id: str
    deadline: int


def now_ms() -> int:
    return int(time.time() * 1000)


class MoneyModel(RuleBasedStateMachine):
    """One account; ``self.run`` drives the async Credits API on this machine's own event loop."""

    loop: asyncio.AbstractEventLoop
    redis: aioredis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.credits = Credits(self.redis)
        self.accounts = Accounts(self.redis, self.credits)
        self.run(self.redis.flushdb())
        self.keys: dict[str, KeyModel] = {}
        self.holds: dict[str, HoldModel] = {}
        self.released: dict[str, tuple[HoldModel, int]] = {}  # rid -> (the hold, released at ms)
        self.settled: set[str] = set()
        self.refs: list[str] = []  # in order: the account id in the first is random
        self.balance = 0
        self.payment_refunded = False
        self.day = 0
        self.n = 0

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def next_id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"

    @property
    def held(self) -> int:
        return sum(h.amount for h in self.holds.values())

    def key_held(self, key_id: str) -> int:
        return sum(h.amount for h in self.holds.values() if h.key_id == key_id)

    def roll_day(self) -> None:
        """A key's daily spend starts again at UTC midnight (reserve.lua and settle.lua read Redis's clock)."""
        day = now_ms() // DAY_MS
        if day != self.day:
            self.day = day
            for key in self.keys.values():
                key.spend_today = 0

    def key_room(self, key: KeyModel) -> float:
        self.roll_day()
        held = self.key_held(key.id)
        total = key.limit - key.spend - held if key.limit else INF
        daily = key.daily - key.spend_today - held if key.daily else INF
        return min(total, daily)

    def charge(self, key_id: str, amount: int) -> None:
        self.roll_day()
        self.balance -= amount
        self.keys[key_id].spend += amount
        self.keys[key_id].spend_today += amount

    # --- setup ---------------------------------------------------------------------------------
    @initialize(credits=st.integers(min_value=10, max_value=100).map(lambda n: n * M) | amounts, limit=limits,
                daily=limits)
    def open_account(self, credits, limit, daily):
        self.acct = self.run(self.accounts.create_account("model", credits))["id"]
        if credits:
            self.refs.append(f"initial:{self.acct}")
        self.balance = credits
        self.add_key(0, 0)
        self.add_key(limit or 6 * M, daily)

    def add_key(self, limit: int, daily: int) -> None:
        made = self.run(self.accounts.create_key(self.acct, "k", credit_limit_micro=limit,
                                                 daily_credit_limit_micro=daily))
        self.keys[made["id"]] = KeyModel(made["id"], made["key"], limit, daily)

    # --- the request path ----------------------------------------------------------------------
    @rule(data=st.data(), worst=amounts, floor=floors, expired=st.booleans())
    def reserve(self, data, worst, floor, expired):
        self.admit(self.keys[data.draw(st.sampled_from(list(self.keys)))], worst, floor, expired)

    @precondition(lambda self: any(k.limit or k.daily for k in self.keys.values()))
    @rule(data=st.data(), worst=amounts, floor=floors, expired=st.booleans())
    def reserve_with_a_capped_key(self, data, worst, floor, expired):
        capped = [k for k in self.keys.values() if k.limit or k.daily]
        self.admit(data.draw(st.sampled_from(capped)), worst, floor, expired)

    def admit(self, key: KeyModel, worst: int, floor: int | None, expired: bool) -> None:
        """The gateway's admission: the key is looked up (a revoked one is gone), then reserve.lua."""
        floor = None if floor is None else min(floor, worst)
        record = self.run(self.accounts.lookup_key(key.api_key))
        if key.revoked:
            assert record is None, "a revoked key still admits requests"
            return
        rid = self.next_id("req")
        deadline = now_ms() + (-3_600_000 if expired else 600_000)
        r = self.run(self.credits.reserve(self.acct, rid, worst, deadline, key.id, record.limits,
                                          min_amount_micro=floor))
        need = worst if floor is None else floor
        available = self.balance - self.held
        granted = min(worst, available, self.key_room(key))
        if granted < need:
            expected = ReserveStatus.INSUFFICIENT if available < need else ReserveStatus.KEY_BUDGET
            assert (r.status, r.granted_micro) == (expected, 0), (r, granted, need, available)
            return
        assert (r.status, r.granted_micro) == (ReserveStatus.HELD, granted), (r, granted)
        self.holds[rid] = HoldModel(int(granted), key.id, deadline)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), over=st.integers(0, 2 * M), refund=st.booleans(), batched=st.booleans())
    def settle(self, data, over, refund, batched):
        rid = data.draw(st.sampled_from(sorted(self.holds)))
        hold = self.holds.pop(rid)
        asked = 0 if refund else data.draw(st.integers(0, hold.amount) | st.just(hold.amount)) + over
        row = {"request_id": rid, "key_id": hold.key_id, "status": "failed" if refund else "succeeded"}
        if batched:  # the billing worker's way
            (s,) = self.run(self.credits.settle_many([SettleOrder(self.acct, rid, asked, row, hold.key_id)]))
        else:  # the gateway's and the batch worker's
            s = self.run(self.credits.settle(self.acct, rid, asked, row, key_id=hold.key_id))
        expected = max(0, min(asked, hold.amount, self.balance))  # never past the hold, nor below zero
        assert (s.applied, s.late, s.charged_micro) == (True, False, expected), (s, asked, hold)
        self.charge(hold.key_id, expected)
        self.settled.add(rid)

    @precondition(lambda self: self.holds or self.settled or self.released)
    @rule(data=st.data())
    def hand_to_billing(self, data):
        """The node worker's mark: the hold's deadline moves a day on (never earlier, never re-added)."""
        rid = data.draw(st.sampled_from(sorted(self.holds) + sorted(self.settled) + sorted(self.released)))
        now = now_ms()
        for command in settlement_pending_commands(self.acct, rid, now_ms=now):
            self.run(self.redis.execute_command(*command))
        if rid in self.holds:
            self.holds[rid].deadline = max(self.holds[rid].deadline, now + SETTLEMENT_PENDING_MS)

    @rule(week_on=st.booleans())
    def reconcile(self, week_on):
        now = now_ms() + (8 * DAY_MS if week_on else 0)
        fixed = self.run(self.credits.reconcile_expired_holds(GRACE_MS, now_ms=now))
        due = sorted(rid for rid, h in self.holds.items() if h.deadline <= now - GRACE_MS)
        assert fixed == len(due)
        for rid in due:
            self.released[rid] = (self.holds.pop(rid), now)
        for rid, (_, at) in list(self.released.items()):
            if at <= now - RELEASED_HOLD_TTL_MS:
                del self.released[rid]
                self.settled.add(rid)  # forgotten: a settlement now is a replay

    @precondition(lambda self: self.released)
    @rule(data=st.data(), over=st.integers(0, 2 * M))
    def late_settle(self, data, over):
        rid = data.draw(st.sampled_from(sorted(self.released)))
        hold, _ = self.released.pop(rid)
        asked = data.draw(st.integers(0, hold.amount) | st.just(hold.amount)) + over
        row = {"request_id": rid, "key_id": hold.key_id, "status": "succeeded"}
        s = self.run(self.credits.settle(self.acct, rid, asked, row, key_id=hold.key_id))
        free = self.balance - self.held
        expected = int(max(0, min(asked, hold.amount, free, self.key_room(self.keys[hold.key_id]))))
        assert (s.applied, s.late, s.charged_micro) == (True, True, expected), (s, asked, hold, free)
        self.charge(hold.key_id, expected)
        self.settled.add(rid)

    @precondition(lambda self: self.holds or self.settled)
    @rule(data=st.data(), charge=amounts)
    def replay(self, data, charge):
        """A reserve of an open request holds nothing more; a settlement of a settled one changes nothing."""
        rid = data.draw(st.sampled_from(sorted(self.holds) + sorted(self.settled)))
        if rid in self.holds:
            hold = self.holds[rid]
            r = self.run(self.credits.reserve(self.acct, rid, hold.amount + 1, now_ms(), hold.key_id))
            assert (r.status, r.granted_micro) == (ReserveStatus.REPLAY, hold.amount)
        else:
            s = self.run(self.credits.settle(self.acct, rid, charge, {"request_id": rid}))
            assert (s.applied, s.late, s.charged_micro) == (False, False, 0)

    # --- credits in and out, keys ----------------------------------------------------------------
    @rule(data=st.data(), kind=st.sampled_from(["top-up", "top-up replay", "payment refund"]),
          amount=st.integers(1, 40 * M))
    def move_money(self, data, kind, amount):
        """A top-up (a repeated reference credits nothing), or a refunded payment (an adjustment), which
        may take the balance below the holds, or below zero."""
        if kind == "payment refund":
            amount = amount // 4 if data.draw(st.booleans()) else max(1, self.balance - self.held // 2)
            self.run(self.credits.credit(self.acct, -amount, self.next_id("chargeback"), reason="adjustment"))
            self.balance -= amount
            self.payment_refunded = True
            return
        ref = data.draw(st.sampled_from(self.refs)) if kind == "top-up replay" and self.refs else self.next_id("pay")
        _, created = self.run(self.credits.credit(self.acct, amount, ref))
        assert created == (ref not in self.refs)
        if created:
            self.refs.append(ref)
            self.balance += amount

    @rule(data=st.data(), revoke=st.booleans(), limit=limits, daily=limits)
    def change_keys(self, data, revoke, limit, daily):
        """A new key with its limits, or a key revoked (its requests in flight still settle)."""
        live = [k for k in self.keys.values() if not k.revoked]
        if revoke and len(live) > 1:
            key = data.draw(st.sampled_from(live))
            assert self.run(self.accounts.revoke_key(key.id))
            key.revoked = True
        elif len(self.keys) < 6:
            self.add_key(limit, daily)

    # --- after every step ------------------------------------------------------------------------
    @invariant()
    def redis_agrees_with_the_model(self):
        report = self.run(self.credits.audit_account(self.acct))
        assert report["ok"], report  # balance == sum(ledger), held == sum(holds)
        assert (report["balance_micro"], report["held_micro"]) == (self.balance, self.held)
        k = AccountKeys(self.acct)
        holds = {r.decode(): Hold.parse(v) for r, v in self.run(self.redis.hgetall(k.holds)).items()}
        assert {r: (h.amount_micro, h.key_id) for r, h in holds.items()} == {
            r: (h.amount, h.key_id) for r, h in self.holds.items()}
        released = {r.decode(): Hold.parse(v) for r, v in self.run(self.redis.hgetall(k.released)).items()}
        assert {r: h.amount_micro for r, h in released.items()} == {r: h.amount for r, (h, _) in self.released.items()}

    @invariant()
    def usage_never_drives_the_balance_below_zero(self):
        # Only a refunded payment may (the settlements' exact charges are checked where they happen).
        assert self.balance >= 0 or self.payment_refunded

    @invariant()
    def no_key_spends_past_its_limit(self):
        k = AccountKeys(self.acct)
        for key in self.keys.values():
            state = self.run(self.redis.hmget(k.key_state(key.id), "spend", "held"))
            spend, held = (int(v or 0) for v in state)
            assert (spend, held) == (key.spend, self.key_held(key.id))
            if key.limit:
                assert spend + held <= key.limit
            if key.daily:
                assert key.spend_today + held <= key.daily

    @invariant()
    def nothing_is_charged_twice(self):
        charged = [f[b"ref"] for _, f in self.run(self.redis.xrange(AccountKeys(self.acct).ledger))
                   if int(f[b"amount"]) < 0 and f[b"reason"] in (b"charge", b"late_charge")]
        assert len(charged) == len(set(charged))


def test_money_scripts_agree_with_a_plain_model(valkey_port):
    loop = asyncio.new_event_loop()
    client = aioredis.Redis(host="127.0.0.1", port=valkey_port, db=15)  # its own db: FLUSHDB per example
    MoneyModel.loop, MoneyModel.redis = loop, client
    try:
        profile = settings.get_profile(os.environ.get("APIINONE_MONEY_PROFILE", "money"))
        run_state_machine_as_test(MoneyModel, settings=profile)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
