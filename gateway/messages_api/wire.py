"""The Messages request, validated strictly (a 400 naming the field, in Anthropic's error shape)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from shared.protocol import BoundedSchema, ToolName, WireModel


class TextBlock(WireModel):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # accepted; Gemini caches implicitly
    citations: list[Any] | None = None


class Base64Source(WireModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class UrlSource(WireModel):
    type: Literal["url"]  # refused: remote images are not fetched
    url: str


class ImageBlock(WireModel):
    type: Literal["image"]
    source: Annotated[Union[Base64Source, UrlSource], Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[Union[TextBlock, ImageBlock], Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(WireModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(WireModel):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
                  Field(discriminator="type")]


class Message(WireModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(WireModel):
    """A client tool; Anthropic's server tools (web search, code execution, bash...) carry a ``type`` and
    are refused by name (``translate.check_request``)."""

    name: ToolName
    type: str | None = None
    description: str | None = None
    input_schema: BoundedSchema | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(WireModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class Metadata(WireModel):
    user_id: str | None = None


class CountTokensRequest(WireModel):
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # accepted; Gemini's topK is not offered on the chat path
    metadata: Metadata | None = None
    service_tier: str | None = None
