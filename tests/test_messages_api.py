"""Anthropic's Messages API (issue 21 item 2) with the unmodified anthropic SDK, pointed at the stack by
``base_url`` only: ``messages.create``, ``messages.stream``, a tool loop with thinking on (signatures carried
across turns), ``count_tokens``, and errors in Anthropic's shape. Every request is billed once, its usage row
names the API, and the audit is clean."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from shared.signatures import SIGNATURE_MARK, SKIP_SIGNATURE
from tests.conftest import wait_settled

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
THINK = {"type": "enabled", "budget_tokens": 2048}


@pytest.fixture
def claude(stack, funded) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=stack.base_url + "/api", api_key=funded[1], max_retries=0)


@pytest.fixture
def http(stack, funded) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {funded[1]}"}, timeout=30)


def say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_create_answers_a_message_billed_once(claude: AsyncAnthropic, http, funded):
    m = await claude.messages.create(model="gemini", max_tokens=512, messages=say("hi [[sim output_tokens=9]]"),
                                     system="be brief")
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "end_turn"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.usage.output_tokens >= 9 and m.usage.input_tokens > 0
    assert m.usage.model_extra["credits_charged"] > 0
    rows = await wait_settled(http, funded[1], 1)
    assert len(rows) == 1 and rows[0]["api"] == "messages" and rows[0]["status"] == "succeeded"


async def test_thinking_blocks_with_budget(claude: AsyncAnthropic):
    m = await claude.messages.create(model="gemini", max_tokens=4096, thinking=THINK,
                                     messages=say("hi [[sim thinking_tokens=11 output_tokens=5]]"))
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking and m.content[0].signature == SKIP_SIGNATURE
    assert m.usage.output_tokens == 16


async def test_stream_event_sequence(claude: AsyncAnthropic):
    async with claude.messages.stream(model="gemini", max_tokens=4096, thinking=THINK,
                                      messages=say("hi [[sim thinking_tokens=10 output_tokens=20]]")) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    raw = [k for k in kinds if k not in ("text", "thinking", "signature", "input_json")]  # the helper's own events
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == 2 and raw.count("content_block_stop") == 2
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].signature
    assert final.usage.output_tokens == 30 and final.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_tool_loop_with_thinking_carries_signatures(claude: AsyncAnthropic, stream):
    """Claude Code's loop: the assistant turn goes back whole (thinking with its signature, tool_use), then
    tool_result blocks; Gemini 3 checks the call's signature on every follow-up (the simulator does)."""
    messages = say("weather in Oslo and Rome? [[sim tool_calls=2]]")

    async def turn():
        kw = dict(model="gemini", max_tokens=4096, thinking=THINK, tools=[WEATHER], messages=messages)
        if not stream:
            return await claude.messages.create(**kw)
        async with claude.messages.stream(**kw) as s:
            return await s.get_final_message()

    for round_, n_calls in enumerate((2, 1)):
        m = await turn()
        assert m.stop_reason == "tool_use"
        kinds = [b.type for b in m.content]
        assert kinds == ["thinking"] + ["tool_use"] * n_calls
        calls = [b for b in m.content if b.type == "tool_use"]
        assert SIGNATURE_MARK in calls[0].id and m.content[0].signature not in ("", SKIP_SIGNATURE)
        assert all(c.input.get("city") for c in calls)
        messages = messages + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id,
                                                             "content": "sunny"} for c in calls]}]
        m = await turn()
        assert m.stop_reason == "end_turn" and m.content[-1].type == "text"
        messages = messages + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                               {"role": "user", "content": "and tomorrow? [[sim tool_calls=1]]"}]


async def test_a_rewritten_tool_id_gets_its_signature_from_the_thinking_block(claude: AsyncAnthropic):
    m = await claude.messages.create(model="gemini", max_tokens=4096, thinking=THINK, tools=[WEATHER],
                                     messages=say("weather? [[sim tool_calls=1]]"))
    thinking, call = m.content[0], m.content[1]
    history = say("weather? [[sim tool_calls=1]]") + [
        {"role": "assistant", "content": [thinking.model_dump(), {**call.model_dump(), "id": "toolu_rewritten"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_rewritten", "content": "ok"}]}]
    ok = await claude.messages.create(model="gemini", max_tokens=4096, thinking=THINK, tools=[WEATHER],
                                      messages=history)
    assert ok.stop_reason == "end_turn"
    tampered = {**thinking.model_dump(), "signature": "AAAA" + thinking.signature[4:]}
    history[1]["content"][0] = tampered
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model="gemini", max_tokens=4096, tools=[WEATHER], messages=history)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("choice,stop", [({"type": "any"}, "tool_use"), ({"type": "none"}, "end_turn"),
                                         ({"type": "tool", "name": "get_weather"}, "tool_use"),
                                         ({"type": "auto"}, "tool_use")])
async def test_tool_choice(claude: AsyncAnthropic, choice, stop):
    m = await claude.messages.create(model="gemini", max_tokens=512, tools=[WEATHER], tool_choice=choice,
                                     messages=say("weather?"))
    assert m.stop_reason == stop


async def test_tool_choice_any_calls_again_after_a_tool_result(claude: AsyncAnthropic):
    m = await claude.messages.create(model="gemini", max_tokens=512, tools=[WEATHER], tool_choice={"type": "any"},
                                     messages=say("go"))
    call = next(b for b in m.content if b.type == "tool_use")
    again = await claude.messages.create(
        model="gemini", max_tokens=512, tools=[WEATHER], tool_choice={"type": "any"},
        messages=say("go") + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                            "content": "ok"}]}])
    assert again.stop_reason == "tool_use"


