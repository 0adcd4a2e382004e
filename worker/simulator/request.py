"""Validation of generateContent / countTokens requests, as strict as Google's.

Field names may be camelCase or snake_case (Google's JSON parser takes both); unknown names,
wrong JSON types and out-of-range values answer 400 INVALID_ARGUMENT with Google's wording.
Numbers may be JSON strings ("5"), as proto JSON allows. The result is a `GenRequest`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import catalog
from .config import GenConfig, ToolSpec, parse_generation_config, parse_tools
from .errors import bad_value, invalid
from .generate import count_text_tokens, verify_call_signature
from .proto import as_bool, as_bytes, as_list, as_str, obj_fields

IMAGE_TOKENS = 258
_DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse",
                "executableCode", "codeExecutionResult")
_PART_FIELDS = frozenset((*_DATA_FIELDS, "thought", "thoughtSignature", "videoMetadata",
                          "partMetadata", "mediaResolution"))
_REQUEST_FIELDS = frozenset({"model", "contents", "systemInstruction", "tools", "toolConfig",
                             "safetySettings", "generationConfig", "cachedContent", "serviceTier",
                             "store"})
_CONTENT_FIELDS = frozenset({"role", "parts"})
_SAFETY_FIELDS = frozenset({"category", "threshold", "method"})
_COUNT_FIELDS = frozenset({"contents", "generateContentRequest"})
_CALL_FIELDS = frozenset({"name", "args", "id"})
_RESPONSE_FIELDS = frozenset({"name", "response", "id", "willContinue", "scheduling", "parts"})
_BLOB_FIELDS = frozenset({"mimeType", "data", "displayName"})
_FILE_FIELDS = frozenset({"mimeType", "fileUri", "displayName"})


@dataclass(slots=True)
class GenRequest:
    model: str
    gen3: bool
    contents: list[dict[str, Any]]
    text_tokens: int = 0
    media_tokens: int = 0
    last_user_texts: list[str] = field(default_factory=list)
    answer_function_response: bool = False
    config: GenConfig = field(default_factory=GenConfig)
    tools: ToolSpec = field(default_factory=ToolSpec)
    digest: bytes = b""

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.media_tokens


# ------------------------------------------------------------------------------------ content

def _part(p: Any, path: str, role: str, gen: GenRequest) -> dict[str, Any]:
    part = obj_fields(p, _PART_FIELDS, path,
                      "type.googleapis.com/google.ai.generativelanguage.v1beta.Part")
    data = [k for k in _DATA_FIELDS if k in part]
    if not data:
        raise invalid(f"* GenerateContentRequest.{path}.data: required oneof field 'data' must "
                      "have one initialized field\n")
    if len(data) > 1:
        raise invalid(f"Invalid JSON payload received. Oneof field 'data' is already set. "
                      f"Cannot set '{data[1]}'")
    kind = data[0]
    if "thought" in part:
        as_bool(part["thought"], f"{path}.thought")
    if "thoughtSignature" in part:
        as_bytes(part["thoughtSignature"], f"{path}.thought_signature")
    value = part[kind]
    if kind == "text":
        as_str(value, f"{path}.text")
        tokens = count_text_tokens(value)
    elif kind in ("inlineData", "fileData"):
        sub = f"{path}.{'inline_data' if kind == 'inlineData' else 'file_data'}"
        allowed = _BLOB_FIELDS if kind == "inlineData" else _FILE_FIELDS
        blob = obj_fields(value, allowed, sub, "TYPE_MESSAGE")
        for k, v in blob.items():
            if k == "data":
                as_bytes(v, f"{sub}.data")
            else:
                as_str(v, f"{sub}.{k}")
        if kind == "inlineData" and "mimeType" not in blob:
            raise invalid(f"* GenerateContentRequest.{sub}.mime_type: mime_type is not specified\n")
        part[kind] = blob
        tokens = 0
        gen.media_tokens += IMAGE_TOKENS
    elif kind == "functionCall":
        sub = f"{path}.function_call"
        fc = obj_fields(value, _CALL_FIELDS, sub, "TYPE_MESSAGE")
        if not fc.get("name"):
            raise invalid(f"* GenerateContentRequest.{sub}.name: Name cannot be empty.\n")
        as_str(fc["name"], f"{sub}.name")
        if "args" in fc and not isinstance(fc["args"], dict):
            raise bad_value(f"{sub}.args", "type.googleapis.com/google.protobuf.Struct", fc["args"])
        if role != "model":
            raise invalid("Please ensure that function call turn comes immediately after a user "
                          "turn or after a function response turn.")
        part[kind] = fc
        tokens = count_text_tokens(orjson.dumps(fc).decode())
    elif kind == "functionResponse":
        sub = f"{path}.function_response"
        fr = obj_fields(value, _RESPONSE_FIELDS, sub, "TYPE_MESSAGE")
        if not fr.get("name"):
            raise invalid(f"* GenerateContentRequest.{sub}.name: Name cannot be empty.\n")
        as_str(fr["name"], f"{sub}.name")
        if "response" in fr and not isinstance(fr["response"], dict):
            raise bad_value(f"{sub}.response", "type.googleapis.com/google.protobuf.Struct",
                            fr["response"])
        if role != "user":
            raise invalid("Please ensure that function response turn comes immediately after a "
                          "function call turn.")
        part[kind] = fr
        tokens = count_text_tokens(orjson.dumps(fr).decode())
    else:
        if not isinstance(value, dict):
            raise bad_value(f"{path}.{kind}", "TYPE_MESSAGE", value)
        tokens = count_text_tokens(str(value.get("code") or value.get("output") or ""))
    gen.text_tokens += tokens
    return part


def _content(c: Any, path: str, default_role: str | None, gen: GenRequest) -> dict[str, Any]:
    content = obj_fields(c, _CONTENT_FIELDS, path,
                         "type.googleapis.com/google.ai.generativelanguage.v1beta.Content")
    role = content.get("role") or default_role
    if role not in ("user", "model"):
        raise invalid("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not parts:
        raise invalid(f"* GenerateContentRequest.{path}.parts: contents.parts must not be empty.\n")
    parts = as_list(parts, f"{path}.parts", "TYPE_MESSAGE")
    return {"role": role,
            "parts": [_part(p, f"{path}.parts[{i}]", role, gen) for i, p in enumerate(parts)]}


def _turn_rules(contents: list[dict[str, Any]], gen3: bool) -> None:
    """Google's ordering rules for function calling, and Gemini 3's thought signatures."""
    turn_start = 0
    for i, c in enumerate(contents):
        if c["role"] == "user" and any("functionResponse" not in p for p in c["parts"]):
            turn_start = i
    for i, c in enumerate(contents):
        calls = [p for p in c["parts"] if "functionCall" in p]
        responses = [p for p in c["parts"] if "functionResponse" in p]
        prev = contents[i - 1] if i else None
        if calls:
            prev_ok = prev is not None and prev["role"] == "user"
            if not prev_ok:
                raise invalid("Please ensure that function call turn comes immediately after a "
                              "user turn or after a function response turn.")
            if gen3 and i > turn_start:
                _check_signature(calls[0], i)
        if responses:
            prev_calls = ([p["functionCall"] for p in prev["parts"] if "functionCall" in p]
                          if prev is not None and prev["role"] == "model" else [])
            if not prev_calls:
                raise invalid("Please ensure that function response turn comes immediately after "
                              "a function call turn.")
            if len(responses) != len(prev_calls):
                raise invalid("Please ensure that the number of function response parts is equal "
                              "to the number of function call parts of the function call turn.")
            names = {fc["name"] for fc in prev_calls}
            for p in responses:
                name = p["functionResponse"]["name"]
                if name not in names:
                    raise invalid(
                        f"Function response name \"{name}\" does not match any function call in "
                        "the preceding function call turn."
                    )


def _check_signature(part: dict[str, Any], index: int) -> None:
    fc = part["functionCall"]
    sig = part.get("thoughtSignature")
    if not sig:
        raise invalid(
            "Function call is missing a thought_signature in functionCall parts. This is "
            "required for tools to work correctly, and missing thought_signature may lead to "
            f"degraded model performance. Additional data, function call `default_api:"
            f"{fc['name']}` , position {index + 1}. Please refer to "
            "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
        )
    if not verify_call_signature(sig, fc["name"], fc.get("args") or {}):
        raise invalid("Corrupted thought signature.")


# ------------------------------------------------------------------------------------- config

# ------------------------------------------------------------------------------------ entries

def parse_generate(model: str, body: Any, turn_rules: bool = True) -> GenRequest:
    """Validate a GenerateContentRequest body for `model` (`turn_rules`: function-calling order
    and Gemini 3 thought signatures, which countTokens does not check)."""
    req = obj_fields(body, _REQUEST_FIELDS, "", "GenerateContentRequest")
    gen = GenRequest(model=model, gen3=catalog.is_gen3(model), contents=[])
    raw_contents = req.get("contents")
    if not raw_contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified\n")
    raw_contents = as_list(raw_contents, "contents",
                           "type.googleapis.com/google.ai.generativelanguage.v1beta.Content")
    default_role = "user" if len(raw_contents) == 1 else None
    gen.contents = [_content(c, f"contents[{i}]", default_role, gen)
                    for i, c in enumerate(raw_contents)]
    if "systemInstruction" in req and req["systemInstruction"] is not None:
        si = obj_fields(req["systemInstruction"], _CONTENT_FIELDS, "system_instruction",
                        "TYPE_MESSAGE")
        parts = as_list(si.get("parts") or [], "system_instruction.parts", "TYPE_MESSAGE")
        for i, p in enumerate(parts):
            _part(p, f"system_instruction.parts[{i}]", "system", gen)
    if "generationConfig" in req and req["generationConfig"] is not None:
        gen.config = parse_generation_config(req["generationConfig"], model)
    if req.get("tools") is not None or req.get("toolConfig") is not None:
        gen.tools = parse_tools(req.get("tools") or [], req.get("toolConfig"))
    if "safetySettings" in req:
        for i, s in enumerate(as_list(req["safetySettings"], "safety_settings", "TYPE_MESSAGE")):
            ss = obj_fields(s, _SAFETY_FIELDS, f"safety_settings[{i}]", "TYPE_MESSAGE")
            for k, v in ss.items():
                as_str(v, f"safety_settings[{i}].{k}")
    if turn_rules:
        _turn_rules(gen.contents, gen.gen3)
    for c in reversed(gen.contents):
        if c["role"] == "user":
            gen.last_user_texts = [p["text"] for p in c["parts"] if "text" in p]
            break
    last = gen.contents[-1]
    gen.answer_function_response = any("functionResponse" in p for p in last["parts"])
    gen.digest = hashlib.blake2b(
        orjson.dumps(gen.contents, option=orjson.OPT_SORT_KEYS) + str(gen.config.seed).encode(),
        digest_size=16,
    ).digest()
    return gen


def parse_count(model: str, body: Any) -> GenRequest:
    """Validate a CountTokensRequest body; the result's prompt_tokens is totalTokens."""
    req = obj_fields(body, _COUNT_FIELDS, "", "CountTokensRequest")
    if req.get("contents") and req.get("generateContentRequest"):
        raise invalid("* CountTokensRequest: contents and generate_content_request cannot both "
                      "be set.\n")
    inner = req.get("generateContentRequest")
    if inner is not None:
        return parse_generate(model, inner, turn_rules=False)
    if not req.get("contents"):
        raise invalid("* CountTokensRequest.contents: contents is not specified\n")
    return parse_generate(model, {"contents": req["contents"]}, turn_rules=False)
