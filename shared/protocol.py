"""OpenAI wire types for what clients send, validated strictly (no coercion).

Like OpenAI: a wrong type is a 400 naming the ``param``; ``"yes"`` is not
``true`` and ``"1"`` is not ``1``. Unknown fields are ignored. Responses are
built as plain dicts in ``worker/chunks.py`` (orjson, no model overhead).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import ApiError, bad_request
from shared.schema_bounds import (MAX_INLINED_CHARS, MAX_INLINED_VALUES, MAX_REQUEST_INLINED_CHARS,
                                  MAX_REQUEST_INLINED_VALUES, SchemaTooLarge, check_schema)


# Text the record (Postgres) keeps: names, references, emails. Postgres text cannot hold NUL, and no
# name needs a control character, so they are a 400 naming the field, not a 500 at the database.
RECORD_TEXT = r"^[^\x00-\x1f\x7f]*$"


class WireModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


W = TypeVar("W", bound=WireModel)


# --- message content -------------------------------------------------------
class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


# --- messages ---------------------------------------------------------------
class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(WireModel):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(WireModel):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    # Clients (openai-node, pydantic-ai) echo the thinking back; accepted, not sent upstream.
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[
    Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage],
    Field(discriminator="role"),
]


# --- tools and formats ----------------------------------------------------
def bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A client's JSON Schema within ``shared/schema_bounds.py``'s bounds, or a 400 naming its field."""
    try:
        check_schema(schema)
    except SchemaTooLarge as exc:
        raise PydanticCustomError("schema_too_large", str(exc)) from None
    return schema


# What every front end's tools and response schemas are validated as (Responses, Messages too).
BoundedSchema = Annotated[dict[str, Any], AfterValidator(bounded_schema)]
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.\-]{1,64}$")]


class FunctionDefinition(WireModel):
    name: ToolName
    description: str | None = None
    parameters: BoundedSchema | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(WireModel):
    name: str
    schema_: BoundedSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormatText(WireModel):
    type: Literal["text"]


class ResponseFormatJsonObject(WireModel):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema], Field(discriminator="type")
]


class StreamOptions(WireModel):
    include_usage: bool | None = None


# --- the request --------------------------------------------------------------
class ChatCompletionRequest(WireModel):
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    include_thoughts: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None


# --- batches ---------------------------------------------------------------------------
MetadataValue = Annotated[str, Field(max_length=512)]


class BatchCreateRequest(WireModel):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    # At most 16 pairs; `callback_url` gets a signed event on a terminal status. Its shape is checked here;
    # the gateway refuses what is not public https (shared/callback_targets.py, unless the setting allows).
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], MetadataValue], Field(max_length=16)] | None = None

    @field_validator("metadata")
    @classmethod
    def _callback_url(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        url = (value or {}).get("callback_url")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("metadata.callback_url must be an http(s) URL")
        return value


# --- validation errors as OpenAI reports them --------------------------------------
_ROLE_TAGS = {"system", "developer", "user", "assistant", "tool"}
_PART_TAGS = {"text", "image_url", "json_object", "json_schema"}


def _param_from_loc(loc: tuple[Any, ...]) -> str:
    """``('messages', 0, 'user', 'content', 'str')`` -> ``messages[0].content``."""
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            part in ("str", "int", "float", "bool", "none")
            or "[" in part
            or part.startswith(("function-", "lax-", "json-or-python"))
            or (part in _ROLE_TAGS and isinstance(previous, int))
            or (part in _PART_TAGS and (isinstance(previous, int) or previous in ("response_format", "tool_choice")))
        ):
            pass  # a union branch or discriminator tag, not a field the client wrote
        else:
            out += ("." if out else "") + part
        previous = part
    return out


def validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    # Prefer the most specific error (deepest location) among union branches.
    first = max(errors, key=lambda e: (e["type"] != "union_tag_invalid", len(e["loc"])), default=None)
    if first is None:
        return bad_request("Invalid request body.")
    param = _param_from_loc(tuple(first["loc"]))
    if first["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    got = first.get("input")
    got_type = type(got).__name__ if got is not None else "null"
    return bad_request(
        f"Invalid value for '{param}': {first['msg']} (got {got_type}).", param=param, code="invalid_value"
    )


def parse_body(model: type[W], body: object) -> W:
    """Validate a decoded JSON body against a wire model; errors as OpenAI reports them."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_chat_request(body: object) -> ChatCompletionRequest:
    req = parse_body(ChatCompletionRequest, body)
    schemas = [(f"tools[{i}].function.parameters", t.function.parameters) for i, t in enumerate(req.tools or [])]
    if isinstance(req.response_format, ResponseFormatJsonSchema):
        schemas.append(("response_format.json_schema.schema", req.response_format.json_schema.schema_))
    check_schemas_together(schemas)
    return req


def check_schemas_together(schemas: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Each schema (``(param, schema)``, as the client named it) passed its own bounds; together they must
    fit one request's translation budget. Every front end's tools and response schema pass here."""
    n = len(schemas)
    if n * MAX_INLINED_VALUES <= MAX_REQUEST_INLINED_VALUES and n * MAX_INLINED_CHARS <= MAX_REQUEST_INLINED_CHARS:
        return  # within the budget whatever their sizes: no need to measure them again
    values = chars = 0
    for param, schema in schemas:
        if schema is not None:
            size = check_schema(schema)
            values, chars = values + size.values, chars + size.chars
            if values > MAX_REQUEST_INLINED_VALUES or chars > MAX_REQUEST_INLINED_CHARS:
                raise bad_request(f"The schemas of this request together would be more than "
                                  f"{MAX_REQUEST_INLINED_VALUES} values or {MAX_REQUEST_INLINED_CHARS} characters "
                                  f"once their $refs are inlined; '{param}' is past that.", param=param,
                                  code="invalid_value")
