"""Golden translation tests, one direction at a time, no network.

Request: OpenAI body -> Gemini ``GenerateContentRequest`` (``to_gemini``), and every
translated request is also fed to the simulator's strict validator (Google's rules).
Response: Gemini events -> Deltas -> OpenAI chunks. Errors: Google's -> ours.
The OpenAI-compatible adapter's two directions are at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import orjson
import pytest
from pydantic import BaseModel

from shared.catalog import load_catalog
from worker.chunks import ChunkBuilder
from worker.gemini import GeminiStreamReader, map_error
from worker.gemini_request import SKIP_SIGNATURE, prompt_token_bound, signature_from_id, to_gemini, tool_call_id
from worker.openai_compat import OpenAIStreamReader, completion_as_chunk, to_openai
from worker.openai_compat import map_error as openai_map_error
from worker.provider import Delta, ProviderError, RequestError, ToolCallDelta
from tests.test_schema_bounds import doubling_chain, nested
from worker.schema import MAX_SAFE, to_gemini_schema
from worker.simulator.generate import sign_call
from worker.simulator.request import parse_generate

BASE = load_catalog().models["gemini"]  # gemini-3-flash-preview, thinking "level", text only
VISION = dataclasses.replace(BASE, input_types=("text", "image"))
PRO3 = dataclasses.replace(BASE, upstream_model="gemini-3-pro-preview", thinking="level:low,high")
FLASH25 = dataclasses.replace(BASE, upstream_model="gemini-2.5-flash", thinking="budget")
PRO25 = dataclasses.replace(BASE, upstream_model="gemini-2.5-pro", thinking="budget:128-32768")
PLAIN = dataclasses.replace(BASE, thinking="none")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def translate(body: dict, model=BASE) -> dict:
    """to_gemini, checked against the simulator's Google-strict validation."""
    request = to_gemini({"model": "gemini", **body}, model)
    parse_generate(model.upstream_model, orjson.loads(orjson.dumps(request)))
    return request


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# --- request: messages ---------------------------------------------------------------------
def test_messages_golden():
    got = translate({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
        user("Hi"),
        {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "text", "text": "!"}]},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "echoed back by the client"},
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
        user("Weather?"),
    ]})
    assert got["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]}
    assert got["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}, {"text": "!"}]},
        {"role": "model", "parts": [{"text": "Hello."}, {"text": "How can I help?"}]},
        {"role": "user", "parts": [{"text": "Weather?"}]},
    ]


def test_system_only_conversation_becomes_a_user_turn():
    got = translate({"messages": [{"role": "system", "content": "Say hi."}]})
    assert got["contents"] == [{"role": "user", "parts": [{"text": "Say hi."}]}]
    assert "systemInstruction" not in got


def test_image_data_uri_to_inline_data():
    got = translate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/webp;name=a.webp;base64,UklGRg=="}},
    ]}]}, VISION)
    assert got["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
    ]


