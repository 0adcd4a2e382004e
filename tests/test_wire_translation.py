"""Golden tests of the Responses and Messages translations (no network): request -> the chat body every job
runs, and the worker's chunks -> each API's wording. docs/gemini-mapping.md (sections 8-10) names these."""

from __future__ import annotations

import orjson
import pytest

from gateway.messages_api import translate as mt
from gateway.messages_api.render import MessagesRenderer
from gateway.messages_api.wire import MessagesRequest
from gateway.responses_api import translate as rt
from gateway.responses_api.render import ResponsesRenderer
from gateway.responses_api.wire import ResponsesRequest
from shared.errors import ApiError
from shared.protocol import parse_chat_request
from shared.schema_bounds import MAX_REQUEST_INLINED_VALUES, check_schema
from shared.signatures import SKIP_SIGNATURE, tool_call_id
from tests.test_schema_bounds import wide_api_schema

PNG = "iVBORw0KGgo="
# Schemas each within their bounds, too many of them together (what parse_chat_request refuses for chat):
# each front end checks its own translation's schemas, named as its client wrote them.
WIDE = wide_api_schema()
TOO_MANY = MAX_REQUEST_INLINED_VALUES // check_schema(WIDE).values + 1


def responses(**kw) -> tuple[dict, list[dict]]:
    req = ResponsesRequest.model_validate({"model": "gemini", **kw})
    rt.check_request(req)
    body, conversation = rt.chat_body(req, [])
    parse_chat_request(body)  # what the translation gives is a valid chat body (admitted without parsing it again)
    return body, conversation


def messages(**kw) -> dict:
    req = MessagesRequest.model_validate({"model": "gemini", "max_tokens": 16384, **kw})
    mt.check_request(req)
    body = mt.chat_body(req)
    parse_chat_request(body)
    return body


# --- Responses -----------------------------------------------------------------------------------
def test_responses_input_string_and_instructions():
    body, conversation = responses(input="hi", instructions="be brief")
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert conversation == [{"role": "user", "content": "hi"}]  # instructions are not carried to a follow-up


def test_responses_items_function_calls_join_their_assistant_turn():
    body, _ = responses(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "w?"},
                                     {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me look"}]},
        {"type": "function_call", "call_id": "call_a_ts_sig", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a_ts_sig", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "noon"}]},
        {"role": "developer", "content": "answer now"}])
    m = body["messages"]
    assert m[0]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert m[1]["content"] == "let me look" and [c["id"] for c in m[1]["tool_calls"]] == ["call_a_ts_sig", "call_b"]
    assert m[2:4] == [{"role": "tool", "tool_call_id": "call_a_ts_sig", "content": "sunny"},
                      {"role": "tool", "tool_call_id": "call_b", "content": "noon"}]
    assert m[4] == {"role": "developer", "content": "answer now"} and len(m) == 5  # the reasoning item is dropped


def test_responses_parameters():
    body, _ = responses(input="x", max_output_tokens=100, temperature=0, top_p=0.5, user="u",
                        reasoning={"effort": "xhigh", "summary": "detailed"}, parallel_tool_calls=False,
                        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                        tool_choice={"type": "function", "name": "f"},
                        text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"},
                                         "strict": True}})
    assert body["max_completion_tokens"] == 100 and body["temperature"] == 0 and body["top_p"] == 0.5
    assert body["reasoning_effort"] == "high" and body["include_thoughts"] is True and body["user"] == "u"
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"},
                                                                              "strict": True}}
    plain, _ = responses(input="x", text={"format": {"type": "json_object"}}, tool_choice="required")
    assert plain["response_format"] == {"type": "json_object"} and plain["include_thoughts"] is False


@pytest.mark.parametrize("kw,param", [
    ({"background": True}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),  # nothing to answer: the chat schema's own 400
    ({"tools": [{"type": "function", "name": f"t{i}", "parameters": WIDE} for i in range(TOO_MANY)]},
     f"tools[{TOO_MANY - 1}].parameters"),
])
def test_responses_refusals_name_the_param(kw, param):
    with pytest.raises(ApiError) as info:
        responses(**{"input": "x", **kw})
    assert info.value.status == 400 and info.value.param == param


def _chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return orjson.dumps({"choices": choices, **({"usage": usage} if usage else {})})


USAGE = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 4},
         "completion_tokens_details": {"reasoning_tokens": 3}, "credits_charged": 0.01}


