"""`apiinone admin ...` against the running stack's Redis, as an operator would type it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import httpx
import pytest
import redis

from shared.keys import AccountKeys
from apiinone.launcher import apiinone_command

M = 1_000_000
SCRATCH_DB = 15  # a database of the stack's Valkey that nothing else uses: room for a broken account


DATABASE: dict[str, str] = {}  # the stack's DATABASE_URL: an operator's shell sets both


@pytest.fixture(autouse=True)
def _database_url(stack):
    DATABASE["DATABASE_URL"] = stack.settings.database_url


def cli(redis_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url, **DATABASE}
    done = subprocess.run(apiinone_command() + ["admin", *args], env=env, capture_output=True, text=True, timeout=30)
    if check:
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


def out(done: subprocess.CompletedProcess):
    return json.loads(done.stdout)


def scratch_url(stack) -> str:
    return stack.settings.redis_url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}"


@pytest.fixture
def scratch(stack):
    url = scratch_url(stack)
    r = redis.Redis.from_url(url)
    r.flushdb()
    try:
        yield url, r
    finally:
        r.flushdb()
        r.close()


def billing(stack, key: str, path: str = "/billing/credits") -> httpx.Response:
    return httpx.get(stack.base_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_accounts_keys_and_topups_from_the_command_line(stack):
    url = stack.settings.redis_url
    account = out(cli(url, "accounts", "create", "--name", "cli-" + uuid.uuid4().hex[:6], "--credits", "10"))
    assert account["balance_micro"] == 10 * M and account["id"].startswith("acct_")
    key = out(cli(url, "keys", "create", account["id"], "--name", "ops"))
    assert key["key"].startswith("aio_") and key["account_id"] == account["id"]

    # The gateway serves the new key at once, with the balance the CLI gave.
    r = billing(stack, key["key"])
    assert r.status_code == 200 and r.json()["balance_micro"] == 10 * M

    ref = "wire-" + uuid.uuid4().hex
    first = out(cli(url, "topup", account["id"], "--credits", "2.5", "--reference", ref))
    again = out(cli(url, "topup", account["id"], "--credits", "2.5", "--reference", ref))
    assert first["created_now"] is True and again["created_now"] is False
    assert again["id"] == first["id"] and again["amount_micro"] == first["amount_micro"] == 2_500_000
    assert billing(stack, key["key"]).json()["balance_micro"] == 12_500_000
    orders = billing(stack, key["key"], "/billing/orders").json()["data"]
    assert [o["id"] for o in orders][0] == first["id"] and len(orders) == 2
    shown = out(cli(url, "accounts", "show", account["id"]))
    assert shown["balance_micro"] == 12_500_000 and shown["keys"] == [key["id"]]
    assert [k["id"] for k in out(cli(url, "keys", "list", account["id"]))] == [key["id"]]

    revoked = out(cli(url, "keys", "revoke", key["id"]))
    assert revoked == {"id": key["id"], "deleted": True}
    assert billing(stack, key["key"]).status_code == 401  # at once, on the running gateway
    assert out(cli(url, "keys", "revoke", key["id"]))["deleted"] is False


def test_audit_exits_0_when_clean(stack):
    done = cli(stack.settings.redis_url, "audit")
    rows = out(done)
    assert rows and all(r["ok"] for r in rows)
    assert "clean" in done.stderr


def test_audit_exits_1_and_prints_the_difference(scratch):
    url, r = scratch
    good = out(cli(url, "accounts", "create", "--name", "good", "--credits", "3"))
    bad = out(cli(url, "accounts", "create", "--name", "bad", "--credits", "3"))
    assert cli(url, "audit").returncode == 0
    r.hincrby(AccountKeys(bad["id"]).account, "balance", 7)  # a balance change without a ledger entry

    done = cli(url, "audit", check=False)

    assert done.returncode == 1 and "1 differ" in done.stderr
    [diff] = json.loads(done.stdout)
    assert diff["account_id"] == bad["id"] and not diff["ok"]
    assert (diff["balance_micro"], diff["ledger_sum_micro"]) == (3 * M + 7, 3 * M)
    assert good["id"] not in done.stdout
