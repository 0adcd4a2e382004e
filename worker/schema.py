"""JSON Schemas as real clients write them -> what Gemini's JSON-Schema fields accept.

Used for tool parameters (``parametersJsonSchema``) and structured output
(``responseJsonSchema``). Clients send schemas made by pydantic (``$defs`` +
``$ref``, ``allOf: [{$ref}]`` wrappers, ``title``/``default``), by zod / the
Vercel AI SDK (``$schema``, ``±(2^53−1)`` integer bounds, ``exclusiveMinimum``)
and by hand (draft-04 ``definitions``, boolean ``exclusiveMinimum``).

Gemini documents a subset of JSON Schema for these fields (type, format, title,
description, enum, items, prefixItems, min/maxItems, minimum/maximum, anyOf,
oneOf as anyOf, properties, additionalProperties, required, $ref/$defs,
propertyOrdering). ``to_gemini_schema`` keeps that subset and translates or
drops the rest:

- ``$schema``, ``$comment``, ``default``, ``examples``, ``not``, ``if``/``then``/``else``,
  ``patternProperties``, ``uniqueItems``, ``multipleOf`` ... are dropped;
- local ``$ref``s are inlined (a recursive one is kept, with its ``$defs`` entry);
  ``definitions`` is read as ``$defs``;
- ``oneOf`` -> ``anyOf``; ``allOf`` is merged into its parent; ``const`` -> one-value ``enum``;
- ``exclusiveMinimum``/``exclusiveMaximum`` -> inclusive bounds (the next integer for
  integers; the same value for numbers, a harmless widening);
- bounds at or beyond ±(2^53−1) (no-op bounds a JS client adds) are dropped.
"""

from __future__ import annotations

import math
from typing import Any

MAX_SAFE = 2**53 - 1

# Keywords kept as they are (values that are schemas are translated below).
_PLAIN = frozenset({
    "type", "format", "title", "description", "enum", "minItems", "maxItems", "minimum", "maximum",
    "required", "propertyOrdering", "nullable", "minLength", "maxLength", "pattern",
    "minProperties", "maxProperties",
})
_MAX_INLINE_DEPTH = 64


class _Translator:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            if isinstance(root.get(key), dict):
                self.defs.update(root[key])
        self.kept_defs: dict[str, Any] = {}  # recursive definitions that stay as $ref

    def _target(self, ref: str) -> tuple[str | None, Any]:
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                name = ref[len(prefix):].replace("~1", "/").replace("~0", "~")
                return name, self.defs.get(name)
        if ref == "#":
            return "#", self.root
        return None, None

    def schema(self, s: Any, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(s, bool) or not isinstance(s, dict):
            return s
        if "$ref" in s and isinstance(s["$ref"], str):
            name, target = self._target(s["$ref"])
            siblings = {k: v for k, v in s.items() if k != "$ref"}
            if target is None:  # remote or unknown pointer: nothing Gemini could resolve
                return self.schema(siblings, stack) if siblings else {}
            if name in stack or len(stack) > _MAX_INLINE_DEPTH:  # recursion: keep a reference
                if name != "#" and name not in self.kept_defs:
                    self.kept_defs[name] = None  # placeholder first: the body may refer to itself
                    self.kept_defs[name] = self.schema(target, stack)
                ref = {"$ref": "#" if name == "#" else f"#/$defs/{name}"}
                return ref
            inlined = self.schema(target, (*stack, name))
            if siblings:  # pydantic puts description/default next to a $ref
                extra = self.schema(siblings, stack)
                if isinstance(inlined, dict):
                    inlined = {**inlined, **{k: v for k, v in extra.items() if k not in inlined or k == "description"}}
            return inlined
        out: dict[str, Any] = {}
        for key, value in s.items():
            if key in _PLAIN:
                out[key] = value
            elif key == "properties" and isinstance(value, dict):
                out["properties"] = {name: self.schema(sub, stack) for name, sub in value.items()}
            elif key == "items":
                if isinstance(value, list):  # draft-04 tuple form
                    out["prefixItems"] = [self.schema(v, stack) for v in value]
                else:
                    out["items"] = self.schema(value, stack)
            elif key == "prefixItems" and isinstance(value, list):
                out["prefixItems"] = [self.schema(v, stack) for v in value]
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                options = [self.schema(v, stack) for v in value]
                out["anyOf"] = out.get("anyOf", []) + options
            elif key == "additionalProperties":
                out[key] = self.schema(value, stack)
            elif key == "const" and (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                pass  # handled with the bounds below
            # allOf is merged below; everything else ($schema, default, examples, not, ...) is dropped.
        for sub in s.get("allOf") or []:
            part = self.schema(sub, stack)
            if isinstance(part, dict):
                out = _merge(out, part)
        _bounds(s, out)
        if len(out.get("anyOf", [])) == 1 and set(out) == {"anyOf"}:
            return out["anyOf"][0]
        return out


def _is_integer_type(s: dict) -> bool:
    t = s.get("type")
    return t == "integer" or (isinstance(t, list) and "integer" in t and "number" not in t)


def _bounds(src: dict, out: dict) -> None:
    integer = _is_integer_type(src)
    for key, ex_key, step in (("minimum", "exclusiveMinimum", 1), ("maximum", "exclusiveMaximum", -1)):
        value = src.get(key)
        ex = src.get(ex_key)
        if isinstance(ex, bool):  # draft-04: exclusiveMinimum is a flag on minimum
            if ex and _number(value) and integer:
                value = (math.floor(value) + 1) if step == 1 else (math.ceil(value) - 1)
        elif _number(ex):
            if integer:
                bound = (math.floor(ex) + 1) if step == 1 else (math.ceil(ex) - 1)
            else:
                bound = ex
            if not _number(value) or (bound > value if step == 1 else bound < value):
                value = bound
        if _number(value) and abs(value) < MAX_SAFE:
            out[key] = value
        else:
            out.pop(key, None)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(v, dict):
            out["properties"] = {**out.get("properties", {}), **v}
        elif k == "required" and isinstance(v, list):
            out["required"] = list(dict.fromkeys([*out.get("required", []), *v]))
        elif k not in out:
            out[k] = v
    return out


def to_gemini_schema(schema: Any) -> Any:
    """A copy of ``schema`` that Gemini's ``parametersJsonSchema``/``responseJsonSchema`` accept."""
    if not isinstance(schema, dict):
        return schema
    t = _Translator(schema)
    out = t.schema({k: v for k, v in schema.items() if k not in ("$defs", "definitions")}, ("#",))
    if t.kept_defs and isinstance(out, dict):
        out["$defs"] = t.kept_defs
    return out
