"""The record (issue 16) against real Valkey and real Postgres, in process: the archiver's exactly-once
effect (duplicate delivery, a kill between commit and ack, Postgres down), the recovery after Redis
lost its last writes, the restore of a wiped Redis, and the audit across both stores."""

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
from shared.db.database import Database
from shared.db.directory import Directory
from shared.keys import AccountKeys
from shared.scripts import Scripts
from worker.archiver import archive as archive_mod
from worker.archiver.archive import Archiver
from worker.archiver.recovery import Recovery
from worker.archiver.restore import Restorer

M = 1_000_000


def parts(redis: Redis, db: Database):
    credits = Credits(redis, Scripts(redis), record=CreditRecord(db))
    return credits, Accounts(redis, credits, Directory(db))


async def spend(credits: Credits, account_id: str, key_id: str, n: int, charge: int = 1000, prefix: str = "r") -> None:
    for i in range(n):
        rid = f"{prefix}{i}"
        r = await credits.reserve(account_id, rid, 5 * M, int(time.time() * 1000) + 60_000, key_id)
        assert r.ok, r
        await credits.settle(account_id, rid, charge, {"request_id": rid, "model": "gemini", "key_id": key_id,
                                                       "status": "succeeded", "prompt_tokens": "3"})


async def drain(archiver: Archiver) -> None:
    await archiver.ensure_group()
    while await archiver.round(block_ms=50):
        pass


async def test_archiver_moves_everything_once_and_trims_redis(stores):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    await spend(credits, acct["id"], key["id"], 30)
    await drain(Archiver(redis, db))
    k = AccountKeys(acct["id"])
    assert await redis.xlen(k.usage) == 0 and await redis.xlen(k.ledger) == 0
    assert await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", acct["id"]) == 30
    assert await db.fetchval("SELECT sum(amount_micro) FROM ledger WHERE account_id = $1", acct["id"]) == 100 * M - 30_000
    report = await audit_account(redis, db, acct["id"])
    assert report["ok"] and report["unarchived_entries"] == 0, report


async def test_duplicate_delivery_and_a_kill_between_commit_and_ack_duplicate_nothing(stores, monkeypatch):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    await spend(credits, acct["id"], key["id"], 10)

    dying = Archiver(redis, db, consumer="dying")

    async def killed(batch):  # committed, then "kill -9": no trim, no ack
        raise asyncio.CancelledError

    dying.trim_and_ack = killed
    await dying.ensure_group()
    with pytest.raises(asyncio.CancelledError):
        await dying.round(block_ms=50)
    assert await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", acct["id"]) == 10
    assert await redis.xlen(AccountKeys(acct["id"]).usage) == 10  # still in Redis: not trimmed

    monkeypatch.setattr(archive_mod, "RECLAIM_IDLE_MS", 0)  # the dead consumer's notes are taken over at once
    await drain(Archiver(redis, db, consumer="next"))
    assert await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", acct["id"]) == 10
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1", acct["id"]) == 11
    assert await redis.xlen(AccountKeys(acct["id"]).usage) == 0
    assert await redis.xpending(keys.ARCHIVE_INDEX, keys.ARCHIVE_GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []}
    assert (await audit_account(redis, db, acct["id"]))["ok"]


async def test_postgres_down_the_archiver_waits_and_loses_nothing(stores, free_db_url):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    down = Database(free_db_url)
    archiver = Archiver(redis, down)
    await archiver.ensure_group()
    await spend(credits, acct["id"], key["id"], 5)
    task = asyncio.create_task(archiver.round(block_ms=50))
    await asyncio.sleep(1.0)
    assert not task.done()  # waiting for the database, nothing acked
    assert await redis.xlen(AccountKeys(acct["id"]).usage) == 5
    assert (await audit_account(redis, db, acct["id"]))["ok"]  # the unarchived tail counts
    archiver.db = db  # the database is back
    await asyncio.wait_for(task, 10)
    await drain(archiver)
    assert await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", acct["id"]) == 5
    assert await redis.xlen(AccountKeys(acct["id"]).usage) == 0
    await down.close()


