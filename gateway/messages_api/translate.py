"""A validated Messages request -> the OpenAI chat body every job runs (JSON, admitted as it is: the
checks below cover what the chat schema would, so the body is not validated a second time).

``docs/gemini-mapping.md`` ("Anthropic Messages") tables each mapping with its test. Thinking blocks
sent back are not forwarded (Gemini takes no thinking text back); what Gemini needs of them, the thought
signature, rides in the ``tool_use`` ids (shared/signatures.py), and a thinking block's own signature is
put on the turn's first call when a client rewrote that call's id.
"""

from __future__ import annotations

import orjson

from gateway.messages_api.wire import (CountTokensRequest, ImageBlock, MessagesRequest, RedactedThinkingBlock,
                                       TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock, UrlSource)
from shared.errors import bad_request
from shared.protocol import check_schemas_together
from shared.signatures import SKIP_SIGNATURE, with_signature

MIN_BUDGET = 1024  # Anthropic's smallest thinking budget
MAX_STOP_SEQUENCES = 4  # what the chat path (and Gemini's stopSequences) take


def effort_for_budget(budget: int) -> str:
    """A thinking budget as the chat path's effort (the catalog's thinking kind maps it for the model)."""
    return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"


def check_request(req: CountTokensRequest) -> None:
    for i, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            raise bad_request(f"Tool type '{tool.type}' is not supported: only client tools (name, description, "
                              "input_schema) run here; Anthropic's server tools do not.", param=f"tools.{i}.type")
    thinking = req.thinking
    if thinking is not None and thinking.type == "enabled":
        budget = thinking.budget_tokens
        if budget is None or budget < MIN_BUDGET:
            raise bad_request(f"thinking.budget_tokens: must be at least {MIN_BUDGET}.", param="thinking.budget_tokens")
        if isinstance(req, MessagesRequest) and budget >= req.max_tokens:
            raise bad_request("`max_tokens` must be greater than `thinking.budget_tokens`.",
                              param="thinking.budget_tokens")
    choice = req.tool_choice
    if choice is not None and choice.type == "tool":
        if not choice.name or choice.name not in {t.name for t in req.tools or []}:
            raise bad_request("tool_choice.name must name one of the tools.", param="tool_choice.name")
    if isinstance(req, MessagesRequest) and len(req.stop_sequences or []) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop_sequences: at most {MAX_STOP_SEQUENCES} are supported.", param="stop_sequences")
    check_schemas_together([(f"tools.{i}.input_schema", t.input_schema) for i, t in enumerate(req.tools or [])])


def _image(block: ImageBlock, where: str) -> dict:
    if isinstance(block.source, UrlSource):
        raise bad_request("Image URLs are not fetched: send the image as base64.", param=f"{where}.source.type")
    return {"type": "image_url", "image_url": {"url": f"data:{block.source.media_type};base64,{block.source.data}"}}


def _result_text(block: ToolResultBlock) -> str:
    content = block.content
    text = content if isinstance(content, str) else "".join(
        b.text for b in content or [] if isinstance(b, TextBlock))
    return orjson.dumps({"error": text}).decode() if block.is_error else text


def _user(blocks: list, where: str, renamed: dict[str, str]) -> list[dict]:
    """A user turn: its tool results as tool messages (first, as Anthropic orders them), then its text
    and images as one user message."""
    out: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        if isinstance(block, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": renamed.get(block.tool_use_id, block.tool_use_id),
                        "content": _result_text(block)})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, f"{where}.{j}"))
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant(blocks: list, renamed: dict[str, str]) -> dict:
    text, calls, signature = [], [], None
    for block in blocks:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ThinkingBlock):
            signature = signature or (block.signature if block.signature != SKIP_SIGNATURE else None)
        elif isinstance(block, RedactedThinkingBlock):
            continue
        elif isinstance(block, ToolUseBlock):
            call_id = block.id
            if not calls and signature:  # a rewritten id lost its signature: the thinking block still has it
                call_id = renamed[block.id] = with_signature(block.id, signature)
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()}})
    if calls:
        return {"role": "assistant", "content": "".join(text), "tool_calls": calls} if text else \
            {"role": "assistant", "tool_calls": calls}
    return {"role": "assistant", "content": "".join(text)}


def _messages(req: CountTokensRequest) -> list[dict]:
    messages: list[dict] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "".join(b.text for b in req.system)
        messages.append({"role": "system", "content": system})
    renamed: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        blocks = [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        if m.role == "user":
            messages.extend(_user(blocks, f"messages.{i}.content", renamed))
        else:
            messages.append(_assistant(blocks, renamed))
    if all(m["role"] == "system" for m in messages):  # (the chat schema's own refusal, in this API's words)
        raise bad_request("messages: at least one message must have content.", param="messages")
    return messages


def _tools(req: CountTokensRequest) -> dict:
    out: dict = {}
    if req.tools:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            **({"parameters": t.input_schema} if t.input_schema else {})}} for t in req.tools]
    choice = req.tool_choice
    if choice is not None and req.tools:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or {
            "type": "function", "function": {"name": choice.name}}
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    return out


def chat_body(req: CountTokensRequest) -> dict:
    thinking = req.thinking
    on = thinking is not None and thinking.type != "disabled"
    body: dict = {"model": req.model, "messages": _messages(req), "include_thoughts": on, **_tools(req),
                  # Without thinking asked for, think as little as the model allows (Gemini 3 cannot stop).
                  "reasoning_effort": "none" if not on else "high" if thinking.type == "adaptive"
                  else effort_for_budget(thinking.budget_tokens or MIN_BUDGET)}
    if isinstance(req, MessagesRequest):
        body["max_completion_tokens"] = req.max_tokens
        for src, dst in (("temperature", "temperature"), ("top_p", "top_p")):
            if getattr(req, src) is not None:
                body[dst] = getattr(req, src)
        if req.stop_sequences:
            body["stop"] = req.stop_sequences
        if req.metadata and req.metadata.user_id:
            body["user"] = req.metadata.user_id
    return body
