"""The Responses request, validated strictly like every OpenAI body (a 400 naming the ``param``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from shared.protocol import BoundedSchema, FunctionDefinition, ToolName, WireModel


# --- input items ---------------------------------------------------------------------------
class InputText(WireModel):
    type: Literal["input_text"]
    text: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None  # a base64 data URI; remote URLs are not fetched
    file_id: str | None = None  # refused: files are not stored for the Responses API
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(WireModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[Union[InputText, InputImage, OutputText, RefusalPart], Field(discriminator="type")]


class MessageItem(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(WireModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(WireModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class SummaryText(WireModel):
    type: Literal["summary_text"]
    text: str


class ReasoningItem(WireModel):
    """A reasoning item sent back: accepted; Gemini takes no thinking text back (its signatures ride in
    the call ids of the function calls)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = []
    encrypted_content: str | None = None
    content: list[Any] | None = None


class ItemReference(WireModel):
    type: Literal["item_reference"]
    id: str


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("type", "message")
    return getattr(value, "type", "message")


InputItem = Annotated[
    Union[Annotated[MessageItem, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
          Annotated[FunctionCallOutputItem, Tag("function_call_output")],
          Annotated[ReasoningItem, Tag("reasoning")], Annotated[ItemReference, Tag("item_reference")]],
    Discriminator(_item_kind)]


# --- tools, formats, reasoning ---------------------------------------------------------------
class ResponsesTool(FunctionDefinition):
    """A tool: a chat function definition, flat, with its ``type``. Only ``function`` tools run here; hosted
    ones (web search, file search, computer use...) are refused by name (``translate.check_request``), and
    have no name, so it is optional here and required of a function tool there."""

    type: str
    name: ToolName | None = None


class FunctionChoice(WireModel):
    type: Literal["function"]
    name: str


class TextFormatText(WireModel):
    type: Literal["text"]


class TextFormatJsonObject(WireModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(WireModel):
    type: Literal["json_schema"]
    name: str
    schema_: BoundedSchema = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(WireModel):
    format: Annotated[Union[TextFormatText, TextFormatJsonObject, TextFormatJsonSchema],
                      Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(WireModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # its older name


class ResponsesRequest(WireModel):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stream: bool | None = None
    store: bool | None = None  # default true, as OpenAI's
    background: bool | None = None  # refused when true: answers are relayed, not run in the background
    metadata: dict[str, str] | None = None
    user: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
