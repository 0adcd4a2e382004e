"""The worker's chat chunks (or one chat.completion) worded as the Responses API: its SSE event
sequence (``response.created`` ... ``response.completed`` with usage) or one ``response`` object.

Output items follow what the model produced, in order: a ``reasoning`` item (thinking, as a
summary), a ``message`` item (``output_text``), ``function_call`` items (``call_id`` = the chat
tool call id, which carries Gemini's thought signature). ``final`` is the finished object, and
``assistant`` the turn as a chat message, for the stored conversation.
"""

from __future__ import annotations

import secrets
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.delta_renderer import DeltaRenderer
from gateway.exchange import SSE_HEADERS, json_response
from shared.errors import ApiError

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def responses_usage(usage: dict | None) -> dict | None:
    """A chat usage object as the Responses API words it (credits kept alongside)."""
    if usage is None:
        return None
    return {"input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": usage["total_tokens"], "credits_charged": usage["credits_charged"]}


class ResponsesRenderer(DeltaRenderer):
    headers = SSE_HEADERS

    def __init__(self, shell: dict, on_final: Callable[[dict, dict], Awaitable[None]] | None = None) -> None:
        self.shell = shell  # the response object's fields that echo the request (id, model, tools, ...)
        self.on_final = on_final
        self.seq = 0
        self.started = False
        self.output: list[dict] = []  # finished items, in order
        self.open: dict | None = None  # the item being streamed
        self.pieces: list[str] = []  # its text (or arguments) so far, joined once when it closes
        self.calls: dict[int, dict] = {}  # chat tool call index -> its function_call item
        self.final: dict | None = None

    # --- the object ------------------------------------------------------------------------
    def response(self, status: str, output: list[dict], usage: dict | None = None, error: dict | None = None) -> dict:
        reason = INCOMPLETE.get(self.finish_reason or "") if status == "incomplete" else None
        return {**self.shell, "status": status, "output": output, "usage": responses_usage(usage), "error": error,
                "incomplete_details": {"reason": reason} if reason else None}

    def _status(self) -> str:
        return "incomplete" if self.finish_reason in INCOMPLETE else "completed"

    @property
    def assistant(self) -> dict:
        """The answer as a chat message (the stored conversation's next turn)."""
        text = "".join(p["text"] for item in self.output if item["type"] == "message" for p in item["content"])
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in self.output if i["type"] == "function_call"]
        return {"role": "assistant", "content": text or (None if calls else ""), **({"tool_calls": calls} if calls else {})}

    # --- one answer -------------------------------------------------------------------------
    def result(self, payload: bytes) -> web.Response:
        completion = orjson.loads(payload)
        self._served_by(completion.get("model"))
        choice = completion["choices"][0]
        message = choice["message"]
        self.finish_reason = choice.get("finish_reason")
        if message.get("reasoning_content"):
            self.output.append({"type": "reasoning", "id": new_id("rs_"),
                                "summary": [{"type": "summary_text", "text": message["reasoning_content"]}]})
        if message.get("content"):
            self.output.append(self._message(message["content"], "completed"))
        for call in message.get("tool_calls") or []:
            self.output.append(self._call(call["id"], call["function"]["name"], call["function"]["arguments"],
                                          "completed"))
        self.final = self.response(self._status(), self.output, completion.get("usage"))
        return json_response(self.final)

    async def finish(self) -> None:
        if self.final is not None and self.on_final is not None:
            await self.on_final(self.final, self.assistant)

    # --- the stream --------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    def _served_by(self, model: str | None) -> None:
        """The model that answers (a catalog fallback may serve a request for another)."""
        if model and model != self.shell.get("model"):
            self.shell = {**self.shell, "model": model}

    def start(self, model: str | None = None) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        self._served_by(model)
        shell = self.response("in_progress", [])
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    @staticmethod
    def _message(text: str, status: str) -> dict:
        return {"type": "message", "id": new_id("msg_"), "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    @staticmethod
    def _call(call_id: str, name: str, arguments: str, status: str) -> dict:
        return {"type": "function_call", "id": new_id("fc_"), "call_id": call_id, "name": name,
                "arguments": arguments, "status": status}

    def _open(self, item: dict) -> list[bytes]:
        out = self._close()
        self.open = item
        self.pieces = []
        index = len(self.output)
        added = {**item, "content": []} if item["type"] == "message" else \
            {**item, "summary": []} if item["type"] == "reasoning" else item
        out.append(self._event("response.output_item.added", output_index=index, item=added))
        if item["type"] == "message":
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        elif item["type"] == "reasoning":
            out.append(self._event("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                                   summary_index=0, part={"type": "summary_text", "text": ""}))
        return out

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index, out, text = len(self.output), [], "".join(self.pieces)
        if item["type"] == "reasoning":
            part = item["summary"][0]
            part["text"] = text
            out += [self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                                summary_index=0, text=part["text"]),
                    self._event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                                summary_index=0, part=part)]
        elif item["type"] == "message":
            part = item["content"][0]
            part["text"] = text
            item["status"] = "completed"
            out += [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                content_index=0, text=part["text"], logprobs=[]),
                    self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part)]
        else:
            item["status"], item["arguments"] = "completed", text
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"]))
        self.output.append(item)
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def thinking(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "reasoning":
            out += self._open({"type": "reasoning", "id": new_id("rs_"),
                               "summary": [{"type": "summary_text", "text": ""}]})
        self.pieces.append(text)
        out.append(self._event("response.reasoning_summary_text.delta", item_id=self.open["id"],
                               output_index=len(self.output), summary_index=0, delta=text))
        return out

    def text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "message":
            out += self._open(self._message("", "in_progress"))
        self.pieces.append(text)
        out.append(self._event("response.output_text.delta", item_id=self.open["id"],
                               output_index=len(self.output), content_index=0, delta=text, logprobs=[]))
        return out

    def tool_call(self, call: dict) -> list[bytes]:
        out: list[bytes] = []
        if call.get("id"):
            item = self._call(call["id"], call["function"]["name"], "", "in_progress")
            self.calls[call["index"]] = item
            out += self._open(item)
        item = self.calls.get(call["index"])
        arguments = (call.get("function") or {}).get("arguments")
        if item is not None and arguments:
            if self.open is not item:  # arguments of an earlier call (upstreams that interleave): reopen
                return out
            self.pieces.append(arguments)
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=len(self.output), delta=arguments))
        return out

    def done(self) -> list[bytes]:
        out = self.start() + self._close()
        status = self._status()
        self.final = self.response(status, self.output, self.usage)
        out.append(self._event("response.completed" if status == "completed" else "response.incomplete",
                               response=self.final))
        return out

    def stream_error(self, error: ApiError) -> bytes:
        failed = self.response("failed", self.output, None, {"code": error.code or "server_error",
                                                             "message": error.message})
        return (self._event("error", code=error.code, message=error.message, param=error.param)
                + self._event("response.failed", response=failed))
