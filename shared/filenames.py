"""An uploaded file's name: cleaned once when it is stored, sent back in a header that cannot break.

A client chooses the name (multipart ``filename`` or RFC 5987 ``filename*``,
which can carry any character). It comes back in the Files API's JSON and in
``Content-Disposition`` on download, so it must not be able to end the
header's quoted string, add a parameter, split the header (CR/LF) or name a
path. The header carries the name twice (RFC 6266): a plain-ASCII fallback and
the exact name percent-encoded in ``filename*``.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

DEFAULT = "upload.jsonl"
MAX_BYTES = 255  # UTF-8 bytes: what common filesystems allow in one name
# A double quote or backslash ends or escapes a quoted-string, ; splits header parameters, / and \ name
# directories. (Apostrophes and commas are common in names and harmless once quoted.)
REPLACED = frozenset('"\\/;')
# RFC 5987 attr-char, what filename*= may carry unencoded.
ATTR_CHARS = "!#$&+-.^_`|~"


def _drop(ch: str) -> bool:
    """Control, format (bidi overrides), surrogate, private-use and unassigned characters; line separators."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def safe_filename(name: str | None) -> str:
    """The name as stored: no controls, quotes or separators, at most MAX_BYTES, never empty."""
    cleaned = "".join("_" if ch in REPLACED else ch for ch in (name or "") if not _drop(ch))
    cleaned = " ".join(cleaned.split())  # every run of whitespace (tabs too) is one space
    while len(cleaned.encode()) > MAX_BYTES:
        cleaned = cleaned[:-1]
    cleaned = cleaned.strip()
    return cleaned if cleaned.strip(".") else DEFAULT


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in ``filename*`` (RFC 6266)."""
    name = safe_filename(filename)  # names stored before names were cleaned come out safe too
    fallback = "".join(ch if " " <= ch <= "~" and ch != "%" else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=ATTR_CHARS)}"
