"""The worker's chat chunks (or one chat.completion) worded as Anthropic's Messages API: its event
sequence (``message_start``, ``content_block_start/delta/stop`` for thinking, text and tool use,
``message_delta`` with usage and ``stop_reason``, ``message_stop``) or one ``message``.

A thinking block's ``signature`` is Gemini's thought signature of the turn: the one on its first
function call (read from that call's id, which carries it: shared/signatures.py), else Google's
documented skip value, which Gemini accepts wherever a signature is missing.
"""

from __future__ import annotations

import secrets

import orjson
from aiohttp import web

from gateway.delta_renderer import DeltaRenderer
from gateway.dialects import error_body
from gateway.exchange import SSE_HEADERS, json_response
from shared.errors import ApiError
from shared.signatures import SKIP_SIGNATURE, signature_from_id

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def anthropic_usage(usage: dict | None) -> dict:
    """A chat usage object as Anthropic words it: ``input_tokens`` excludes what was read from cache."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": usage["prompt_tokens"] - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": usage["completion_tokens"],
            "credits_charged": usage["credits_charged"]}


def _input(arguments: str) -> dict:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class MessagesRenderer(DeltaRenderer):
    headers = SSE_HEADERS

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = message_id()
        self.started = False
        self.index = -1  # of the open content block
        self.open: str | None = None  # its type: "thinking" | "text" | "tool_use"
        self.calls: dict[int, int] = {}  # chat tool call index -> content block index

    def _message(self, content: list[dict], stop_reason: str | None, usage: dict) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    # --- one answer ------------------------------------------------------------------------
    def result(self, payload: bytes) -> web.Response:
        completion = orjson.loads(payload)
        self.model = completion.get("model") or self.model  # the model that answered (maybe a catalog fallback)
        choice = completion["choices"][0]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        content: list[dict] = []
        if message.get("reasoning_content"):
            signature = signature_from_id(calls[0]["id"]) if calls else None
            content.append({"type": "thinking", "thinking": message["reasoning_content"],
                            "signature": signature or SKIP_SIGNATURE})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        content += [{"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                     "input": _input(c["function"]["arguments"])} for c in calls]
        return json_response(self._message(content, STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
                                           anthropic_usage(completion.get("usage"))))

    async def finish(self) -> None:
        pass

    # --- the stream --------------------------------------------------------------------------
    @staticmethod
    def _event(kind: str, **fields) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"

    def start(self, model: str | None = None) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        self.model = model or self.model  # the model that answers (maybe a catalog fallback)
        return [self._event("message_start", message=self._message([], None, {"input_tokens": 0, "output_tokens": 0}))]

    def _open(self, block: dict, signature: str | None = None) -> list[bytes]:
        out = self._close(signature)
        self.index += 1
        self.open = block["type"]
        out.append(self._event("content_block_start", index=self.index, content_block=block))
        return out

    def _close(self, signature: str | None = None) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None:
            return out
        if self.open == "thinking":
            out.append(self._delta({"type": "signature_delta", "signature": signature or SKIP_SIGNATURE}))
        out.append(self._event("content_block_stop", index=self.index))
        self.open = None
        return out

    def _delta(self, delta: dict) -> bytes:
        return self._event("content_block_delta", index=self.index, delta=delta)

    def thinking(self, text: str) -> list[bytes]:
        out = [] if self.open == "thinking" else self._open({"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "thinking_delta", "thinking": text}))
        return out

    def text(self, text: str) -> list[bytes]:
        out = [] if self.open == "text" else self._open({"type": "text", "text": ""})
        out.append(self._delta({"type": "text_delta", "text": text}))
        return out

    def tool_call(self, call: dict) -> list[bytes]:
        out: list[bytes] = []
        if call.get("id"):  # a call begins: it closes the thinking with the turn's signature
            out += self._open({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}},
                              signature_from_id(call["id"]))
            self.calls[call["index"]] = self.index
        arguments = (call.get("function") or {}).get("arguments")
        if arguments and self.calls.get(call["index"]) == self.index and self.open == "tool_use":
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def done(self) -> list[bytes]:
        usage = anthropic_usage(self.usage)
        return self.start() + self._close() + [
            self._event("message_delta", delta={"stop_reason": STOP_REASONS.get(self.finish_reason, "end_turn"),
                                                "stop_sequence": None}, usage=usage),
            self._event("message_stop")]

    def stream_error(self, error: ApiError) -> bytes:
        return self._event("error", error=error_body(error, "anthropic")["error"])


class CountRenderer:
    """A count job's one answer: ``{"input_tokens": N}``."""

    headers = SSE_HEADERS

    def result(self, payload: bytes) -> web.Response:
        return json_response({"input_tokens": orjson.loads(payload)["prompt_tokens"]})

    async def finish(self) -> None:
        pass

    def chunk(self, payload: bytes) -> list[bytes]:
        return []

    def done(self) -> list[bytes]:
        return []

    def stream_error(self, error: ApiError) -> bytes:
        return b""
