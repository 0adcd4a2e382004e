"""Worker pools under faults, run as production does: two gateways, two workers for node62.

Each test breaks something for real (SIGKILL, SIGTERM, client disconnect,
Valkey restart) and checks what the client saw, what was billed, and that the
ledger audit stays clean.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from apiinone.launcher import wait_http
from tests.conftest import Admin
from tests.pool_helpers import busy_worker_pids, kill, own_stack, read_sse, wait_for_busy_worker, wait_until

URL = "/api/v1/chat/completions"


@pytest.fixture(scope="module")
def pool():
    with own_stack("apiinone-pool-", workers_per_node=2, gateways=2) as st:
        yield st


@pytest.fixture(scope="module")
def pool_admin(pool) -> Admin:
    return Admin(pool.base_url, pool.settings.admin_token)


def body(directive: str, stream: bool = True) -> dict:
    return {"model": "gemini", "stream": stream, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Tell me a story [[sim {directive}]]"}]}


def gateway_urls(pool) -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in pool.gateway_ports]


async def usage_rows(http: httpx.AsyncClient, key: str, count: int, timeout: float = 5.0) -> list[dict]:
    async def enough():
        rows = (await http.get("/billing/usage", params={"limit": 100},
                               headers={"Authorization": f"Bearer {key}"})).json()["data"]
        return rows if len(rows) >= count else None
    return await wait_until(enough, timeout)


def restart_missing_workers(pool) -> None:
    for name in [n for n, p in pool.procs.items() if n.startswith("worker:") and p.poll() is not None]:
        _, node, index = name.split(":")
        pool.start_worker(node, int(index))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(busy_worker_pids(Admin(pool.base_url, pool.settings.admin_token).http)) >= 2:
            return
        time.sleep(0.2)


def assert_audit_clean(admin: Admin) -> None:
    audit = admin.audit()
    assert audit["ok"], json.dumps([r for r in audit["data"] if not r["ok"]])


async def test_pickup_spreads_over_both_gateways_and_workers(pool, pool_admin):
    _, key = pool_admin.account_with_key(1000)  # eight worst-case holds of ~20 credits at once
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as http:
        results = await asyncio.gather(*[
            http.post(gateway_urls(pool)[i % 2] + URL, json=body("output_tokens=40 delay_ms=100", stream=False),
                      headers=headers) for i in range(8)])
    assert all(r.status_code == 200 for r in results)
    nodes = pool_admin.http.get("/admin/nodes").json()["data"]
    assert nodes[0]["workers_alive"] == 2 and nodes[0]["capacity"] > 0


async def test_sigkill_mid_stream_ends_with_error_and_refund(pool, pool_admin):
    account, key = pool_admin.account_with_key(100)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        async def one(i: int):
            async with http.stream("POST", gateway_urls(pool)[i % 2] + URL, headers=headers,
                                   json=body("output_tokens=400 delay_ms=60")) as r:
                assert r.status_code == 200
                started = time.monotonic()
                events, end = await read_sse(r)
                return end, events, time.monotonic() - started

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        victim = await asyncio.to_thread(wait_for_busy_worker, pool_admin.http)
        killed_at = time.monotonic()
        kill(pool, victim, signal.SIGKILL)
        outcomes = await asyncio.gather(*tasks)
        ended = time.monotonic() - killed_at

        errors = [o for o in outcomes if o[0] == "error"]
        done = [o for o in outcomes if o[0] == "done"]
        assert errors, [(o[0], o[1][-2:], o[2]) for o in outcomes]
        assert len(errors) + len(done) == 4, [o[0] for o in outcomes]
        assert all("worker_lost" in o[1][-1] for o in errors)
        assert ended < 12, "clients learn of the crash within seconds, not at the job timeout"

        rows = await usage_rows(http.__class__(base_url=pool.base_url), key, 4)
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status.get("failed", [])) == len(errors)
    assert all(r["charged_micro"] == 0 and r["error_code"] == "worker_lost" for r in by_status["failed"])
    assert all(r["charged_micro"] > 0 for r in by_status.get("succeeded", []))
    acct = pool_admin.get_account(account["id"])
    assert acct["held_micro"] == 0
    assert acct["balance_micro"] == 100_000_000 - sum(r["charged_micro"] for r in rows)
    assert_audit_clean(pool_admin)
    restart_missing_workers(pool)


async def test_worker_death_before_output_is_retried_once_elsewhere(pool, pool_admin):
    """A non-stream request has sent nothing to its client, so it may run again on another worker."""
    _, key = pool_admin.account_with_key(100)
    async with httpx.AsyncClient(timeout=60) as http:
        task = asyncio.create_task(http.post(pool.base_url + URL, headers={"Authorization": f"Bearer {key}"},
                                             json=body("output_tokens=200 delay_ms=100", stream=False)))
        victim = await asyncio.to_thread(wait_for_busy_worker, pool_admin.http)
        kill(pool, victim, signal.SIGKILL)
        response = await task
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 200
    async with httpx.AsyncClient(base_url=pool.base_url) as http:
        rows = await usage_rows(http, key, 2)
    assert sorted(r["status"] for r in rows) == ["failed", "succeeded"]
    assert [r for r in rows if r["status"] == "failed"][0]["charged_micro"] == 0
    assert_audit_clean(pool_admin)
    restart_missing_workers(pool)


async def test_sigterm_drains_in_flight_streams(pool, pool_admin):
    _, key = pool_admin.account_with_key(100)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        async def one():
            async with http.stream("POST", pool.base_url + URL, headers=headers,
                                   json=body("output_tokens=160 delay_ms=80")) as r:
                return await read_sse(r)

        tasks = [asyncio.create_task(one()) for _ in range(2)]
        victim = await asyncio.to_thread(wait_for_busy_worker, pool_admin.http)
        name = kill(pool, victim, signal.SIGTERM)
        # While draining, new requests still succeed (the other worker takes them).
        extra = await http.post(pool.base_url + URL, headers=headers, json=body("output_tokens=8", stream=False))
        assert extra.status_code == 200
        outcomes = await asyncio.gather(*tasks)
        assert [end for _, end in outcomes] == ["done", "done"]
        for events, _ in outcomes:
            usage = json.loads(events[-2])["usage"]
            assert usage["completion_tokens"] == 160 + 16
        assert await asyncio.to_thread(pool.procs[name].wait, 30) == 0
        rows = await usage_rows(httpx.AsyncClient(base_url=pool.base_url), key, 3)
    assert sorted(r["status"] for r in rows) == ["succeeded"] * 3, "no duplicates, nothing cut"
    assert_audit_clean(pool_admin)
    restart_missing_workers(pool)


async def test_client_disconnect_stops_the_worker_and_bills_what_was_produced(pool, pool_admin):
    _, key = pool_admin.account_with_key(100)
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", pool.base_url + URL, headers={"Authorization": f"Bearer {key}"},
                               json=body("output_tokens=800 delay_ms=50")) as r:
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 5:
                    break
        left_at = time.monotonic()
        await wait_until(lambda: sum(busy_worker_pids(pool_admin.http).values()) == 0, 5)
        stopped_after = time.monotonic() - left_at
        rows = await usage_rows(httpx.AsyncClient(base_url=pool.base_url), key, 1)
    row = rows[0]
    assert row["status"] == "cancelled"
    assert 0 < row["completion_tokens"] < 800 + 16 and row["charged_micro"] > 0
    assert stopped_after < 3  # heartbeat granularity is 1 s; the job itself stops at once
    assert_audit_clean(pool_admin)


async def test_valkey_restart_under_load(pool, pool_admin):
    _, key = pool_admin.account_with_key(1000)  # ten worst-case holds of ~20 credits at once
    headers = {"Authorization": f"Bearer {key}"}
    valkey = pool.procs["valkey"]
    valkey.send_signal(signal.SIGTERM)
    valkey.wait(10)
    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        r = await http.post(pool.base_url + URL, headers=headers, json=body("output_tokens=8", stream=False))
        assert r.status_code in (401, 503) and time.monotonic() - started < 1.5
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "service_unavailable"
        ready = await http.get(pool.base_url + "/readyz")
        assert ready.status_code == 503

        pool.start_valkey(pool.settings.embedded_redis_port, pool.settings.data_dir.resolve() / "valkey")
        await asyncio.to_thread(wait_http, pool.base_url + "/readyz", 20)

        results = await asyncio.gather(*[
            http.post(gateway_urls(pool)[i % 2] + URL, headers=headers, json=body("output_tokens=16", stream=False))
            for i in range(10)])
        assert [r.status_code for r in results] == [200] * 10, [r.text for r in results if r.status_code != 200][:2]
        rows = await usage_rows(http.__class__(base_url=pool.base_url), key, 10)
    assert sum(r["status"] == "succeeded" for r in rows) == 10
    assert_audit_clean(pool_admin)
