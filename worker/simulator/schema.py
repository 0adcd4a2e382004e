"""Schemas: Google's `Schema` message (strict field check) and value generation from a schema.

`check_schema` validates a `parameters` / `responseSchema` object the way Google's proto JSON
parser does: only the OpenAPI subset the `Schema` message has, snake_case or camelCase, one
`type` (not a list). `parametersJsonSchema` / `responseJsonSchema` take any JSON Schema and are
not checked here.

`generate_value` builds a value that validates against a JSON Schema (or a Google `Schema`):
type/object/properties/required/array/items/prefixItems/enum/const/string/integer/number/
boolean/null/nullable/anyOf/oneOf/allOf/$ref+$defs/definitions, min/max bounds (exclusive ones
too), minItems/maxItems, minLength/maxLength, multipleOf and a few string formats. `pattern` is
not honoured. Like Google, it refuses a schema too complex to serve (a 400 "too many states"):
here, one whose value would take more than `MAX_GENERATED` values or characters to write.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .errors import SimError, bad_value, invalid, unknown_field

# Fields of google.ai.generativelanguage.v1beta.Schema (camelCase JSON names).
SCHEMA_FIELDS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }
)
SCHEMA_TYPES = frozenset({"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY",
                          "OBJECT", "NULL"})
_INT_FIELDS = ("maxItems", "minItems", "minProperties", "maxProperties", "minLength", "maxLength")


def camel(name: str) -> str:
    """snake_case -> camelCase, as Google's JSON parser maps field names."""
    if "_" not in name:
        return name
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_")
            out.append(ch.lower())
        else:
            out.append(ch)
    return "".join(out)


def check_schema(obj: Any, path: str) -> dict[str, Any]:
    """Validate a Google `Schema` object; return it with camelCase keys."""
    if not isinstance(obj, dict):
        raise bad_value(path, "type.googleapis.com/google.ai.generativelanguage.v1beta.Schema", obj)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = camel(key)
        if name not in SCHEMA_FIELDS:
            raise unknown_field(key, path)
        sub = f"{path}.{snake(name)}"
        if name == "type":
            if isinstance(value, list):
                raise unknown_field(key, path, "Proto field is not repeating, cannot start list.")
            if not isinstance(value, str) or value.upper() not in SCHEMA_TYPES:
                raise bad_value(
                    sub, "type.googleapis.com/google.ai.generativelanguage.v1beta.Type", value
                )
        elif name == "properties":
            if not isinstance(value, dict):
                raise bad_value(sub, "TYPE_MESSAGE", value)
            value = {
                k: check_schema(v, f"{sub}[{i}].value") for i, (k, v) in enumerate(value.items())
            }
        elif name == "items":
            value = check_schema(value, sub)
        elif name == "anyOf":
            if not isinstance(value, list):
                raise bad_value(sub, "TYPE_MESSAGE", value)
            value = [check_schema(v, f"{sub}[{i}]") for i, v in enumerate(value)]
        elif name in ("enum", "required", "propertyOrdering"):
            if not isinstance(value, list):
                raise bad_value(sub, "TYPE_STRING", value)
            for i, v in enumerate(value):
                if not isinstance(v, str):
                    raise bad_value(f"{sub}[{i}]", "TYPE_STRING", v)
        elif name in _INT_FIELDS:
            if isinstance(value, bool) or not _is_intlike(value):
                raise bad_value(sub, "TYPE_INT64", value)
            value = int(value)
        elif name in ("minimum", "maximum"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_value(sub, "TYPE_DOUBLE", value)
        elif name == "nullable":
            if not isinstance(value, bool):
                raise bad_value(sub, "TYPE_BOOL", value)
        elif name in ("format", "title", "description", "pattern"):
            if not isinstance(value, str):
                raise bad_value(sub, "TYPE_STRING", value)
        out[name] = value
    return out


def _is_intlike(v: Any) -> bool:
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    if isinstance(v, str):
        try:
            int(v)
            return True
        except ValueError:
            return False
    return False


# ---------------------------------------------------------------------------------------------
# Value generation

WORDS = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper",
    "kelp", "lumen", "maple", "nectar", "onyx", "pebble", "quartz", "river", "sage", "tundra",
    "umber", "violet", "willow", "xenon", "yarrow", "zephyr",
)
_MAX_DEPTH = 6
MAX_GENERATED = 20_000  # values (and string characters) one generated value may take
TOO_MANY_STATES = "The specified schema produces a constraint that has too many states for serving."


