"""A native Gemini request checked against an allowlist, not passed through blindly.

Taken: ``contents`` (text, inlineData, functionCall, functionResponse parts, with ``thought`` and
``thoughtSignature``), ``systemInstruction``, function tools, ``toolConfig.functionCallingConfig``,
``generationConfig`` (``candidateCount`` 1, text output), ``safetySettings``. Refused with a 400 naming
the field: Google-billed tools (search grounding, code execution, URL context, maps, file search,
computer use), ``cachedContent``, ``fileData`` and other references into the operator's Google
project, service tiers, and any field not listed. Names may be camelCase or snake_case, as Google's
JSON takes both; they leave camelCase. The result also bounds the prompt's tokens for the hold.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson

from shared.admission import IMAGE_TOKEN_BOUND, MESSAGE_TOKEN_BOUND, text_token_bound
from shared.catalog import Model
from shared.errors import ApiError, bad_request
from shared.schema_bounds import SchemaTooLarge, check_schema

REQUEST_FIELDS = ("contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings")
REFUSED = {
    "cachedContent": "cached contents live in the operator's Google project",
    "serviceTier": "service tiers are the operator's choice",
    "labels": "billing labels belong to the operator's Google project",
    "store": "interactions are not stored upstream",
}
PART_FIELDS = ("text", "inlineData", "functionCall", "functionResponse", "thought", "thoughtSignature")
REFUSED_PARTS = {
    "fileData": "file references point into the operator's Google project; send the bytes as inlineData",
    "executableCode": "code execution is a Google-billed tool",
    "codeExecutionResult": "code execution is a Google-billed tool",
}
GOOGLE_TOOLS = ("googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext", "googleMaps", "fileSearch",
                "computerUse", "mcpServers", "retrieval", "enterpriseWebSearch")
DECLARATION_SCHEMAS = ("parameters", "parametersJsonSchema", "response", "responseJsonSchema")
GENERATION_FIELDS = ("stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
                     "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
                     "thinkingConfig", "responseLogprobs", "logprobs", "mediaResolution", "responseModalities")
COUNT_FIELDS = ("contents", "generateContentRequest")


def camel(name: str) -> str:
    if "_" not in name:  # what Google's SDKs send: as it is, no string work per field
        return name
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise bad_request(f"Invalid value at '{where}': expected an object.", param=where)
    return value


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise bad_request(f"Invalid value at '{where}': expected a list.", param=where)
    return value


def _fields(value: object, allowed: tuple[str, ...], where: str, refused: dict[str, str] | None = None) -> dict:
    """``value``'s fields in camelCase; a field not allowed is a 400 naming it (and why, when refused)."""
    out = {}
    for name, item in _object(value, where or "request").items():
        key = camel(name)
        if key not in allowed:  # (a refused field is never allowed)
            path = f"{where}.{key}" if where else key
            if refused and key in refused:
                raise bad_request(f"'{path}' is not supported: {refused[key]}.", param=path, code="unsupported_field")
            raise bad_request(f"Unknown or unsupported field '{path}'.", param=path, code="unsupported_field")
        out[key] = item
    return out


@dataclass
class NativeRequest:
    body: dict  # the allowlisted request, camelCase, as the worker sends it
    prompt_bound: int  # at most this many prompt tokens (for the hold)
    prompt_estimate: int  # about this many (for tokens/min)
    max_output_tokens: int | None


class _Bound:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.bound = 0
        self.chars = 0

    def text(self, text: str) -> None:
        self.bound += text_token_bound(text)
        self.chars += len(text)

    def blob(self, blob: dict, where: str) -> None:
        mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
        kind = mime.split("/")[0]
        if kind == "image" and "image" not in self.model.input_types:
            raise bad_request(f"Model '{self.model.id}' does not accept image input.", param=where)
        if kind != "image" and kind not in self.model.input_types:
            raise bad_request(f"Model '{self.model.id}' does not accept {mime or 'this'} input.", param=where)
        try:
            size = len(base64.b64decode(str(blob.get("data") or ""), validate=False))
        except (binascii.Error, ValueError):
            raise bad_request("inlineData.data must be base64.", param=f"{where}.data") from None
        self.bound += IMAGE_TOKEN_BOUND if kind == "image" else size // 4 + 1  # audio, video, documents
        self.chars += IMAGE_TOKEN_BOUND * 4


def _parts(content: object, where: str, bound: _Bound) -> dict:
    content = _fields(content, ("role", "parts"), where)
    parts = []
    for j, part in enumerate(_list(content.get("parts") or [], f"{where}.parts")):
        at = f"{where}.parts[{j}]"
        part = _fields(part, PART_FIELDS, at, REFUSED_PARTS)
        if isinstance(part.get("text"), str):
            bound.text(part["text"])
        if "inlineData" in part:
            part["inlineData"] = {camel(k): v for k, v in _object(part["inlineData"], f"{at}.inlineData").items()}
            bound.blob(part["inlineData"], f"{at}.inlineData")
        for key in ("functionCall", "functionResponse"):
            if key in part:
                bound.text(orjson.dumps(part[key]).decode())
        parts.append(part)
    bound.bound += MESSAGE_TOKEN_BOUND
    return {**content, "parts": parts}


