"""Keys within the account's bounds (issue 17 item 6), against the real stack.

The attacks: a dashboard user mints keys with any requests/tokens per minute (1e9 was accepted), mints
any number of keys, and spreads traffic over several keys to multiply the account's limits (each key
had its own bucket; the account's rpm/tpm were only defaults for new keys).
"""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.conftest import wait_settled
from tests.test_dashboard import PASSWORD, make_user

URL = "/api/v1/chat/completions"


def chat(directive: str = "output_tokens=8", **extra) -> dict:
    return {"model": "gemini", "stream": False, **extra,
            "messages": [{"role": "user", "content": f"hi [[sim {directive}]]"}]}


def h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def limited_account(admin, **limits) -> dict:
    r = admin.http.post("/admin/accounts", json={"name": "bounded", "credits": 100, **limits})
    assert r.status_code == 201, r.text
    return r.json()


def dashboard(stack, admin, account_id: str) -> tuple[httpx.Client, str]:
    """A signed-in dashboard client of a user of the account, and the keys page's CSRF token."""
    email = make_user(admin, account_id)
    c = httpx.Client(base_url=stack.base_url, follow_redirects=False, timeout=30)
    page = c.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/dashboard/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303, r.text[:200]
    keys_page = c.get("/dashboard/keys")
    return c, re.search(r'name="csrf_token" value="([^"]+)"', keys_page.text).group(1)


def key_names(admin, account_id: str) -> list[str]:
    return [k["name"] for k in admin.http.get(f"/admin/accounts/{account_id}/keys").json()["data"]]


def test_a_dashboard_user_cannot_mint_a_key_past_the_accounts_limits(stack, admin):
    account = limited_account(admin, rpm=60, tpm=10_000, max_concurrent=4)
    c, csrf = dashboard(stack, admin, account["id"])
    try:
        for field, value in (("rpm", "1000000000"), ("tpm", "1000000000"), ("max_concurrent", "100000")):
            r = c.post("/dashboard/keys", data={"name": f"greedy-{field}", field: value, "csrf_token": csrf})
            assert r.status_code == 400, f"{field}={value}: {r.status_code}"
            assert "your account&#39;s limit" in r.text
        assert key_names(admin, account["id"]) == []
        # Within the limits (or left blank: the account's own) is fine.
        r = c.post("/dashboard/keys", data={"name": "modest", "rpm": "30", "csrf_token": csrf})
        assert r.status_code == 201
        (key,) = admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"]
        assert (key["rpm"], key["tpm"], key["max_concurrent"]) == (30, 10_000, 4)
    finally:
        c.close()


def test_the_admin_api_clamps_a_key_to_its_accounts_limits(stack, admin):
    account = limited_account(admin, rpm=60, tpm=10_000)
    key = admin.key(account["id"], rpm=1_000_000, tpm=5_000)
    assert (key["rpm"], key["tpm"]) == (60, 5_000)


async def test_an_account_holds_a_bounded_number_of_keys(stack, admin):
    cap = stack.settings.max_keys_per_account
    account = admin.account(1)
    for i in range(cap - 10):
        admin.key(account["id"])
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.settings.admin_token}"}) as http:
        results = await asyncio.gather(*(http.post(f"/admin/accounts/{account['id']}/keys", json={"name": f"k{i}"})
                                         for i in range(20)))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 10 and codes.count(409) == 10, codes
    refused = next(r for r in results if r.status_code == 409).json()["error"]
    assert refused["code"] == "too_many_keys" and str(cap) in refused["message"]
    assert len(key_names(admin, account["id"])) == cap
    c, csrf = dashboard(stack, admin, account["id"])
    try:
        r = c.post("/dashboard/keys", data={"name": "one more", "csrf_token": csrf})
        assert r.status_code == 400 and "revoke" in r.text.lower()
    finally:
        c.close()
    assert len(key_names(admin, account["id"])) == cap


async def test_the_accounts_requests_per_minute_bound_all_its_keys_together(stack, admin):
    account = limited_account(admin, rpm=4)
    keys = [admin.key(account["id"])["key"] for _ in range(3)]
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        codes = [(await http.post(URL, json=chat(), headers=h(keys[i % 3]))).status_code for i in range(6)]
        assert codes == [200, 200, 200, 200, 429, 429], codes
        limited = await http.post(URL, json=chat(), headers=h(keys[2]))
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "account" in limited.json()["error"]["message"]


async def test_the_accounts_tokens_per_minute_bound_all_its_keys_and_settle_to_actual_use(stack, admin):
    account = limited_account(admin, tpm=2_000)
    a, b = (admin.key(account["id"])["key"] for _ in range(2))
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        # Admission charges the account the estimate (prompt + max_tokens), whichever key sends it...
        assert (await http.post(URL, json=chat(max_tokens=1_500), headers=h(a))).status_code == 200
        # ...and settlement corrects it to the tokens really used: another 1,500 fits again, on another key.
        await wait_settled(http, a, 1)
        slow = asyncio.create_task(http.post(URL, json=chat("output_tokens=40 delay_ms=300", max_tokens=1_500),
                                             headers=h(b)))
        while not (await http.get("/billing/credits", headers=h(a))).json()["held_micro"]:
            await asyncio.sleep(0.02)  # b's request is admitted and in flight
        # While it runs, key a (whose own bucket is nearly full) gets only what the account has left.
        over = await http.post(URL, json=chat(max_tokens=1_000), headers=h(a))
        assert over.status_code == 429 and over.json()["error"]["type"] == "tokens", over.text
        assert "account" in over.json()["error"]["message"]
        assert (await slow).status_code == 200


async def test_the_accounts_concurrency_bounds_all_its_keys_together(stack, admin):
    account = limited_account(admin, max_concurrent=2)
    keys = [admin.key(account["id"])["key"] for _ in range(4)]
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        results = await asyncio.gather(*[
            http.post(URL, json=chat("output_tokens=40 delay_ms=100"), headers=h(k)) for k in keys])
        assert sorted(r.status_code for r in results) == [200, 200, 429, 429]
