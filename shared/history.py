"""An account's usage rows and ledger, read newest first: by the billing API and the dashboard alike.

Postgres holds what the archiver moved (``shared/db/history_reads.py``); Redis' per-account
streams hold the tail not archived yet (``shared/keys.py``). A page merges both, so a row is
readable the moment it is settled, whatever the archiver's lag: a row's id (``<ms>-<seq>``, its
stream id in both stores) is its time and the cursor of the next page; a row in both (archived,
not yet trimmed) is listed once. While Postgres is down a page the tail fills alone is served (the
tail is the newest part); any other raises ``DatabaseUnavailable`` (a 503 naming the database),
never a silently short history. A Redis scan filters rows as it goes and may be bounded
(``budget`` rows read), so one page view never reads a whole tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from shared.db.database import Database, DatabaseUnavailable
from shared.db.history_reads import ledger_rows, usage_rows
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


def _key(row_id: str) -> tuple[int, int]:
    ms, _, seq = row_id.partition("-")
    return int(ms), int(seq or 0)


async def usage_page(redis: Redis, account_id: str, f: RowFilter, after: str | None, limit: int,
                     budget: int | None = 5000, db: Database | None = None) -> UsagePage:
    """Newest first; ``after`` is the last row id of the previous page; ``budget=None`` reads until full."""
    tail = await tail_usage_page(redis, account_id, f, after, limit, budget)
    if db is None:
        return tail
    try:
        archived = await usage_rows(db, account_id, f, after, limit + 1)
    except DatabaseUnavailable:
        if tail.next_after is not None and not tail.truncated:
            return tail  # the tail alone fills this page: it is exact
        raise
    merged = sorted({r["id"]: r for r in archived + tail.rows}.values(), key=lambda r: _key(r["id"]), reverse=True)
    more = len(merged) > limit or tail.next_after is not None
    page = merged[:limit]
    return UsagePage(page, page[-1]["id"] if more and page else None, tail.truncated)


async def ledger_page(redis: Redis, db: Database | None, account_id: str, after: str | None, limit: int
                      ) -> tuple[list[tuple[str, dict]], bool]:
    """The account's ledger entries, newest first, merged as ``usage_page`` merges usage rows."""
    upper = f"({after}" if after else "+"
    raw = await redis.xrevrange(AccountKeys(account_id).ledger, max=upper, min="-", count=limit + 1)
    tail = [(rid.decode(), decode(fields)) for rid, fields in raw if b"amount" in fields]
    if db is None:
        return tail[:limit], len(tail) > limit
    try:
        archived = await ledger_rows(db, account_id, after, limit + 1)
    except DatabaseUnavailable:
        if len(tail) > limit:
            return tail[:limit], True
        raise
    merged = sorted(dict(archived + tail).items(), key=lambda item: _key(item[0]), reverse=True)
    return merged[:limit], len(merged) > limit


async def tail_usage_page(redis: Redis, account_id: str, f: RowFilter, after: str | None, limit: int,
                          budget: int | None = 5000) -> UsagePage:
    """The not-yet-archived rows of ``usage_page``, from Redis alone."""
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
