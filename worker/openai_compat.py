"""OpenAICompatAdapter: any ``/chat/completions`` upstream (OpenAI, Gemini's
``/v1beta/openai/`` endpoint, vLLM, another apiinone gateway, ...).

Catalog::

    [providers.other]
    adapter = "openai"
    base_url = "https://generativelanguage.googleapis.com/v1beta/openai"   # or base_url_env
    api_key_env = "OTHER_API_KEY"

The request is the client's own, with the catalog's ``upstream_model``, standard
OpenAI fields only (our ``include_thoughts`` extension is applied here: thinking
text is dropped when it is false; for Gemini's endpoint it is also sent as
``extra_body.google.thinking_config``), always streamed with usage (on every chunk too,
``stream_options.continuous_usage_stats``, when the provider has ``continuous_usage_stats =
true``: vLLM's option; without it a cut stream is read on for its final usage). The upstream's
chunks become Deltas: ``reasoning_content``/``reasoning`` -> thinking, tool call
fragments pass through by index. Gemini's endpoint puts a tool call's thought
signature in ``extra_content.google.thought_signature``; it rides in the tool call
id (``<id>_xs_<signature>``) and is put back on the next turn.
"""

from __future__ import annotations

from typing import AsyncIterator
from urllib.parse import urlparse

import aiohttp
import orjson

from shared.catalog import Model
from worker.provider import Delta, ProviderError, RequestError, ToolCallDelta, Usage, sse_data, transport_error

# Fields of OpenAI's chat completion request forwarded as they are.
FORWARDED = ("messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "max_tokens",
             "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
             "frequency_penalty", "user", "reasoning_effort")
EXTRA_MARK = "_xs_"
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def _b64url(sig: str) -> str:
    return sig.replace("+", "-").replace("/", "_").rstrip("=")


def _b64std(enc: str) -> str:
    return (enc + "=" * (-len(enc) % 4)).replace("-", "+").replace("_", "/")


def is_gemini_endpoint(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "").endswith("generativelanguage.googleapis.com")


def _message_out(m: dict) -> dict:
    m = {k: v for k, v in m.items() if k not in ("reasoning_content", "reasoning")}
    if m.get("role") == "assistant" and m.get("tool_calls"):
        calls = []
        for call in m["tool_calls"]:
            call = dict(call)
            head, mark, sig = call["id"].rpartition(EXTRA_MARK)
            if mark and head:
                call["id"] = head
                call["extra_content"] = {"google": {"thought_signature": _b64std(sig)}}
            calls.append(call)
        m["tool_calls"] = calls
    if m.get("role") == "tool":
        head, mark, _ = m["tool_call_id"].rpartition(EXTRA_MARK)
        if mark and head:
            m["tool_call_id"] = head
    return m


def to_openai(body: dict, model: Model, gemini_dialect: bool = False, continuous_usage: bool = False) -> dict:
    out: dict = {"model": model.upstream_model}
    for key in FORWARDED:
        if body.get(key) is not None:
            out[key] = body[key]
    out["messages"] = [_message_out(m) for m in body["messages"]]
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    if continuous_usage:
        out["stream_options"]["continuous_usage_stats"] = True
    if gemini_dialect and model.thinking != "none":
        out["extra_body"] = {"google": {"thinking_config": {
            "include_thoughts": bool(body.get("include_thoughts", True))}}}
    return out


