"""Credits end to end: the running stack, the openai SDK and httpx, checked against the billing API.

Prices of model "gemini": 50 credits per 1M input tokens and 300 per 1M output tokens
(thinking included), i.e. 50 and 300 micro-credits per token. A request holds its worst case (its
prompt's upper bound and every output token it may ask for), never less than the 5-credit base
cost; where the account has less available, its output is clamped to what the hold covers.
The simulator's token counts are exact, so every charge here is known to the micro-credit.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid

import httpx
import openai
import pytest
import redis
from openai import AsyncOpenAI

from shared.admission import plan_hold
from shared.catalog import get_catalog
from shared.keys import AccountKeys
from shared.protocol import parse_chat_request

M = 1_000_000
BASE = 5 * M  # the model's base cost: the least any request holds
IN_PRICE, OUT_PRICE = 50 * M, 300 * M  # micro-credits per 1M tokens


def cost_micro(prompt_tokens: int, completion_tokens: int) -> int:
    """README's rule: ceil((prompt * input + completion * output) / 1M), one rounding per request."""
    return -(-(prompt_tokens * IN_PRICE + completion_tokens * OUT_PRICE) // 1_000_000)


def worst_case_hold(text: str, **fields) -> int:
    """What a request with this one user message holds when the account can cover it (README: the hold)."""
    body = {"model": "gemini", "messages": [{"role": "user", "content": text}], **fields}
    return plan_hold(parse_chat_request(body).model_dump(exclude_none=True, by_alias=True), get_catalog().models["gemini"], 256, 1_000_000).worst_micro


def sim_prompt_tokens(text: str) -> int:
    return -(-len(text) // 4)


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client


def sdk(stack, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)


async def credits(http: httpx.AsyncClient, key: str) -> dict:
    r = await http.get("/billing/credits", headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()


async def listing(http: httpx.AsyncClient, path: str, api_key: str, /, **params) -> dict:
    r = await http.get(path, params={"limit": 100, **params}, headers=auth(api_key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and isinstance(body["has_more"], bool)
    return body


async def everything(http: httpx.AsyncClient, path: str, api_key: str, /, **params) -> list[dict]:
    """All rows of a paginated billing list, newest first."""
    rows: list[dict] = []
    after = None
    while True:
        page = await listing(http, path, api_key, **params, **({"after": after} if after else {}))
        rows += page["data"]
        if not page["has_more"]:
            return rows
        after = page["data"][-1]["id"]


async def settled(http: httpx.AsyncClient, key: str, usage_rows: int, timeout: float = 3.0) -> list[dict]:
    """Usage rows once ``usage_rows`` requests have settled and no hold is open (contract: within 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await everything(http, "/billing/usage", key)
        held = (await credits(http, key))["held_micro"]
        if (len(rows) >= usage_rows and held == 0) or time.monotonic() > deadline:
            assert held == 0, f"holds still open after {timeout}s: {held}"
            assert len(rows) == usage_rows, rows
            return rows
        await asyncio.sleep(0.05)


async def state(http: httpx.AsyncClient, key: str) -> tuple[dict, list[dict], list[dict]]:
    return (await credits(http, key), await everything(http, "/billing/ledger", key),
            await everything(http, "/billing/usage", key))


# --- the charge -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_charge_is_usage_times_prices_and_matches_the_billing_api(stack, http, funded, stream):
    _, key = funded
    text = "Please explain the ledger to me. [[sim output_tokens=123 thinking_tokens=45]]"
    before = await credits(http, key)
    client = sdk(stack, key)
    if stream:
        usage, request_id = None, None
        async for chunk in await client.chat.completions.create(
                model="gemini", messages=[{"role": "user", "content": text}], stream=True,
                stream_options={"include_usage": True}):
            request_id = chunk.id
            if chunk.usage:
                usage = chunk.usage  # the final usage chunk carries credits_charged
    else:
        r = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": text}])
        usage, request_id = r.usage, r.id

    assert usage.prompt_tokens == sim_prompt_tokens(text)
    assert usage.completion_tokens == 123 + 45 and usage.completion_tokens_details.reasoning_tokens == 45
    expected = cost_micro(usage.prompt_tokens, usage.completion_tokens)
    assert expected == usage.prompt_tokens * 50 + 168 * 300  # these prices are whole micro-credits per token
    assert usage.model_extra["credits_charged"] == expected / M

    [row] = await settled(http, key, 1)
    after = await credits(http, key)
    assert before["balance_micro"] - after["balance_micro"] == expected
    assert after["available_micro"] == after["balance_micro"]
    assert row["request_id"] == request_id and row["status"] == "succeeded" and row["model"] == "gemini"
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (usage.prompt_tokens, 168, 45)
    assert row["charged_micro"] == expected and row["hold_micro"] == worst_case_hold(text)
    assert row["hold_micro"] > 19 * M  # no max_tokens: the model's 65,536 output tokens at 300 per 1M
    entry = (await listing(http, "/billing/ledger", key))["data"][0]
    assert (entry["amount"], entry["reason"], entry["ref"]) == (-expected, "charge", request_id)
    assert entry["balance"] == after["balance_micro"]


async def test_an_answer_dearer_than_its_hold_never_drives_the_balance_below_zero(stack, http, admin):
    """Issue 15 item 4: settlement charges at most the hold (it used to take the balance negative by
    the overage), so usage never drives a balance below zero; the next request is a 402."""
    _, key = admin.account_with_key(5)
    client = sdk(stack, key)
    r = await client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "long [[sim output_tokens=20000 thinking_tokens=0]]"}])
    [row] = await settled(http, key, 1)
    assert row["charged_micro"] <= row["hold_micro"] == BASE  # all it had: the worst case was clamped
    assert row["charged_micro"] <= cost_micro(r.usage.prompt_tokens, r.usage.completion_tokens)
    bal = await credits(http, key)
    assert bal["balance_micro"] == BASE - row["charged_micro"] >= 0
    before = await state(http, key)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 402
    assert await state(http, key) == before


# --- refusals -------------------------------------------------------------------------------------
async def test_402_below_the_hold_with_balance_and_ledger_untouched(stack, http, admin):
    _, key = admin.account_with_key(4.999999)
    before = await state(http, key)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(stack, key).chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 402
    assert info.value.body["code"] == "insufficient_quota" and info.value.body["type"] == "insufficient_quota"
    r = await http.post("/api/v1/chat/completions", headers=auth(key), json={
        "model": "gemini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota"
    await asyncio.sleep(0.2)
    assert await state(http, key) == before
    assert before[0]["balance_micro"] == 4_999_999 and before[2] == []


async def test_402_counts_open_holds_not_just_the_balance(stack, http, admin):
    _, key = admin.account_with_key(9)  # one hold fits, a second does not while the first runs
    client = sdk(stack, key)
    slow = asyncio.create_task(client.chat.completions.create(
        model="gemini", max_tokens=100,  # a small worst case: it holds the base cost
        messages=[{"role": "user", "content": "slow [[sim output_tokens=24 delay_ms=300]]"}]))
    deadline = time.monotonic() + 5
    while (await credits(http, key))["held_micro"] != BASE:
        assert time.monotonic() < deadline and not slow.done()
        await asyncio.sleep(0.01)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 402
    r = await slow
    [row] = await settled(http, key, 1)
    assert row["request_id"] == r.id
    assert (await credits(http, key))["balance_micro"] == 9 * M - cost_micro(r.usage.prompt_tokens,
                                                                             r.usage.completion_tokens)


# --- failures are refunded ------------------------------------------------------------------------
async def assert_refunded(http, key: str, before: tuple, request_id: str | None) -> None:
    [row] = await settled(http, key, 1)
    bal, ledger, _ = await state(http, key)
    assert bal["balance_micro"] == before[0]["balance_micro"] and bal["held_micro"] == 0
    assert ledger == before[1]  # a refunded hold is no balance change
    assert row["status"] == "failed" and row["charged_micro"] == 0
    assert row["prompt_tokens"] == 0 and row["completion_tokens"] == 0
    if request_id:
        assert row["request_id"] == request_id


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_provider_error_before_output_is_refunded(stack, http, funded, stream):
    _, key = funded
    before = await state(http, key)
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(stack, key).chat.completions.create(
            model="gemini", messages=[{"role": "user", "content": "hi [[sim error=500]]"}], stream=stream)
    assert info.value.status_code == 502
    await assert_refunded(http, key, before, None)


async def test_provider_error_mid_stream_is_refunded(stack, http, funded):
    _, key = funded
    before = await state(http, key)
    stream = await sdk(stack, key).chat.completions.create(
        model="gemini",
        messages=[{"role": "user", "content": "hi [[sim output_tokens=80 thinking_tokens=0 fail_after=2]]"}],
        stream=True, stream_options={"include_usage": True})
    request_id, got = None, 0
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            request_id, got = chunk.id, got + 1
    assert got >= 1  # output had begun before the failure
    await assert_refunded(http, key, before, request_id)


async def test_client_disconnect_mid_stream_is_billed_once_for_what_was_produced(stack, http, funded, admin):
    account, key = funded
    text = "tell me a long story [[sim output_tokens=400 thinking_tokens=0 delay_ms=50]]"
    full_cost = cost_micro(sim_prompt_tokens(text), 400)
    before = await credits(http, key)
    chunks = 0
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as own:
        async with own.stream("POST", "/api/v1/chat/completions", headers=auth(key), json={
                "model": "gemini", "stream": True, "messages": [{"role": "user", "content": text}]}) as r:
            assert r.status_code == 200
            request_id = None
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    request_id = request_id or json.loads(line[6:])["id"]  # the id the usage row carries
                if chunks == 4:
                    break  # leave: the connection closes with the stream half read
    [row] = await settled(http, key, 1, timeout=5)
    await asyncio.sleep(0.5)  # a late second settlement would show up here
    rows = await everything(http, "/billing/usage", key)
    after = await credits(http, key)
    assert len(rows) == 1
    assert row["request_id"] == request_id and row["status"] == "cancelled"
    charged = row["charged_micro"]
    assert 0 < charged < full_cost
    assert charged == cost_micro(row["prompt_tokens"], row["completion_tokens"]) and row["completion_tokens"] < 400
    assert before["balance_micro"] - after["balance_micro"] == charged
    charges = [e for e in await everything(http, "/billing/ledger", key) if e["ref"] == request_id]
    assert [e["amount"] for e in charges] == [-charged]
    report = next(a for a in admin.audit()["data"] if a["account_id"] == account["id"])
    assert report["ok"], report


# --- concurrency ----------------------------------------------------------------------------------
async def test_a_thousand_concurrent_requests_never_overdraw(stack, http, admin):
    account, key = admin.account_with_key(37 * 5 + 0.5)  # 37 holds and a little
    start = await credits(http, key)
    body = {"model": "gemini", "stream": False, "max_tokens": 100,  # a small worst case: each holds the base cost
            "messages": [{"role": "user", "content": "hi [[sim output_tokens=24 thinking_tokens=0 delay_ms=300]]"}]}
    samples: list[tuple[int, int, int]] = []
    done = threading.Event()

    def watch() -> None:
        """Samples balance, held and open holds atomically (MULTI), from a thread of its own."""
        r = redis.Redis.from_url(stack.settings.redis_url)
        k = AccountKeys(account["id"])
        try:
            while not done.is_set():
                with r.pipeline(transaction=True) as pipe:
                    (balance, held), holds = pipe.hmget(k.account, "balance", "held").hlen(k.holds).execute()
                samples.append((int(balance), int(held), holds))
                time.sleep(0.002)
        finally:
            r.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # httpx's connection pool scans every connection per request: ten clients of 100 connections
    # each send the same 1,000 requests at once in a fraction of one client's CPU time.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    clients = [httpx.AsyncClient(base_url=stack.base_url, timeout=60, limits=limits, headers=auth(key))
               for _ in range(10)]
    t0 = time.monotonic()
    try:
        responses = await asyncio.gather(*(clients[i % 10].post("/api/v1/chat/completions", json=body)
                                           for i in range(1000)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    elapsed = time.monotonic() - t0
    rows = await settled(http, key, sum(r.status_code == 200 for r in responses), timeout=5)
    done.set()
    watcher.join(5)

    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402}, statuses
    ok = [r.json() for r in responses if r.status_code == 200]
    assert len(ok) >= 37 and statuses[402] > 0, statuses  # the first 37 fit; the account was saturated
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in responses if r.status_code == 402)
    assert len(samples) > 20 and elapsed < 60, (len(samples), elapsed)
    assert min(balance - held for balance, held, _ in samples) >= 0  # available never went negative
    assert max(holds for _, _, holds in samples) <= 37  # never more requests in flight than holds fit
    assert all(held == holds * BASE for _, held, holds in samples)

    end = await credits(http, key)
    charges = {r["id"]: cost_micro(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) for r in ok}
    assert sorted(row["request_id"] for row in rows) == sorted(charges)
    assert all(row["status"] == "succeeded" and row["charged_micro"] == charges[row["request_id"]] for row in rows)
    assert start["balance_micro"] - end["balance_micro"] == sum(charges.values())
    assert end["held_micro"] == 0 and end["available_micro"] >= 0
    assert len(await everything(http, "/billing/ledger", key)) == 1 + len(ok)
    report = next(a for a in admin.audit()["data"] if a["account_id"] == account["id"])
    assert report["ok"], report


# --- top-ups and orders ---------------------------------------------------------------------------
async def test_topups_are_idempotent_per_reference_and_listed_as_orders(http, admin):
    account, key = admin.account_with_key(10)
    url = f"/admin/accounts/{account['id']}/topups"
    ref = "pay_" + uuid.uuid4().hex
    first = admin.http.post(url, json={"credits": 7.5, "reference": ref})
    again = admin.http.post(url, json={"credits": 7.5, "reference": ref})
    other = admin.http.post(url, json={"credits": 1, "reference": ref + "-2"})

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json() == first.json() and other.json()["id"] != first.json()["id"]
    assert first.json()["amount_micro"] == 7_500_000 and first.json()["reference"] == ref
    assert (await credits(http, key))["balance_micro"] == (10 + 7.5 + 1) * M
    orders = await everything(http, "/billing/orders", key)
    assert [o["id"] for o in orders[:2]] == [other.json()["id"], first.json()["id"]]  # newest first
    assert len(orders) == 3 and orders[2]["kind"] == "initial"
    ledger = await everything(http, "/billing/ledger", key)
    assert [(e["amount"], e["reason"], e["ref"]) for e in ledger[:2]] == [
        (1 * M, "topup", ref + "-2"), (7_500_000, "topup", ref)]
    page = await listing(http, "/billing/orders", key, limit=1)
    assert page["has_more"] and len(page["data"]) == 1
    for bad in ({"credits": 0, "reference": "x"}, {"credits": 1}, {"credits": 1, "reference": ""}):
        assert admin.http.post(url, json=bad).status_code == 400
    assert admin.http.post("/admin/accounts/acct_nope/topups", json={"credits": 1, "reference": "x"}).status_code == 404


# --- usage logs: filters and pagination -----------------------------------------------------------
async def test_usage_filters_and_pagination(stack, http, admin, funded):
    account, key_a = funded
    key_b = admin.key(account["id"])
    key_a_id = next(k for k in admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"]
                    if k["id"] != key_b["id"])["id"]
    ask = [{"role": "user", "content": "hi [[sim output_tokens=8 thinking_tokens=0]]"}]
    r1 = await sdk(stack, key_a).chat.completions.create(model="gemini", messages=ask)
    await settled(http, key_a, 1)
    since = int(time.time()) + 1  # the next second: only later settlements are at or after it
    await asyncio.sleep(since - time.time() + 0.01)
    r2 = await sdk(stack, key_b["key"]).chat.completions.create(model="gemini", messages=ask)
    r3 = await sdk(stack, key_a).chat.completions.create(model="gemini", messages=ask)
    await settled(http, key_a, 3)

    async def ids(**params) -> list[str]:
        return [row["request_id"] for row in await everything(http, "/billing/usage", key_a, **params)]

    assert await ids() == [r3.id, r2.id, r1.id]  # newest first, whichever key of the account reads
    assert await ids(since=since) == [r3.id, r2.id]
    assert await ids(since=since + 3600) == []
    assert await ids(key=key_a_id) == [r3.id, r1.id]
    assert await ids(key=key_b["id"]) == [r2.id]
    assert await ids(model="gemini") == [r3.id, r2.id, r1.id]
    assert await ids(model="no-such-model") == []
    # Pagination, alone and with filters: every page but the last says has_more.
    for params, expected in [({}, [r3.id, r2.id, r1.id]), ({"key": key_a_id}, [r3.id, r1.id]),
                             ({"since": since}, [r3.id, r2.id])]:
        pages, after = [], None
        while True:
            cursor = {"after": after} if after else {}
            page = await listing(http, "/billing/usage", key_a, limit=1, **params, **cursor)
            pages.append(([row["request_id"] for row in page["data"]], page["has_more"]))
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        assert pages == [([rid], rid != expected[-1]) for rid in expected], params
    page = await listing(http, "/billing/usage", key_a, limit=2)
    assert len(page["data"]) == 2 and page["has_more"]
    # Another account sees none of it.
    _, stranger = admin.account_with_key(1)
    assert (await listing(http, "/billing/usage", stranger))["data"] == []
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"since": "yesterday"}):
        r = await http.get("/billing/usage", params=bad, headers=auth(key_a))
        assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), r.text


@pytest.mark.parametrize("after", ["garbage", "0-0", "1-", "-1-0", "99999999999999999999-0", "١-١"])
async def test_a_malformed_page_cursor_is_a_400_not_a_503(http, funded, after):
    _, key = funded
    for path in ("/billing/usage", "/billing/ledger", "/billing/orders"):
        r = await http.get(path, params={"after": after}, headers=auth(key))
        assert r.status_code == 400 and r.json()["error"]["param"] == "after", (path, r.status_code, r.text)


async def test_billing_api_needs_a_valid_key(http):
    for path in ("/billing/credits", "/billing/usage", "/billing/ledger", "/billing/orders"):
        assert (await http.get(path)).status_code == 401
        assert (await http.get(path, headers=auth("aio_nope"))).status_code == 401


# --- last: the books balance for every account the suite touched ---------------------------------
async def test_admin_audit_is_clean_at_the_end(http, admin):
    deadline = time.monotonic() + 3
    while True:
        audit = admin.audit()
        if audit["ok"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert audit["ok"], [a for a in audit["data"] if not a["ok"]]
    assert audit["data"] and all(a["balance_micro"] == a["ledger_sum_micro"] for a in audit["data"])
    assert (await http.get("/admin/audit", headers=auth("wrong"))).status_code == 401
