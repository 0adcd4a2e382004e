"""The chat path end to end: openai SDK -> gateway -> node queue -> worker -> simulator -> SSE."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import wait_settled

PRODUCT_PAGE_BODY = {
    "model": "gemini",
    "messages": [{"role": "user", "content": "Explain quantum computing in simple terms."}],
    "stream": False,
    "include_thoughts": True,
}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


async def test_non_stream_completion_with_thinking_and_usage(client: AsyncOpenAI):
    r = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Hello"}])
    msg = r.choices[0].message
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert msg.content and r.choices[0].finish_reason == "stop"
    assert msg.model_extra["reasoning_content"]
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    assert r.usage.completion_tokens > r.usage.completion_tokens_details.reasoning_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.model_extra["credits_charged"] > 0


async def test_stream_relays_thinking_then_answer_then_usage(client: AsyncOpenAI):
    stream = await client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi [[sim output_tokens=40 thinking_tokens=16]]"}],
        stream=True, stream_options={"include_usage": True})
    reasoning, content, finish, usage = "", "", None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        if delta.content:
            assert reasoning, "thinking comes before the answer"
            content += delta.content
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning and content and finish == "stop"
    assert usage.completion_tokens == 56 and usage.completion_tokens_details.reasoning_tokens == 16
    assert usage.model_extra["credits_charged"] > 0


async def test_thinking_off_returns_no_text_but_bills_thinking(client: AsyncOpenAI):
    r = await client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi [[sim output_tokens=10 thinking_tokens=24]]"}],
        extra_body={"include_thoughts": False})
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
    assert r.usage.completion_tokens_details.reasoning_tokens == 24
    assert r.usage.completion_tokens == 34


def test_sync_sdk_stream_and_not(stack, funded):
    client = OpenAI(base_url=stack.base_url + "/api/v1", api_key=funded[1], max_retries=0)
    r = client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Hello"}])
    assert r.choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hello"}], stream=True) if c.choices)
    assert text


def test_product_page_curl_example(stack, funded):
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", json=PRODUCT_PAGE_BODY, headers=auth(funded[1]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["choices"][0]["message"]["content"]
    # The same body with "stream": true is SSE ending in [DONE].
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", json={**PRODUCT_PAGE_BODY, "stream": True},
                   headers=auth(funded[1]))
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("accept,expect_sse", [
    ("application/json", False),  # the openai SDKs
    ("*/*", False),  # the Vercel AI SDK's generateText
    ("text/event-stream", True),
])
def test_absent_stream_follows_accept(stack, funded, accept, expect_sse):
    body = {k: v for k, v in PRODUCT_PAGE_BODY.items() if k != "stream"}
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", json=body,
                   headers={**auth(funded[1]), "Accept": accept})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream") is expect_sse


def test_models_list_and_object(stack, funded):
    h = auth(funded[1])
    listing = httpx.get(stack.base_url + "/api/v1/models", headers=h).json()
    assert listing["object"] == "list"
    gemini = next(m for m in listing["data"] if m["id"] == "gemini")
    assert gemini["object"] == "model" and gemini["base_cost_credits"] == 5
    assert gemini["context_window"] >= 128_000 and gemini["endpoint"] == "/api/v1/chat/completions"
    assert httpx.get(stack.base_url + "/api/v1/models/gemini", headers=h).json()["id"] == "gemini"
    missing = httpx.get(stack.base_url + "/api/v1/models/nope", headers=h)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


# --- errors -----------------------------------------------------------------------------------------
def test_missing_and_bad_keys_are_401(stack):
    url = stack.base_url + "/api/v1/chat/completions"
    r = httpx.post(url, json=PRODUCT_PAGE_BODY)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(url, json=PRODUCT_PAGE_BODY, headers=auth("aio_not_a_real_key"))
    assert r.status_code == 401


@pytest.mark.parametrize("patch,param", [
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": "1"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"temperature": 3}, "temperature"),
    ({"model": None}, "model"),
])
def test_bad_bodies_are_400_naming_the_param(stack, funded, patch, param):
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", json={**PRODUCT_PAGE_BODY, **patch},
                   headers=auth(funded[1]))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_invalid_json_unknown_model_and_too_large(stack, funded):
    url = stack.base_url + "/api/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers=auth(funded[1]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, json={**PRODUCT_PAGE_BODY, "model": "gpt-9"}, headers=auth(funded[1]))
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    huge = {**PRODUCT_PAGE_BODY, "messages": [{"role": "user", "content": "x" * (11 * 1024 * 1024)}]}
    r = httpx.post(url, json=huge, headers=auth(funded[1]))
    assert r.status_code == 413 and "error" in r.json()


async def test_provider_429_is_429_with_retry_after(stack, funded):
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", headers=auth(funded[1]), timeout=30, json={
        **PRODUCT_PAGE_BODY, "messages": [{"role": "user", "content": "hi [[sim error=429]]"}]})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "upstream_rate_limited"


@pytest.mark.parametrize("status,expected", [(500, 502), (503, 503), (400, 400)])
async def test_provider_errors_map_to_openai_statuses(client: AsyncOpenAI, status, expected):
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="gemini", messages=[{"role": "user", "content": f"hi [[sim error={status}]]"}])
    assert info.value.status_code == expected


async def test_mid_stream_failure_raises_in_the_sdk(client: AsyncOpenAI):
    stream = await client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "hi [[sim output_tokens=80 fail_after=3]]"}],
        stream=True)
    got = 0
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            got += 1
    assert got >= 1  # some output arrived, then an error event, never a silent truncation


async def test_revoked_key_stops_at_once(stack, admin, funded):
    account, _ = funded
    key = admin.key(account["id"])
    c = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key["key"], max_retries=0)
    await c.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert admin.http.delete(f"/admin/keys/{key['id']}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        await c.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])


async def test_usage_rows_are_written(stack, client, funded):
    await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hello"}])
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        rows = await wait_settled(http, funded[1], 1)
    assert rows[0]["status"] == "succeeded" and rows[0]["charged_micro"] > 0 and rows[0]["model"] == "gemini"


async def test_a_left_non_stream_request_runs_to_its_end_and_is_billed_once(stack, funded):
    """One answer is one upstream call, generated (and billed by the provider) whole: a client that
    leaves does not interrupt it, and is billed for it exactly once."""
    key = funded[1]
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/api/v1/chat/completions", headers=auth(key), json={
                "model": "gemini", "stream": False,
                "messages": [{"role": "user", "content": "hi [[sim output_tokens=40 thinking_tokens=8 delay_ms=150]]"}]})
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        rows = await wait_settled(http, key, 1, timeout=5)
    assert len(rows) == 1 and rows[0]["status"] == "cancelled"
    assert rows[0]["completion_tokens"] == 48 and rows[0]["charged_micro"] > 0
