"""The Gemini-protocol simulator, driven by the google-genai SDK and by raw HTTP.

One simulator subprocess serves the whole module (`python -m worker.simulator`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import aiohttp
import pydantic
import pytest
from google import genai
from google.genai import errors, types

from tests.simulator_helpers import run_simulator, schema_errors
from tests.test_schema_bounds import doubling_chain
from worker.schema import to_gemini_schema
from worker.simulator.generate import count_text_tokens, split_units

FLASH = "gemini-2.5-flash"
G3 = "gemini-3-pro-preview"
HEADERS = {"x-goog-api-key": "test", "content-type": "application/json"}


@pytest.fixture(scope="module")
def sim() -> str:
    with run_simulator() as base:
        yield base


@pytest.fixture(scope="module")
def client(sim: str) -> genai.Client:
    return genai.Client(
        api_key="test", http_options=types.HttpOptions(base_url=sim, api_version="v1beta")
    )


def cfg(**kw) -> types.GenerateContentConfig:
    kw.setdefault("automatic_function_calling", types.AutomaticFunctionCallingConfig(disable=True))
    return types.GenerateContentConfig(**kw)


async def post(sim: str, path: str, body: dict, **kw) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=kw.pop("headers", HEADERS)) as s:
        async with s.post(f"{sim}/v1beta/models/{path}", json=body, **kw) as r:
            return r.status, await r.json(content_type=None)


def user(text: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


# ------------------------------------------------------------------------------------ text

def test_default_answer_usage_is_exact(client: genai.Client) -> None:
    prompt = "Hello there, simulator"
    r = client.models.generate_content(model=FLASH, contents=prompt, config=cfg())
    u = r.usage_metadata
    assert u.prompt_token_count == count_text_tokens(prompt) == math.ceil(len(prompt) / 4)
    assert u.candidates_token_count == 30 == len(split_units(r.text))
    assert u.thoughts_token_count == 16
    assert u.total_token_count == u.prompt_token_count + 30 + 16
    parts = r.candidates[0].content.parts
    assert not any(p.thought for p in parts)  # thoughts counted, not shown
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.model_version == FLASH and r.response_id


def test_deterministic_and_seeded(client: genai.Client) -> None:
    a = client.models.generate_content(model=FLASH, contents="same", config=cfg()).text
    b = client.models.generate_content(model=FLASH, contents="same", config=cfg()).text
    c = client.models.generate_content(model=FLASH, contents="same", config=cfg(seed=7)).text
    assert a == b and a != c


def test_include_thoughts_and_directive_counts(client: genai.Client) -> None:
    prompt = "think [[sim thinking_tokens=20 output_tokens=11]]"
    r = client.models.generate_content(
        model=FLASH, contents=prompt,
        config=cfg(thinking_config=types.ThinkingConfig(include_thoughts=True)),
    )
    parts = r.candidates[0].content.parts
    assert parts[0].thought is True and not parts[1].thought
    assert len(split_units(parts[0].text)) == 20 == r.usage_metadata.thoughts_token_count
    assert len(split_units(r.text)) == 11 == r.usage_metadata.candidates_token_count
    assert r.usage_metadata.prompt_token_count == count_text_tokens(prompt)


def test_stream_running_totals_and_chunking(client: genai.Client) -> None:
    prompt = "stream [[sim thinking_tokens=12 output_tokens=20]]"
    conf = cfg(thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = list(client.models.generate_content_stream(model=FLASH, contents=prompt, config=conf))
    kinds, prev_t, prev_c = [], 0, 0
    for ch in chunks:
        u = ch.usage_metadata
        t, c = u.thoughts_token_count or 0, u.candidates_token_count or 0
        assert t >= prev_t and c >= prev_c and (t - prev_t) + (c - prev_c) <= 8
        assert u.total_token_count == u.prompt_token_count + t + c
        prev_t, prev_c = t, c
        kinds.append("T" if ch.candidates[0].content.parts[0].thought else "A")
    assert kinds == ["T", "T", "A", "A", "A"]  # 12 thinking = 8+4, 20 answer = 8+8+4
    assert [ch.candidates[0].finish_reason for ch in chunks[:-1]] == [None] * 4
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert (prev_t, prev_c) == (12, 20)
    full = client.models.generate_content(model=FLASH, contents=prompt, config=conf)
    assert "".join(ch.text or "" for ch in chunks) == full.text


def test_stream_hidden_thinking_still_counted(client: genai.Client) -> None:
    chunks = list(client.models.generate_content_stream(
        model=FLASH, contents="quiet [[sim thinking_tokens=12 output_tokens=5]]", config=cfg()))
    assert len(chunks) == 1
    assert not chunks[0].candidates[0].content.parts[0].thought
    assert chunks[0].usage_metadata.thoughts_token_count == 12


def test_thinking_controls(client: genai.Client) -> None:
    low = client.models.generate_content(
        model=G3, contents="x", config=cfg(thinking_config=types.ThinkingConfig(
            thinking_level=types.ThinkingLevel.LOW)))
    assert low.usage_metadata.thoughts_token_count == 8
    off = client.models.generate_content(
        model=FLASH, contents="x", config=cfg(thinking_config=types.ThinkingConfig(
            thinking_budget=0)))
    assert not off.usage_metadata.thoughts_token_count
    bad = [
        (FLASH, types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW), "not supported"),
        (G3, types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW, thinking_budget=100),
         "not supported together"),
        ("gemini-2.5-pro", types.ThinkingConfig(thinking_budget=0), "only works in thinking"),
    ]
    for model, tc, text in bad:
        with pytest.raises(errors.APIError) as e:
            client.models.generate_content(model=model, contents="x",
                                           config=cfg(thinking_config=tc))
        assert e.value.code == 400 and text in e.value.message


def test_gemini3_text_answer_signs_last_part(client: genai.Client) -> None:
    r = client.models.generate_content(model=G3, contents="sign", config=cfg())
    assert r.candidates[0].content.parts[-1].thought_signature
    chunks = list(client.models.generate_content_stream(model=G3, contents="sign", config=cfg()))
    last = chunks[-1].candidates[0]
    assert last.content.parts[0].text == "" and last.content.parts[0].thought_signature
    assert last.finish_reason == types.FinishReason.STOP


# --------------------------------------------------------------------------- length limits

def test_stop_sequence_cuts_before_it(client: genai.Client) -> None:
    prompt = "stop me [[sim output_tokens=40]]"
    full = client.models.generate_content(model=FLASH, contents=prompt, config=cfg()).text
    word = split_units(full)[12].strip()
    assert word.isalpha()
    r = client.models.generate_content(model=FLASH, contents=prompt,
                                       config=cfg(stop_sequences=[word, "zzz"]))
    expected = full[: full.index(word)]
    assert r.text == expected and word not in r.text
    assert r.usage_metadata.candidates_token_count == len(split_units(expected))
    assert r.candidates[0].finish_reason == types.FinishReason.STOP


def test_max_output_tokens_caps_thinking_and_answer(client: genai.Client) -> None:
    gen = client.models.generate_content
    r = gen(model=FLASH, contents="cap", config=cfg(max_output_tokens=20))
    u = r.usage_metadata
    assert (u.thoughts_token_count, u.candidates_token_count) == (16, 4)
    assert len(split_units(r.text)) == 4
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    r = gen(model=FLASH, contents="cap", config=cfg(max_output_tokens=10))
    assert r.usage_metadata.thoughts_token_count == 10 and r.text is None
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    r = gen(model=FLASH, contents="cap [[sim finish=SAFETY]]", config=cfg())
    assert r.candidates[0].finish_reason == types.FinishReason.SAFETY


# ------------------------------------------------------------------------------------ JSON

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 20},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 4},
        "address": {"$ref": "#/$defs/Address"},
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "score", "role", "tags", "address"],
    "additionalProperties": False,
    "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string"}},
                          "required": ["zip"]}},
}


def test_json_schema_output_validates(client: genai.Client) -> None:
    for prompt in ("person one", "person two", "person three"):
        r = client.models.generate_content(model=FLASH, contents=prompt, config=cfg(
            response_mime_type="application/json", response_json_schema=PERSON_SCHEMA))
        value = json.loads(r.text)
        assert schema_errors(value, PERSON_SCHEMA) == []
        assert set(value) >= set(PERSON_SCHEMA["required"])
        assert r.usage_metadata.candidates_token_count == len(split_units(r.text))
    chunks = list(client.models.generate_content_stream(model=FLASH, contents="person one",
                  config=cfg(response_mime_type="application/json",
                             response_json_schema=PERSON_SCHEMA)))
    assert len(chunks) > 1  # JSON text split across chunks, like Gemini
    assert schema_errors(json.loads("".join(c.text for c in chunks)), PERSON_SCHEMA) == []


def test_response_schema_from_pydantic_parses(client: genai.Client) -> None:
    class Item(pydantic.BaseModel):
        name: str
        qty: int = pydantic.Field(ge=1, le=3)

    class Order(pydantic.BaseModel):
        items: list[Item]
        note: str | None = None

    r = client.models.generate_content(model=FLASH, contents="order", config=cfg(
        response_mime_type="application/json", response_schema=Order))
    assert isinstance(r.parsed, Order) and all(1 <= i.qty <= 3 for i in r.parsed.items)


WIDE_KEPT_REFS = {"$ref": "#/$defs/d0", "$defs": {
    **{f"d{i}": {"type": "object", "required": [f"k{j}" for j in range(50)],
                 "properties": {f"k{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(50)}} for i in range(8)},
    "d8": {"type": "integer"}}}


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": 10**9, "items": {"type": "integer"}},
    {"type": "string", "minLength": 10**9},
    WIDE_KEPT_REFS,
], ids=["min-items", "min-length", "wide-refs"])
def test_schema_too_complex_to_serve_is_googles_400(client: genai.Client, schema) -> None:
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=FLASH, contents="x", config=cfg(
            response_mime_type="application/json", response_json_schema=schema))
    assert info.value.code == 400 and "too many states" in info.value.message


def test_a_chain_of_kept_refs_is_answered(client: genai.Client) -> None:
    r = client.models.generate_content(model=FLASH, contents="x", config=cfg(
        response_mime_type="application/json", response_json_schema=to_gemini_schema(doubling_chain(40))))
    assert isinstance(json.loads(r.text)["root"], dict)


def test_json_mode_without_schema(client: genai.Client) -> None:
    r = client.models.generate_content(model=FLASH, contents="json [[sim output_tokens=25]]",
                                       config=cfg(response_mime_type="application/json"))
    assert isinstance(json.loads(r.text), dict)
    assert r.usage_metadata.candidates_token_count == 25


# ------------------------------------------------------------------------------- functions

WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Weather for a city",
    parameters_json_schema={"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]},
)
CLOCK = types.FunctionDeclaration(
    name="get_time", parameters=types.Schema(type="OBJECT", properties={
        "tz": types.Schema(type="STRING", enum=["UTC", "CET"])}, required=["tz"]),
)
TOOLS = [types.Tool(function_declarations=[WEATHER, CLOCK])]


def _calls(client: genai.Client, model: str, prompt: str, **kw) -> types.GenerateContentResponse:
    return client.models.generate_content(model=model, contents=prompt,
                                          config=cfg(tools=TOOLS, **kw))


def test_parallel_function_calls_with_signature(client: genai.Client) -> None:
    r = _calls(client, G3, "weather and time [[sim tool_calls=3]]")
    parts = r.candidates[0].content.parts
    assert [p.function_call.name for p in parts] == ["get_weather", "get_time", "get_weather"]
    assert parts[0].thought_signature and not parts[1].thought_signature
    assert not parts[2].thought_signature
    for p in parts:
        schema = WEATHER.parameters_json_schema if p.function_call.name == "get_weather" else {
            "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}
        assert schema_errors(p.function_call.args, schema) == []
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u.candidates_token_count == sum(
        len(split_units(p.function_call.name)) + len(split_units(json.dumps(
            p.function_call.args, separators=(",", ":")))) for p in parts)


def test_function_call_follow_up_needs_signature_on_gemini3(client: genai.Client) -> None:
    first = _calls(client, G3, "weather? [[sim tool_calls=2]]")
    model_turn = first.candidates[0].content
    answers = types.Content(role="user", parts=[
        types.Part.from_function_response(name=p.function_call.name, response={"ok": True})
        for p in model_turn.parts])
    history = [types.Content(role="user", parts=[types.Part(text="weather? [[sim tool_calls=2]]")]),
               model_turn, answers]
    ok = client.models.generate_content(model=G3, contents=history, config=cfg(tools=TOOLS))
    assert ok.text and not ok.function_calls

    unsigned = model_turn.model_copy(deep=True)
    unsigned.parts[0].thought_signature = None
    with pytest.raises(errors.APIError) as e:
        client.models.generate_content(model=G3, contents=[history[0], unsigned, answers],
                                       config=cfg(tools=TOOLS))
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
    assert "Function call is missing a thought_signature in functionCall parts" in e.value.message
    assert "position 2" in e.value.message

    tampered = model_turn.model_copy(deep=True)
    tampered.parts[0].function_call.args = {"city": "elsewhere", "days": 1}
    with pytest.raises(errors.APIError) as e:
        client.models.generate_content(model=G3, contents=[history[0], tampered, answers],
                                       config=cfg(tools=TOOLS))
    assert e.value.code == 400

    # Gemini 2.5 does not enforce signatures.
    r = client.models.generate_content(model=FLASH, contents=[history[0], unsigned, answers],
                                       config=cfg(tools=TOOLS))
    assert r.text


def test_function_response_must_match_a_call(client: genai.Client) -> None:
    first = _calls(client, FLASH, "weather?")
    wrong = types.Content(role="user", parts=[
        types.Part.from_function_response(name="unknown_fn", response={"ok": True})])
    with pytest.raises(errors.APIError) as e:
        client.models.generate_content(
            model=FLASH, contents=[types.Content(role="user", parts=[types.Part(text="weather?")]),
                                   first.candidates[0].content, wrong], config=cfg(tools=TOOLS))
    assert e.value.code == 400 and "unknown_fn" in e.value.message


def test_function_calling_modes(client: genai.Client) -> None:
    only = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
        mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]))
    r = _calls(client, FLASH, "x [[sim tool_calls=2]]", tool_config=only)
    assert [fc.name for fc in r.function_calls] == ["get_time", "get_time"]
    none = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
        mode=types.FunctionCallingConfigMode.NONE))
    r = _calls(client, FLASH, "x", tool_config=none)
    assert r.text and not r.function_calls


def test_mode_any_calls_a_function_also_right_after_a_function_response(client: genai.Client) -> None:
    """Gemini's mode ANY always answers with a function call (restricted to allowedFunctionNames), also on
    the turn after a functionResponse; clients rely on it (tool_choice "required", Anthropic "any")."""
    forced = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
        mode=types.FunctionCallingConfigMode.ANY))
    ask = types.Content(role="user", parts=[types.Part(text="weather?")])
    for model in (G3, FLASH):
        first = client.models.generate_content(model=model, contents=[ask], config=cfg(tools=TOOLS, tool_config=forced))
        assert first.function_calls
        answers = types.Content(role="user", parts=[
            types.Part.from_function_response(name=fc.name, response={"ok": True}) for fc in first.function_calls])
        history = [ask, first.candidates[0].content, answers]
        again = client.models.generate_content(model=model, contents=history, config=cfg(tools=TOOLS, tool_config=forced))
        assert again.function_calls and not again.text, model
        only = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]))
        named = client.models.generate_content(model=model, contents=history, config=cfg(tools=TOOLS, tool_config=only))
        assert [fc.name for fc in named.function_calls] == ["get_time"]
        auto = client.models.generate_content(model=model, contents=history, config=cfg(tools=TOOLS))
        assert auto.text and not auto.function_calls  # AUTO still answers the function response with text


def test_stream_function_calls_arrive_whole(client: genai.Client) -> None:
    chunks = list(client.models.generate_content_stream(
        model=G3, contents="go [[sim tool_calls=2 thinking_tokens=3]]", config=cfg(tools=TOOLS)))
    calls = [p for c in chunks for p in c.candidates[0].content.parts if p.function_call]
    assert len(calls) == 2 and all(p.function_call.args for p in calls)
    assert calls[0].thought_signature
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


# ---------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("code,status", [
    (400, "INVALID_ARGUMENT"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
    (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (503, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED"),
])
def test_error_directive(client: genai.Client, code: int, status: str) -> None:
    with pytest.raises(errors.APIError) as e:
        client.models.generate_content(model=FLASH, contents=f"x [[sim error={code}]]")
    assert (e.value.code, e.value.status) == (code, status)
    with pytest.raises(errors.APIError) as e:
        for _ in client.models.generate_content_stream(model=FLASH,
                                                       contents=f"[[sim error={code}]]"):
            pass
    assert e.value.code == code
    if code == 429:
        details = e.value.details["error"]["details"]
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"} in details


def test_api_key_checks(sim: str) -> None:
    # base_url alone makes the SDK use /v1: the simulator answers there too.
    bad = genai.Client(api_key="invalid", http_options=types.HttpOptions(base_url=sim))
    with pytest.raises(errors.APIError) as e:
        bad.models.generate_content(model=FLASH, contents="x")
    assert e.value.code == 400
    assert e.value.message == "API key not valid. Please pass a valid API key."


async def test_missing_key_and_unknown_model(sim: str) -> None:
    status, body = await post(sim, f"{FLASH}:generateContent", user("x"), headers={})
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    status, body = await post(sim, "gpt-4o:generateContent", user("x"))
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


def test_count_tokens_and_models(client: genai.Client) -> None:
    text = "count these words please"
    assert client.models.count_tokens(model=FLASH, contents=text).total_tokens == \
        count_text_tokens(text)
    image = types.Part.from_bytes(data=b"\x89PNG....", mime_type="image/png")
    n = client.models.count_tokens(model=FLASH, contents=[text, image]).total_tokens
    r = client.models.generate_content(model=FLASH, contents=[text, image], config=cfg())
    assert n == count_text_tokens(text) + 258 == r.usage_metadata.prompt_token_count
    assert client.models.get(model=FLASH).name == f"models/{FLASH}"
    assert any(m.name == f"models/{G3}" for m in client.models.list())


# ------------------------------------------------------------------------------- raw HTTP

async def test_sse_wire_format(sim: str) -> None:
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(f"{sim}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
                          json=user("wire [[sim output_tokens=9]]")) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            raw = (await r.read()).decode()
    events = raw.split("\r\n\r\n")
    assert events[-1] == "" and all(e.startswith("data: {") for e in events[:-1])
    assert "[DONE]" not in raw
    last = json.loads(events[-2][len("data: "):])
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 9


async def test_fail_after_breaks_the_stream(sim: str) -> None:
    received = []
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(f"{sim}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
                          json=user("[[sim output_tokens=40 fail_after=2]]")) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in r.content:
                    if line.startswith(b"data: "):
                        received.append(line)
        assert len(received) == 2
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                            aiohttp.ClientOSError)):
            async with s.post(f"{sim}/v1beta/models/{FLASH}:generateContent",
                              json=user("[[sim fail_after=1]]")) as r:
                await r.read()


async def test_delay_applies_between_chunks(sim: str) -> None:
    body = user("[[sim output_tokens=24 thinking_tokens=0 delay_ms=60]]")  # 3 chunks, 2 gaps
    for method in ("streamGenerateContent?alt=sse", "generateContent"):
        start = time.perf_counter()
        async with aiohttp.ClientSession(headers=HEADERS) as s:
            async with s.post(f"{sim}/v1beta/models/{FLASH}:{method}", json=body) as r:
                await r.read()
                assert r.status == 200
        assert time.perf_counter() - start >= 0.11, method


async def test_unknown_fields_rejected_snake_case_accepted(sim: str) -> None:
    status, body = await post(sim, f"{FLASH}:generateContent", {**user("x"), "foo": 1})
    assert status == 400
    assert body["error"]["message"].startswith('Invalid JSON payload received. Unknown name "foo"')
    status, body = await post(sim, f"{FLASH}:generateContent",
                              {**user("x"), "generationConfig": {"max_tokens": 5}})
    assert status == 400 and "at 'generation_config'" in body["error"]["message"]
    status, body = await post(sim, f"{FLASH}:generateContent", {
        **user("x [[sim thinking_tokens=0]]"),
        "generation_config": {"max_output_tokens": 3, "stop_sequences": []},
        "system_instruction": {"parts": [{"text": "be brief"}]}})
    assert status == 200 and body["usageMetadata"]["candidatesTokenCount"] == 3
    assert body["usageMetadata"]["promptTokenCount"] == count_text_tokens(
        "x [[sim thinking_tokens=0]]") + count_text_tokens("be brief")


@pytest.mark.parametrize("patch,needle", [
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
    ({"contents": [{"parts": [{"text": "x", "inlineData": {"mimeType": "image/png",
                                                          "data": "AAAA"}}]}]}, "Oneof"),
    ({"generationConfig": {"candidateCount": 2}}, "Multiple candidates"),
    ({"generationConfig": {"temperature": 2.5}}, "temperature"),
    ({"generationConfig": {"temperature": "hot"}}, "TYPE_FLOAT"),
    ({"generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
    ({"generationConfig": {"stopSequences": ["a", "b", "c", "d", "e", "f"]}}, "stop"),
    ({"generationConfig": {"responseMimeType": "text/html"}}, "mimetypes"),
    ({"generationConfig": {"responseJsonSchema": {"type": "object"}}}, "response_mime_type"),
    ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
        "type": "object", "additionalProperties": False}}]}]}, "additionalProperties"),
])
async def test_request_validation(sim: str, patch: dict, needle: str) -> None:
    status, body = await post(sim, f"{FLASH}:generateContent", {**user("x"), **patch})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert needle in body["error"]["message"]


async def test_directives_only_from_last_user_message(sim: str) -> None:
    history = {"contents": [
        {"role": "user", "parts": [{"text": "[[sim error=500 output_tokens=3]]"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
        {"role": "user", "parts": [{"text": "plain question"}]},
    ]}
    status, body = await post(sim, f"{FLASH}:generateContent", history)
    assert status == 200 and body["usageMetadata"]["candidatesTokenCount"] == 30
    history["contents"][2]["parts"].append({"text": "[[sim output_tokens=5 bogus=1]]"})
    status, body = await post(sim, f"{FLASH}:generateContent", history)
    assert status == 200 and body["usageMetadata"]["candidatesTokenCount"] == 5


async def test_concurrent_streams(sim: str) -> None:
    async def one(i: int) -> int:
        async with aiohttp.ClientSession(headers=HEADERS) as s:
            async with s.post(f"{sim}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
                              json=user(f"n{i} [[sim output_tokens=16 delay_ms=20]]")) as r:
                return (await r.read()).count(b"data: ")
    counts = await asyncio.gather(*(one(i) for i in range(20)))
    assert counts == [2] * 20  # hidden thinking sends nothing; 16 tokens = 2 chunks
