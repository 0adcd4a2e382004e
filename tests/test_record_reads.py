"""A tenant flooding history reads (gateway/record_reads.py): past its few record reads at once on a gateway it gets
429s with Retry-After, answered without Postgres, and another account's page is served meanwhile."""

from __future__ import annotations

import asyncio

import httpx


async def test_one_accounts_flood_of_history_reads_is_bounded_and_another_account_is_served(stack, admin):
    _a, key_a = admin.account_with_key(10)
    _b, key_b = admin.account_with_key(10)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30,
                                 limits=httpx.Limits(max_connections=100)) as http:
        async def page(key: str, path: str = "/billing/usage") -> httpx.Response:
            return await http.get(path, headers={"Authorization": f"Bearer {key}"})

        flood = [asyncio.create_task(page(key_a, "/billing/ledger" if i % 2 else "/billing/usage")) for i in range(60)]
        await asyncio.sleep(0)
        other = await page(key_b)
        answers = await asyncio.gather(*flood)
    assert other.status_code == 200, other.text
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await asyncio.to_thread(httpx.get, stack.base_url + "/billing/usage",
                                    headers={"Authorization": f"Bearer {key_a}"})).status_code == 200  # slots back


async def test_the_dashboards_history_pages_share_the_accounts_bound(stack, admin):
    import re
    import time

    account, _key = admin.account_with_key(10)
    _b, key_b = admin.account_with_key(10)
    email, password = f"reader-{time.time_ns()}@example.com", "a long enough password"
    assert admin.http.post("/admin/users", json={"email": email, "password": password, "role": "user",
                                                 "account_id": account["id"]}).status_code == 201
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30, follow_redirects=False,
                                 limits=httpx.Limits(max_connections=100)) as web:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', (await web.get("/dashboard/login")).text).group(1)
        assert (await web.post("/dashboard/login", data={"email": email, "password": password,
                                                         "csrf_token": csrf})).status_code == 303
        flood = [asyncio.create_task(web.get("/dashboard/usage" if i % 2 else "/dashboard/credits"))
                 for i in range(60)]
        await asyncio.sleep(0)
        other = await asyncio.to_thread(httpx.get, stack.base_url + "/billing/usage",
                                        headers={"Authorization": f"Bearer {key_b}"})
        answers = await asyncio.gather(*flood)
    assert other.status_code == 200
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    refused = next(r for r in answers if r.status_code == 429)  # a page, as the dashboard's errors are
    assert refused.headers["Retry-After"] == "1" and "text/html" in refused.headers["Content-Type"]
