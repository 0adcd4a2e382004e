"""OpenAI chat request -> Gemini ``generateContent`` request (``to_gemini``), and a prompt bound.

The request half of the Gemini translation (the response half and the HTTP adapter are
``worker/gemini.py``); ``docs/gemini-mapping.md`` tables every mapping and names its test.
"""

from __future__ import annotations

import re

import orjson

from shared.catalog import Model
from shared.schema_bounds import SchemaTooLarge
from shared.signatures import SIGNATURE_MARK, SKIP_SIGNATURE, signature_from_id, tool_call_id  # noqa: F401 - re-exported
from worker.provider import RequestError
from worker.schema import to_gemini_schema


# Thought signatures ride inside the tool call id (shared/signatures.py): Gemini 3 rejects a follow-up
# turn whose functionCall lost its thoughtSignature, and clients echo tool call ids verbatim.


# --- thinking: reasoning_effort -> thinkingLevel / thinkingBudget, from the catalog -----------
# The catalog's `thinking` says how a model takes its thinking control:
#   "level"                 Gemini 3 Flash: thinkingLevel MINIMAL/LOW/MEDIUM/HIGH
#   "level:low,high"        a model that accepts only these levels (Gemini 3 Pro)
#   "budget"                Gemini 2.5 Flash: thinkingBudget 0..24576 (0 turns thinking off)
#   "budget:128-32768"      a model with another budget range (Gemini 2.5 Pro)
#   "none"                  no thinkingConfig at all
EFFORTS = ("minimal", "low", "medium", "high")
BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192}
DEFAULT_BUDGET_RANGE = (0, 24576)


def _level(effort: str, spec: str) -> str:
    allowed = [lvl.strip().lower() for lvl in spec.split(",") if lvl.strip()] if spec else list(EFFORTS)
    allowed = [lvl for lvl in EFFORTS if lvl in allowed] or list(EFFORTS)
    if effort == "none":  # Gemini 3 cannot turn thinking off: think as little as the model allows
        return allowed[0].upper()
    if effort in allowed:
        return effort.upper()
    want = EFFORTS.index(effort)
    # The nearest level the model takes; between two, the higher one (never think less than asked).
    return min(allowed, key=lambda lvl: (abs(EFFORTS.index(lvl) - want), -EFFORTS.index(lvl))).upper()


def _budget(effort: str, spec: str) -> int:
    lo, hi = DEFAULT_BUDGET_RANGE
    if spec:
        a, _, b = spec.partition("-")
        lo, hi = int(a), int(b or a)
    if effort == "none":
        return lo
    if effort == "high":
        return hi
    return max(lo, min(hi, BUDGETS[effort]))


def thinking_config(body: dict, model: Model) -> dict | None:
    kind, _, spec = model.thinking.partition(":")
    if kind not in ("level", "budget"):
        return None
    effort = body.get("reasoning_effort") or "high"
    config: dict = {"includeThoughts": bool(body.get("include_thoughts", True))}
    if kind == "level":
        config["thinkingLevel"] = _level(effort, spec)
    else:
        config["thinkingBudget"] = _budget(effort, spec)
    return config


# --- request: OpenAI -> Gemini ---------------------------------------------------
def _text_of(content: str | list | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*);base64,", re.I)