async def test_images_stop_sequences_and_max_tokens(claude: AsyncAnthropic):
    m = await claude.messages.create(model="gemini", max_tokens=5, messages=say("long [[sim output_tokens=90]]"))
    assert m.stop_reason == "max_tokens"
    with pytest.raises(anthropic.BadRequestError) as info:  # the bundled model takes text only
        await claude.messages.create(model="gemini", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "what is it?"}]}])
    assert "image" in info.value.message


async def test_count_tokens_is_free(claude: AsyncAnthropic, http, funded):
    before = (await http.get("/billing/credits")).json()["balance_micro"]
    n = await claude.messages.count_tokens(model="gemini", messages=say("count these words please"),
                                           system="be brief", tools=[WEATHER])
    assert n.input_tokens > 5
    rows = await wait_settled(http, funded[1], 1)
    assert rows[0]["api"] == "messages" and rows[0]["finish_reason"] == "count_tokens" and rows[0]["charged_micro"] == 0
    assert (await http.get("/billing/credits")).json()["balance_micro"] == before


async def test_count_tokens_counts_against_requests_per_minute(stack, admin):
    _, key = admin.account_with_key(10, rpm=2)
    claude = AsyncAnthropic(base_url=stack.base_url + "/api", api_key=key, max_retries=0)
    for _ in range(2):
        await claude.messages.count_tokens(model="gemini", messages=say("x"))
    with pytest.raises(anthropic.RateLimitError) as info:
        await claude.messages.count_tokens(model="gemini", messages=say("x"))
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert info.value.response.headers["retry-after"]


@pytest.mark.parametrize("kw,status,kind", [
    ({"model": "nope"}, 404, "not_found_error"),
    ({"extra_body": {"temperature": "hot"}}, 400, "invalid_request_error"),
    ({"thinking": {"type": "enabled", "budget_tokens": 600}}, 400, "invalid_request_error"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "invalid_request_error"),
    ({"messages": say("x [[sim error=503]]")}, 503, "overloaded_error"),
])
async def test_errors_in_anthropics_shape(claude: AsyncAnthropic, kw, status, kind):
    args = {"model": "gemini", "max_tokens": 100, "messages": say("x"), **kw}
    with pytest.raises(anthropic.APIStatusError) as info:
        await claude.messages.create(**args)
    assert info.value.status_code == status
    assert info.value.body == {"type": "error", "error": {"type": kind, "message": info.value.body["error"]["message"]}}


async def test_keys_by_x_api_key_or_bearer(stack, funded):
    body = {"model": "gemini", "max_tokens": 50, "messages": say("hi")}
    headers = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        r = await http.post("/api/v1/messages", json=body, headers={**headers, "x-api-key": funded[1]})
        assert r.status_code == 200 and r.json()["type"] == "message"
        r = await http.post("/api/v1/messages", json=body, headers={**headers, "Authorization": f"Bearer {funded[1]}"})
        assert r.status_code == 200
        r = await http.post("/api/v1/messages", json=body, headers={**headers, "x-api-key": "aio_wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await http.post("/api/v1/chat/completions", headers={"x-api-key": funded[1]},
                            json={"model": "gemini", "messages": say("hi")})
        assert r.status_code == 401  # x-api-key is Anthropic's header, not the OpenAI routes'


async def test_a_stream_broken_midway_ends_with_an_error_event_and_is_refunded(claude: AsyncAnthropic, http, funded):
    with pytest.raises(anthropic.APIError):
        async with claude.messages.stream(model="gemini", max_tokens=512,
                                          messages=say("x [[sim output_tokens=60 fail_after=2]]")) as stream:
            async for _ in stream:
                pass
    rows = await wait_settled(http, funded[1], 1)
    assert rows[0]["status"] == "failed" and rows[0]["charged_micro"] == 0 and rows[0]["api"] == "messages"