def _schema(value: object, where: str) -> None:
    try:
        check_schema(value)
    except SchemaTooLarge as exc:
        raise bad_request(f"{exc}.", param=where) from None


def _tools(tools: object, bound: _Bound) -> list:
    out = []
    for i, tool in enumerate(_list(tools, "tools")):
        tool = _fields(tool, ("functionDeclarations",), f"tools[{i}]",
                       {name: "Google-billed tools are not offered; declare functions instead" for name in GOOGLE_TOOLS})
        for j, decl in enumerate(_list(tool.get("functionDeclarations") or [], f"tools[{i}].functionDeclarations")):
            for key, schema in _object(decl, f"tools[{i}].functionDeclarations[{j}]").items():
                if camel(key) in DECLARATION_SCHEMAS:
                    _schema(schema, f"tools[{i}].functionDeclarations[{j}].{camel(key)}")
        bound.text(orjson.dumps(tool).decode())
        out.append(tool)
    return out


def _generation_config(value: object, model: Model) -> dict:
    config = _fields(value, GENERATION_FIELDS, "generationConfig",
                     {"speechConfig": "audio output is not offered", "imageConfig": "image output is not offered"})
    where = "generationConfig"
    if config.get("candidateCount") not in (None, 1):
        raise bad_request(f"{where}.candidateCount: only 1 is supported.", param=f"{where}.candidateCount")
    modalities = config.get("responseModalities")
    if modalities is not None and [str(m).upper() for m in _list(modalities, f"{where}.responseModalities")] != ["TEXT"]:
        raise bad_request(f"{where}.responseModalities: only TEXT output is offered.",
                          param=f"{where}.responseModalities")
    limit = config.get("maxOutputTokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise bad_request(f"{where}.maxOutputTokens must be a positive integer.", param=f"{where}.maxOutputTokens")
    if limit is not None and limit > model.max_output_tokens:
        raise bad_request(f"{where}.maxOutputTokens is too large: {limit}. This model supports at most "
                          f"{model.max_output_tokens} output tokens.", param=f"{where}.maxOutputTokens")
    for key in ("responseSchema", "responseJsonSchema"):
        if key in config:
            _schema(config[key], f"{where}.{key}")
    if "thinkingConfig" in config:
        config["thinkingConfig"] = {camel(k): v for k, v in _object(config["thinkingConfig"],
                                                                    f"{where}.thinkingConfig").items()}
    return config


def parse_generate(raw: object, model: Model, max_contents: int) -> NativeRequest:
    request = _fields(raw, REQUEST_FIELDS, "", REFUSED)
    bound = _Bound(model)
    contents = _list(request.get("contents") or [], "contents")
    if not contents:
        raise bad_request("contents is not specified.", param="contents")
    if len(contents) > max_contents:
        raise bad_request(f"Too many contents: at most {max_contents} per request.", param="contents")
    body: dict = {"contents": [_parts(c, f"contents[{i}]", bound) for i, c in enumerate(contents)]}
    if request.get("systemInstruction") is not None:
        body["systemInstruction"] = _parts(request["systemInstruction"], "systemInstruction", bound)
    if request.get("tools") is not None:
        body["tools"] = _tools(request["tools"], bound)
    if request.get("toolConfig") is not None:
        body["toolConfig"] = _fields(request["toolConfig"], ("functionCallingConfig",), "toolConfig",
                                     {"retrievalConfig": "it configures Google-billed grounding"})
    if request.get("generationConfig") is not None:
        body["generationConfig"] = _generation_config(request["generationConfig"], model)
    if request.get("safetySettings") is not None:
        body["safetySettings"] = [_fields(s, ("category", "threshold", "method"), f"safetySettings[{i}]")
                                  for i, s in enumerate(_list(request["safetySettings"], "safetySettings"))]
    limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
    return NativeRequest(body, bound.bound, bound.chars // 4, limit)


def parse_count(raw: object, model: Model, max_contents: int) -> NativeRequest:
    """countTokens' body (``contents``, or a whole ``generateContentRequest``) as a generate request."""
    request = _fields(raw, COUNT_FIELDS, "")
    inner = request.get("generateContentRequest")
    if inner is not None:
        inner = {k: v for k, v in _object(inner, "generateContentRequest").items() if camel(k) != "model"}
        try:
            return parse_generate(inner, model, max_contents)
        except ApiError as exc:
            exc.param = f"generateContentRequest.{exc.param}" if exc.param else exc.param
            raise
    return parse_generate({"contents": request.get("contents")}, model, max_contents)