def completion_as_chunk(completion: dict) -> dict:
    """A whole ``chat.completion`` as one chunk (message -> delta, with the tool calls indexed)."""
    if "error" in completion or "choices" not in completion:
        return completion
    choices = []
    for choice in completion["choices"]:
        message = dict(choice.get("message") or {})
        message["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or [])]
        choices.append({"index": choice.get("index", 0), "delta": message,
                        "finish_reason": choice.get("finish_reason")})
    return {"choices": choices, "usage": completion.get("usage")}


class OpenAIStreamReader:
    """One upstream ``chat.completion.chunk`` -> one Delta."""

    def __init__(self, include_thoughts: bool = True) -> None:
        self.include_thoughts = include_thoughts
        self.started: set[int] = set()
        self.finish_reason: str | None = None

    def delta(self, chunk: dict) -> Delta:
        if "error" in chunk:  # an error event mid-stream
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            status = err.get("code") if isinstance(err.get("code"), int) else 502
            raise map_error(status, orjson.dumps({"error": err}), {}, mid_stream=True)
        delta = Delta()
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            d = choice.get("delta") or {}
            thinking = d.get("reasoning_content") or d.get("reasoning") or ""
            if thinking and self.include_thoughts and isinstance(thinking, str):
                delta.reasoning += thinking
            if d.get("content"):
                delta.content += d["content"]
            for call in d.get("tool_calls") or []:
                index = call.get("index", 0)
                fn = call.get("function") or {}
                if index not in self.started and call.get("id"):
                    self.started.add(index)
                    call_id = call["id"]
                    sig = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
                    if sig:
                        call_id += EXTRA_MARK + _b64url(sig)
                    delta.tool_calls.append(ToolCallDelta(index=index, id=call_id, name=fn.get("name") or "",
                                                          arguments=fn.get("arguments") or ""))
                elif fn.get("arguments"):
                    delta.tool_calls.append(ToolCallDelta(index=index, id="", name="", arguments=fn["arguments"]))
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = reason if reason in FINISH_REASONS else "stop"
        usage = chunk.get("usage")
        if usage:
            details = usage.get("completion_tokens_details") or {}
            prompt_details = usage.get("prompt_tokens_details") or {}
            delta.usage = Usage(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
                reasoning_tokens=details.get("reasoning_tokens") or 0,
                cached_tokens=prompt_details.get("cached_tokens") or 0,
            )
        return delta


def map_error(status: int, body: bytes, headers: dict, mid_stream: bool = False) -> ProviderError:
    """An OpenAI-shaped upstream error -> what our client sees (same rules as the Gemini adapter)."""
    try:
        parsed = orjson.loads(body)
        err = parsed[0].get("error", {}) if isinstance(parsed, list) else parsed.get("error", {})
        if not isinstance(err, dict):
            err = {"message": str(err)}
    except (orjson.JSONDecodeError, AttributeError, IndexError):
        err = {}
    message = err.get("message") or f"upstream answered HTTP {status}"
    code = err.get("code") if isinstance(err.get("code"), str) else None
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            retry_after = float(lowered[name]) * scale
            break
        except (KeyError, ValueError):
            pass
    if status in (400, 413, 422):
        return RequestError(message, err.get("param"), code or "invalid_request_error")
    if status in (401, 403):
        return ProviderError(502, "The upstream provider refused this node's credentials.", "upstream_auth_error")
    if status == 402:
        return ProviderError(502, "The upstream provider's account for this node is out of credit.",
                             "upstream_quota_exhausted")
    if status == 404:
        return ProviderError(502, "The upstream provider does not know this model: " + message, "upstream_not_found")
    if status == 429:
        return ProviderError(429, "The upstream provider is rate limiting this node: " + message,
                             "upstream_rate_limited", retryable=not mid_stream, retry_after=retry_after or 1.0,
                             error_type="rate_limit_error")
    if status in (503, 504):
        return ProviderError(status, f"The upstream provider is unavailable (HTTP {status}): " + message,
                             "upstream_unavailable" if status == 503 else "upstream_timeout",
                             retryable=not mid_stream, retry_after=retry_after or (1.0 if status == 503 else None))
    return ProviderError(502, f"The upstream provider failed (HTTP {status}): " + message, "upstream_error",
                         retryable=status >= 500 and not mid_stream, retry_after=retry_after)


class OpenAICompatAdapter:
    def __init__(self, base_url: str, api_key: str, *, connect_timeout: float = 5.0, read_timeout: float = 600.0,
                 continuous_usage: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        # Usage comes in the last chunk only, unless the upstream was asked for it on every chunk
        # (the catalog's continuous_usage_stats): worker/chat_job.py then need not read on after a cut.
        self.running_usage = continuous_usage
        self.api_key = api_key
        self.gemini_dialect = is_gemini_endpoint(base_url)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
        )

    async def close(self) -> None:
        await self.session.close()

    async def stream(self, body: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]:
        payload = orjson.dumps(to_openai(body, model, self.gemini_dialect, self.running_usage))
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json",
                   "Accept": "text/event-stream"}
        reader = OpenAIStreamReader(include_thoughts=bool(body.get("include_thoughts", True)))
        try:
            async with self.session.post(self.base_url + "/chat/completions", data=payload, headers=headers) as resp:
                if resp.status != 200:
                    raise map_error(resp.status, await resp.read(), dict(resp.headers))
                if resp.content_type == "application/json":  # an upstream that ignores "stream"
                    yield reader.delta(completion_as_chunk(orjson.loads(await resp.read())))
                else:
                    async for data in sse_data(resp.content):
                        if data == b"[DONE]":
                            break
                        yield reader.delta(orjson.loads(data))
            # The finish reason goes out last, once usage (sent after it by OpenAI) is known.
            if reader.finish_reason:
                yield Delta(finish_reason=reader.finish_reason)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from None

    async def stream_native(self, request: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]:
        """The gateway sends native Gemini requests only to models on a Gemini provider; this is a backstop."""
        raise RequestError(f"Model '{model.id}' is not served over the native Gemini API.", "model",
                           "unsupported_model")
        yield Delta()  # pragma: no cover - makes this an async generator

    async def count(self, body: dict, model: Model, native: bool = False) -> int:
        """An OpenAI-compatible server has no token counter: the client gets a clear 400."""
        raise RequestError(f"Counting tokens is not available for model '{model.id}' (its upstream is "
                           "OpenAI-compatible and has no token counter).", "model", "unsupported_operation")