@pytest.mark.parametrize("model,url,code", [
    (BASE, "data:image/png;base64,iVBO", "unsupported_content"),  # model without image input
    (VISION, "https://example.com/cat.png", "invalid_image_url"),
])
def test_image_errors_are_400_with_param(model, url, code):
    with pytest.raises(RequestError) as info:
        to_gemini({"messages": [user("x"), {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]}, model)
    assert info.value.status == 400 and info.value.code == code
    assert info.value.body()["error"]["param"] == "messages[1].content"


# --- request: generation config ------------------------------------------------------------
def test_generation_config_golden():
    got = translate({"messages": [user("x")], "temperature": 0.2, "top_p": 0.9, "seed": 2**40 + 7,
                     "stop": "END", "max_completion_tokens": 300, "max_tokens": 100,
                     "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "end-user-1",
                     "metadata": {"a": "b"}})["generationConfig"]
    assert got == {"temperature": 0.2, "topP": 0.9, "presencePenalty": 0.5, "frequencyPenalty": -0.5,
                   "seed": (2**40 + 7) % 2**31, "maxOutputTokens": 300, "stopSequences": ["END"],
                   "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "HIGH"}}
    assert translate({"messages": [user("x")], "stop": ["a", "b"], "max_tokens": 7})["generationConfig"][
        "stopSequences"] == ["a", "b"]


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_beyond_the_model_is_400(param):
    with pytest.raises(RequestError) as info:
        to_gemini({"messages": [user("x")], param: BASE.max_output_tokens + 1}, BASE)
    assert info.value.body()["error"]["param"] == param


@pytest.mark.parametrize("model,effort,expected", [
    (BASE, None, {"thinkingLevel": "HIGH"}),
    (BASE, "high", {"thinkingLevel": "HIGH"}),
    (BASE, "medium", {"thinkingLevel": "MEDIUM"}),
    (BASE, "low", {"thinkingLevel": "LOW"}),
    (BASE, "minimal", {"thinkingLevel": "MINIMAL"}),
    (BASE, "none", {"thinkingLevel": "MINIMAL"}),
    (PRO3, "minimal", {"thinkingLevel": "LOW"}),
    (PRO3, "none", {"thinkingLevel": "LOW"}),
    (PRO3, "medium", {"thinkingLevel": "HIGH"}),
    (PRO3, "low", {"thinkingLevel": "LOW"}),
    (FLASH25, None, {"thinkingBudget": 24576}),
    (FLASH25, "medium", {"thinkingBudget": 8192}),
    (FLASH25, "low", {"thinkingBudget": 1024}),
    (FLASH25, "minimal", {"thinkingBudget": 512}),
    (FLASH25, "none", {"thinkingBudget": 0}),
    (PRO25, "none", {"thinkingBudget": 128}),
    (PRO25, "high", {"thinkingBudget": 32768}),
])
def test_reasoning_effort_from_the_catalog_thinking_kind(model, effort, expected):
    body = {"messages": [user("x")]}
    if effort:
        body["reasoning_effort"] = effort
    assert translate(body, model)["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, **expected}


def test_include_thoughts_false_and_models_without_thinking():
    got = translate({"messages": [user("x")], "include_thoughts": False, "reasoning_effort": "low"})
    assert got["generationConfig"]["thinkingConfig"] == {"includeThoughts": False, "thinkingLevel": "LOW"}
    assert "thinkingConfig" not in translate({"messages": [user("x")]}, PLAIN)["generationConfig"]


# --- request: structured output ------------------------------------------------------------
class Address(BaseModel):
    city: str
    zip: Optional[str] = None


class Person(BaseModel):
    name: str
    kind: Literal["friend", "foe"]
    home: Address
    past: list[Address] = []


def test_response_format_json_object_and_pydantic_schema():
    got = translate({"messages": [user("x")], "response_format": {"type": "json_object"}})["generationConfig"]
    assert got["responseMimeType"] == "application/json" and "responseJsonSchema" not in got
    schema = Person.model_json_schema()
    got = translate({"messages": [user("x")], "response_format": {
        "type": "json_schema", "json_schema": {"name": "Person", "strict": True, "schema": schema}}})
    config = got["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    out = config["responseJsonSchema"]
    assert "$defs" not in out and "$ref" not in orjson.dumps(out).decode()
    assert out["properties"]["home"]["properties"]["city"] == {"title": "City", "type": "string"}
    assert out["properties"]["past"]["items"]["required"] == ["city"]
    assert "default" not in out["properties"]["past"]


def test_response_format_text_adds_nothing():
    got = translate({"messages": [user("x")], "response_format": {"type": "text"}})["generationConfig"]
    assert "responseMimeType" not in got


# --- JSON schema pruning -----------------------------------------------------------------------
def test_schema_as_js_clients_write_it():
    ai_sdk = {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
        "properties": {
            "n": {"type": "integer", "minimum": -MAX_SAFE, "maximum": MAX_SAFE},
            "pos": {"type": "integer", "exclusiveMinimum": 0},
            "ratio": {"type": "number", "exclusiveMaximum": 1.5, "minimum": 0},
            "old": {"type": "integer", "minimum": 3, "exclusiveMinimum": True},
            "kind": {"const": "x"}, "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "default": []},
            "meta": {"type": "object", "additionalProperties": {"type": "string", "$comment": "c"}},
        },
        "required": ["n"],
    }
    assert to_gemini_schema(ai_sdk) == {
        "type": "object", "additionalProperties": False, "required": ["n"],
        "properties": {
            "n": {"type": "integer"},
            "pos": {"type": "integer", "minimum": 1},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1.5},
            "old": {"type": "integer", "minimum": 4},
            "kind": {"enum": ["x"]}, "either": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "meta": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def test_schema_refs_defs_allof_and_recursion():
    draft4 = {"definitions": {"P": {"type": "object", "properties": {"x": {"type": "string"}}}},
              "type": "object", "properties": {
                  "p": {"$ref": "#/definitions/P", "description": "the p"},
                  "q": {"allOf": [{"$ref": "#/definitions/P"}], "description": "wrapped"}}}
    assert to_gemini_schema(draft4)["properties"] == {
        "p": {"type": "object", "properties": {"x": {"type": "string"}}, "description": "the p"},
        "q": {"description": "wrapped", "type": "object", "properties": {"x": {"type": "string"}}},
    }

    class Tree(BaseModel):
        value: int
        children: list["Tree"] = []

    out = to_gemini_schema(Tree.model_json_schema())
    assert out["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert out["$defs"]["Tree"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}


# --- schemas past the bounds (the gateway refuses them first: shared/schema_bounds.py) --------------------
def test_schema_past_the_inline_budget_keeps_its_refs():
    bomb = doubling_chain(40)  # 2^40 leaves if inlined
    out = to_gemini_schema(bomb)
    assert out["properties"]["root"] == {"$ref": "#/$defs/d0"}
    assert set(out["$defs"]) == {f"d{i}" for i in range(41)}
    assert out["$defs"]["d0"]["properties"] == {"l": {"$ref": "#/$defs/d1"}, "r": {"$ref": "#/$defs/d1"}}
    assert len(orjson.dumps(out)) <= len(orjson.dumps(bomb))  # about what was sent
    tool = {"type": "function", "function": {"name": "f", "parameters": bomb}}
    assert translate({"messages": [user("x")], "tools": [tool]})["tools"][0]["functionDeclarations"][0][
        "parametersJsonSchema"] == out
    # Within the budget the same shape is inlined, as before.
    small = to_gemini_schema(doubling_chain(8))
    assert "$defs" not in small and "$ref" not in orjson.dumps(small).decode()


def test_a_long_text_referred_to_many_times_is_kept_as_a_ref():
    schema = {"$defs": {"Long": {"type": "string", "description": "x" * 100_000}}, "type": "object",
              "properties": {f"p{i}": {"$ref": "#/$defs/Long"} for i in range(1000)}}
    out = to_gemini_schema(schema)
    assert out["properties"]["p999"] == {"$ref": "#/$defs/Long"} and list(out["$defs"]) == ["Long"]
    assert len(orjson.dumps(out)) < 200_000  # not 100 MB


def test_a_long_chain_of_kept_definitions_stays_flat():
    out = to_gemini_schema(doubling_chain(400))  # 800 levels deep if inlined; no deep recursion kept
    assert len(out["$defs"]) == 401
    refs_to_refs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(999)}
    out = to_gemini_schema({"$ref": "#/$defs/d0", "$defs": {**refs_to_refs, "d999": {"type": "string"}}})
    assert out.get("$ref", "").startswith("#/$defs/d")  # inlined 64 deep, then kept


def test_kept_definition_names_are_json_pointer_escaped():
    schema = {"$ref": "#/$defs/a~1b~0c",
              "$defs": {"a/b~c": {"type": "object", "properties": {"next": {"$ref": "#/$defs/a~1b~0c"}}}}}
    out = to_gemini_schema(schema)
    assert out["properties"]["next"] == {"$ref": "#/$defs/a~1b~0c"} and set(out["$defs"]) == {"a/b~c"}


@pytest.mark.parametrize("slot,param", [("tools", "tools[0].function.parameters"),
                                        ("response_format", "response_format.json_schema.schema")])
def test_schema_nested_too_deep_to_write_is_400_with_param(slot, param):
    deep = nested(300)
    where = {"tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}],
             "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}}}
    with pytest.raises(RequestError) as info:
        to_gemini({"model": "gemini", "messages": [user("x")], slot: where[slot]}, BASE)
    assert info.value.status == 400 and info.value.param == param and "nested" in info.value.message


# --- request: tools --------------------------------------------------------------------------------
def test_tools_golden():
    loose = {"type": "function", "function": {"name": "search", "strict": True, "parameters": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"q": {"type": "string"}, "limit": {"type": "integer", "maximum": MAX_SAFE}},
        "required": ["q"], "additionalProperties": False}}}
    got = translate({"messages": [user("x")], "tools": [WEATHER, TIME, loose]})
    assert got["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather for a city", "parametersJsonSchema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {}}},
        {"name": "search", "parametersJsonSchema": {
            "type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["q"], "additionalProperties": False}},
    ]}]
    assert "toolConfig" not in got


@pytest.mark.parametrize("choice,config", [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_tool_choice_modes(choice, config):
    got = translate({"messages": [user("x")], "tools": [WEATHER, TIME], "tool_choice": choice})
    assert got["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize("body", [
    {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"tool_choice": "required"},
])
def test_bad_tool_choice_is_400(body):
    with pytest.raises(RequestError) as info:
        to_gemini({"messages": [user("x")], **body}, BASE)
    assert info.value.body()["error"]["param"] == "tool_choice"


def _assistant_calls(*calls: tuple[str, str, dict]) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
        for cid, name, args in calls]}


def test_tool_loop_history_carries_signatures():
    sig = sign_call("get_weather", {"city": "Oslo"})
    first = tool_call_id(sig)
    assert "+" not in first and "/" not in first and "=" not in first
    assert signature_from_id(first) == sig
    got = translate({"tools": [WEATHER, TIME], "messages": [
        user("weather and time?"),
        _assistant_calls((first, "get_weather", {"city": "Oslo"}), ("call_2", "get_time", {})),
        {"role": "tool", "tool_call_id": first, "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
    ]})
    assert got["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": sig},
            {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}}]},
    ]


