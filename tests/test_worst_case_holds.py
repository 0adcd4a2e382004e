"""Issue 15 item 4: a request can never produce more than its account can pay.

It holds its worst case (prompt bound + every output token it may ask for); where the account has
less available, the hold is what it has and the worker clamps the output to it (thinking cut
first); below a floor (the base cost, and the prompt with 256 output tokens) it is a 402.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from shared.admission import plan_hold
from shared.pricing import PPM, affordable_output_tokens, worst_case_micro
from shared.catalog import get_catalog
from shared.protocol import parse_chat_request
from worker.chat_job import clamp_to_hold

M = 1_000_000
MODEL = get_catalog().models["gemini"]


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def settled_rows(http: httpx.AsyncClient, key: str, count: int) -> list[dict]:
    for _ in range(60):
        rows = (await http.get("/billing/usage", params={"limit": 100}, headers=auth(key))).json()["data"]
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} usage rows did not arrive")


async def test_concurrent_large_requests_never_overdraw(stack, admin):
    """The attack: 10 credits, 4 concurrent answers of 12 credits each (it ended at -26 credits when
    every request held only the base cost). Now: never below zero, charges within the holds, and an
    answer the balance cannot cover in full is cut at what it does cover."""
    account, key = admin.account_with_key(10)
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    text = "write a lot [[sim output_tokens=40000 thinking_tokens=0]]"  # 12 credits of output
    results = await asyncio.gather(*(client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": text}]) for _ in range(4)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(ok) + len(refused) == 4 and ok, results
    assert all(e.status_code == 402 for e in refused)
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        rows = await settled_rows(http, key, len(ok))
        balance = (await http.get("/billing/credits", headers=auth(key))).json()
    assert all(row["charged_micro"] <= row["hold_micro"] for row in rows)
    assert sum(row["charged_micro"] for row in rows) <= 10 * M
    assert balance["balance_micro"] >= 0 and balance["held_micro"] == 0
    assert any(r.choices[0].finish_reason == "length" for r in ok), "the clamp cut the answer short"
    report = next(a for a in admin.audit()["data"] if a["account_id"] == account["id"])
    assert report["ok"], report


async def test_a_clamped_request_thinks_less_and_still_answers(stack, admin):
    _, key = admin.account_with_key(6)  # covers ~19,000 output tokens, not the model's 65,536
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    full = await client.chat.completions.create(model="gemini", max_tokens=500,
                                                messages=[{"role": "user", "content": "hello"}])
    clamped = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hello"}])
    assert full.usage.completion_tokens_details.reasoning_tokens > \
        clamped.usage.completion_tokens_details.reasoning_tokens > 0, "thinking was cut first"
    assert clamped.choices[0].message.content, "and the answer still came"


async def test_below_the_floor_is_402_and_nothing_moves(stack, admin):
    """Enough for the base cost, not for this prompt with a minimal answer: refused before any work."""
    account, key = admin.account_with_key(5.5)
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    big = "word " * 50_000  # its bound is 125,000 tokens: 6.25 credits of input alone
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": big}])
    assert info.value.status_code == 402 and "needs at least" in info.value.message
    assert admin.get_account(account["id"])["balance_micro"] == 5_500_000
    r = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "short"}])
    assert r.choices[0].message.content  # a request within the balance still runs


def test_the_hold_plan_and_the_clamp_agree():
    """Whatever the hold, a prompt within its bound and the clamped output cost at most the hold."""
    req = parse_chat_request({"model": "gemini", "messages": [{"role": "user", "content": "ab" * 300}]})
    plan = plan_hold(req.model_dump(exclude_none=True, by_alias=True), MODEL, 256, PPM)

    def cost(output: int) -> int:
        return worst_case_micro(MODEL.prices, PPM, plan.prompt_bound_tokens, output)

    assert plan.floor_micro == max(MODEL.base_cost_micro, cost(256))
    assert plan.worst_micro == cost(MODEL.max_output_tokens)
    for hold in (plan.floor_micro, 7_777_777, plan.worst_micro):
        allowed = affordable_output_tokens(MODEL.prices, PPM, hold, plan.prompt_bound_tokens, MODEL.max_output_tokens)
        assert cost(allowed) <= hold
        assert cost(allowed + 1) > hold or allowed == MODEL.max_output_tokens
        job = {"hold_micro": hold, "prompt_bound_tokens": plan.prompt_bound_tokens,
               "body": req.model_dump(exclude_none=True)}
        body = clamp_to_hold(job, MODEL)
        if allowed < MODEL.max_output_tokens:
            assert body["max_completion_tokens"] == allowed
            assert body["reasoning_effort"] == ("low" if allowed >= 4096 else "none")
        else:
            assert body is job["body"]
