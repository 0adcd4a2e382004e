"""Parsing of `[[sim key=value ...]]` directives.

Directives are read only from the text parts of the LAST user content of a request. Several
blocks may appear; a later value wins. Unknown keys and malformed values are ignored (a test
that mistypes a directive sees default behaviour, never a crash).

Keys:
  output_tokens=N    answer length in tokens (units) before any cap
  thinking_tokens=N  thinking length in tokens (exact; overrides thinkingLevel/thinkingBudget)
  delay_ms=N         sleep between chunks, streaming and non-streaming alike
  error=STATUS       fail before the first chunk: an HTTP code (429) or a status (UNAVAILABLE)
  error_model=NAME   only calls for this model fail with `error` (say, one model out of capacity while
                     another, its fallback, answers the same prompt)
  fail_after=K       break the connection after K chunks (0 = before any)
  finish=REASON      force this finishReason on the last chunk (SAFETY, RECITATION, ...)
  tool_calls=N       how many parallel function calls to emit when tools are offered
  prompt_tokens=N    report this prompt size (promptTokenCount) instead of the counted one, to reach a
                     long-context price tier without sending that many tokens
  cached_tokens=N    report this many of the prompt's tokens as served from the cache
                     (cachedContentTokenCount; at most the prompt's size)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CODE_BY_STATUS, STATUS_BY_CODE

_BLOCK = re.compile(r"\[\[sim\b([^\]]*)\]\]")
_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
_REASON = re.compile(r"^[A-Z][A-Z_]*$")

_INT_KEYS = ("output_tokens", "thinking_tokens", "delay_ms", "fail_after", "tool_calls")
_COUNT_KEYS = ("prompt_tokens", "cached_tokens")  # only reported, never generated: a larger bound
_MAX = 262_144  # keeps a mistyped directive from building a huge answer
_MAX_COUNT = 10_000_000


@dataclass(slots=True)
class Directives:
    output_tokens: int | None = None
    thinking_tokens: int | None = None
    delay_ms: int = 0
    error: int | None = None
    error_model: str | None = None
    fail_after: int | None = None
    finish: str | None = None
    tool_calls: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


def parse_directives(texts: list[str]) -> Directives:
    """Parse every `[[sim ...]]` block in `texts` (the last user content's text parts)."""
    d = Directives()
    for text in texts:
        if "[[sim" not in text:
            continue
        for block in _BLOCK.finditer(text):
            for key, value in _PAIR.findall(block.group(1)):
                _apply(d, key.lower(), value)
    return d


def _apply(d: Directives, key: str, value: str) -> None:
    if key in _INT_KEYS or key in _COUNT_KEYS:
        try:
            n = int(value)
        except ValueError:
            return
        if n < 0:
            return
        setattr(d, key, min(n, _MAX if key in _INT_KEYS else _MAX_COUNT))
    elif key == "error":
        code: int | None
        if value.isdigit():
            code = int(value)
            if code not in STATUS_BY_CODE:
                code = None
        else:
            code = CODE_BY_STATUS.get(value.upper())
        if code is not None:
            d.error = code
    elif key == "error_model":
        d.error_model = value
    elif key == "finish":
        reason = value.upper()
        if _REASON.match(reason):
            d.finish = reason
