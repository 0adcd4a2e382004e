"""The OpenAI Responses API (issue 21 item 1) with the unmodified openai SDK, pointed at the stack by
``base_url`` only: one answer and streams, reasoning summaries, a two-turn tool loop (items sent back, and
``previous_response_id``), stored responses (GET, DELETE, another account's id), structured output, refusals
of hosted tools. Every request is billed once, its usage row names the API, and the audit is clean."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.conftest import wait_settled

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def http(stack, funded) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {funded[1]}"}, timeout=30)


async def test_one_answer_is_a_response_object_billed_once(client: AsyncOpenAI, http, funded):
    r = await client.responses.create(model="gemini", input="Hello [[sim output_tokens=9 thinking_tokens=5]]",
                                      reasoning={"effort": "low", "summary": "auto"})
    assert r.status == "completed" and r.id.startswith("resp_") and r.object == "response"
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].summary[0].text and r.output_text
    assert r.usage.output_tokens == 14 and r.usage.output_tokens_details.reasoning_tokens == 5
    assert r.usage.model_extra["credits_charged"] > 0
    rows = await wait_settled(http, funded[1], 1)
    assert len(rows) == 1 and rows[0]["api"] == "responses" and rows[0]["status"] == "succeeded"
    assert rows[0]["completion_tokens"] == 14 and rows[0]["charged_micro"] > 0


async def test_without_a_summary_no_reasoning_item_but_thinking_is_billed(client: AsyncOpenAI):
    r = await client.responses.create(model="gemini", input="hi [[sim thinking_tokens=7 output_tokens=3]]")
    assert [item.type for item in r.output] == ["message"]
    assert r.usage.output_tokens_details.reasoning_tokens == 7


async def test_stream_event_sequence_and_usage(client: AsyncOpenAI):
    stream = await client.responses.create(model="gemini", input="hi [[sim thinking_tokens=10 output_tokens=20]]",
                                           reasoning={"summary": "auto"}, stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    for kind in ("response.output_item.added", "response.reasoning_summary_part.added",
                 "response.content_part.added", "response.output_text.done", "response.output_item.done"):
        assert kind in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 30
    assert final.usage.output_tokens_details.reasoning_tokens == 10


async def test_sdk_stream_helper_accumulates(client: AsyncOpenAI):
    async with client.responses.stream(model="gemini", input="hi [[sim output_tokens=12]]") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_two_turn_tool_loop_with_items_sent_back(client: AsyncOpenAI, stream):
    """The SDK's ordinary loop: the output items go back as input with function_call_output; the call_id
    carries Gemini 3's thought signature (the simulator checks it)."""
    ask = [{"role": "user", "content": "weather in Oslo? [[sim tool_calls=2]]"}]

    async def turn(items):
        if not stream:
            return await client.responses.create(model="gemini", input=items, tools=[WEATHER], store=False)
        async with client.responses.stream(model="gemini", input=items, tools=[WEATHER], store=False) as s:
            return await s.get_final_response()

    first = await turn(ask)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 2 and all(json.loads(c.arguments).get("city") for c in calls)
    assert "_ts_" in calls[0].call_id
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": '{"temp": 21}'} for c in calls]
    second = await turn(ask + [item.model_dump(exclude_none=True) for item in first.output] + outputs)
    assert second.status == "completed" and second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


async def test_previous_response_id_continues_the_stored_conversation(client: AsyncOpenAI, stack, admin):
    first = await client.responses.create(model="gemini", input="weather? [[sim tool_calls=1]]", tools=[WEATHER],
                                          instructions="be brief")
    call = next(item for item in first.output if item.type == "function_call")
    second = await client.responses.create(model="gemini", previous_response_id=first.id, tools=[WEATHER],
                                           input=[{"type": "function_call_output", "call_id": call.call_id,
                                                   "output": "sunny"}])
    assert second.previous_response_id == first.id and second.output_text
    third = await client.responses.create(model="gemini", previous_response_id=second.id, input="and tomorrow?")
    assert third.output_text
    got = await client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    # Another account's id is unknown here.
    _, other_key = admin.account_with_key(10)
    other = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as info:
        await other.responses.create(model="gemini", previous_response_id=second.id, input="x")
    assert info.value.body["param"] == "previous_response_id"
    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)


