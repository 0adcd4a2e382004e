"""What every provider adapter yields, and how it fails.

An adapter turns one OpenAI chat request into a stream of ``Delta``s; the
chat job (``worker/chat_job.py``) turns those into OpenAI chunks. Adapters
raise ``ProviderError`` with the status the client should see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import aiohttp

from shared.catalog import Model
from shared.errors import ApiError


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0  # includes reasoning tokens, as OpenAI counts them
    reasoning_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class ToolCallDelta:
    index: int
    id: str
    name: str
    arguments: str  # complete JSON text: Gemini sends a function call whole


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None  # running totals; the last one is final
    raw: dict | None = None  # the upstream's own event (native Gemini jobs relay it as is)


class ProviderError(ApiError):
    """An upstream failure, already mapped to the status, type and code the client sees."""

    def __init__(self, status: int, message: str, code: str, *, retryable: bool = False,
                 retry_after: float | None = None, error_type: str = "api_error") -> None:
        super().__init__(status, message, error_type, code, retry_after=retry_after)
        self.retryable = retryable  # worth another attempt while nothing has been produced
        # What the upstream said about the credential that made the call (worker/key_pool.py acts on it):
        self.key_limited = False  # the key's quota is spent (a 429): cool it down, try another key
        self.retry_delay: float | None = None  # the upstream's own RetryInfo, None when it sent none
        self.key_verdict: str | None = None  # Google's reason naming the key itself bad (API_KEY_INVALID, ...)


class RequestError(ProviderError):
    """A 400 the client caused, naming the ``param`` like OpenAI's validation errors do."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(400, message, code, error_type="invalid_request_error")
        self.param = param

    def body(self) -> dict:
        body = super().body()
        body["error"]["param"] = self.param
        return body


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The payload of every ``data:`` line of an SSE body, as the bytes arrive.

    Reads whatever the socket has (one await per network read, not per line) and
    splits lines itself; a partial line waits for the next read.
    """
    pending = b""
    async for data in content.iter_any():
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


def transport_error(exc: BaseException) -> ProviderError:
    """What an HTTP adapter raises when the connection, not the provider, failed."""
    if isinstance(exc, aiohttp.ServerTimeoutError) or (isinstance(exc, TimeoutError)
                                                        and not isinstance(exc, aiohttp.ClientError)):
        return ProviderError(504, "The upstream provider stopped sending for longer than the idle timeout.",
                             "upstream_idle_timeout", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProviderError(502, f"The upstream stream broke: {exc}", "upstream_stream_broken")
    return ProviderError(502, f"Could not reach the upstream provider: {exc.__class__.__name__}",
                         "upstream_unreachable", retryable=True)


class Adapter(Protocol):
    # True: every event carries the usage so far (Gemini), so a stream cut anywhere knows what was
    # produced. False: usage comes only at the end, and a stream whose client left is read on for it.
    running_usage: bool

    # incremental=False: the client wants one answer; an adapter may then make one non-streaming call.
    async def stream(self, body: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]: ...

    # Native Gemini jobs (Gemini adapters only): ``request`` is sent as is; each Delta carries its event.
    async def stream_native(self, request: dict, model: Model, incremental: bool = True) -> AsyncIterator[Delta]: ...

    # The upstream's exact prompt count for a request (OpenAI chat body, or native with ``native``).
    async def count(self, body: dict, model: Model, native: bool = False) -> int: ...

    async def close(self) -> None: ...
