"""The part every translating renderer shares: reading the worker's chat chunks delta by delta.

The Responses and Messages renderers (gateway/responses_api/render.py, gateway/messages_api/render.py)
word the same chat chunks differently; how a chunk is taken apart is the same for both: a chunk
without choices carries the usage; the first of the others names the model that answers, and each
a delta of thinking, text and tool call fragments, in that order, and perhaps the finish reason.
A subclass says what each piece becomes in its API.
"""

from __future__ import annotations

import orjson


class DeltaRenderer:
    usage: dict | None = None  # the chat usage of the final usage chunk
    finish_reason: str | None = None

    def chunk(self, payload: bytes) -> list[bytes]:
        chunk = orjson.loads(payload)
        choices = chunk["choices"]
        if not choices:
            self.usage = chunk.get("usage") or self.usage
            return []
        out = self.start(chunk.get("model"))
        choice = choices[0]
        delta = choice["delta"]
        if text := delta.get("reasoning_content"):
            out += self.thinking(text)
        if text := delta.get("content"):
            out += self.text(text)
        for call in delta.get("tool_calls") or ():
            out += self.tool_call(call)
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return out

    def start(self, model: str | None = None) -> list[bytes]:
        """The events that open the stream, the first time only; ``model`` is the model that answers (a
        catalog fallback may serve a request for another)."""
        raise NotImplementedError

    def thinking(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def text(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def tool_call(self, call: dict) -> list[bytes]:
        """One tool call fragment: a call begins (it has an ``id``) and/or its arguments continue."""
        raise NotImplementedError
