"""ChunkBuilder: provider deltas -> OpenAI ``chat.completion.chunk``s and one ``chat.completion``.

Thinking text goes out as ``reasoning_content`` (DeepSeek's name) and, for
clients that read the other name, ``reasoning``.
"""

from __future__ import annotations

from shared.money import micro_to_credits
from worker.provider import Delta, Usage


class ChunkBuilder:
    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.request_id = request_id
        self.model = model
        self.created = created
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict] = []
        self._calls: dict[int, dict] = {}  # by tool call index
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._sent_role = False
        self.produced_output = False

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def add(self, d: Delta) -> list[dict]:
        """Fold one delta in; return the chunks to send for it."""
        if d.usage is not None:
            self.usage = d.usage
        out = []
        if d.reasoning:
            self.reasoning.append(d.reasoning)
            out.append(self._chunk({"reasoning_content": d.reasoning, "reasoning": d.reasoning}))
        if d.content:
            self.content.append(d.content)
            out.append(self._chunk({"content": d.content}))
        for call in d.tool_calls:
            # OpenAI's delta form: id, type and name once (arguments ""), then the arguments.
            # A delta without an id continues the call at its index (upstreams that stream fragments).
            if call.id:
                entry = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
                self._calls[call.index] = entry
                self.tool_calls.append(entry)
                out.append(self._chunk({"tool_calls": [{"index": call.index, **entry,
                                                        "function": {"name": call.name, "arguments": ""}}]}))
            entry = self._calls.get(call.index)
            if call.arguments and entry is not None:
                entry["function"]["arguments"] += call.arguments
                out.append(self._chunk({"tool_calls": [{"index": call.index,
                                                        "function": {"arguments": call.arguments}}]}))
        if out:
            self.produced_output = True
        if d.finish_reason:
            self.finish_reason = d.finish_reason
            out.append(self._chunk({}, d.finish_reason))
        return out

    def usage_dict(self, charged_micro: int) -> dict:
        u = self.usage or Usage()
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "credits_charged": micro_to_credits(charged_micro),
            "charged_micro": charged_micro,
        }

    def usage_chunk(self, charged_micro: int) -> dict:
        return {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage_dict(charged_micro),
        }

    def completion(self, charged_micro: int) -> dict:
        message: dict = {"role": "assistant", "content": "".join(self.content) if self.content or not self.tool_calls else None}
        if self.reasoning:
            text = "".join(self.reasoning)
            message["reasoning_content"] = text
            message["reasoning"] = text
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        message["refusal"] = None
        return {
            "id": self.request_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self.finish_reason or "stop"}],
            "usage": self.usage_dict(charged_micro),
        }
