"""Deterministic content for the simulator: token units, text, JSON, function calls, signatures.

Token rules (exact, so tests and billing can check them):
  * prompt: `count_text_tokens(text)` = ceil(len(text) / 4) per text part (0 for empty), plus 258
    per inlineData/fileData part; a functionCall / functionResponse part in the history counts
    as the text of its compact JSON.
  * output: every unit the simulator emits is one token. A unit is a run of optional whitespace
    followed by one word (`\\w+`) or one punctuation character (`split_units`). Generated text is
    built unit by unit; JSON and function-call arguments are counted with `split_units` on
    their compact JSON (a function call = units of its name + units of its args JSON).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import re
from typing import Any

import orjson

from .schema import generate_value

_UNIT = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_SECRET = b"apiinone-gemini-simulator/thought-signature/v1"
# Google documents these as the values that skip thought-signature validation.
DUMMY_SIGNATURES = frozenset({"skip_thought_signature_validator",
                              "context_engineering_is_the_way_to_go"})

ANSWER_WORDS = (
    "apple", "bridge", "candle", "desert", "engine", "forest", "garden", "hammer", "island",
    "jacket", "kettle", "lantern", "meadow", "needle", "orchard", "pillow", "quarry", "rocket",
    "saddle", "tunnel", "valley", "window", "yellow", "anchor", "barrel", "castle", "dragon",
    "feather", "glacier", "harvest", "iceberg", "jungle", "kingdom", "ladder", "marble",
    "notebook", "ocean", "planet", "silver", "thunder",
)
THINKING_WORDS = (
    "consider", "weigh", "check", "compare", "recall", "infer", "assume", "verify", "outline",
    "plan", "draft", "refine", "note", "question", "estimate", "examine",
)


def count_text_tokens(text: str) -> int:
    """Prompt tokens of one text part: ceil(len(text) / 4), 0 for empty."""
    return (len(text) + 3) // 4


def split_units(text: str) -> list[str]:
    """Split text into output token units; ''.join(split_units(t)) == t."""
    return _UNIT.findall(text)


def text_units(rng: random.Random, n: int, words: tuple[str, ...]) -> list[str]:
    """`n` units of sentence-like text: words (with a leading space) and periods."""
    if n <= 0:
        return []
    forms = _forms(words)
    picks = rng.choices(range(len(words)), k=n)
    lengths = rng.choices(_SENTENCE_LENGTHS, k=n // 5 + 2)
    units: list[str] = [forms[1][picks[0]]]  # capitalized, no leading space
    left = lengths[0] - 1
    sentence = 0
    cap = False
    for i in range(1, n):
        if units[-1] != "." and ((left <= 0 and i < n - 2) or i == n - 1):
            units.append(".")
            sentence += 1
            left = lengths[sentence]
            cap = True
            continue
        units.append(forms[3 if cap else 2][picks[i]])
        cap = False
        left -= 1
    return units


_SENTENCE_LENGTHS = tuple(range(5, 12))
_FORMS: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}


def _forms(words: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """(word, Word, " word", " Word") for each word, computed once per word list."""
    forms = _FORMS.get(words)
    if forms is None:
        forms = (words, tuple(w.capitalize() for w in words), tuple(" " + w for w in words),
                 tuple(" " + w.capitalize() for w in words))
        _FORMS[words] = forms
    return forms


def json_answer_units(rng: random.Random, n: int) -> list[str]:
    """A JSON object `{"answer": "..."}` of about `n` units (exactly n when n >= 9)."""
    words = "".join(text_units(rng, max(1, n - 8), ANSWER_WORDS))
    return split_units(orjson.dumps({"answer": words}).decode())


def schema_answer_units(rng: random.Random, schema: Any, enum_text: bool) -> list[str]:
    """Units of a value valid against `schema`: JSON text, or the bare value for text/x.enum."""
    value = generate_value(schema, rng)
    if enum_text:
        return split_units(value if isinstance(value, str) else orjson.dumps(value).decode())
    return split_units(orjson.dumps(value).decode())


def call_units(name: str, args: dict[str, Any]) -> int:
    return len(split_units(name)) + len(split_units(orjson.dumps(args).decode()))


# ------------------------------------------------------------------------------- signatures

def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _mac(kind: bytes, payload: bytes) -> bytes:
    return kind + hmac.new(_SECRET, kind + payload, hashlib.sha256).digest()


def sign_call(name: str, args: dict[str, Any]) -> str:
    """thoughtSignature of a functionCall: base64(0x01 + HMAC(name, canonical args))."""
    payload = name.encode() + b"\x00" + orjson.dumps(_canonical(args), option=orjson.OPT_SORT_KEYS)
    return base64.b64encode(_mac(b"\x01", payload)).decode()


def sign_text(digest: bytes) -> str:
    """thoughtSignature on the last part of a Gemini 3 text answer (not enforced)."""
    return base64.b64encode(_mac(b"\x02", digest)).decode()


def verify_call_signature(signature: str, name: str, args: dict[str, Any]) -> bool:
    if signature in DUMMY_SIGNATURES:
        return True
    s = signature.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        return False
    expected = base64.b64decode(sign_call(name, args))
    return hmac.compare_digest(raw, expected)
