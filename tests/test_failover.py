"""Routing across nodes: failover, the circuit breaker, backpressure, and hold reconciliation.

Its own stack, with a catalog of two nodes for model `gemini`: node63 (first
in priority) whose provider points at a dead address, and node62 on the
simulator. One worker each, concurrency 2, a short queue, fast reconciliation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from apiinone.launcher import free_port
from tests.conftest import Admin, wait_settled
from tests.pool_helpers import own_stack, wait_until

URL = "/api/v1/chat/completions"

CATALOG = """
[providers.google]
adapter = "gemini"
base_url_env = "GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[providers.google-broken]
adapter = "gemini"
base_url_env = "BROKEN_GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[nodes.node63]
provider = "google-broken"

[nodes.node62]
provider = "google"

[models.gemini]
provider = "google"
nodes = ["node63", "node62"]
upstream_model = "gemini-3-flash-preview"
thinking = "level"
base_cost_credits = 5
input_price_credits_per_1m = "50"
output_price_credits_per_1m = "300"
context_window = 131072
"""


@pytest.fixture(scope="module")
def routed():
    env = {
        "BROKEN_GEMINI_BASE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "APIINONE_UPSTREAM_RETRIES": "0",
        "APIINONE_MAX_QUEUE_DEPTH": "1",
        "APIINONE_QUEUE_TIMEOUT_S": "1.5",
        "APIINONE_HOLD_GRACE_S": "0.5",
        "APIINONE_RECONCILE_INTERVAL_S": "0.5",
        "APIINONE_BREAKER_THRESHOLD": "2",
        "APIINONE_BREAKER_COOLDOWN_S": "30",
        "APIINONE_UPSTREAM_IDLE_TIMEOUT_S": "1",
    }
    with own_stack("apiinone-failover-", CATALOG, env, worker_concurrency=2) as st:
        yield st


@pytest.fixture(scope="module")
def routed_admin(routed) -> Admin:
    return Admin(routed.base_url, routed.settings.admin_token)


def chat(directive: str = "output_tokens=8") -> dict:
    return {"model": "gemini", "messages": [{"role": "user", "content": f"hi [[sim {directive}]]"}]}


async def test_upstream_failure_fails_over_then_breaker_skips_the_node(routed, routed_admin):
    _, key = routed_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
        for _ in range(2):  # node63 fails (connection refused), node62 answers
            r = await http.post(URL, json=chat(), headers=h)
            assert r.status_code == 200
        rows = await wait_settled(http, key, 4)
        assert {r["node"] for r in rows if r["status"] == "failed"} == {"node63"}
        assert all(r["charged_micro"] == 0 for r in rows if r["status"] == "failed")
        # The circuit is open now: node63 is not tried at all.
        await http.post(URL, json=chat(), headers=h)
        rows = await wait_settled(http, key, 5)
        assert [r["node"] for r in rows][:1] == ["node62"]
        assert sum(r["node"] == "node63" for r in rows) == 2
        assert (await http.get("/admin/audit", headers={"Authorization": f"Bearer {routed.settings.admin_token}"})
                ).json()["ok"]


async def test_node_without_workers_is_skipped(routed, routed_admin):
    _, key = routed_admin.account_with_key(100)
    worker = routed.procs["worker:node63:0"]
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    # The gateways stop routing to node63 once its worker's lease is gone.
    await asyncio.sleep(routed.settings.worker_lease_s + 1.5)
    async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
        r = await http.post(URL, json=chat(), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        rows = await wait_settled(http, key, 1)
    assert [row["node"] for row in rows] == ["node62"]


async def test_backpressure_full_queue_and_queue_timeout_are_503_and_free(routed, routed_admin):
    account, key = routed_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
        slow = chat("output_tokens=80 delay_ms=300")  # ~3 s each; the worker runs 2 at once
        running = [asyncio.create_task(http.post(URL, json=slow, headers=h)) for _ in range(2)]
        await asyncio.sleep(0.5)
        queued = asyncio.create_task(http.post(URL, json=chat(), headers=h))  # waits in the queue (depth 1)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        full = await http.post(URL, json=chat(), headers=h)
        assert full.status_code == 503 and time.monotonic() - started < 1
        assert "capacity" in full.json()["error"]["message"] and full.headers["Retry-After"]
        timed_out = await queued
        assert timed_out.status_code == 503 and "within" in timed_out.json()["error"]["message"]
        done = await asyncio.gather(*running)
        assert [r.status_code for r in done] == [200, 200]
    async with httpx.AsyncClient(base_url=routed.base_url) as http:
        rows = await wait_settled(http, key, 4)
    assert routed_admin.get_account(account["id"])["held_micro"] == 0
    assert sorted(r["status"] for r in rows) == ["rejected", "rejected", "succeeded", "succeeded"]


async def test_silent_upstream_hits_the_idle_timeout_and_is_refunded(routed, routed_admin):
    _, key = routed_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
        async with http.stream("POST", URL, headers=h, json={**chat("output_tokens=40 delay_ms=1500"),
                                                              "stream": True}) as r:
            body = "".join([line async for line in r.aiter_lines()])
        assert '"upstream_idle_timeout"' in body and "[DONE]" not in body
        rows = await wait_settled(http, key, 1)
    assert rows[0]["status"] == "failed" and rows[0]["charged_micro"] == 0


async def test_orphaned_hold_is_reconciled(routed, routed_admin):
    """A hold whose request vanished (here: made by hand, no job at all) is released after its deadline."""
    from shared.credits import Credits
    from shared.redis_client import make_redis

    account, key = routed_admin.account_with_key(10)
    redis = make_redis(routed.settings.redis_url)
    try:
        credits = Credits(redis)
        held = await credits.reserve(account["id"], "chatcmpl-orphan", 5_000_000, int(time.time() * 1000), "key_x")
        assert held.ok
        await wait_until(lambda: routed_admin.get_account(account["id"])["held_micro"] == 0, 10)
        # The ledger as the account reads it: Postgres and the not-yet-archived Redis tail, merged.
        ledger = httpx.get(routed.base_url + "/billing/ledger", headers={"Authorization": f"Bearer {key}"}).json()
        assert ledger["data"][0]["reason"] == "hold_expired" and ledger["data"][0]["amount"] == 0
        assert routed_admin.get_account(account["id"])["balance_micro"] == 10_000_000
    finally:
        await redis.aclose()


async def test_a_billing_outage_past_the_hold_deadline_still_bills_what_was_served(routed, routed_admin):
    """Issue 15 item 5: with billing down longer than a hold's deadline + grace (~12 minutes by default),
    the reconciler released the holds of requests already served at zero charge, and their queued
    settlements were then dropped as replays: every request served in the outage was free, and the
    audit still said ok. The node worker now marks a hold pending when it queues the settlement."""
    from shared.credits import Credits
    from shared.redis_client import make_redis

    account, key = routed_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    billing = routed.pid_of("billing")
    os.kill(billing, signal.SIGSTOP)  # the outage
    try:
        async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
            served = [await http.post(URL, headers=h, json=chat("output_tokens=40")) for _ in range(3)]
            assert [r.status_code for r in served] == [200, 200, 200]
        # The outage outlives deadline + grace: what a reconciler (another billing replica, or this one
        # when it wakes) does 15 minutes on.
        redis = make_redis(routed.settings.redis_url)
        try:
            later_ms = int((time.time() + 15 * 60) * 1000)
            await Credits(redis).reconcile_expired_holds(120_000, now_ms=later_ms)
        finally:
            await redis.aclose()
    finally:
        os.kill(billing, signal.SIGCONT)
    async with httpx.AsyncClient(base_url=routed.base_url, timeout=30) as http:
        rows = await wait_settled(http, key, 3, timeout=10)
        ledger = (await http.get("/billing/ledger", headers=h)).json()["data"]
    charged = {r["request_id"]: r["charged_micro"] for r in rows if r["status"] == "succeeded"}
    assert sorted(charged) == sorted(r.json()["id"] for r in served) and all(charged.values()), rows
    assert [r["status"] for r in rows] == ["succeeded"] * 3  # nothing expired
    account_now = routed_admin.get_account(account["id"])
    assert account_now["held_micro"] == 0
    assert account_now["balance_micro"] == 100_000_000 - sum(charged.values())
    assert sorted(e["reason"] for e in ledger) == ["charge"] * 3 + ["initial"]
