"""GeminiAdapter: OpenAI chat requests to Gemini's native REST API and back.

Request direction (``to_gemini``) and response direction (``GeminiStreamReader``)
live here and nowhere else. The upstream call always streams
(``streamGenerateContent?alt=sse``), even for non-stream clients, so that a
request cancelled half-way still knows how many tokens were produced.
"""

from __future__ import annotations

import base64
import secrets
from typing import AsyncIterator

import aiohttp
import orjson

from shared.catalog import Model
from worker.provider import Delta, ProviderError, ToolCallDelta, Usage

# --- thought signatures ride inside the tool call id -----------------------------
# Gemini 3 rejects a follow-up turn whose functionCall lost its thoughtSignature.
# OpenAI clients echo tool call ids verbatim, so the id carries the signature:
# stateless, nothing stored server-side, survives any number of turns.
SIGNATURE_MARK = "_ts_"


def tool_call_id(signature: str | None) -> str:
    base = "call_" + secrets.token_hex(8)
    if not signature:
        return base
    return base + SIGNATURE_MARK + signature.replace("+", "-").replace("/", "_").rstrip("=")


def signature_from_id(call_id: str) -> str | None:
    _, mark, encoded = call_id.partition(SIGNATURE_MARK)
    if not mark:
        return None
    padded = encoded + "=" * (-len(encoded) % 4)
    return padded.replace("-", "+").replace("_", "/")


