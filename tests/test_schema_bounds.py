"""The bounds on client JSON Schemas (shared/schema_bounds.py) and the wire validation that calls them.

No Redis, no processes: the bounds are pure functions, and ``parse_chat_request``
is what the gateway and the batch worker both call before anything is reserved.
"""

from __future__ import annotations

from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from shared import schema_bounds as sb
from shared.errors import ApiError
from shared.protocol import parse_chat_request
from shared.schema_bounds import SchemaTooLarge, check_schema


def doubling_chain(n: int) -> dict:
    """n definitions, each referring twice to the next: ~1.3 KB that inlines to 2^n copies of the last."""
    defs = {f"d{i}": {"type": "object", "properties": {"l": {"$ref": f"#/$defs/d{i + 1}"},
                                                     "r": {"$ref": f"#/$defs/d{i + 1}"}}, "required": ["l", "r"]}
            for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/d0"}}, "$defs": defs}


def nested(levels: int) -> dict:
    """A schema whose JSON nests ``levels`` containers deep (properties -> name -> schema ...)."""
    schema: dict = {"type": "string"}
    depth = 1
    while depth + 2 <= levels:
        schema = {"type": "object", "properties": {"a": schema}}
        depth += 2
    if depth < levels:
        schema = {"type": "array", "items": schema}
    return schema


def json_depth(value) -> int:
    """Containers on the deepest path (iterative: the values here nest past Python's recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in children)
    return deepest


class Address(BaseModel):
    street: str
    city: str
    country: Literal["DE", "FR", "US"] = "DE"


class Person(BaseModel):
    name: str
    home: Address
    work: Optional[Address] = None
    past: list[Address] = []
    friends: list["Person"] = []


AI_SDK = {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
    "properties": {"n": {"type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["n"],
}


def wide_api_schema() -> dict:
    """An OpenAPI-sized tool: 60 definitions, each used from several others, ~7,000 values inlined."""
    defs = {f"M{i}": {"type": "object", "description": f"model {i}",
                      "properties": {f"f{j}": {"type": "string", "description": "a field"} for j in range(8)}}
            for i in range(60)}
    for i in range(0, 60, 3):
        defs[f"M{i}"]["properties"]["child"] = {"$ref": f"#/$defs/M{(i + 1) % 60}"}
    return {"type": "object", "$defs": defs,
            "properties": {f"p{i}": {"$ref": f"#/$defs/M{i}"} for i in range(60)}}


@pytest.mark.parametrize("schema", [
    Person.model_json_schema(), AI_SDK, wide_api_schema(), nested(sb.MAX_SCHEMA_DEPTH), {}, {"type": "string"},
], ids=["pydantic-recursive", "ai-sdk", "wide-api", "max-depth", "empty", "plain"])
def test_schemas_real_clients_send_are_accepted(schema):
    size = check_schema(schema)
    assert 0 < size.values <= sb.MAX_INLINED_VALUES and size.depth <= sb.MAX_INLINED_DEPTH


@pytest.mark.parametrize("n", [18, 24, 40, 400])
def test_doubling_chain_is_refused_without_inlining_it(n):
    assert len(str(doubling_chain(n))) < 200 * n  # small as sent
    with pytest.raises(SchemaTooLarge, match="inline"):
        check_schema(doubling_chain(n))


def test_chain_that_inlines_within_the_bound_is_accepted_with_its_inlined_size():
    # 2^10 leaves, each a {"type": "string"} (2 values), plus the objects above them.
    size = check_schema(doubling_chain(10))
    assert 2 * 2**10 < size.values < sb.MAX_INLINED_VALUES
    assert size.depth == 2 + 2 * 10 + 1  # root -> properties -> d0 -> properties -> ... -> d10


@pytest.mark.parametrize("levels", [sb.MAX_SCHEMA_DEPTH + 1, 300, 1000])
def test_too_deep_as_sent_is_refused_without_recursion(levels):
    schema = nested(levels)
    assert json_depth(schema) == levels
    with pytest.raises(SchemaTooLarge, match="nested"):
        check_schema(schema)


def test_deep_arbitrary_json_inside_a_schema_counts_too():
    default: list = []
    for _ in range(300):
        default = [default]
    with pytest.raises(SchemaTooLarge, match="nested"):
        check_schema({"type": "array", "default": default})


def test_too_deep_once_inlined_is_refused():
    # Each definition is shallow and refers once to the next: linear size, but 40 x 4 levels deep once inlined.
    defs = {f"d{i}": {"type": "object", "properties": {"x": {"type": "object", "properties": {
        "next": {"$ref": f"#/$defs/d{i + 1}"}}}}} for i in range(40)}
    defs["d40"] = {"type": "string"}
    schema = {"$ref": "#/$defs/d0", "$defs": defs}
    assert json_depth(schema) < sb.MAX_SCHEMA_DEPTH
    with pytest.raises(SchemaTooLarge, match="deep"):
        check_schema(schema)


def test_too_many_values_or_refs_as_sent():
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(sb.MAX_SCHEMA_VALUES)}}
    with pytest.raises(SchemaTooLarge, match="values"):
        check_schema(many)
    refs = {"$defs": {"s": {"type": "string"}}, "type": "object",
            "properties": {f"p{i}": {"$ref": "#/$defs/s"} for i in range(sb.MAX_SCHEMA_REFS + 1)}}
    with pytest.raises(SchemaTooLarge, match=r"\$ref"):
        check_schema(refs)


def test_wide_fan_out_is_refused():
    # Three levels of 100 references each: 10^6 leaves from a few KB.
    defs = {f"d{i}": {"type": "object", "properties": {f"k{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(100)}}
            for i in range(3)}
    defs["d3"] = {"type": "integer"}
    with pytest.raises(SchemaTooLarge, match="inline"):
        check_schema({"$ref": "#/$defs/d0", "$defs": defs})


def test_a_long_text_referred_to_many_times_is_refused():
    # ~110 KB as sent, 110 MB of text once inlined: few values, many characters.
    schema = {"$defs": {"Long": {"type": "string", "description": "x" * 100_000}}, "type": "object",
              "properties": {f"p{i}": {"$ref": "#/$defs/Long"} for i in range(1000)}}
    with pytest.raises(SchemaTooLarge, match="characters"):
        check_schema(schema)


def test_recursion_and_unknown_refs_are_not_expanded():
    mutual = {"$defs": {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
                        "B": {"type": "array", "items": {"$ref": "#/$defs/A"}}},
              "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "self": {"$ref": "#"},
                                               "remote": {"$ref": "https://example.com/s.json"},
                                               "missing": {"$ref": "#/$defs/Nope"}}}
    assert check_schema(mutual).values < 100


def test_a_long_chain_of_refs_to_refs_is_measured_without_deep_recursion():
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(sb.MAX_SCHEMA_REFS - 1)}
    defs[f"d{sb.MAX_SCHEMA_REFS - 1}"] = {"type": "string"}
    assert check_schema({"$ref": "#/$defs/d0", "$defs": defs}).values < 10  # past MAX_NESTED_INLINES: kept
    parse_chat_request(chat(tools=[tool("chain", {"$ref": "#/$defs/d0", "$defs": defs})]))  # was a RecursionError


# --- the wire validation -------------------------------------------------------------------------
def chat(**extra) -> dict:
    return {"model": "gemini", "messages": [{"role": "user", "content": "hi"}], **extra}


def tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def refused(body: dict) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("schema", [doubling_chain(24), nested(300)], ids=["bomb", "deep"])
def test_bad_schema_is_a_400_naming_the_param(schema):
    err = refused(chat(tools=[tool("ok", AI_SDK), tool("bad", schema)]))
    assert err.param == "tools[1].function.parameters"
    err = refused(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert err.param == "response_format.json_schema.schema"


def test_all_schemas_of_a_request_share_one_bound():
    one = check_schema(wide_api_schema()).values
    count = sb.MAX_REQUEST_INLINED_VALUES // one + 1
    parse_chat_request(chat(tools=[tool(f"t{i}", wide_api_schema()) for i in range(count - 1)]))
    err = refused(chat(tools=[tool(f"t{i}", wide_api_schema()) for i in range(count)]))
    assert err.param == f"tools[{count - 1}].function.parameters" and "together" in err.message
    err = refused(chat(tools=[tool(f"t{i}", wide_api_schema()) for i in range(count - 1)],
                       response_format={"type": "json_schema",
                                        "json_schema": {"name": "x", "schema": wide_api_schema()}}))
    assert err.param == "response_format.json_schema.schema"


def test_long_texts_of_all_schemas_of_a_request_share_one_bound():
    texts = [tool(f"t{i}", {"type": "string", "description": "x" * 900_000}) for i in range(3)]
    parse_chat_request(chat(tools=texts[:2]))
    err = refused(chat(tools=texts))
    assert err.param == "tools[2].function.parameters" and "characters" in err.message


def test_deep_metadata_is_a_400_naming_it():
    deep: dict = {"x": "y"}
    for _ in range(300):
        deep = {"x": deep}
    err = refused(chat(metadata=deep))
    assert err.param == "metadata.x"


def test_real_client_schemas_pass_the_wire_validation():
    req = parse_chat_request(chat(
        tools=[tool("person", Person.model_json_schema()), tool("api", wide_api_schema())],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": AI_SDK}}))
    assert req.tools and req.response_format
