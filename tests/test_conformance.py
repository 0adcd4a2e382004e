"""Conformance: the unmodified openai SDK against the running stack, feature by feature,
stream and non-stream (issue 5). ``docs/gemini-mapping.md`` points at these tests.

Most tests use the session stack (model ``gemini`` = gemini-3-flash-preview on the
simulator). The ``edge`` stack is a second, small product with its own catalog: models
with other thinking kinds, image input and a tiny context window on the same simulator,
and model ``chained`` whose provider has ``adapter = "openai"`` and whose upstream is
the session stack's own gateway (a gateway chained to a gateway is a real
OpenAI-compatible upstream).

The simulator's thinking length shows which level reached it: 16 tokens scaled by level
(HIGH 16, MEDIUM 12, LOW 8, MINIMAL 4), capped by a budget (0 turns 2.5 thinking off).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Literal, Optional

import httpx
import openai
import pytest
from openai import AsyncOpenAI, pydantic_function_tool
from pydantic import BaseModel

from apiinone.launcher import SIMULATOR_KEY, Stack, free_port
from shared.settings import Settings
from tests.pg_session import new_database_url
from tests.conftest import Admin
from worker.gemini_request import SIGNATURE_MARK

REAL_GEMINI_KEY = os.environ.get("GEMINI_API_KEY")  # read at import: the stack fixture unsets it

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]


def say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class Stream:
    """Everything a streamed answer carried, kept apart the way a client sees it."""

    def __init__(self) -> None:
        self.reasoning = self.reasoning_alias = self.content = ""
        self.finish = None
        self.usage = None
        self.call_deltas: list = []
        self.chunks = 0

    @classmethod
    async def of(cls, stream) -> "Stream":
        s = cls()
        async for chunk in stream:
            s.chunks += 1
            if chunk.usage:
                s.usage = chunk.usage
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            extra = choice.delta.model_extra or {}
            s.reasoning += extra.get("reasoning_content") or ""
            s.reasoning_alias += extra.get("reasoning") or ""
            s.content += choice.delta.content or ""
            s.call_deltas.extend(choice.delta.tool_calls or [])
            s.finish = choice.finish_reason or s.finish
        return s

    def calls(self) -> list[dict]:
        """Tool calls assembled from deltas the way openai-node and LangChain do it."""
        calls: dict[int, dict] = {}
        for d in self.call_deltas:
            entry = calls.setdefault(d.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
            if d.id:
                assert entry["id"] is None, "id is sent once per call"
                entry["id"], entry["type"] = d.id, d.type
                entry["function"]["name"] = d.function.name
            entry["function"]["arguments"] += (d.function.arguments or "") if d.function else ""
        return [calls[i] for i in sorted(calls)]


async def create(client: AsyncOpenAI, stream: bool, **kw):
    """One call; a Stream for stream=True, the ChatCompletion otherwise."""
    if stream:
        return await Stream.of(await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kw))
    return await client.chat.completions.create(**kw)


def reasoning_tokens(r) -> int:
    usage = r.usage
    return usage.completion_tokens_details.reasoning_tokens


BOTH = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


# ============================================================================ 1. thinking
@BOTH
async def test_thinking_text_under_both_names(client, stream):
    r = await create(client, stream, model="gemini", messages=say("hi [[sim thinking_tokens=12 output_tokens=9]]"))
    if stream:
        assert r.reasoning and r.reasoning == r.reasoning_alias and r.content
    else:
        extra = r.choices[0].message.model_extra
        assert extra["reasoning_content"] and extra["reasoning_content"] == extra["reasoning"]
    assert reasoning_tokens(r) == 12 and r.usage.completion_tokens == 21


@BOTH
async def test_include_thoughts_false_hides_text_and_bills_thinking(client, stream):
    r = await create(client, stream, model="gemini", messages=say("hi [[sim thinking_tokens=20 output_tokens=5]]"),
                     extra_body={"include_thoughts": False})
    if stream:
        assert r.reasoning == "" and r.content
    else:
        assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
    assert reasoning_tokens(r) == 20 and r.usage.completion_tokens == 25
    assert r.usage.model_extra["credits_charged"] > 0


@pytest.mark.parametrize("effort,tokens", [(None, 16), ("high", 16), ("medium", 12), ("low", 8), ("minimal", 4),
                                           ("none", 4)])
async def test_reasoning_effort_reaches_gemini_as_a_level(client, effort, tokens):
    kw = {"reasoning_effort": effort} if effort else {}
    r = await client.chat.completions.create(model="gemini", messages=say("think"), **kw)
    assert reasoning_tokens(r) == tokens


async def test_reasoning_effort_streamed(client):
    r = await create(client, True, model="gemini", messages=say("think"), reasoning_effort="low")
    assert reasoning_tokens(r) == 8 and r.finish == "stop"


async def test_invalid_reasoning_effort_is_400_with_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=say("x"), reasoning_effort="extreme")
    assert info.value.body["param"] == "reasoning_effort"


# ============================================================================ 2. tools
@BOTH
async def test_parallel_tool_calls(client, stream):
    r = await create(client, stream, model="gemini", messages=say("weather and time? [[sim tool_calls=3]]"),
                     tools=TOOLS)
    if stream:
        calls, finish = r.calls(), r.finish
        assert r.content == ""
    else:
        message = r.choices[0].message
        assert message.content is None
        calls, finish = [c.model_dump() for c in message.tool_calls], r.choices[0].finish_reason
    assert finish == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time", "get_weather"]
    assert len({c["id"] for c in calls}) == 3 and all(c["type"] == "function" for c in calls)
    first = json.loads(calls[0]["function"]["arguments"])
    assert set(first) == {"city", "unit"} and first["unit"] in ("C", "F")
    assert SIGNATURE_MARK in calls[0]["id"]  # Gemini 3 signs the first call of a turn


async def test_streamed_tool_call_delta_form(client):
    r = await create(client, True, model="gemini", messages=say("time? [[sim tool_calls=2]]"), tools=TOOLS,
                     tool_choice={"type": "function", "function": {"name": "get_time"}})
    by_index: dict[int, list] = {}
    for d in r.call_deltas:
        by_index.setdefault(d.index, []).append(d)
    assert sorted(by_index) == [0, 1]
    for deltas in by_index.values():
        head, *rest = deltas
        assert head.id and head.type == "function" and head.function.name == "get_time"
        assert head.function.arguments == ""
        assert rest and all(d.id is None and d.function.name is None for d in rest)
        json.loads("".join(d.function.arguments for d in rest))


async def test_sdk_stream_helper_assembles_tool_calls(client):
    async with client.chat.completions.stream(model="gemini", messages=say("go [[sim tool_calls=2]]"),
                                              tools=TOOLS) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert len(calls) == 2 and final.choices[0].finish_reason == "tool_calls"
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)


def _tool_result(call) -> str:
    args = json.loads(call.function.arguments if hasattr(call, "function") else call["function"]["arguments"])
    return json.dumps({"ok": True, "echo": args})


async def agent_loop(client: AsyncOpenAI, model: str, prompts: list[str], stream: bool) -> list:
    """The openai SDK's ordinary tool loop: append the assistant message as the SDK gave it,
    answer every tool call, call again until the model answers in text."""
    messages: list = [{"role": "system", "content": "You are a helpful agent."}]
    rounds = []
    for prompt in prompts:
        messages.append({"role": "user", "content": prompt})
        while True:
            if stream:
                s = await create(client, True, model=model, messages=messages, tools=TOOLS)
                calls = s.calls()
                message = {"role": "assistant", "content": s.content or None}
                if s.reasoning:
                    message["reasoning_content"] = s.reasoning  # as openai-node users echo it
                if calls:
                    message["tool_calls"] = calls
                finish = s.finish
            else:
                r = await client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
                message, finish = r.choices[0].message, r.choices[0].finish_reason
                calls = message.tool_calls or []
            messages.append(message)
            rounds.append((finish, len(calls)))
            if not calls:
                break
            for call in calls:
                call_id = call.id if hasattr(call, "id") else call["id"]
                messages.append({"role": "tool", "tool_call_id": call_id, "content": _tool_result(call)})
    return rounds


@BOTH
async def test_agent_loop_several_turns_with_signatures(client, stream):
    rounds = await agent_loop(client, "gemini", [
        "weather in Oslo and the time? [[sim tool_calls=2]]",
        "and Paris, Rome and Lima? [[sim tool_calls=3]]",
        "one more [[sim tool_calls=1]]",
    ], stream)
    assert rounds == [("tool_calls", 2), ("stop", 0), ("tool_calls", 3), ("stop", 0), ("tool_calls", 1), ("stop", 0)]


async def test_tampered_signature_is_rejected_and_missing_one_is_tolerated(client):
    r = await client.chat.completions.create(model="gemini", messages=say("w? [[sim tool_calls=1]]"), tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    head, _, sig = call.id.partition(SIGNATURE_MARK)

    def follow_up(call_id: str) -> list:
        return [*say("w? [[sim tool_calls=1]]"),
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function", "function": call.function.model_dump()}]},
                {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]

    tampered = head + SIGNATURE_MARK + ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=follow_up(tampered), tools=TOOLS)
    assert "signature" in info.value.message.lower()
    # An id a client rewrote carries no signature: Google's documented skip value stands in.
    ok = await client.chat.completions.create(model="gemini", messages=follow_up("call_rewritten"), tools=TOOLS)
    assert ok.choices[0].message.content


@pytest.mark.parametrize("choice,names", [
    ("none", []),
    ("auto", ["get_weather", "get_time"]),
    ("required", ["get_weather", "get_time"]),
    ({"type": "function", "function": {"name": "get_time"}}, ["get_time", "get_time"]),
])
async def test_tool_choice_modes(client, choice, names):
    r = await client.chat.completions.create(model="gemini", messages=say("go [[sim tool_calls=2]]"), tools=TOOLS,
                                             tool_choice=choice)
    message = r.choices[0].message
    assert [c.function.name for c in message.tool_calls or []] == names
    assert r.choices[0].finish_reason == ("tool_calls" if names else "stop")
    if not names:
        assert message.content


async def test_parallel_tool_calls_false_gives_one_call(client):
    r = await client.chat.completions.create(model="gemini", messages=say("go [[sim tool_calls=3]]"), tools=TOOLS,
                                             parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


class GetForecast(BaseModel):
    """Forecast for a city."""
    city: str
    days: int
    unit: Literal["C", "F"]


async def test_pydantic_function_tool_parses(client):
    r = await client.chat.completions.parse(model="gemini", messages=say("forecast? [[sim tool_calls=1]]"),
                                            tools=[pydantic_function_tool(GetForecast)])
    parsed = r.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, GetForecast) and parsed.unit in ("C", "F")


# ============================================================================ 3. structured output
class Address(BaseModel):
    street: str
    city: str
    zip: Optional[str] = None


class Contact(BaseModel):
    name: str
    kind: Literal["friend", "colleague", "family"]
    age: int
    addresses: list[Address]
    primary: Address


@BOTH
async def test_json_object(client, stream):
    r = await create(client, stream, model="gemini", messages=say("a JSON object please"),
                     response_format={"type": "json_object"})
    text = r.content if stream else r.choices[0].message.content
    assert isinstance(json.loads(text), dict)


async def test_json_schema_from_pydantic_parse(client):
    r = await client.chat.completions.parse(model="gemini", messages=say("a contact"), response_format=Contact)
    contact = r.choices[0].message.parsed
    assert isinstance(contact, Contact) and contact.kind in ("friend", "colleague", "family")


async def test_json_schema_from_pydantic_stream(client):
    async with client.chat.completions.stream(model="gemini", messages=say("a contact"),
                                              response_format=Contact) as stream:
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Contact)


# ============================================================================ 4. messages
async def test_multipart_system_and_merged_turns_count_exactly(client):
    # The simulator counts ceil(len/4) per part: the total proves each text became its own part.
    r = await client.chat.completions.create(model="gemini", messages=[
        {"role": "system", "content": "abcdefgh"},                                   # 2
        {"role": "user", "content": [{"type": "text", "text": "abc"},                # 1
                                     {"type": "text", "text": "defgh"}]},            # 2
        {"role": "user", "content": "hello"},                                        # 2 (merged into one turn)
        {"role": "assistant", "content": "sure", "reasoning_content": "echoed"},     # 1
        {"role": "assistant", "content": "go on"},                                   # 2 (merged)
        {"role": "user", "content": "ok"},                                           # 1
    ], user="end-user-42")
    assert r.usage.prompt_tokens == 11 and r.choices[0].message.content


async def test_image_on_a_text_model_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert info.value.body["param"] == "messages[0].content"


@BOTH
async def test_stop_sequence(client, stream):
    r = await create(client, stream, model="gemini", messages=say("words"), stop=[" "])
    text = r.content if stream else r.choices[0].message.content
    finish = r.finish if stream else r.choices[0].finish_reason
    assert text and " " not in text and finish == "stop"


@BOTH
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_caps_thinking_plus_answer(client, stream, param):
    r = await create(client, stream, model="gemini", messages=say("long [[sim output_tokens=100]]"), **{param: 20})
    assert (r.finish if stream else r.choices[0].finish_reason) == "length"
    assert r.usage.completion_tokens == 20


async def test_max_tokens_beyond_the_model_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=say("x"), max_tokens=10**6)
    assert info.value.body["param"] == "max_tokens"


async def test_seed_and_temperature(client):
    async def text(seed: int) -> str:
        r = await client.chat.completions.create(model="gemini", messages=say("pick words"), seed=seed,
                                                 temperature=0.3, top_p=0.5)
        return r.choices[0].message.content
    assert await text(2**40 + 1) == await text(2**40 + 1)  # int64 seeds fold into Gemini's int32
    assert await text(1) != await text(2)


async def test_n_above_one_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=say("x"), n=2)
    assert info.value.body["param"] == "n"


# ============================================================================ 5. finish reasons and usage
@BOTH
@pytest.mark.parametrize("reason,expected", [("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                             ("MAX_TOKENS", "length"), ("STOP", "stop")])
async def test_finish_reasons(client, stream, reason, expected):
    r = await create(client, stream, model="gemini", messages=say(f"x [[sim finish={reason}]]"))
    assert (r.finish if stream else r.choices[0].finish_reason) == expected


@BOTH
async def test_usage_shape(client, stream):
    r = await create(client, stream, model="gemini", messages=say("abcdefgh [[sim output_tokens=7 thinking_tokens=3]]"))
    u = r.usage
    assert u.prompt_tokens == len("abcdefgh [[sim output_tokens=7 thinking_tokens=3]]") // 4 + 1
    assert (u.completion_tokens, u.completion_tokens_details.reasoning_tokens) == (10, 3)
    assert u.total_tokens == u.prompt_tokens + 10 and u.prompt_tokens_details.cached_tokens == 0


# ============================================================================ 6. errors
@pytest.mark.parametrize("google,status,exc,code", [
    (400, 400, openai.BadRequestError, "invalid_request_error"),
    (403, 502, openai.InternalServerError, "upstream_permission_denied"),
    (404, 502, openai.InternalServerError, "upstream_not_found"),
    (500, 502, openai.InternalServerError, "upstream_error"),
    (504, 504, openai.InternalServerError, "upstream_timeout"),
])
async def test_google_errors_as_openai_errors(client, google, status, exc, code):
    with pytest.raises(exc) as info:
        await client.chat.completions.create(model="gemini", messages=say(f"x [[sim error={google}]]"))
    assert info.value.status_code == status and info.value.body["code"] == code


async def test_google_errors_stream(client):
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gemini", messages=say("x [[sim error=400]]"), stream=True)


async def test_retry_info_becomes_retry_after(stack, funded):
    # 503 UNAVAILABLE is retried before the first token, then answered with Retry-After.
    r = httpx.post(stack.base_url + "/api/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {funded[1]}"},
                   json={"model": "gemini", "stream": False, "messages": say("x [[sim error=503]]")})
    assert r.status_code == 503 and float(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "upstream_unavailable"


# ============================================================================ the edge stack
def edge_catalog(upstream_base_url: str) -> str:
    def model(name: str, upstream: str, **extra) -> str:
        fields = {"display_name": name, "provider": "google", "nodes": ["g1"], "upstream_model": upstream,
                  "thinking": "level", "base_cost_credits": 1, "input_price_credits_per_1m": "50",
                  "output_price_credits_per_1m": "300", "context_window": 131072, "max_output_tokens": 65536,
                  "input_types": ["text"], **extra}
        return f"[models.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())

    return "\n".join([
        '[providers.google]\nadapter = "gemini"\nbase_url_env = "GEMINI_BASE_URL"\napi_key_env = "GEMINI_API_KEY"\n',
        f'[providers.upstream]\nadapter = "openai"\nbase_url = "{upstream_base_url}"\n'
        'api_key_env = "EDGE_UPSTREAM_KEY"\n',
        '[nodes.g1]\nprovider = "google"\n', '[nodes.u1]\nprovider = "upstream"\n',
        model("vision", "gemini-3-flash-preview", input_types=["text", "image"]),
        model("pro3", "gemini-3-pro-preview", thinking="level:low,high"),
        model("flash25", "gemini-2.5-flash", thinking="budget"),
        model("tiny", "gemini-3-flash-preview", context_window=600),
        model("chained", "gemini", provider="upstream", nodes=["u1"]),
    ])


@pytest.fixture(scope="module")
def edge(stack, admin):
    """A second product whose node u1 calls the session stack through the OpenAI adapter."""
    _, upstream_key = admin.account_with_key(1000)
    with tempfile.TemporaryDirectory(prefix="apiinone-edge-") as tmp:
        catalog = Path(tmp) / "catalog.toml"
        catalog.write_text(edge_catalog(stack.base_url + "/api/v1"))
        settings = Settings(host="127.0.0.1", port=free_port(), embedded_redis_port=free_port(), database_url=new_database_url(),
                            simulator_port=free_port(), data_dir=Path(tmp) / "data", redis_url=None,
                            gemini_api_key="set-below", admin_token="adm_edge_" + uuid.uuid4().hex)
        edge_stack = Stack(settings, quiet=not os.environ.get("APIINONE_TEST_VERBOSE"))
        edge_stack.env.update({"APIINONE_CATALOG": str(catalog), "GEMINI_API_KEY": SIMULATOR_KEY,
                               "GEMINI_BASE_URL": stack.env["GEMINI_BASE_URL"], "EDGE_UPSTREAM_KEY": upstream_key})
        try:
            edge_stack.start()
            yield edge_stack
        finally:
            edge_stack.stop()


@pytest.fixture
def edge_client(edge) -> AsyncOpenAI:
    _, key = Admin(edge.base_url, edge.settings.admin_token).account_with_key(100)
    return AsyncOpenAI(base_url=edge.base_url + "/api/v1", api_key=key, max_retries=0)


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@BOTH
async def test_image_data_uri_on_a_vision_model(edge_client, stream):
    r = await create(edge_client, stream, model="vision", messages=[{"role": "user", "content": [
        {"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert r.usage.prompt_tokens == 1 + 258  # Gemini counts an image as 258 tokens


@pytest.mark.parametrize("model,effort,tokens", [
    ("pro3", "minimal", 8),    # level:low,high -> LOW
    ("pro3", "medium", 16),    # -> HIGH
    ("flash25", "none", 0),    # budget 0: thinking off
    ("flash25", "low", 16),    # budget 1024 caps nothing here
])
async def test_thinking_kinds_from_the_catalog(edge_client, model, effort, tokens):
    r = await edge_client.chat.completions.create(model=model, messages=say("think"), reasoning_effort=effort)
    assert reasoning_tokens(r) == tokens


async def test_context_window_counted_exactly_when_close(edge_client):
    # 700 one-character parts: the gateway's chars/4 estimate (175) passes, the worker's bound (700) is
    # over the window, and Gemini's exact count (700: one token per part here) decides.
    parts = [{"type": "text", "text": "é"}] * 700
    with pytest.raises(openai.BadRequestError) as info:
        await edge_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}])
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "messages"
    # 2000 ASCII characters: bound 1000 > 600, so counted exactly, and it fits (500 tokens).
    r = await edge_client.chat.completions.create(model="tiny", messages=say("y" * 2000))
    assert r.usage.prompt_tokens == 500


# --- 7. the OpenAI-compatible adapter (edge model `chained` -> session gateway -> simulator) -----------
@BOTH
async def test_openai_adapter_text_thinking_usage(edge_client, stream):
    r = await create(edge_client, stream, model="chained",
                     messages=say("hi [[sim thinking_tokens=6 output_tokens=10]]"))
    if stream:
        assert r.reasoning and r.content and r.finish == "stop"
    else:
        assert r.choices[0].message.model_extra["reasoning_content"] and r.choices[0].message.content
    assert (r.usage.completion_tokens, reasoning_tokens(r)) == (16, 6)
    assert r.usage.model_extra["credits_charged"] > 0


async def test_openai_adapter_hides_thinking_when_asked(edge_client):
    r = await create(edge_client, True, model="chained", messages=say("hi [[sim thinking_tokens=6]]"),
                     extra_body={"include_thoughts": False})
    assert r.reasoning == "" and r.content and reasoning_tokens(r) == 6


@BOTH
async def test_openai_adapter_agent_loop(edge_client, stream):
    rounds = await agent_loop(edge_client, "chained", [
        "weather and time? [[sim tool_calls=2]]", "again [[sim tool_calls=3]]"], stream)
    assert rounds == [("tool_calls", 2), ("stop", 0), ("tool_calls", 3), ("stop", 0)]


async def test_openai_adapter_structured_output(edge_client):
    r = await edge_client.chat.completions.parse(model="chained", messages=say("a contact"), response_format=Contact)
    assert isinstance(r.choices[0].message.parsed, Contact)


async def test_openai_adapter_errors(edge_client):
    with pytest.raises(openai.BadRequestError):
        await edge_client.chat.completions.create(model="chained", messages=say("x [[sim error=400]]"))
    stream = await edge_client.chat.completions.create(
        model="chained", messages=say("x [[sim output_tokens=80 fail_after=3]]"), stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


# ============================================================================ real Gemini (opt-in)
@pytest.mark.skipif(not REAL_GEMINI_KEY, reason="GEMINI_API_KEY is not set: the real-Gemini smoke test is opt-in")
async def test_real_gemini_smoke():
    from shared.catalog import load_catalog
    from worker.chunks import ChunkBuilder
    from worker.gemini import GeminiAdapter
    from worker.openai_compat import OpenAICompatAdapter

    model = load_catalog().models["gemini"]
    base = os.environ.get("GEMINI_BASE_URL") or "https://generativelanguage.googleapis.com"

    async def run(adapter, body) -> dict:
        b = ChunkBuilder("chatcmpl-smoke", model.id, 0)
        async for delta in adapter.stream(body, model):
            b.add(delta)
        return b.completion(0)

    native = GeminiAdapter(base, REAL_GEMINI_KEY)
    try:
        r = await run(native, {"messages": say("Say hello in one word."), "reasoning_effort": "low"})
        assert r["choices"][0]["message"]["content"] and r["usage"]["completion_tokens"] > 0
        messages = say("What is the weather in Paris? Use the tool.")
        r = await run(native, {"messages": messages, "tools": [WEATHER], "tool_choice": "required"})
        message = r["choices"][0]["message"]
        assert message["tool_calls"] and r["choices"][0]["finish_reason"] == "tool_calls"
        messages = [*messages, message, *[{"role": "tool", "tool_call_id": c["id"], "content": '{"temp": 21}'}
                                          for c in message["tool_calls"]]]
        r = await run(native, {"messages": messages, "tools": [WEATHER]})  # needs the signature back
        assert r["choices"][0]["message"]["content"]
        r = await run(native, {"messages": say("A contact."), "response_format": {"type": "json_schema", "json_schema": {
            "name": "Contact", "strict": True, "schema": Contact.model_json_schema()}}})
        Contact.model_validate_json(r["choices"][0]["message"]["content"])
    finally:
        await native.close()
    compat = OpenAICompatAdapter(base + "/v1beta/openai", REAL_GEMINI_KEY)
    try:
        r = await run(compat, {"messages": say("Say hello in one word."), "model": model.upstream_model})
        assert r["choices"][0]["message"]["content"]
    finally:
        await compat.close()
