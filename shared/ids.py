"""The ids the service mints, and their formats.

An id a client sends ends up inside a Redis key name (``aio:file:<id>``,
``aio:{acct:<id>}:account``...). Checked against its format first, it can
never name a neighbouring key (``<file id>:lines``) or carry a separator, and
an id that does not match is simply unknown: a 404, like an id that matches
and does not exist.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class IdFormat:
    """``prefix`` followed by ``hex_digits`` lowercase hex digits."""

    prefix: str  # letters, "-" and "_": no regex escaping needed, in Python or in an OpenAPI document
    hex_digits: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_-]+", self.prefix):
            raise ValueError(f"id prefix {self.prefix!r}")

    @property
    def pattern(self) -> str:
        return self.prefix + f"[0-9a-f]{{{self.hex_digits}}}"

    def new(self) -> str:
        return self.prefix + secrets.token_hex(self.hex_digits // 2)

    def matches(self, value: str) -> bool:
        return _compiled(self.pattern).fullmatch(value) is not None


@dataclass(frozen=True)
class NameFormat:
    """A name chosen by the operator (a catalog model id), not minted here."""

    pattern: str

    def matches(self, value: str) -> bool:
        return _compiled(self.pattern).fullmatch(value) is not None


_PATTERNS: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re.compile(pattern)
    return compiled


FILE = IdFormat("file-", 24)  # shared/batch_store.py: uploads and batch output/error files
BATCH = IdFormat("batch_", 24)  # shared/batch_store.py
ACCOUNT = IdFormat("acct_", 16)  # shared/accounts.py
KEY = IdFormat("key_", 16)  # shared/accounts.py: an API key's id (never the key)
USER = IdFormat("user_", 16)  # shared/users.py: a dashboard user
REDEMPTION_BATCH = IdFormat("rcb_", 16)  # shared/redemption.py: a batch of redemption codes (never a code)
RESPONSE = IdFormat("resp_", 32)  # shared/response_store.py: a stored OpenAI Responses object
# A catalog model id (shared/catalog.py refuses others): letters, digits, and . _ : - inside.
MODEL = NameFormat(r"[A-Za-z0-9](?:[A-Za-z0-9._:\-]{0,126}[A-Za-z0-9])?")
# A catalog node id, and an upstream key's label (its last 4 characters: shared/key_state.py).
NODE = NameFormat(r"[A-Za-z0-9](?:[A-Za-z0-9._\-]{0,62}[A-Za-z0-9])?")
UPSTREAM_KEY_LABEL = NameFormat(r"[A-Za-z0-9._~+=\-]{1,4}")