def test_responses_stream_items_in_order_and_incomplete_on_length():
    r = ResponsesRenderer({"id": "resp_x", "object": "response"})
    call = tool_call_id("sig")
    out = b"".join(b"".join(r.chunk(c)) for c in (
        _chunk({"reasoning_content": "hm"}), _chunk({"content": "a"}), _chunk({"content": "b"}),
        _chunk({"tool_calls": [{"index": 0, "id": call, "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), _chunk({}, "length"), _chunk(usage=USAGE)))
    out += b"".join(r.done())
    kinds = [line[7:] for line in out.decode().splitlines() if line.startswith("event: ")]
    assert kinds[-1] == "response.incomplete" and r.final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["type"] for i in r.final["output"]] == ["reasoning", "message", "function_call"]
    assert r.final["output"][2]["call_id"] == call and r.final["output"][1]["content"][0]["text"] == "ab"
    assert r.final["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
                                "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 17,
                                "credits_charged": 0.01}
    assert r.assistant == {"role": "assistant", "content": "ab", "tool_calls": [
        {"id": call, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


# --- Messages ------------------------------------------------------------------------------------
def test_messages_system_blocks_tool_results_first_and_errors():
    body = messages(system=[{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}], messages=[
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": SKIP_SIGNATURE},
                                          {"type": "text", "text": "looking"},
                                          {"type": "tool_use", "id": "toolu_1_ts_abc", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "text", "text": "also"},
                                     {"type": "tool_result", "tool_use_id": "toolu_1_ts_abc", "content": "boom",
                                      "is_error": True},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PNG}}]}])
    m = body["messages"]
    assert m[0] == {"role": "system", "content": "be brief"} and m[1] == {"role": "user", "content": [
        {"type": "text", "text": "w?"}]}
    assert m[2] == {"role": "assistant", "content": "looking", "tool_calls": [
        {"id": "toolu_1_ts_abc", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}
    assert m[3] == {"role": "tool", "tool_call_id": "toolu_1_ts_abc", "content": '{"error":"boom"}'}
    assert m[4]["content"][0] == {"type": "text", "text": "also"}
    assert m[4]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"


def test_messages_a_thinking_signature_goes_onto_a_rewritten_call_id():
    body = messages(messages=[
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "c2ln+/=="},
                                          {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "ok"}]}])
    call_id = body["messages"][1]["tool_calls"][0]["id"]
    assert call_id == "toolu_x_ts_c2ln-_" and body["messages"][2]["tool_call_id"] == call_id


@pytest.mark.parametrize("thinking,effort,thoughts", [
    (None, "none", False), ({"type": "disabled"}, "none", False), ({"type": "enabled", "budget_tokens": 1024}, "low", True),
    ({"type": "enabled", "budget_tokens": 8192}, "medium", True), ({"type": "enabled", "budget_tokens": 9000}, "high", True),
    ({"type": "adaptive"}, "high", True)])
def test_messages_thinking_budget_to_effort(thinking, effort, thoughts):
    body = messages(messages=[{"role": "user", "content": "x"}], **({"thinking": thinking} if thinking else {}))
    assert body["reasoning_effort"] == effort and body["include_thoughts"] is thoughts


@pytest.mark.parametrize("choice,expected", [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}})])
def test_messages_tool_choice(choice, expected):
    body = messages(messages=[{"role": "user", "content": "x"}], tool_choice={**choice, "disable_parallel_tool_use": True},
                    tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}])
    assert body["tool_choice"] == expected and body["parallel_tool_calls"] is False
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "description": "d",
                                                               "parameters": {"type": "object"}}}]


def test_messages_parameters():
    body = messages(messages=[{"role": "user", "content": "x"}], stop_sequences=["END"], temperature=0, top_p=0.9,
                    top_k=5, metadata={"user_id": "u1"})
    assert body["stop"] == ["END"] and body["temperature"] == 0 and body["top_p"] == 0.9 and body["user"] == "u1"
    assert body["max_completion_tokens"] == 16384 and "top_k" not in body


@pytest.mark.parametrize("kw,param", [
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 5000}, "max_tokens": 4000}, "thinking.budget_tokens"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
    ({"tool_choice": {"type": "tool", "name": "g"}}, "tool_choice.name"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]},
     "messages.0.content.0.source.type"),
    ({"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}]}, "messages"),
    ({"tools": [{"name": f"t{i}", "input_schema": WIDE} for i in range(TOO_MANY)]}, f"tools.{TOO_MANY - 1}.input_schema"),
])
def test_messages_refusals_name_the_param(kw, param):
    with pytest.raises(ApiError) as info:
        messages(**{"messages": [{"role": "user", "content": "x"}], **kw})
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize("finish,stop_reason", [("stop", "end_turn"), ("length", "max_tokens"),
                                                ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_messages_stop_reasons_and_usage(finish, stop_reason):
    r = MessagesRenderer("gemini")
    completion = {"choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "x"}}],
                  "usage": USAGE}
    m = orjson.loads(r.result(orjson.dumps(completion)).body)
    assert m["stop_reason"] == stop_reason
    assert m["usage"] == {"input_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4,
                          "output_tokens": 7, "credits_charged": 0.01}


def test_messages_stream_closes_thinking_with_the_calls_signature():
    r = MessagesRenderer("gemini")
    call = tool_call_id("c2ln")
    out = b"".join(b"".join(r.chunk(c)) for c in (
        _chunk({"reasoning_content": "hm"}),
        _chunk({"tool_calls": [{"index": 0, "id": call, "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}), _chunk({}, "tool_calls"),
        _chunk(usage=USAGE))) + b"".join(r.done())
    events = [orjson.loads(line[6:]) for line in out.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "content_block_start",
                                           "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[3]["delta"] == {"type": "signature_delta", "signature": "c2ln"}
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":1}'}
    assert events[8]["delta"]["stop_reason"] == "tool_use" and events[8]["usage"]["output_tokens"] == 7