async def lose_the_tail(redis: Redis, account_id: str, key_id: str, action) -> None:
    """Run ``action`` and archive it, then put the account's keys back as they were before: what a Redis
    that restarted from an AOF missing its last second does; the account is stamped by another run."""
    k = AccountKeys(account_id)
    names = [k.account, k.holds, k.deadlines, k.ledger, k.usage, k.key_state(key_id), k.order_refs, k.orders]
    saved = {n: await redis.dump(n) for n in names}
    await action()
    for name, blob in saved.items():
        await redis.delete(name)
        if blob is not None:
            await redis.restore(name, 0, blob, replace=True)
    await redis.hset(k.account, "synced", "0" * 40)
    await redis.delete(keys.RECOVERED_RUN)


async def test_recovery_reapplies_what_redis_lost_before_the_account_is_used_again(stores):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    a, kid = acct["id"], key["id"]
    archiver = Archiver(redis, db)
    r = await credits.reserve(a, "lost-charge", 5 * M, int(time.time() * 1000) + 60_000, kid)
    assert r.ok
    await drain(archiver)

    async def answered_then_lost():
        await credits.credit(a, 7 * M, "pay-lost")  # answered 201: recorded in Postgres first
        await credits.settle(a, "lost-charge", 2 * M, {"request_id": "lost-charge", "model": "gemini",
                                                       "key_id": kid, "status": "succeeded"})
        await drain(archiver)  # the charge reached Postgres before Redis lost it
    await lose_the_tail(redis, a, kid, answered_then_lost)
    assert (await credits.balance(a))["balance_micro"] == 100 * M  # Redis forgot both

    refused = await credits.reserve(a, "during", 5 * M, int(time.time() * 1000) + 60_000, kid)
    assert refused.status == -10  # fenced until the recovery has run
    report = await Recovery(redis, db).check()
    assert report.rows_applied == 2
    balance = await credits.balance(a)
    assert (balance["balance_micro"], balance["held_micro"]) == (105 * M, 0)  # +7 credit, -2 charge, hold gone
    assert int(await redis.hget(AccountKeys(a).key_state(kid), "spend")) == 2 * M
    assert (await credits.reserve(a, "after", 5 * M, int(time.time() * 1000) + 60_000, kid)).ok
    assert await Recovery(redis, db).check() is None  # once per Redis run
    await drain(archiver)
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1", a) == 3  # initial, pay, charge
    report = await audit_account(redis, db, a)
    assert report["ok"], report


async def test_restore_rebuilds_a_wiped_redis_from_postgres(stores):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M, rpm=60)
    key = await accounts.create_key(acct["id"], "k", credit_limit_micro=50 * M)
    revoked = await accounts.create_key(acct["id"], "gone")
    await accounts.revoke_key(revoked["id"])
    await credits.credit(acct["id"], 3 * M, "pay-1")
    await spend(credits, acct["id"], key["id"], 4, charge=M)
    await drain(Archiver(redis, db))
    await redis.flushall()

    report = await Restorer(redis, db).restore_all()
    assert report["accounts_restored"] == 1 and report["keys_restored"] == 1
    assert report["unarchived_charges"]["since_ms"] > 0
    assert (await credits.balance(acct["id"]))["balance_micro"] == 99 * M
    record = await accounts.lookup_key(key["key"])
    assert record is not None and record.limits.credit_limit_micro == 50 * M
    assert await accounts.lookup_key(revoked["key"]) is None
    assert int(await redis.hget(AccountKeys(acct["id"]).key_state(key["id"]), "spend")) == 4 * M
    again, created = await credits.credit(acct["id"], 3 * M, "pay-1")
    assert not created and (await credits.balance(acct["id"]))["balance_micro"] == 99 * M
    await spend(credits, acct["id"], key["id"], 2, charge=M, prefix="after")
    await drain(Archiver(redis, db))
    assert (await audit_account(redis, db, acct["id"]))["ok"]
    assert (await Restorer(redis, db).restore_all())["accounts_restored"] == 0