def test_unsigned_calls_get_googles_skip_value_on_gemini3_only():
    messages = [user("w?"), _assistant_calls(("call_plain", "get_weather", {"city": "Rome"})),
                {"role": "tool", "tool_call_id": "call_plain", "content": "sunny"}]
    got = translate({"tools": [WEATHER], "messages": messages})
    assert got["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    got = translate({"tools": [WEATHER], "messages": messages}, FLASH25)
    assert "thoughtSignature" not in got["contents"][1]["parts"][0]


@pytest.mark.parametrize("messages,param", [
    ([user("x"), {"role": "tool", "tool_call_id": "call_x", "content": "1"}], "messages[1].tool_call_id"),
    ([user("x"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
])
def test_broken_tool_history_is_400(messages, param):
    with pytest.raises(RequestError) as info:
        to_gemini({"messages": messages}, BASE)
    assert info.value.body()["error"]["param"] == param


def test_prompt_token_bound():
    request = to_gemini({"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": [
        {"type": "text", "text": "x" * 10}, {"type": "text", "text": "日本語"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, VISION)
    assert prompt_token_bound(request) == 2 + 5 + 3 + 258


# --- response: Gemini events -> deltas -> chunks ----------------------------------------------
def _event(parts=None, finish=None, usage=None) -> dict:
    candidate: dict = {"content": {"role": "model", **({"parts": parts} if parts is not None else {})}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    event: dict = {"candidates": [candidate]}
    if usage is not None:
        event["usageMetadata"] = usage
    return event


def test_reader_thinking_text_and_signature_part():
    r = GeminiStreamReader()
    d = r.delta(_event([{"text": "Let me think", "thought": True}], usage={"promptTokenCount": 5}))
    assert (d.reasoning, d.content, d.finish_reason) == ("Let me think", "", None)
    d = r.delta(_event([{"text": "Hello"}]))
    assert (d.reasoning, d.content) == ("", "Hello")
    d = r.delta(_event([{"text": "", "thoughtSignature": "c2ln"}], finish="STOP", usage={
        "promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 7, "totalTokenCount": 15,
        "cachedContentTokenCount": 2, "toolUsePromptTokenCount": 1}))
    assert d.content == "" and d.finish_reason == "stop"
    assert (d.usage.prompt_tokens, d.usage.completion_tokens, d.usage.reasoning_tokens, d.usage.cached_tokens) == (
        6, 10, 7, 2)


def test_reader_usage_robust_to_missing_fields():
    d = GeminiStreamReader().delta({"usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}})
    assert (d.usage.prompt_tokens, d.usage.completion_tokens, d.usage.reasoning_tokens, d.usage.cached_tokens) == (
        4, 0, 0, 0)
    d = GeminiStreamReader().delta({"candidates": [{"content": {}, "finishReason": "STOP"}]})
    assert d.usage is None and d.finish_reason == "stop"


def test_reader_parallel_calls_with_signature_in_first_id():
    r = GeminiStreamReader()
    sig = "+/8AAQ=="  # base64 with every character the id must not carry
    d1 = r.delta(_event([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": sig}]))
    d2 = r.delta(_event([{"functionCall": {"name": "get_time", "args": {}}}], finish="STOP"))
    (a,), (b,) = d1.tool_calls, d2.tool_calls
    assert (a.index, a.name, a.arguments) == (0, "get_weather", '{"city":"Oslo"}')
    assert signature_from_id(a.id) == sig and signature_from_id(b.id) is None
    assert not set("+/=") & set(a.id)
    assert (b.index, b.arguments) == (1, "{}") and d2.finish_reason == "tool_calls"


def test_reader_parallel_tool_calls_false_keeps_the_first_call():
    r = GeminiStreamReader(max_calls=1)
    d = r.delta(_event([{"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {}}}],
                       finish="STOP"))
    assert [c.name for c in d.tool_calls] == ["a"] and d.finish_reason == "tool_calls"


@pytest.mark.parametrize("reason,expected", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop"),
    ("FINISH_REASON_UNSPECIFIED", "stop"),
])
def test_finish_reasons(reason, expected):
    assert GeminiStreamReader().delta(_event([{"text": "x"}], finish=reason)).finish_reason == expected


def test_length_wins_over_tool_calls_and_blocked_prompt_is_content_filter():
    r = GeminiStreamReader()
    assert r.delta(_event([{"functionCall": {"name": "a", "args": {}}}], finish="MAX_TOKENS")).finish_reason == "length"
    d = GeminiStreamReader().delta({"promptFeedback": {"blockReason": "SAFETY"},
                                    "usageMetadata": {"promptTokenCount": 3}})
    assert d.finish_reason == "content_filter"


def test_error_event_mid_stream_raises():
    with pytest.raises(ProviderError) as info:
        GeminiStreamReader().delta({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    assert info.value.status == 503


def test_chunks_stream_tool_calls_in_openai_delta_form():
    b = ChunkBuilder("chatcmpl-1", "gemini", 1)
    chunks = b.add(Delta(tool_calls=[ToolCallDelta(0, "call_a", "get_weather", '{"city":"Oslo"}'),
                                     ToolCallDelta(1, "call_b", "get_time", "{}")]))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}
    assert deltas[1] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]}
    assert deltas[2]["tool_calls"][0]["id"] == "call_b" and deltas[3]["tool_calls"][0]["function"] == {
        "arguments": "{}"}
    # fragments from an OpenAI-compatible upstream continue the call at their index
    b.add(Delta(tool_calls=[ToolCallDelta(2, "call_c", "f", '{"a":'), ToolCallDelta(2, "", "", "1}")],
                finish_reason="tool_calls"))
    message = b.completion(0)["choices"][0]["message"]
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"city":"Oslo"}', "{}", '{"a":1}']
    assert message["content"] is None and b.completion(0)["choices"][0]["finish_reason"] == "tool_calls"


def test_chunks_carry_reasoning_under_both_names():
    b = ChunkBuilder("chatcmpl-1", "gemini", 1)
    (chunk,) = b.add(Delta(reasoning="hmm"))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "hmm", "reasoning": "hmm"}
    b.add(Delta(content="ok", finish_reason="stop"))
    message = b.completion(0)["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] == "hmm" and message["content"] == "ok"


# --- errors ------------------------------------------------------------------------------------------
def _google(code: int, status: str, message: str = "m", details: list | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status,
                                   **({"details": details} if details else {})}})


RETRY = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]
BAD_KEY = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]


@pytest.mark.parametrize("status,gstatus,details,message,expected", [
    (400, "INVALID_ARGUMENT", None, "m", (400, "invalid_request_error", "invalid_request_error", False, None)),
    (400, "INVALID_ARGUMENT", BAD_KEY, "m", (502, "upstream_auth_error", "api_error", False, None)),
    (400, "FAILED_PRECONDITION", None, "m", (502, "upstream_precondition_failed", "api_error", False, None)),
    (400, "INVALID_ARGUMENT", None, "The input token count (1200000) exceeds the maximum number of tokens "
     "allowed (1048576).", (400, "context_length_exceeded", "invalid_request_error", False, None)),
    (403, "PERMISSION_DENIED", None, "m", (502, "upstream_permission_denied", "api_error", False, None)),
    (404, "NOT_FOUND", None, "m", (502, "upstream_not_found", "api_error", False, None)),
    (429, "RESOURCE_EXHAUSTED", RETRY, "m", (429, "upstream_rate_limited", "rate_limit_error", True, 3.0)),
    (429, "RESOURCE_EXHAUSTED", None, "m", (429, "upstream_rate_limited", "rate_limit_error", True, 1.0)),
    (500, "INTERNAL", None, "m", (502, "upstream_error", "api_error", True, None)),
    (503, "UNAVAILABLE", None, "m", (503, "upstream_unavailable", "api_error", True, 1.0)),
    (504, "DEADLINE_EXCEEDED", None, "m", (504, "upstream_timeout", "api_error", True, None)),
])
def test_google_errors_map_to_openai(status, gstatus, details, message, expected):
    err = map_error(status, _google(status, gstatus, message, details), {})
    assert (err.status, err.code, err.type, err.retryable, err.retry_after) == expected


def test_unparseable_error_body_and_retry_after_header():
    err = map_error(503, b"<html>oops</html>", {"Retry-After": "7"})
    assert err.status == 503 and err.retry_after == 7.0 and "HTTP 503" in err.message


# --- the OpenAI-compatible adapter -------------------------------------------------------------------
def test_openai_request_golden():
    body = {"model": "chained", "include_thoughts": False, "reasoning_effort": "low", "max_tokens": 50,
            "tools": [WEATHER], "tool_choice": "auto", "stream": False, "stream_options": {"include_usage": False},
            "messages": [user("w?"), {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [
                {"id": "fc_1_xs_AQID-_8", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "fc_1_xs_AQID-_8", "content": "sunny"}]}
    chained = dataclasses.replace(BASE, upstream_model="upstream-model")
    out = to_openai(body, chained)
    assert out == {
        "model": "upstream-model", "tools": [WEATHER], "tool_choice": "auto", "max_tokens": 50,
        "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True},
        "messages": [user("w?"), {"role": "assistant", "content": None, "tool_calls": [
            {"id": "fc_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"},
             "extra_content": {"google": {"thought_signature": "AQID+/8="}}}]},
            {"role": "tool", "tool_call_id": "fc_1", "content": "sunny"}],
    }
    gemini = to_openai(body, chained, gemini_dialect=True)
    assert gemini["extra_body"] == {"google": {"thinking_config": {"include_thoughts": False}}}


def test_openai_reader_golden():
    r = OpenAIStreamReader()
    d = r.delta({"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hm"}}]})
    assert d.reasoning == "hm"
    d = r.delta({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    assert d.content == "Hi"
    d = r.delta({"choices": [{"index": 0, "delta": {"tool_calls": [{
        "index": 0, "id": "fc_1", "type": "function", "function": {"name": "get_weather", "arguments": ""},
        "extra_content": {"google": {"thought_signature": "AQID+/8="}}}]}}]})
    (call,) = d.tool_calls
    assert call.id == "fc_1_xs_AQID-_8" and call.name == "get_weather"
    d = r.delta({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                              "finish_reason": "tool_calls"}]})
    assert d.tool_calls[0].id == "" and d.tool_calls[0].arguments == "{}" and r.finish_reason == "tool_calls"
    d = r.delta({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "completion_tokens_details": {
        "reasoning_tokens": 4}, "prompt_tokens_details": {"cached_tokens": 1}}})
    assert (d.usage.prompt_tokens, d.usage.completion_tokens, d.usage.reasoning_tokens, d.usage.cached_tokens) == (
        3, 9, 4, 1)
    hidden = OpenAIStreamReader(include_thoughts=False).delta(
        {"choices": [{"index": 0, "delta": {"reasoning": "secret"}}]})
    assert hidden.reasoning == ""


def test_openai_whole_completion_as_chunk():
    chunk = completion_as_chunk({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    r = OpenAIStreamReader()
    d = r.delta(chunk)
    assert d.tool_calls[0].id == "c1" and r.finish_reason == "tool_calls" and d.usage.completion_tokens == 2


@pytest.mark.parametrize("status,body,headers,expected", [
    (400, {"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": "x"}}, {},
     (400, "x", False, None)),
    (401, {"error": {"message": "key"}}, {}, (502, "upstream_auth_error", False, None)),
    (402, {"error": {"message": "broke"}}, {}, (502, "upstream_quota_exhausted", False, None)),
    (404, {"error": {"message": "model"}}, {}, (502, "upstream_not_found", False, None)),
    (429, {"error": {"message": "slow"}}, {"retry-after": "4"}, (429, "upstream_rate_limited", True, 4.0)),
    (429, {"error": {"message": "slow"}}, {"retry-after-ms": "1500"}, (429, "upstream_rate_limited", True, 1.5)),
    (500, {"error": {"message": "boom"}}, {}, (502, "upstream_error", True, None)),
    (503, [{"error": {"message": "gemini wraps errors in a list"}}], {}, (503, "upstream_unavailable", True, 1.0)),
])
def test_openai_upstream_errors(status, body, headers, expected):
    err = openai_map_error(status, orjson.dumps(body), headers)
    assert (err.status, err.code, err.retryable, err.retry_after) == expected
    if status == 400:
        assert err.body()["error"]["param"] == "messages"


def test_openai_mid_stream_error_is_not_retried():
    with pytest.raises(ProviderError) as info:
        OpenAIStreamReader().delta({"error": {"message": "upstream broke", "type": "api_error", "code": None}})
    assert info.value.status == 502 and not info.value.retryable


async def test_continuous_usage_stats_when_the_catalog_asks():
    """vLLM sends the usage so far on every chunk when asked: a cut stream then needs no drain."""
    from shared.catalog import parse_catalog
    from shared.settings import Settings
    from worker.node_worker import build_adapter

    providers = {"plain": {"adapter": "openai", "base_url": "http://127.0.0.1:9/v1"},
                 "vllm": {"adapter": "openai", "base_url": "http://127.0.0.1:9/v1", "continuous_usage_stats": True}}
    catalog = parse_catalog({"providers": providers, "nodes": {"p": {"provider": "plain"}, "v": {"provider": "vllm"}}})
    settings = Settings(redis_url="redis://unused")
    plain, vllm = build_adapter(catalog, "p", settings), build_adapter(catalog, "v", settings)
    try:
        assert (plain.running_usage, vllm.running_usage) == (False, True)
    finally:
        await plain.close()
        await vllm.close()
    out = to_openai({"messages": [user("hi")]}, BASE, continuous_usage=True)
    assert out["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
