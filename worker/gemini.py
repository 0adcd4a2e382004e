"""GeminiAdapter: OpenAI chat requests to Gemini's native REST API and back.

The request direction is ``worker/gemini_request.py`` (``to_gemini``); the response direction
(``GeminiStreamReader``), the error mapping and the HTTP calls live here.
``docs/gemini-mapping.md`` tables every mapping and names the test of each row. Streaming
clients get ``streamGenerateContent?alt=sse``, so a request cancelled half-way still knows how
many tokens were produced; non-stream clients one ``generateContent`` call.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp
import orjson

from shared.catalog import Model
from worker.gemini_errors import map_error, redact
from worker.gemini_request import prompt_token_bound, to_gemini, tool_call_id
from worker.key_config import PoolKey
from worker.key_pool import KeySource, SingleKey
from worker.provider import Delta, ProviderError, RequestError, ToolCallDelta, Usage, sse_data, transport_error


# --- response: Gemini -> deltas ------------------------------------------------------
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    # MALFORMED_FUNCTION_CALL, OTHER, LANGUAGE, UNEXPECTED_TOOL_CALL, ...: "stop"
}


class GeminiStreamReader:
    """Turns each GenerateContentResponse event into one Delta.

    ``max_calls``: 1 when the client sent ``parallel_tool_calls: false`` (Gemini has no
    such switch, so later calls of the turn are dropped; the history the client sends
    back then holds exactly the calls it saw, and the first one keeps its signature).
    """

    def __init__(self, max_calls: int | None = None) -> None:
        self.tool_calls = 0
        self.max_calls = max_calls

    def delta(self, event: dict) -> Delta:
        if "error" in event:  # Google can end a stream with an error event
            err = event["error"] if isinstance(event["error"], dict) else {}
            raise map_error(int(err.get("code") or 500), orjson.dumps(event), {})
        delta = Delta()
        candidates = event.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    if self.max_calls is not None and self.tool_calls >= self.max_calls:
                        continue
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
                mapped = FINISH_REASONS.get(reason, "stop")
                delta.finish_reason = "tool_calls" if self.tool_calls and mapped == "stop" else mapped
        meta = event.get("usageMetadata")
        if meta:
            thoughts = meta.get("thoughtsTokenCount") or 0
            delta.usage = Usage(
                prompt_tokens=(meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
                completion_tokens=(meta.get("candidatesTokenCount") or 0) + thoughts,
                reasoning_tokens=thoughts,
                cached_tokens=meta.get("cachedContentTokenCount") or 0,
            )
        feedback = event.get("promptFeedback") or {}
        if feedback.get("blockReason") and not candidates:
            delta.finish_reason = "content_filter"
        return delta


T = TypeVar("T")
# The probe that confirms Google's verdict about a key, and health probes: fixed, tiny, never a tenant's.
PROBE_REQUEST = {"contents": [{"role": "user", "parts": [{"text": "ping"}]}],
                 "generationConfig": {"maxOutputTokens": 16}}


class GeminiAdapter:
    running_usage = True  # every streamed event carries usageMetadata so far

    def __init__(self, base_url: str, keys: KeySource | str, *, connect_timeout: float = 5.0,
                 read_timeout: float = 600.0, probe_model: str = "gemini-3-flash-preview") -> None:
        self.base_url = base_url.rstrip("/")
        self.keys = SingleKey(keys) if isinstance(keys, str) else keys
        self.probe_model = probe_model  # what the fixed probe request asks (the node's first model)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        # A one-answer call is silent until the whole answer is ready: no idle timeout there
        # (the job's request timeout still bounds it).
        self.one_answer_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=None)

    async def close(self) -> None:
        await self.session.close()

    @staticmethod
    def _headers(key: PoolKey) -> dict:
        return {"x-goog-api-key": key.secret, "content-type": "application/json"}

    async def _count_with_keys(self, call: Callable[[PoolKey], Awaitable[T]]) -> T:
        """One countTokens call, on another key of the pool when a key's count quota is spent or the key is
        condemned (a count's 429 cools nothing: worker/key_pool.py)."""
        tried: list[str] = []
        last: ProviderError | None = None
        while (key := self.keys.pick(tried, counting=True)) is not None:
            try:
                return await call(key)
            except ProviderError as exc:
                redact(exc, key.secret, key.label)
                if not await self.keys.failed(key, exc, counting=True):
                    raise
                tried.append(key.label)
                last = exc
        raise self.keys.unavailable(last, counting=True)

    async def count_tokens(self, request: dict, model: Model, key: PoolKey | None = None) -> int:
        """Gemini's exact prompt count for a translated request (``countTokens``: free, its own quota)."""
        if key is None:
            return await self._count_with_keys(lambda k: self.count_tokens(request, model, k))
        url = f"{self.base_url}/v1beta/models/{model.upstream_model}:countTokens"
        inner = {"model": f"models/{model.upstream_model}", **request}
        async with self.session.post(url, data=orjson.dumps({"generateContentRequest": inner}),
                                     headers=self._headers(key)) as resp:
            if resp.status != 200:
                raise map_error(resp.status, await resp.read(), dict(resp.headers))
            return int(orjson.loads(await resp.read()).get("totalTokens") or 0)

    async def check_context(self, request: dict, model: Model, key: PoolKey) -> None:
        """Count exactly only when the cheap bound says the prompt might not fit. When the key's count quota
        is spent, the generation goes ahead on its key (Google itself refuses an oversized prompt, a 400)."""
        if prompt_token_bound(request) <= model.context_window:
            return
        try:
            tokens = await self.count_tokens(request, model, key)
        except ProviderError as exc:
            if exc.key_limited:  # countTokens' own quota, not the generation's: never a reason to cool the key
                return
            raise
        if tokens > model.context_window:
            raise RequestError(f"This model's maximum context length is {model.context_window} tokens. However, "
                               f"your messages resulted in {tokens} tokens.", "messages", "context_length_exceeded")

    async def count(self, body: dict, model: Model, native: bool = False) -> int:
        """countTokens for an OpenAI chat body (translated first) or a native request (``native``)."""
        try:
            return await self.count_tokens(body if native else to_gemini(body, model), model)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from None

    async def probe(self, key: PoolKey) -> ProviderError | None:
        """The fixed probe request (never a tenant's content): None when the key works."""
        url = f"{self.base_url}/v1beta/models/{self.probe_model}:generateContent"
        try:
            async with self.session.post(url, data=orjson.dumps(PROBE_REQUEST), headers=self._headers(key),
                                         timeout=self.one_answer_timeout) as resp:
                return None if resp.status == 200 else map_error(resp.status, await resp.read(), dict(resp.headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return transport_error(exc)

    async def stream(self, body: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]:
        """Stream (streamGenerateContent, SSE) or, for a client that wants one answer, one generateContent
        call: a single response is the same GenerateContentResponse shape, read as one delta."""
        reader = GeminiStreamReader(max_calls=1 if body.get("parallel_tool_calls") is False else None)
        async for delta in self._generate(to_gemini(body, model), model, incremental, reader, raw=False):
            yield delta

    async def stream_native(self, request: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]:
        """A native Gemini request (allowlisted by the gateway), sent as is; each delta carries its event."""
        async for delta in self._generate(request, model, incremental, GeminiStreamReader(), raw=True):
            yield delta

    async def _generate(self, request: dict, model: Model, incremental: bool, reader: GeminiStreamReader,
                        raw: bool) -> AsyncIterator[Delta]:
        """The call on one key of the pool; before anything was yielded, a 429 or Google's verdict about
        the key moves it to another key of the node (never after: the client may have output)."""
        tried: list[str] = []
        last: ProviderError | None = None
        while (key := self.keys.pick(tried)) is not None:
            produced, usage = False, None
            try:
                async for delta in self._generate_with(key, request, model, incremental, reader, raw):
                    produced, usage = True, delta.usage or usage
                    yield delta
                return
            except ProviderError as exc:
                redact(exc, key.secret, key.label)
                if not await self.keys.failed(key, exc) or produced:  # the key is cooled down either way
                    raise
                tried.append(key.label)
                last = exc
            finally:
                if usage is not None:
                    self.keys.used(key, usage.prompt_tokens + usage.completion_tokens)
        raise self.keys.unavailable(last)

    async def _generate_with(self, key: PoolKey, request: dict, model: Model, incremental: bool,
                             reader: GeminiStreamReader, raw: bool) -> AsyncIterator[Delta]:
        method = "streamGenerateContent?alt=sse" if incremental else "generateContent"
        url = f"{self.base_url}/v1beta/models/{model.upstream_model}:{method}"
        try:
            await self.check_context(request, model, key)
            timeout = self.session.timeout if incremental else self.one_answer_timeout
            async with self.session.post(url, data=orjson.dumps(request), headers=self._headers(key),
                                         timeout=timeout) as resp:
                if resp.status != 200:
                    raise map_error(resp.status, await resp.read(), dict(resp.headers))
                if not incremental:
                    yield self._read(reader, orjson.loads(await resp.read()), raw)
                    return
                async for data in sse_data(resp.content):
                    yield self._read(reader, orjson.loads(data), raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from None

    @staticmethod
    def _read(reader: GeminiStreamReader, event: dict, raw: bool) -> Delta:
        delta = reader.delta(event)
        if raw:
            delta.raw = event
        return delta
