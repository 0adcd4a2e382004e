"""A validated Responses request -> the OpenAI chat body every job runs (and the conversation it stores).
The body is admitted as it is (JSON): the checks below cover what the chat schema would, so it is not
validated a second time.

``docs/gemini-mapping.md`` ("Responses API") tables each mapping with its test.
"""

from __future__ import annotations

from shared.errors import bad_request
from shared.protocol import check_schemas_together
from gateway.responses_api.wire import (FunctionCallItem, FunctionCallOutputItem, InputImage, InputText, ItemReference,
                                        MessageItem, OutputText, ReasoningItem, RefusalPart, ResponsesRequest,
                                        TextFormatJsonObject, TextFormatJsonSchema)

EFFORTS = {"xhigh": "high"}  # Responses efforts past what chat names map to the highest one


def check_request(req: ResponsesRequest) -> None:
    """What the Responses API takes that this gateway does not do: a clear 400 naming it."""
    if req.background:
        raise bad_request("background responses are not supported: answers are streamed or returned at once.",
                          param="background", code="unsupported_value")
    for i, tool in enumerate(req.tools or []):
        if tool.type != "function":
            raise bad_request(f"Tool type '{tool.type}' is not supported: only function tools run here "
                              "(hosted tools such as web search, file search or computer use are not).",
                              param=f"tools[{i}].type", code="unsupported_tool")
        if not tool.name:
            raise bad_request("A function tool needs a name.", param=f"tools[{i}].name",
                              code="missing_required_parameter")
    if req.input is None and req.previous_response_id is None:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    schemas = [(f"tools[{i}].parameters", t.parameters) for i, t in enumerate(req.tools or [])]
    if isinstance(req.text and req.text.format, TextFormatJsonSchema):
        schemas.append(("text.format.schema", req.text.format.schema_))
    check_schemas_together(schemas)


def _parts(content: str | list, where: str, user: bool) -> str | list[dict]:
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for j, part in enumerate(content):
        if isinstance(part, (InputText, OutputText)):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, RefusalPart):
            parts.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage):
            if not user:
                raise bad_request("Images are accepted in user messages only.", param=f"{where}[{j}]")
            if part.file_id or not part.image_url:
                raise bad_request("input_image needs an image_url (a base64 data URI); file ids are not "
                                  "supported.", param=f"{where}[{j}].file_id", code="unsupported_value")
            image: dict = {"url": part.image_url}
            if part.detail:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
    return parts


def _text(content: str | list[dict]) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def input_messages(req: ResponsesRequest) -> list[dict]:
    """The request's input as chat messages: function calls join the assistant turn they follow."""
    items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else (req.input or [])
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, MessageItem):
            content = _parts(item.content, f"{where}.content", item.role == "user")
            if item.role == "assistant":
                messages.append({"role": "assistant", "content": _text(content)})
            elif item.role in ("system", "developer"):
                messages.append({"role": item.role, "content": _text(content)})
            else:
                messages.append({"role": "user", "content": content})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name,
                                                                          "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": _text(_parts(item.output, f"{where}.output", False))})
        elif isinstance(item, ItemReference):
            raise bad_request("item_reference inputs are not supported; send the item itself, or continue "
                              "with previous_response_id.", param=f"{where}.type", code="unsupported_value")
        elif isinstance(item, ReasoningItem):
            continue  # Gemini takes no thinking text back; its signatures ride in the call ids
    return messages


def _tools(req: ResponsesRequest) -> dict:
    out: dict = {}
    if req.tools:
        out["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t.name), ("description", t.description), ("parameters", t.parameters),
                              ("strict", t.strict)) if v is not None}} for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        out["tool_choice"] = choice if isinstance(choice, str) else {"type": "function",
                                                                      "function": {"name": choice.name}}
    if req.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = req.parallel_tool_calls
    return out


def _response_format(req: ResponsesRequest) -> dict | None:
    fmt = req.text.format if req.text else None
    if isinstance(fmt, TextFormatJsonObject):
        return {"type": "json_object"}
    if isinstance(fmt, TextFormatJsonSchema):
        spec = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": spec}
    return None


def chat_body(req: ResponsesRequest, history: list[dict]) -> tuple[dict, list[dict]]:
    """(the chat body to run, the conversation to store: the history and this input, no instructions)."""
    conversation = history + input_messages(req)
    if not conversation:
        raise bad_request("input: at least one item must carry a message.", param="input", code="invalid_value")
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    reasoning = req.reasoning
    summary = reasoning and (reasoning.summary or reasoning.generate_summary)
    body: dict = {"model": req.model, "messages": messages, "include_thoughts": bool(summary), **_tools(req)}
    if reasoning and reasoning.effort:
        body["reasoning_effort"] = EFFORTS.get(reasoning.effort, reasoning.effort)
    for src, dst in (("max_output_tokens", "max_completion_tokens"), ("temperature", "temperature"),
                     ("top_p", "top_p"), ("user", "user")):
        if getattr(req, src) is not None:
            body[dst] = getattr(req, src)
    if (fmt := _response_format(req)) is not None:
        body["response_format"] = fmt
    return body, conversation
