"""Bounds on the JSON Schemas clients send: tool ``parameters`` and ``response_format`` schemas.

Why: the worker inlines local ``$ref``s for Gemini (``worker/schema.py``), and a
schema whose definitions each refer twice to the next doubles the inlined output
per definition: 1.3 KB with 17 of them inlined to 99 MiB in 3.2 s, a stalled
worker and other tenants' streams lost (NOTES.md). And JSON nested past 255
levels cannot be written by orjson at all, so it cannot become a job.

So wire validation (``shared/protocol.py``) measures each schema before anything
is held or queued: as sent (depth, values, ``$ref``s), and as it *would* be
inlined, without inlining it (each definition is measured once and its size
reused wherever it is referred to, so the cost is linear in the schema as
sent). The translation keeps its own budget too (defence in depth).

The bounds are generous for real clients: pydantic and zod/the AI SDK emit
``$defs`` with tens of definitions and hundreds to a few thousand values, well
inside them (OpenAI's own structured-output limits are 5,000 properties and 10
levels of nesting; Gemini refuses much smaller schemas as having "too many states
for serving").
"""

from __future__ import annotations

from typing import Any, NamedTuple

MAX_SCHEMA_DEPTH = 64  # nesting of objects/arrays as sent (orjson writes at most 255)
MAX_SCHEMA_VALUES = 20_000  # JSON values as sent (objects, arrays, strings, numbers ...)
MAX_SCHEMA_REFS = 1_000  # "$ref"s as sent
# Once every local $ref is inlined (what the translation costs, and what is sent upstream):
MAX_INLINED_VALUES = 20_000
MAX_INLINED_CHARS = 1_000_000  # characters of keys and strings: a long description referred to 1,000 times
MAX_INLINED_DEPTH = 128  # room left below orjson's 255 for the request around the schema
MAX_REQUEST_INLINED_VALUES = 50_000  # every schema of one request together
MAX_REQUEST_INLINED_CHARS = 2_000_000
MAX_NESTED_INLINES = 64  # $refs inlined within one another; past that a $ref is kept as it is

_PREFIXES = ("#/$defs/", "#/definitions/")


class SchemaTooLarge(ValueError):
    """A schema past one of the bounds; the message says which, in words a client can act on."""


def definitions(root: Any) -> dict[str, Any]:
    """The named definitions of a root schema: ``$defs``, and draft-04's ``definitions``."""
    out: dict[str, Any] = {}
    if isinstance(root, dict):
        for key in ("$defs", "definitions"):
            if isinstance(root.get(key), dict):
                out.update(root[key])
    return out


def ref_name(ref: Any) -> str | None:
    """The definition a local ``$ref`` names (``"#"`` for the root); None for any other pointer."""
    if not isinstance(ref, str):
        return None
    if ref == "#":
        return "#"
    for prefix in _PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix):].replace("~1", "/").replace("~0", "~")
    return None


def ref_to(name: str) -> str:
    """The local ``$ref`` for a definition name (JSON Pointer escaping), ``ref_name``'s inverse."""
    return "#" if name == "#" else "#/$defs/" + name.replace("~", "~0").replace("/", "~1")


class SchemaSize(NamedTuple):
    """A schema's size once its local ``$ref``s are inlined."""

    values: int  # JSON values: objects, arrays, strings, numbers ...
    chars: int  # characters of its keys and strings (what serializing it costs, roughly)
    depth: int  # nesting levels of objects and arrays


def check_schema(schema: Any) -> SchemaSize:
    """Raise ``SchemaTooLarge`` past a bound; else return the schema's size once inlined."""
    _check_as_sent(schema)
    return _InlinedSize(schema).root()


def _check_as_sent(schema: Any) -> None:
    """Depth, values and ``$ref``s of the schema as sent; iterative, as it may nest ~1000 deep."""
    nodes = refs = 0
    stack = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_VALUES:
            raise SchemaTooLarge(f"The schema has more than {MAX_SCHEMA_VALUES} values")
        if isinstance(value, dict):
            refs += "$ref" in value
            if refs > MAX_SCHEMA_REFS:
                raise SchemaTooLarge(f"The schema has more than {MAX_SCHEMA_REFS} $refs")
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaTooLarge(f"The schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


class _InlinedSize:
    """The size of a schema with its local ``$ref``s inlined, as ``worker/schema.py`` does.

    A definition is measured once, the first time it is reached, and reused after:
    linear in the schema as sent, however large the inlined result. A ``$ref`` back
    to a definition being measured (recursion) counts as a ``$ref``, as the
    translation keeps it; the translation may unroll a cycle between definitions
    once more than measured here, and its own budget covers that. Python recursion
    stays shallow: measuring stops past ``MAX_INLINED_DEPTH`` levels and
    ``MAX_NESTED_INLINES`` definitions inlined within one another.
    """

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.defs = definitions(schema)
        self.measured: dict[str, SchemaSize] = {}
        self.open: set[str] = {"#"}  # definitions being measured

    def root(self) -> SchemaSize:
        body = self.schema
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("$defs", "definitions")}
        return self.size(body, 1)

    def size(self, value: Any, depth: int) -> SchemaSize:
        """The size of ``value`` inlined, ``value`` sitting at nesting level ``depth``."""
        if isinstance(value, dict):
            name = ref_name(value.get("$ref"))
            if name is not None and (name == "#" or name in self.defs):
                target = self.definition(name, depth)
                siblings = {k: v for k, v in value.items() if k != "$ref"}
                if not siblings:
                    return target
                more = self.size(siblings, depth)  # merged into the inlined object
                return SchemaSize(target.values + more.values - 1, target.chars + more.chars,
                                  max(target.depth, more.depth))
            values, chars, children = 1, sum(len(key) for key in value), value.values()
        elif isinstance(value, list):
            values, chars, children = 1, 0, value
        else:
            return SchemaSize(1, len(value) if isinstance(value, str) else 0, 0)
        if depth > MAX_INLINED_DEPTH:
            raise _too_deep()
        below = 0
        for child in children:
            sub = self.size(child, depth + 1)
            values, chars, below = values + sub.values, chars + sub.chars, max(below, sub.depth)
            if values > MAX_INLINED_VALUES:
                raise SchemaTooLarge(f"The schema would be more than {MAX_INLINED_VALUES} values once its $refs "
                                     "are inlined (definitions referring to others many times over)")
            if chars > MAX_INLINED_CHARS:
                raise SchemaTooLarge(f"The schema's keys and strings would be more than {MAX_INLINED_CHARS} "
                                     "characters once its $refs are inlined")
        return SchemaSize(values, chars, below + 1)

    def definition(self, name: str, depth: int) -> SchemaSize:
        if name in self.open or len(self.open) > MAX_NESTED_INLINES:
            return SchemaSize(1, 0, 1)  # recursion, or too many inlined within one another: kept as a $ref
        if name not in self.measured:
            self.open.add(name)
            try:
                self.measured[name] = self.size(self.defs[name], depth)
            finally:
                self.open.discard(name)
        size = self.measured[name]
        if depth + size.depth - 1 > MAX_INLINED_DEPTH:
            raise _too_deep()
        return size


def _too_deep() -> SchemaTooLarge:
    return SchemaTooLarge(f"The schema would be nested more than {MAX_INLINED_DEPTH} levels deep once its $refs "
                          "are inlined")
