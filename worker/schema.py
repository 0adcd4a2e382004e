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
  ``definitions`` is read as ``$defs``; a schema that would inline past the bounds of
  ``shared/schema_bounds.py`` keeps every ``$ref`` instead, so no schema makes the
  translation stall (the gateway refuses such schemas first);
- ``oneOf`` -> ``anyOf``; ``allOf`` is merged into its parent; ``const`` -> one-value ``enum``;
- ``exclusiveMinimum``/``exclusiveMaximum`` -> inclusive bounds (the next integer for
  integers; the same value for numbers, a harmless widening);
- bounds at or beyond ±(2^53−1) (no-op bounds a JS client adds) are dropped.
"""

from __future__ import annotations

import math
from typing import Any

from shared.schema_bounds import (MAX_INLINED_CHARS, MAX_INLINED_DEPTH, MAX_INLINED_VALUES, MAX_NESTED_INLINES,
                                  SchemaTooLarge, definitions, ref_name, ref_to)

MAX_SAFE = 2**53 - 1

# Keywords kept as they are (values that are schemas are translated below).
_PLAIN = frozenset({
    "type", "format", "title", "description", "enum", "minItems", "maxItems", "minimum", "maximum",
    "required", "propertyOrdering", "nullable", "minLength", "maxLength", "pattern",
    "minProperties", "maxProperties",
})
_KEPT_DEF_DEPTH = 3  # a kept definition sits at root -> $defs -> name


class _OverBudget(Exception):
    """Inlining passed the budget: translate again, keeping the $refs."""


class _Translator:
    """One translation of one root schema; ``inline`` says whether local $refs are inlined or kept.

    Inlining counts what it writes (roughly: JSON values, characters) and how deep:
    past ``MAX_INLINED_VALUES``, ``MAX_INLINED_CHARS`` or ``MAX_INLINED_DEPTH`` it gives up (``_OverBudget``)
    so the caller can translate again with every $ref kept, which writes about
    what was sent. The gateway refuses schemas past these bounds
    (``shared/schema_bounds.py``), so the second pass is for what slipped past it.
    """

    def __init__(self, root: dict, inline: bool) -> None:
        self.root = root
        self.inline = inline
        self.defs = definitions(root)
        self.kept_defs: dict[str, Any] = {}  # definitions that stay as $ref (recursive ones, or all)
        self.pending: list[tuple[str, tuple[str, ...]]] = []  # kept ones not translated yet
        self.values = self.chars = 0  # written so far

    def translate(self) -> Any:
        out = self.schema({k: v for k, v in self.root.items() if k not in ("$defs", "definitions")}, ("#",), 1)
        while self.pending:  # one after the other, not nested: a long chain of kept definitions stays flat
            name, stack = self.pending.pop()
            self.kept_defs[name] = self.schema(self.defs[name], stack, _KEPT_DEF_DEPTH)
        if self.kept_defs and isinstance(out, dict):
            out["$defs"] = self.kept_defs
        return out

    def _target(self, ref: Any) -> tuple[str | None, Any]:
        name = ref_name(ref)
        if name == "#":
            return name, self.root
        return name, self.defs.get(name) if name is not None else None

    def _spend(self, s: dict, depth: int) -> None:
        self.values += 1 + len(s)
        self.chars += sum(len(k) for k in s)
        for v in s.values():
            if isinstance(v, str):
                self.chars += len(v)
            elif isinstance(v, list):  # enum, required ...: copied as they are
                self.values += len(v)
                self.chars += sum(len(x) for x in v if isinstance(x, str))
        if depth > MAX_INLINED_DEPTH or self.values > MAX_INLINED_VALUES or self.chars > MAX_INLINED_CHARS:
            if self.inline:
                raise _OverBudget
            if depth > MAX_INLINED_DEPTH:  # keeping every $ref, only a schema nested this deep as sent
                raise SchemaTooLarge(f"The schema is nested more than {MAX_INLINED_DEPTH} levels deep")

    def schema(self, s: Any, stack: tuple[str, ...], depth: int) -> Any:
        """``s`` translated; ``stack`` the definitions inlined around it, ``depth`` its JSON nesting level."""
        if isinstance(s, bool) or not isinstance(s, dict):
            return s
        self._spend(s, depth)
        if "$ref" in s and isinstance(s["$ref"], str):
            return self._ref(s, stack, depth)
        out: dict[str, Any] = {}
        for key, value in s.items():
            if key in _PLAIN:
                out[key] = value
            elif key == "properties" and isinstance(value, dict):
                out["properties"] = {name: self.schema(sub, stack, depth + 2) for name, sub in value.items()}
            elif key == "items":
                if isinstance(value, list):  # draft-04 tuple form
                    out["prefixItems"] = [self.schema(v, stack, depth + 2) for v in value]
                else:
                    out["items"] = self.schema(value, stack, depth + 1)
            elif key == "prefixItems" and isinstance(value, list):
                out["prefixItems"] = [self.schema(v, stack, depth + 2) for v in value]
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                options = [self.schema(v, stack, depth + 2) for v in value]
                out["anyOf"] = out.get("anyOf", []) + options
            elif key == "additionalProperties":
                out[key] = self.schema(value, stack, depth + 1)
            elif key == "const" and (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                pass  # handled with the bounds below
            # allOf is merged below; everything else ($schema, default, examples, not, ...) is dropped.
        for sub in s.get("allOf") or []:
            part = self.schema(sub, stack, depth + 1)  # merged into this level; +1 bounds nested allOfs' recursion
            if isinstance(part, dict):
                out = _merge(out, part)
        _bounds(s, out)
        if len(out.get("anyOf", [])) == 1 and set(out) == {"anyOf"}:
            return out["anyOf"][0]
        return out

    def _ref(self, s: dict, stack: tuple[str, ...], depth: int) -> Any:
        name, target = self._target(s["$ref"])
        siblings = {k: v for k, v in s.items() if k != "$ref"}
        if name is None or target is None:  # remote or unknown pointer: nothing Gemini could resolve
            return self.schema(siblings, stack, depth) if siblings else {}
        if not self.inline or name in stack or len(stack) > MAX_NESTED_INLINES:  # recursion: keep a reference
            if name != "#" and name not in self.kept_defs:
                self.kept_defs[name] = None  # a placeholder, in first-use order; translated by translate()
                self.pending.append((name, (*stack, name)))
            return {"$ref": ref_to(name)}
        inlined = self.schema(target, (*stack, name), depth)
        if siblings:  # pydantic puts description/default next to a $ref
            extra = self.schema(siblings, stack, depth)
            if isinstance(inlined, dict):
                inlined = {**inlined, **{k: v for k, v in extra.items() if k not in inlined or k == "description"}}
        return inlined


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
    """A copy of ``schema`` that Gemini's ``parametersJsonSchema``/``responseJsonSchema`` accept.

    Local $refs are inlined while that stays within the budget, else all kept
    (Gemini resolves ``$ref``/``$defs`` itself). Raises ``SchemaTooLarge`` only for
    a schema nested too deep as sent, which no translation could write.
    """
    if not isinstance(schema, dict):
        return schema
    try:
        return _Translator(schema, inline=True).translate()
    except _OverBudget:
        return _Translator(schema, inline=False).translate()
