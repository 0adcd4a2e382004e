"""An account's usage rows, read newest first: by the billing API and the dashboard alike.

Usage, ledger and orders are Redis streams (``shared/keys.py``); a row's id
(``<ms>-<seq>``) is its time and the cursor of the next page. A usage scan
filters rows as it goes and may be bounded (``budget`` rows read), so one
page view never reads a whole history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from redis.asyncio import Redis

from shared.keys import AccountKeys

ROW_ID_PATTERN = r"[0-9]{1,20}-[0-9]{1,20}"  # for documents; is_row_id also checks the range
_ROW_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
MAX_ID_PART = 2**64 - 1
SCAN_BATCH = 500


def is_row_id(text: str) -> bool:
    """A stream row id Redis accepts as an exclusive bound (``(0-0`` and out-of-range parts it refuses)."""
    m = _ROW_ID.fullmatch(text)
    if m is None:
        return False
    ms, seq = int(m[1]), int(m[2])
    return (ms, seq) != (0, 0) and ms <= MAX_ID_PART and seq <= MAX_ID_PART


def decode(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


class RowFilter(Protocol):
    """Which rows a scan keeps: an id range (``-``/``+`` for open ends) and a test on each row."""

    @property
    def min_id(self) -> str: ...

    @property
    def max_id(self) -> str: ...

    def matches(self, row: dict) -> bool: ...


@dataclass(frozen=True)
class UsageFilter:
    key_id: str = ""
    model: str = ""
    status: str = ""
    min_id: str = "-"
    max_id: str = "+"

    @classmethod
    def since(cls, unix_s: int | None, **fields: str) -> UsageFilter:
        """Rows from ``unix_s`` on (None or before 1970: every row)."""
        if not unix_s or unix_s < 0:
            return cls(**fields)
        return cls(min_id=str(min(unix_s * 1000, MAX_ID_PART)), **fields)

    def matches(self, row: dict) -> bool:
        return ((not self.key_id or row.get("key_id") == self.key_id)
                and (not self.model or row.get("model") == self.model)
                and (not self.status or row.get("status") == self.status))


@dataclass
class UsagePage:
    rows: list[dict]  # each row's fields and its "id"
    next_after: str | None  # cursor for the next (older) page, None at the end
    truncated: bool = False  # the scan budget ran out before the page filled


async def usage_page(redis: Redis, account_id: str, f: RowFilter, after: str | None, limit: int,
                     budget: int | None = 5000) -> UsagePage:
    """Newest first; ``after`` is the last row id of the previous page; ``budget=None`` reads until full."""
    stream = AccountKeys(account_id).usage
    upper = f"({after}" if after else f.max_id
    out: list[dict] = []
    scanned, last = 0, None
    while budget is None or scanned < budget:
        count = SCAN_BATCH if budget is None else min(SCAN_BATCH, budget - scanned)
        batch = await redis.xrevrange(stream, max=upper, min=f.min_id, count=count)
        for rid, fields in batch:
            scanned += 1
            last = rid.decode()
            row = decode(fields)
            if f.matches(row):
                row["id"] = last
                out.append(row)
                if len(out) > limit:
                    return UsagePage(out[:limit], out[limit - 1]["id"])
        if len(batch) < count or last is None:
            return UsagePage(out, None)
        upper = f"({last}"
    return UsagePage(out, last, truncated=True)


async def usage_batches(redis: Redis, account_id: str, f: RowFilter, budget: int = 200_000
                        ) -> AsyncIterator[list[dict]]:
    """Every matching row, newest first, a batch at a time (for exports)."""
    stream = AccountKeys(account_id).usage
    upper, scanned = f.max_id, 0
    while scanned < budget:
        batch = await redis.xrevrange(stream, max=upper, min=f.min_id, count=1000)
        rows = []
        for rid, fields in batch:
            row = decode(fields)
            if f.matches(row):
                row["id"] = rid.decode()
                rows.append(row)
        scanned += len(batch)
        if rows:
            yield rows
        if len(batch) < 1000:
            return
        upper = "(" + batch[-1][0].decode()