async def test_store_false_keeps_nothing(client: AsyncOpenAI):
    r = await client.responses.create(model="gemini", input="hi", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)


async def test_required_tool_choice_calls_again_after_a_function_output(client: AsyncOpenAI):
    first = await client.responses.create(model="gemini", input="go", tools=[WEATHER], tool_choice="required")
    call = next(item for item in first.output if item.type == "function_call")
    again = await client.responses.create(model="gemini", previous_response_id=first.id, tools=[WEATHER],
                                          tool_choice="required", input=[{"type": "function_call_output",
                                                                          "call_id": call.call_id, "output": "ok"}])
    assert [item.type for item in again.output if item.type != "reasoning"] == ["function_call"]


async def test_json_schema_text_format(client: AsyncOpenAI):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["city", "n"], "additionalProperties": False}
    r = await client.responses.create(model="gemini", input="a city",
                                      text={"format": {"type": "json_schema", "name": "c", "schema": schema}})
    value = json.loads(r.output_text)
    assert isinstance(value["city"], str) and isinstance(value["n"], int)


async def test_max_output_tokens_gives_an_incomplete_response(client: AsyncOpenAI):
    r = await client.responses.create(model="gemini", input="long [[sim thinking_tokens=0 output_tokens=200]]",
                                      max_output_tokens=20, reasoning={"effort": "none"})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
                                  {"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                                   "environment": "linux"}])
async def test_hosted_tools_are_a_400_naming_the_tool(client: AsyncOpenAI, http, funded, tool):
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="gemini", input="x", tools=[WEATHER, tool])
    assert info.value.body["param"] == "tools[1].type" and tool["type"] in info.value.message
    assert (await http.get("/billing/usage")).json()["data"] == []  # a rejected request is never billed


async def test_upstream_error_is_openai_shaped_and_refunded(client: AsyncOpenAI, http, funded):
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="gemini", input="x [[sim error=400]]")
    rows = await wait_settled(http, funded[1], 1)
    assert rows[0]["status"] == "failed" and rows[0]["charged_micro"] == 0 and rows[0]["api"] == "responses"


async def test_stored_responses_are_capped_per_account(stack, admin):
    """The oldest stored responses make room for new ones under the per-account byte cap."""
    from shared.response_store import RedisResponseStore
    from shared.redis_client import make_redis
    from shared.scripts import Scripts

    redis = make_redis(stack.settings.redis_url)
    try:
        store = RedisResponseStore(redis, Scripts(redis), ttl_s=60, max_bytes=1000)
        account = admin.account(1)["id"]
        for i in range(5):
            assert await store.put(account, f"resp_{i:032x}", {"response": {"n": i}, "messages": ["x" * 300]})
        kept = [i for i in range(5) if await store.get(account, f"resp_{i:032x}")]
        assert kept == [3, 4] or kept == [2, 3, 4]
        assert not await store.put(account, "resp_" + "f" * 32, {"messages": ["x" * 2000]})
        assert await store.delete(account, f"resp_{4:032x}") and not await store.delete(account, f"resp_{4:032x}")
        assert await store.get("acct_other", f"resp_{3:032x}") is None
    finally:
        await redis.aclose()


async def test_a_stream_broken_midway_fails_the_response_and_is_refunded(client: AsyncOpenAI, http, funded):
    stream = await client.responses.create(model="gemini", input="x [[sim output_tokens=60 fail_after=2]]",
                                           stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "upstream_stream_broken"
    rows = await wait_settled(http, funded[1], 1)
    assert rows[0]["status"] == "failed" and rows[0]["charged_micro"] == 0
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        await client.responses.retrieve(events[-1].response.id)
