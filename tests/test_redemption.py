"""Redemption codes (shared/redemption.py) in process against real Valkey and real Postgres: the per-client
throttle, a redemption while Postgres is down (nothing credited, the use handed back), the restore of
codes and their use counts into a wiped Redis, and the reconciler that credits a use whose gateway died
between claiming and recording it."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.accounts import Accounts
from shared.audit import audit_account
from shared.credits import Credits
from shared.db.credits_record import CreditRecord
from shared.db.database import Database, DatabaseUnavailable
from shared.db.directory import Directory
from shared.redemption import Outcome, RedemptionCodes, ThrottlePolicy, code_hash, normalize, restore_codes
from shared.scripts import Scripts

M = 1_000_000


def codes_on(redis: Redis, db: Database, throttle: ThrottlePolicy = ThrottlePolicy()) -> RedemptionCodes:
    scripts = Scripts(redis)
    return RedemptionCodes(redis, scripts, Credits(redis, scripts, record=CreditRecord(db)), db, throttle)


async def new_account(redis: Redis, db: Database) -> str:
    credits = Credits(redis, Scripts(redis), record=CreditRecord(db))
    return (await Accounts(redis, credits, Directory(db)).create_account("a", 0))["id"]


def test_codes_carry_140_random_bits_and_read_forgivingly():
    from shared.redemption import ALPHABET, CODE_CHARS, new_code
    assert len(ALPHABET) == 32 and CODE_CHARS * 5 >= 100
    code = new_code()
    assert normalize(code) == normalize(" " + code.lower().replace("-", " - ") + "\n")
    assert code_hash(code) == code_hash(code.lower()) and len(code_hash(code)) == 64


async def test_unknown_codes_are_throttled_per_client_address_across_accounts(stores):
    redis, db = stores
    codes = codes_on(redis, db, ThrottlePolicy(per_account=3, per_client=5, window_s=60))
    good = (await codes.create_batch(1, 1 * M, 1))["codes"][0]
    accounts = [await new_account(redis, db) for _ in range(3)]
    outcomes = [(await codes.redeem(accounts[i % 3], f"guess{i}", "203.0.113.9")).outcome for i in range(5)]
    assert outcomes == [Outcome.UNKNOWN] * 5  # no account reached 3; the address reached 5
    throttled = await codes.redeem(accounts[0], good, "203.0.113.9")
    assert throttled.outcome == Outcome.THROTTLED and 0 < throttled.retry_after_s <= 60
    assert (await codes.redeem(accounts[1], good, "198.51.100.7")).outcome == Outcome.CLAIMED  # another address


async def test_postgres_down_credits_nothing_and_hands_the_use_back(stores, free_db_url):
    redis, db = stores
    codes = codes_on(redis, db)
    account = await new_account(redis, db)
    code = (await codes.create_batch(1, 4 * M, 1))["codes"][0]
    down = Database(free_db_url)
    codes.credits.record = CreditRecord(down)
    for _ in range(3):
        with pytest.raises(DatabaseUnavailable):
            await codes.redeem(account, code, "c")
    assert (await codes.credits.balance(account))["balance_micro"] == 0
    codes.credits.record = CreditRecord(db)  # the database is back: the one use is still there
    assert (await codes.redeem(account, code, "c")).outcome == Outcome.CLAIMED
    assert (await codes.redeem(account, code, "c")).outcome == Outcome.NO_USE_LEFT
    assert (await codes.credits.balance(account))["balance_micro"] == 4 * M
    assert await db.fetchval("SELECT used FROM redemption_codes WHERE code_hash = $1", code_hash(code)) == 1
    assert (await audit_account(redis, db, account))["ok"]
    await down.close()


async def test_a_wiped_redis_gets_its_codes_and_use_counts_back(stores):
    redis, db = stores
    codes = codes_on(redis, db)
    account = await new_account(redis, db)
    multi = await codes.create_batch(2, 1 * M, 3)
    disabled = await codes.create_batch(1, 1 * M, 1)
    await codes.disable_batch(disabled["id"])
    for _ in range(2):
        assert (await codes.redeem(account, multi["codes"][0], "c")).outcome == Outcome.CLAIMED
    await redis.flushall()
    assert await restore_codes(redis, db) == 3
    assert await restore_codes(redis, db) == 0  # what Redis has is left alone
    await new_account(redis, db)  # (the restore of accounts is tests/test_record.py's)
    other = await new_account(redis, db)
    assert (await codes.redeem(other, multi["codes"][0], "c")).outcome == Outcome.CLAIMED  # its third use
    assert (await codes.redeem(other, multi["codes"][0], "c")).outcome == Outcome.NO_USE_LEFT
    assert (await codes.redeem(other, disabled["codes"][0], "c")).outcome == Outcome.NO_USE_LEFT
    assert (await codes.redeem(other, multi["codes"][1], "c")).outcome == Outcome.CLAIMED


async def claim_and_die(scripts: Scripts, account: str, code: str) -> int:
    """What a gateway does before it dies: redeem.lua claims a use; nothing is recorded or credited."""
    outcome, use, _ = await scripts.redeem(
        keys=[keys.redemption_code(code_hash(code)), keys.redemption_returned(code_hash(code)), keys.REDEMPTION_CLAIMS,
              keys.redeem_failures("acct:" + account), keys.redeem_failures("client:c")],
        args=[int(time.time()), 60_000, account, 10, 10])
    assert outcome == Outcome.CLAIMED
    return int(use)


async def test_a_use_claimed_by_a_gateway_that_died_is_credited_once_by_the_reconciler(stores):
    redis, db = stores
    codes = codes_on(redis, db)
    account, other = await new_account(redis, db), await new_account(redis, db)
    code = (await codes.create_batch(1, 3 * M, 2))["codes"][0]
    lost = await claim_and_die(codes.scripts, account, code)
    assert await codes.reconcile_claims(older_than_s=60) == 0  # too young: its gateway may still be at work
    # Three reconcilers at once, then again: the use is credited exactly once, to its claimant, and recorded.
    results = await asyncio.gather(*(codes.reconcile_claims(0, now=time.time() + 1) for _ in range(3)))
    assert sum(results) == 1 and await codes.reconcile_claims(0, now=time.time() + 1) == 0
    assert (await codes.credits.balance(account))["balance_micro"] == 3 * M
    assert await db.fetchval("SELECT account_id FROM redemptions WHERE code_hash = $1 AND use_number = $2",
                             code_hash(code), lost) == account
    assert await db.fetchval("SELECT used FROM redemption_codes WHERE code_hash = $1", code_hash(code)) == 1
    # The code's other use is still there, for someone else; then it is used up.
    assert (await codes.redeem(other, code, "c")).outcome == Outcome.CLAIMED
    assert (await codes.redeem(other, code, "c")).outcome == Outcome.NO_USE_LEFT
    assert await redis.hlen(keys.REDEMPTION_CLAIMS) == 0
    for acct in (account, other):
        assert (await audit_account(redis, db, acct))["ok"]


async def test_a_slow_gateway_and_the_reconciler_credit_a_use_once(stores):
    redis, db = stores
    codes = codes_on(redis, db)
    account = await new_account(redis, db)
    code = (await codes.create_batch(1, 2 * M, 1))["codes"][0]
    use = await claim_and_die(codes.scripts, account, code)
    assert await codes.reconcile_claims(0, now=time.time() + 1) == 1
    # The gateway was only slow: it records the same use now, under the same reference.
    order, created = await codes.credits.credit(account, 2 * M, f"redeem:{code_hash(code)}:{use}", reason="redeem",
                                                also_record=codes._use_recorder(account, code_hash(code), use))
    assert not created and (await codes.credits.balance(account))["balance_micro"] == 2 * M
    assert (await audit_account(redis, db, account))["ok"]
