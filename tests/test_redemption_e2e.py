"""Redemption codes against the real stack: the operator's batches, the customer's redemptions, the record.

Every money path is replayed (again and concurrently) and the ledger audit stays clean.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time

import httpx
import pytest

from shared.db.database import Database
from shared.redemption import code_hash

M = 1_000_000
CODE = re.compile(r"[A-HJ-NP-Z2-9]{4}(-[A-HJ-NP-Z2-9]{4}){6}")


def make_codes(admin, count: int = 1, credits: float = 5, **extra) -> dict:
    r = admin.http.post("/admin/redemption-codes", json={"count": count, "credits": credits, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def redeem(stack, key: str, code: str) -> httpx.Response:
    return httpx.post(stack.base_url + "/billing/redeem", json={"code": code},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def balance(stack, key: str) -> int:
    return httpx.get(stack.base_url + "/billing/credits", headers={"Authorization": f"Bearer {key}"}).json()[
        "balance_micro"]


async def redeem_concurrently(stack, key: str, code: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        replies = await asyncio.gather(*(http.post("/billing/redeem", json={"code": code}) for _ in range(n)))
    return [r.status_code for r in replies]


def test_a_batch_is_shown_once_and_each_code_credits_once(stack, admin, funded):
    account, key = funded
    batch = make_codes(admin, count=3, credits=7.5)
    assert re.fullmatch(r"rcb_[0-9a-f]{16}", batch["id"])
    assert batch["uses"] == 1 and batch["credits"] == 7.5 and len(set(batch["codes"])) == 3
    assert all(CODE.fullmatch(c) for c in batch["codes"])

    r = redeem(stack, key, batch["codes"][0].lower().replace("-", " "))  # case, dashes and spaces do not matter
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["balance_micro"] == 107_500_000 and body["object"] == "billing.credits"
    assert body["order"]["kind"] == "redeem" and body["order"]["amount_micro"] == 7_500_000
    for _ in range(3):  # replays: the code is used up
        again = redeem(stack, key, batch["codes"][0])
        assert again.status_code == 404 and again.json()["error"]["code"] == "invalid_code"
    assert balance(stack, key) == 107_500_000

    auth = {"Authorization": f"Bearer {key}"}
    orders = httpx.get(stack.base_url + "/billing/orders", headers=auth).json()["data"]
    assert orders[0]["kind"] == "redeem" and orders[0]["id"] == body["order"]["id"]
    ledger = httpx.get(stack.base_url + "/billing/ledger", headers=auth).json()["data"]
    assert [e for e in ledger if e["reason"] == "redeem"] and sum(e["amount"] for e in ledger) == 107_500_000
    assert admin.audit()["ok"]


async def test_a_thousand_concurrent_redemptions_of_a_one_use_code_credit_once(stack, admin, funded):
    account, key = funded
    code = make_codes(admin, credits=3)["codes"][0]
    statuses = await redeem_concurrently(stack, key, code, 1000)
    assert statuses.count(200) == 1 and statuses.count(404) == 999, sorted(set(statuses))
    assert balance(stack, key) == 103 * M
    assert admin.audit()["ok"]


async def test_a_three_use_code_gives_exactly_three_uses_across_accounts(stack, admin):
    code = make_codes(admin, credits=2, uses=3)["codes"][0]
    accounts = [admin.account_with_key(0) for _ in range(4)]
    results = await asyncio.gather(*(redeem_concurrently(stack, key, code, 250) for _, key in accounts))
    statuses = [s for per_account in results for s in per_account]
    assert statuses.count(200) == 3 and statuses.count(404) == 997
    assert sum(balance(stack, key) for _, key in accounts) == 6 * M
    assert admin.audit()["ok"]


def test_expired_disabled_and_unknown_codes_are_404(stack, admin, funded):
    account, key = funded
    expiring = make_codes(admin, expires_at=int(time.time()) + 2)
    disabled = make_codes(admin, count=2)
    r = admin.http.post(f"/admin/redemption-codes/{disabled['id']}/disable")
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert admin.http.post("/admin/redemption-codes/rcb_0123456789abcdef/disable").status_code == 404
    assert admin.http.post("/admin/redemption-codes/nope/disable").status_code == 404
    time.sleep(max(0.0, expiring["expires_at"] - time.time()) + 0.1)
    for code in [expiring["codes"][0], *disabled["codes"], "AAAA-BBBB-CCCC"]:
        r = redeem(stack, key, code)
        assert r.status_code == 404 and r.json()["error"]["code"] == "invalid_code", r.text
    assert balance(stack, key) == 100 * M


def test_wrong_guesses_are_throttled_per_account(stack, admin):
    _, key = admin.account_with_key(0)
    good = make_codes(admin)["codes"][0]
    limit = stack.settings.redeem_failures_per_account
    for i in range(limit):
        assert redeem(stack, key, f"GUESS-{i}").status_code == 404
    r = redeem(stack, key, good)  # throttled before the code is even looked up
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    _, other = admin.account_with_key(0)  # another account is not slowed
    assert redeem(stack, other, good).status_code == 200


def test_codes_as_csv_and_bad_input(stack, admin, funded):
    account, key = funded
    r = admin.http.post("/admin/redemption-codes", params={"format": "csv"},
                        json={"count": 4, "credits": 1, "uses": 2})
    assert r.status_code == 201 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 4 and rows[0]["uses"] == "2" and rows[0]["batch_id"].startswith("rcb_")
    assert redeem(stack, key, rows[0]["code"]).status_code == 200
    assert redeem(stack, key, rows[0]["code"]).status_code == 200  # two uses: the same account may take both
    assert redeem(stack, key, rows[0]["code"]).status_code == 404
    for body, param in [({"count": 0, "credits": 1}, "count"), ({"count": 1, "credits": 1, "uses": "1"}, "uses"),
                        ({"count": 1, "credits": -1}, "credits"), ({"count": 10_001, "credits": 1}, "count"),
                        ({"count": 1, "credits": 1, "expires_at": 1}, "expires_at")]:
        bad = admin.http.post("/admin/redemption-codes", json=body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (body, bad.text)
    assert admin.http.post("/admin/redemption-codes", params={"format": "xml"},
                           json={"count": 1, "credits": 1}).status_code == 400
    bad = httpx.post(stack.base_url + "/billing/redeem", json={"code": 5}, headers={"Authorization": f"Bearer {key}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "code"
    assert httpx.post(stack.base_url + "/billing/redeem", json={"code": "X"}).status_code == 401


async def test_codes_and_uses_are_in_the_record(stack, admin, funded):
    account, key = funded
    batch = make_codes(admin, count=2, uses=2)
    assert redeem(stack, key, batch["codes"][1]).status_code == 200
    db = Database(stack.settings.database_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM redemption_codes WHERE batch_id = $1", batch["id"]) == 2
        digest = code_hash(batch["codes"][1])
        assert await db.fetchval("SELECT used FROM redemption_codes WHERE code_hash = $1", digest) == 1
        row = await db.fetchrow("SELECT * FROM redemptions WHERE code_hash = $1", digest)
        assert row["account_id"] == account["id"] and row["use_number"] == 1
        assert await db.fetchval("SELECT kind FROM orders WHERE id = $1", row["order_id"]) == "redeem"
        assert not await db.fetchval("SELECT count(*) FROM redemption_codes WHERE code_hash = ANY($1)",
                                     batch["codes"])  # the codes themselves are never stored
    finally:
        await db.close()
