"""Proto-JSON field parsing with Google's error wording.

Google's JSON parser takes camelCase or snake_case names, numbers as JSON numbers or strings,
booleans only as true/false, enums by name (any case here), bytes as standard or URL-safe base64.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import SimError, bad_value, invalid, unknown_field
from .schema import camel

_INT32 = 2**31 - 1


def obj_fields(v: Any, allowed: frozenset[str], path: str, proto: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise bad_value(path or "request", proto, v)
    out: dict[str, Any] = {}
    for k, val in v.items():
        name = camel(k)
        if name not in allowed:
            raise unknown_field(k, path)
        out[name] = val
    return out


def as_list(v: Any, path: str, proto: str) -> list[Any]:
    if not isinstance(v, list):
        raise bad_value(path, proto, v)
    return v


def as_int(v: Any, path: str, proto: str = "TYPE_INT32") -> int:
    if isinstance(v, bool):
        raise bad_value(path, proto, v)
    if isinstance(v, int):
        n = v
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    elif isinstance(v, str):
        try:
            n = int(v.strip())
        except ValueError:
            raise bad_value(path, proto, v) from None
    else:
        raise bad_value(path, proto, v)
    if proto == "TYPE_INT32" and not -_INT32 - 1 <= n <= _INT32:
        raise bad_value(path, proto, v)
    return n


def as_float(v: Any, path: str) -> float:
    if isinstance(v, bool):
        raise bad_value(path, "TYPE_FLOAT", v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise bad_value(path, "TYPE_FLOAT", v)


def as_bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise bad_value(path, "TYPE_BOOL", v)
    return v


def as_str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise bad_value(path, "TYPE_STRING", v)
    return v


def as_enum(v: Any, path: str, allowed: tuple[str, ...], proto: str) -> str:
    if not isinstance(v, str) or v.upper() not in allowed:
        raise bad_value(path, proto, v)
    return v.upper()


def as_bytes(v: Any, path: str) -> bytes:
    if not isinstance(v, str):
        raise bad_value(path, "TYPE_BYTES", v)
    s = v.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{v}\""
        ) from None


def range_error(name: str, value: Any, lo: str, hi: str) -> SimError:
    return invalid(
        f"Unable to submit request because it has a {name} value of {value} but the supported "
        f"range is from {lo} (inclusive) to {hi} (exclusive). Update the value and try again."
    )
