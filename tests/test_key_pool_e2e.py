"""Issue 22's key pools on real processes: two gateways, two node62 workers, three upstream keys.

The simulator answers as Google does per key (APIINONE_SIMULATOR_KEY_FAULTS): ``…aaaa`` is rate
limited (429 with RetryInfo) for a few seconds from its first use, ``…bbbb`` is an invalid key,
``…cccc`` works and has its own limit of requests per minute. Requests keep succeeding; the 429 key
comes back after its delay and serves once ``…cccc`` is at its limit; the invalid key stays
disabled until an operator re-enables it; nothing is billed twice; keys show only their last 4.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid

import httpx
import pytest

from apiinone.launcher import apiinone_command, Stack
from tests.conftest import Admin, wait_settled
from tests.pool_helpers import key_rows, own_stack, wait_until

URL = "/api/v1/chat/completions"
RETRY_S = 4
SECRETS = {"aaaa": "key-slow-aaaa", "bbbb": "key-gone-bbbb", "cccc": "key-good-cccc"}
CCCC_RPM = 14
PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def keyed():
    env = {
        "APIINONE_NODE_KEYS_NODE62": f"{SECRETS['aaaa']},{SECRETS['bbbb']},{SECRETS['cccc']} rpm={CCCC_RPM}",
        "APIINONE_SIMULATOR_KEY_FAULTS": f"{SECRETS['aaaa']}=429:{RETRY_S}s,{SECRETS['bbbb']}=invalid",
    }
    with own_stack("apiinone-keypool-", env=env, workers_per_node=2, gateways=2) as st:
        yield st


@pytest.fixture(scope="module")
def keyed_admin(keyed) -> Admin:
    return Admin(keyed.base_url, keyed.settings.admin_token)


async def wave(stack: Stack, key: str, count: int) -> list[int]:
    """``count`` requests, four at a time, alternating between the two gateways."""
    urls = [f"http://127.0.0.1:{p}{URL}" for p in stack.gateway_ports]
    body = {"model": "gemini", "messages": [{"role": "user", "content": "hi [[sim output_tokens=8]]"}]}
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        for start in range(0, count, 4):
            replies = await asyncio.gather(*[http.post(urls[i % 2], json=body)
                                             for i in range(start, min(count, start + 4))])
            statuses += [r.status_code for r in replies]
            assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    return statuses


async def test_a_pool_serves_through_a_rate_limited_and_an_invalid_key(keyed, keyed_admin):
    admin = keyed_admin
    account, key = admin.account_with_key(1000)

    # Every first request of a worker meets …aaaa (429) and …bbbb (invalid) and is served on …cccc.
    assert await wave(keyed, key, 12) == [200] * 12
    rows = await wait_until(lambda: (r := key_rows(admin))["bbbb"]["state"] == "disabled" and r, 5)
    assert rows["bbbb"]["disabled_reason"] == "API_KEY_INVALID" and rows["bbbb"]["disabled_since"]
    assert rows["aaaa"]["rate_limited"] >= 1 and rows["cccc"]["state"] == "active"
    limited = rows["aaaa"]["rate_limited"]

    # The 429 key comes back after Google's retryDelay; …cccc reaches its own limit and …aaaa serves.
    await wait_until(lambda: key_rows(admin)["aaaa"]["state"] == "active", RETRY_S + 3)
    assert await wave(keyed, key, 20) == [200] * 20
    rows = await wait_until(lambda: (r := key_rows(admin))["aaaa"]["requests"] > limited and r, 3)
    assert rows["aaaa"]["rate_limited"] == limited, "served, not limited again"
    assert rows["bbbb"]["state"] == "disabled", "the invalid key stays disabled"

    # Nothing billed twice: one succeeded, charged usage row per request, and the ledger agrees.
    async with httpx.AsyncClient(base_url=keyed.base_url) as http:
        usage = await wait_settled(http, key, 32, timeout=5)
    assert len(usage) == 32 and len({u["request_id"] for u in usage}) == 32
    assert all(u["status"] == "succeeded" and u["charged_micro"] > 0 for u in usage)
    acct = admin.get_account(account["id"])
    assert acct["held_micro"] == 0
    assert acct["balance_micro"] == 1000_000_000 - sum(u["charged_micro"] for u in usage)
    audit = admin.audit()
    assert audit["ok"], [r for r in audit["data"] if not r["ok"]]


async def test_operators_see_key_state_by_last_four_and_re_enable(keyed, keyed_admin):
    admin = keyed_admin
    await wait_until(lambda: key_rows(admin)["bbbb"]["state"] == "disabled", 10)
    metrics = httpx.get(keyed.base_url + "/metrics").text
    assert 'apiinone_upstream_key_state{key="bbbb",node="node62",state="disabled"} 1.0' in metrics
    assert re.search(r'apiinone_upstream_key_requests_total\{key="cccc",node="node62"\} [1-9]', metrics)

    # The nodes page shows it, and its button puts the key back (Google still says invalid: out again).
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    r = admin.http.post("/admin/users", json={"email": email, "password": PASSWORD, "role": "operator",
                                              "account_id": admin.account(0)["id"]})
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=keyed.base_url, follow_redirects=False) as web:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/dashboard/login").text).group(1)
        assert web.post("/dashboard/login", data={"email": email, "password": PASSWORD,
                                                  "csrf_token": csrf}).status_code == 303
        page = web.get("/dashboard/admin/nodes").text
        assert "…bbbb" in page and "API_KEY_INVALID" in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = web.post("/dashboard/admin/nodes/node62/keys/bbbb/enable", data={"csrf_token": csrf})
        assert r.status_code == 303
    assert key_rows(admin)["bbbb"]["state"] == "active"

    r = admin.http.post("/admin/nodes/node62/keys/zzzz/enable")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = admin.http.post("/admin/nodes/node62/keys/bbbb/enable")
    assert r.status_code == 200 and r.json()["state"] == "active"
    env = {**os.environ, "REDIS_URL": keyed.settings.redis_url, "DATABASE_URL": keyed.settings.database_url}
    done = subprocess.run(apiinone_command() + ["admin", "upstream-keys", "enable", "node62", "bbbb"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "active", done.stderr
    # Each re-enabling is an operator action in the audit log: the page's, the admin API's, the command line's.
    entries = admin.http.get("/admin/audit-log", params={"action": "upstream_key.enable"}).json()["data"]
    assert [e["target"] for e in entries] == ["node62/bbbb"] * 3
    assert [e["actor"].split(" ")[0] for e in entries] == ["cli", "admin", email]
    assert entries[2]["before"] == {"disabled": True} and entries[2]["after"] == {"state": "active"}

    _, key = admin.account_with_key(1000)  # four worst-case holds at once
    assert await wave(keyed, key, 8) == [200] * 8
    await wait_until(lambda: key_rows(admin)["bbbb"]["state"] == "disabled", 5)

    # A key is never shown whole: not by the API, the metrics, the page, nor in any process's log.
    shown = admin.http.get("/admin/nodes").text + httpx.get(keyed.base_url + "/metrics").text + page
    logs = "".join(p.read_text(errors="replace") for p in (keyed.settings.data_dir / "logs").glob("*.log"))
    for secret in SECRETS.values():
        assert secret not in shown and secret not in logs
    assert "upstream key disabled" in logs and "bbbb" in logs


async def test_one_tenants_429_does_not_refuse_another_tenant_on_a_one_key_node(stack, admin):
    """The attack: on the session stack's node (one upstream key), account A provokes Google's 429 (the
    simulator's, with a 3 s RetryInfo); the key cools down. Account B's next request must still be sent
    upstream and answered, not refused locally for the whole delay (worker/key_pick.py least_cooling)."""
    _, attacker = admin.account_with_key(10)
    _, victim = admin.account_with_key(10)
    url = stack.base_url + URL
    async with httpx.AsyncClient(timeout=30) as http:
        provoked = await http.post(url, headers={"Authorization": f"Bearer {attacker}"}, json={
            "model": "gemini", "messages": [{"role": "user", "content": "hi [[sim error=429]]"}]})
        assert provoked.status_code == 429
        served = await http.post(url, headers={"Authorization": f"Bearer {victim}"}, json={
            "model": "gemini", "messages": [{"role": "user", "content": "hi [[sim output_tokens=8]]"}]})
    assert served.status_code == 200, served.text