def too_many_states() -> SimError:
    return invalid(TOO_MANY_STATES)


class _Gen:
    __slots__ = ("rng", "root", "left")

    def __init__(self, rng: random.Random, root: Any):
        self.rng = rng
        self.root = root
        self.left = MAX_GENERATED

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def value(self, schema: Any, depth: int) -> Any:
        self.left -= 1
        if self.left < 0:
            raise too_many_states()
        if schema is True or schema is None:
            return self.rng.choice(WORDS)
        if schema is False or not isinstance(schema, dict):
            return None
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            if depth > _MAX_DEPTH * 2:
                return None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**target, **rest} if rest and isinstance(target, dict) else target,
                              depth + 1)
        if "allOf" in schema and isinstance(schema["allOf"], list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                if isinstance(sub, dict):
                    if "$ref" in sub:
                        sub = self.resolve(sub["$ref"])
                    merged = _merge(merged, sub)
            return self.value(merged, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.rng.randrange(len(enum))]
        for key in ("anyOf", "oneOf", "any_of"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if not _is_null_schema(o)]
                pool = non_null or options
                if depth >= _MAX_DEPTH and len(pool) < len(options):
                    return None
                return self.value(pool[self.rng.randrange(len(pool))], depth + 1)
        typ = schema.get("type")
        if isinstance(typ, list):
            non_null = [t for t in typ if str(t).lower() != "null"]
            if depth >= _MAX_DEPTH and len(non_null) < len(typ):
                return None
            typ = non_null[0] if non_null else "null"
        typ = str(typ).lower() if typ is not None else None
        if typ is None or typ == "type_unspecified":
            if "properties" in schema:
                typ = "object"
            elif "items" in schema or "prefixItems" in schema:
                typ = "array"
            else:
                typ = "string"
        if typ == "object":
            return self.obj(schema, depth)
        if typ == "array":
            return self.array(schema, depth)
        if typ == "integer":
            return self.integer(schema)
        if typ == "number":
            return self.number(schema)
        if typ == "boolean":
            return self.rng.random() < 0.5
        if typ == "null":
            return None
        return self.string(schema)

    def obj(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        order = schema.get("propertyOrdering") or schema.get("property_ordering")
        names = [n for n in order if n in props] if isinstance(order, list) else []
        names += [n for n in props if n not in names]
        if depth >= _MAX_DEPTH:
            names = [n for n in names if n in required]
        out: dict[str, Any] = {}
        for name in names:
            out[name] = self.value(props[name], depth + 1)
        for name in required:
            if name not in out:
                out[name] = self.rng.choice(WORDS)
        min_props = schema.get("minProperties") or 0
        extra = schema.get("additionalProperties")
        i = 1
        while len(out) < min_props and extra is not False:
            out[f"extra_{i}"] = self.value(extra if isinstance(extra, dict) else True, depth + 1)
            i += 1
        max_props = schema.get("maxProperties")
        if isinstance(max_props, int) and len(out) > max_props:
            keep = [n for n in out if n in required]
            keep += [n for n in out if n not in required][: max(0, max_props - len(keep))]
            out = {k: out[k] for k in keep}
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        lo = int(schema.get("minItems") or 0)
        hi = schema.get("maxItems")
        n = 0 if depth >= _MAX_DEPTH else 2
        n = max(n, lo)
        if isinstance(hi, (int, float)):
            n = min(n, int(hi))
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        out: list[Any] = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else items
            value = self.value(sub, depth + 1)
            if schema.get("uniqueItems"):
                for _ in range(8):
                    if value not in out:
                        break
                    value = self.value(sub, depth + 1)
            out.append(value)
        return out

    def _bounds(self, schema: dict[str, Any]) -> tuple[float, bool, float, bool]:
        lo, lo_x = schema.get("minimum"), False
        hi, hi_x = schema.get("maximum"), False
        emin, emax = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if emin is True:
            lo_x = True
        elif isinstance(emin, (int, float)) and not isinstance(emin, bool):
            if lo is None or emin >= lo:
                lo, lo_x = emin, True
        if emax is True:
            hi_x = True
        elif isinstance(emax, (int, float)) and not isinstance(emax, bool):
            if hi is None or emax <= hi:
                hi, hi_x = emax, True
        if lo is None and hi is None:
            lo, hi = 0, 100
        elif lo is None:
            lo = hi - 100
        elif hi is None:
            hi = lo + 100
        return float(lo), lo_x, float(hi), hi_x

    def integer(self, schema: dict[str, Any]) -> int:
        lo, lo_x, hi, hi_x = self._bounds(schema)
        ilo = math.floor(lo) + 1 if lo_x and float(lo).is_integer() else math.ceil(lo)
        ihi = math.ceil(hi) - 1 if hi_x and float(hi).is_integer() else math.floor(hi)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = -(-ilo // step) * step
            count = (ihi - first) // step + 1 if ihi >= first else 0
            return first + step * self.rng.randrange(count) if count > 0 else first
        if ihi < ilo:
            return ilo
        return self.rng.randint(ilo, ihi)

    def number(self, schema: dict[str, Any]) -> float | int:
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
            lo, _, hi, _ = self._bounds(schema)
            k = math.ceil(lo / step)
            kmax = math.floor(hi / step)
            return round(step * (k + self.rng.randrange(max(1, kmax - k + 1))), 10)
        lo, lo_x, hi, hi_x = self._bounds(schema)
        # Quarter steps inside the range: exact in binary, so they survive JSON round trips.
        qlo, qhi = math.ceil(lo * 4), math.floor(hi * 4)
        if lo_x and qlo / 4 <= lo:
            qlo += 1
        if hi_x and qhi / 4 >= hi:
            qhi -= 1
        if qhi < qlo:
            return (lo + hi) / 2
        return self.rng.randint(qlo, qhi) / 4

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
            s = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"\
                f"{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            s = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            s = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "email":
            s = f"{rng.choice(WORDS)}@example.com"
        elif fmt in ("uri", "url", "uri-reference"):
            s = f"https://example.com/{rng.choice(WORDS)}"
        elif fmt == "uuid":
            h = f"{rng.getrandbits(128):032x}"
            s = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
        elif fmt in ("ipv4",):
            s = f"192.0.2.{rng.randint(1, 254)}"
        else:
            s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        lo = int(schema.get("minLength") or 0)
        hi = schema.get("maxLength")
        self.left -= lo
        if self.left < 0:
            raise too_many_states()
        while len(s) < lo:
            s += " " + rng.choice(WORDS)
        if isinstance(hi, (int, float)) and len(s) > hi:
            s = s[: int(hi)].rstrip() if int(hi) > 0 else ""
            if len(s) < lo:
                s = s.ljust(lo, "x")
        return s


def _is_null_schema(s: Any) -> bool:
    if not isinstance(s, dict):
        return s is False
    t = s.get("type")
    return isinstance(t, str) and t.lower() == "null"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(v, dict):
            out["properties"] = {**out.get("properties", {}), **v}
        elif k == "required" and isinstance(v, list):
            out["required"] = list(dict.fromkeys([*out.get("required", []), *v]))
        elif k not in out:
            out[k] = v
    return out


def generate_value(schema: Any, rng: random.Random) -> Any:
    """A value valid against `schema` (JSON Schema or Google `Schema`), drawn from `rng`."""
    return _Gen(rng, schema).value(schema, 0)