# --- request: OpenAI -> Gemini ---------------------------------------------------
LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}
BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _text_of(content: str | list | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _user_parts(content: str | list) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for p in content:
        if p["type"] == "text":
            parts.append({"text": p["text"]})
        elif p["type"] == "image_url":
            url = p["image_url"]["url"]
            if not url.startswith("data:") or ";base64," not in url:
                raise ProviderError(400, "Only base64 data URIs are supported for image_url.", "invalid_image_url",
                                    error_type="invalid_request_error")
            header, data = url[5:].split(";base64,", 1)
            parts.append({"inlineData": {"mimeType": header or "image/png", "data": data}})
    return parts


def _tool_response(content: str | list) -> dict:
    text = _text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _contents(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    contents: list[dict] = []
    call_names: dict[str, str] = {}

    def append(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:  # Gemini wants turns to alternate
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            system.append({"text": _text_of(m["content"])})
        elif role == "user":
            append("user", _user_parts(m["content"]))
        elif role == "assistant":
            parts: list[dict] = []
            text = _text_of(m.get("content"))
            if text:
                parts.append({"text": text})
            for call in m.get("tool_calls") or []:
                fn = call["function"]
                call_names[call["id"]] = fn["name"]
                try:
                    args = orjson.loads(fn["arguments"] or "{}")
                except orjson.JSONDecodeError:
                    raise ProviderError(400, f"tool call {call['id']!r} has arguments that are not JSON.",
                                        "invalid_tool_arguments", error_type="invalid_request_error") from None
                part: dict = {"functionCall": {"name": fn["name"], "args": args}}
                signature = signature_from_id(call["id"])
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            append("model", parts)
        elif role == "tool":
            name = call_names.get(m["tool_call_id"])
            if name is None:
                raise ProviderError(400, f"tool message refers to unknown tool_call_id {m['tool_call_id']!r}.",
                                    "invalid_tool_call_id", error_type="invalid_request_error")
            append("user", [{"functionResponse": {"name": name, "response": _tool_response(m["content"])}}])
    return system, contents


def _generation_config(body: dict, model: Model) -> dict:
    config: dict = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            config[dst] = body[src]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
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
            config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort") or "high"
    thinking: dict = {"includeThoughts": bool(body.get("include_thoughts", True))}
    if model.thinking == "level":
        thinking["thinkingLevel"] = LEVELS[effort]
    elif model.thinking == "budget":
        thinking["thinkingBudget"] = BUDGETS[effort]
    if model.thinking != "none":
        config["thinkingConfig"] = thinking
    return config


def _tools(body: dict) -> dict:
    out: dict = {}
    tools = body.get("tools")
    if tools:
        decls = []
        for t in tools:
            fn = t["function"]
            decl = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            if fn.get("parameters"):
                decl["parametersJsonSchema"] = fn["parameters"]
            decls.append(decl)
        out["tools"] = [{"functionDeclarations": decls}]
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict):
            cfg = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
        else:
            cfg = {"mode": {"none": "NONE", "auto": "AUTO", "required": "ANY"}[choice]}
        out["toolConfig"] = {"functionCallingConfig": cfg}
    return out


def to_gemini(body: dict, model: Model) -> dict:
    system, contents = _contents(body["messages"])
    request: dict = {"contents": contents, "generationConfig": _generation_config(body, model)}
    if system:
        request["systemInstruction"] = {"parts": system}
    request.update(_tools(body))
    return request


# --- response: Gemini -> deltas ------------------------------------------------------
class GeminiStreamReader:
    """Turns each GenerateContentResponse event into one Delta."""

    def __init__(self) -> None:
        self.tool_calls = 0

    def delta(self, event: dict) -> Delta:
        delta = Delta()
        candidates = event.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    call = part["functionCall"]
                    delta.tool_calls.append(ToolCallDelta(
                        index=self.tool_calls,
                        id=tool_call_id(part.get("thoughtSignature")),
                        name=call.get("name", ""),
                        arguments=orjson.dumps(call.get("args") or {}).decode(),
                    ))
                    self.tool_calls += 1
                elif "text" in part:
                    if part.get("thought"):
                        delta.reasoning += part["text"]
                    else:
                        delta.content += part["text"]
            reason = candidate.get("finishReason")
            if reason:
                delta.finish_reason = "tool_calls" if self.tool_calls else FINISH_REASONS.get(reason, "stop")
        meta = event.get("usageMetadata")
        if meta:
            thoughts = meta.get("thoughtsTokenCount") or 0
            delta.usage = Usage(
                prompt_tokens=meta.get("promptTokenCount") or 0,
                completion_tokens=(meta.get("candidatesTokenCount") or 0) + thoughts,
                reasoning_tokens=thoughts,
                cached_tokens=meta.get("cachedContentTokenCount") or 0,
            )
        feedback = event.get("promptFeedback") or {}
        if feedback.get("blockReason") and not candidates:
            delta.finish_reason = "content_filter"
        return delta


# --- errors: Google's status -> what the client sees ----------------------------------------
def map_error(status: int, body: bytes, headers: dict) -> ProviderError:
    try:
        err = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        err = {}
    message = err.get("message") or f"upstream answered HTTP {status}"
    retry_after = None
    for detail in err.get("details") or []:
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = str(detail.get("retryDelay", "")).rstrip("s")
            try:
                retry_after = float(delay)
            except ValueError:
                pass
    if status == 400:
        return ProviderError(400, message, "invalid_request_error", error_type="invalid_request_error")
    if status == 429:
        return ProviderError(429, "The upstream provider is rate limiting this node: " + message,
                             "upstream_rate_limited", retryable=True, retry_after=retry_after or 1.0,
                             error_type="rate_limit_error")
    if status in (401, 403):
        return ProviderError(502, "The upstream provider refused this node's credentials.", "upstream_auth_error")
    if status == 404:
        return ProviderError(502, "The upstream provider does not know this model: " + message, "upstream_not_found")
    if status == 503:
        return ProviderError(503, "The upstream provider is unavailable: " + message, "upstream_unavailable",
                             retryable=True, retry_after=retry_after or 1.0)
    if status == 504:
        return ProviderError(504, "The upstream provider timed out: " + message, "upstream_timeout", retryable=True)
    return ProviderError(502, f"The upstream provider failed (HTTP {status}): " + message, "upstream_error",
                         retryable=status >= 500)


class GeminiAdapter:
    def __init__(self, base_url: str, api_key: str, *, connect_timeout: float = 5.0, read_timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        await self.session.close()

    async def stream(self, body: dict, model: Model) -> AsyncIterator[Delta]:
        url = f"{self.base_url}/v1beta/models/{model.upstream_model}:streamGenerateContent?alt=sse"
        payload = orjson.dumps(to_gemini(body, model))
        headers = {"x-goog-api-key": self.api_key, "content-type": "application/json"}
        reader = GeminiStreamReader()
        try:
            async with self.session.post(url, data=payload, headers=headers) as resp:
                if resp.status != 200:
                    raise map_error(resp.status, await resp.read(), dict(resp.headers))
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        yield reader.delta(orjson.loads(line[5:]))
        except aiohttp.ClientPayloadError as exc:
            raise ProviderError(502, f"The upstream stream broke: {exc}", "upstream_stream_broken") from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ProviderError(502, f"Could not reach the upstream provider: {exc.__class__.__name__}",
                                "upstream_unreachable", retryable=True) from None