def _user_parts(content: str | list, model: Model, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for p in content:
        if p["type"] == "text":
            if p["text"]:
                parts.append({"text": p["text"]})
        elif p["type"] == "image_url":
            if "image" not in model.input_types:
                raise RequestError(f"Model '{model.id}' does not accept image input.", where, "unsupported_content")
            url = p["image_url"]["url"]
            m = _DATA_URI.match(url)
            if not m:
                raise RequestError("image_url must be a base64 data URI (data:image/png;base64,...); "
                                   "remote URLs are not fetched.", where, "invalid_image_url")
            parts.append({"inlineData": {"mimeType": (m.group(1) or "image/png").lower(), "data": url[m.end():]}})
    return parts


def _tool_response(content: str | list) -> dict:
    text = _text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _contents(messages: list[dict], model: Model) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    contents: list[dict] = []
    call_names: dict[str, str] = {}
    needs_signatures = model.thinking.startswith("level")  # Gemini 3 enforces them

    def append(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:  # Gemini wants turns to alternate
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, m in enumerate(messages):
        role = m["role"]
        if role in ("system", "developer"):
            text = _text_of(m["content"])
            if text:
                system.append({"text": text})
        elif role == "user":
            append("user", _user_parts(m["content"], model, f"messages[{i}].content"))
        elif role == "assistant":
            parts: list[dict] = []
            text = _text_of(m.get("content"))
            if text:
                parts.append({"text": text})
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call["function"]
                call_names[call["id"]] = fn["name"]
                try:
                    args = orjson.loads(fn["arguments"] or "{}")
                except orjson.JSONDecodeError:
                    raise RequestError(f"tool call {call['id']!r} has arguments that are not JSON.",
                                       f"messages[{i}].tool_calls[{j}].function.arguments") from None
                if not isinstance(args, dict):
                    raise RequestError(f"tool call {call['id']!r} has arguments that are not a JSON object.",
                                       f"messages[{i}].tool_calls[{j}].function.arguments")
                part: dict = {"functionCall": {"name": fn["name"], "args": args}}
                signature = signature_from_id(call["id"])
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            append("model", parts)
        elif role == "tool":
            name = call_names.get(m["tool_call_id"])
            if name is None:
                raise RequestError(f"tool message refers to unknown tool_call_id {m['tool_call_id']!r}; it must "
                                   "answer a tool call of an earlier assistant message.",
                                   f"messages[{i}].tool_call_id", "invalid_tool_call_id")
            append("user", [{"functionResponse": {"name": name, "response": _tool_response(m["content"])}}])
    if needs_signatures:
        for c in contents:
            calls = [p for p in c["parts"] if "functionCall" in p]
            if c["role"] == "model" and calls and "thoughtSignature" not in calls[0]:
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE
    if not contents and system:  # OpenAI accepts a conversation of system messages alone
        contents, system = [{"role": "user", "parts": system}], []
    return system, contents


def _generation_config(body: dict, model: Model) -> dict:
    config: dict = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            config[dst] = body[src]
    if body.get("seed") is not None:
        config["seed"] = body["seed"] % 2**31  # Gemini's seed is an int32; OpenAI's any integer
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is not None:
            if value > model.max_output_tokens:
                raise RequestError(f"{param} is too large: {value}. This model supports at most "
                                   f"{model.max_output_tokens} completion tokens.", param)
            config["maxOutputTokens"] = value
            break
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        schema = fmt["json_schema"].get("schema")
        if schema:
            config["responseJsonSchema"] = _json_schema(schema, "response_format.json_schema.schema")
    thinking = thinking_config(body, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _json_schema(schema: dict, param: str) -> dict:
    try:
        return to_gemini_schema(schema)
    except SchemaTooLarge as exc:  # the gateway refuses these first; this is for what slipped past it
        raise RequestError(f"{exc}.", param) from None


def _tools(body: dict) -> dict:
    out: dict = {}
    tools = body.get("tools") or []
    names = [t["function"]["name"] for t in tools]
    if tools:
        decls = []
        for i, t in enumerate(tools):
            fn = t["function"]
            decl = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            if fn.get("parameters"):
                decl["parametersJsonSchema"] = _json_schema(fn["parameters"], f"tools[{i}].function.parameters")
            decls.append(decl)
        out["tools"] = [{"functionDeclarations": decls}]
    choice = body.get("tool_choice")
    if choice is None:
        return out
    if not tools:
        if choice in ("none", "auto"):
            return out
        raise RequestError("'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in names:
            raise RequestError(f"tool_choice names function {name!r}, which is not in 'tools'.", "tool_choice")
        cfg = {"mode": "ANY", "allowedFunctionNames": [name]}
    else:
        cfg = {"mode": {"none": "NONE", "auto": "AUTO", "required": "ANY"}[choice]}
    out["toolConfig"] = {"functionCallingConfig": cfg}
    return out


def to_gemini(body: dict, model: Model) -> dict:
    system, contents = _contents(body["messages"], model)
    request: dict = {"contents": contents, "generationConfig": _generation_config(body, model)}
    if system:
        request["systemInstruction"] = {"parts": system}
    request.update(_tools(body))
    return request


def _text_bound(text: str) -> int:
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 1) // 2 + (len(text) - ascii_chars)


def prompt_token_bound(request: dict) -> int:
    """A generous bound of the prompt's tokens, without asking anyone: ASCII text at most one
    token per 2 characters (English runs ~4), other text one per character, 258 per image.
    Only a prompt whose bound exceeds the context window is counted exactly (countTokens)."""
    total = 0
    for content in [request.get("systemInstruction") or {"parts": []}, *request["contents"]]:
        for part in content["parts"]:
            if "inlineData" in part:
                total += 258
            elif "text" in part:
                total += max(1, _text_bound(part["text"]))
            else:
                total += _text_bound(orjson.dumps(part).decode())
    for tool in request.get("tools") or []:
        total += _text_bound(orjson.dumps(tool).decode())
    return total