async def test_money_scripts_carry_the_run_id_and_fail_closed_when_loaded_unrendered(stores):
    """The fence's run id is written into the scripts at load (shared/scripts.py): after a restart (an
    empty script cache: NOSCRIPT) they are rendered again for the new run; a script loaded as it is on
    disk compares against the placeholder and refuses every stamped account."""
    from shared.scripts import LUA_DIR, server_run_id

    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    a, kid = acct["id"], key["id"]
    assert await redis.hget(AccountKeys(a).account, "synced") == (await server_run_id(redis)).encode()
    deadline = int(time.time() * 1000) + 60_000
    assert (await credits.reserve(a, "r1", 5 * M, deadline, kid)).ok
    await redis.script_flush()  # what a restarted server's cache looks like
    assert (await credits.reserve(a, "r2", 5 * M, deadline, kid)).ok  # NOSCRIPT -> rendered again -> runs
    assert credits.scripts._generation == 2

    raw = (LUA_DIR / "reserve.lua").read_text()
    k = AccountKeys(a)
    reply = await redis.eval(raw, 5, k.account, k.holds, k.deadlines, k.key_state(kid), k.limit_state,
                             "r3", 5 * M, deadline, kid, 0, 0, 1, 0, 0, 0)
    assert reply[0] == -10  # unrendered: fenced
    await credits.settle(a, "r1", 1000, {"request_id": "r1", "model": "gemini", "key_id": kid, "status": "succeeded"})
    await credits.settle(a, "r2", 1000, {"request_id": "r2", "model": "gemini", "key_id": kid, "status": "succeeded"})
    assert (await credits.balance(a))["balance_micro"] == 100 * M - 2000


async def test_accounts_made_before_the_record_are_copied_into_it_once(stores):
    """An account of a Redis-only install (no record when it was made: no rows, no fence stamp, its whole
    history in untrimmed streams) is adopted by the recovery's first pass: the account, its key, its user and
    its orders are recorded, the archiver brings its ledger and usage, and the record then rebuilds it."""
    from shared.users import Users

    redis, db = stores
    legacy_credits = Credits(redis, Scripts(redis))  # no record: what an install before Postgres did
    legacy = Accounts(redis, legacy_credits)
    acct = await legacy.create_account("old", 50 * M)
    key = await legacy.create_key(acct["id"], "k")
    await Users(redis).create("old@example.com", "a long enough password", acct["id"])
    await legacy_credits.credit(acct["id"], 3 * M, "pay-old")
    await spend(legacy_credits, acct["id"], key["id"], 4, charge=2500)
    a = acct["id"]
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", a) == 0
    assert await redis.hget(AccountKeys(a).account, "synced") is None

    report = await Recovery(redis, db).check(force=True)
    assert report.adopted == 1
    await drain(Archiver(redis, db))
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE account_id = $1", a) == 1
    assert await db.fetchval("SELECT email FROM users WHERE account_id = $1", a) == "old@example.com"
    assert await db.fetchval("SELECT count(*) FROM orders WHERE account_id = $1", a) == 2  # initial + top-up
    assert await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", a) == 4
    assert await db.fetchval("SELECT sum(amount_micro) FROM ledger WHERE account_id = $1", a) == 53 * M - 10_000
    assert (await audit_account(redis, db, a))["ok"]
    assert (await Recovery(redis, db).check(force=True)).adopted == 0  # once

    # Now the record can rebuild it like any other.
    for name in await redis.keys(f"*{a}*"):
        await redis.delete(name)
    assert (await Restorer(redis, db).restore_all())["accounts_restored"] == 1
    assert (await Credits(redis, Scripts(redis)).balance(a))["balance_micro"] == 53 * M - 10_000
