"""What the dashboard pages read: keys with their live state, usage with filters, daily series, ledger notes.

Every scan is bounded (``budget`` rows), so one page view costs at most a few
thousand stream entries read however large an account's history is; a page
says when a bound cut its answer short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.account_storage import stored_by_account
from shared.accounts import Accounts
from shared.contracts import Hold, RequestStatus
from shared.db.database import Database
from shared.db.history_reads import daily_usage
from shared.db.history_reads import recent_failures as failures_since
from shared.history import UsageFilter, decode
from shared.keys import AccountKeys

USAGE_STATUSES = tuple(RequestStatus)
DAY_MS = 86_400_000


class FilterError(ValueError):
    """A filter value people typed that we cannot use; the message says why in plain words."""


def _day(text: str, name: str) -> date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FilterError(f"The {name} date must look like 2026-11-02 (year-month-day).") from None


def day_start_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def today() -> date:
    return datetime.now(timezone.utc).date()


@dataclass
class UsageFilters:
    key_id: str = ""
    model: str = ""
    status: str = ""
    date_from: date | None = None
    date_to: date | None = None

    @classmethod
    def from_query(cls, query) -> UsageFilters:
        f = cls(key_id=query.get("key", "").strip(), model=query.get("model", "").strip(),
                status=query.get("status", "").strip(),
                date_from=_day(query.get("from", ""), "'from'"), date_to=_day(query.get("to", ""), "'to'"))
        if f.status and f.status not in USAGE_STATUSES:
            raise FilterError(f"Unknown status {f.status!r}; pick one from the list.")
        if f.date_from and f.date_to and f.date_from > f.date_to:
            raise FilterError("The 'from' date is after the 'to' date.")
        return f

    def scan(self) -> UsageFilter:
        """The rows these filters keep, for the usage readers of ``shared/history.py``."""
        return UsageFilter(key_id=self.key_id, model=self.model, status=self.status,
                           min_id=str(day_start_ms(self.date_from)) if self.date_from else "-",
                           max_id=str(day_start_ms(self.date_to) + DAY_MS - 1) if self.date_to else "+")

    def query(self, **extra) -> dict:
        q = {"key": self.key_id, "model": self.model, "status": self.status,
             "from": self.date_from.isoformat() if self.date_from else "",
             "to": self.date_to.isoformat() if self.date_to else ""}
        q.update(extra)
        return {k: v for k, v in q.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.key_id or self.model or self.status or self.date_from or self.date_to)


def _int(row: dict, name: str) -> int:
    value = row.get(name, "")
    return int(value) if value.lstrip("-").isdigit() else 0


@dataclass
class DailySeries:
    days: list[date]
    credits_micro: list[int]
    tokens: list[int]
    requests: list[int]
    truncated: bool = False
    totals: dict = field(default_factory=dict)


async def daily_series(redis: Redis, account_id: str, f: UsageFilters, default_days: int = 14,
                       budget: int = 50_000, db: Database | None = None) -> DailySeries:
    """Credits charged, tokens and requests per UTC day over the filter's dates (default: the last 14 days).

    With the record: Postgres' sums per day, plus the Redis tail newer than its newest archived row.
    """
    last_day = f.date_to or today()
    first_day = f.date_from or (last_day - timedelta(days=default_days - 1))
    if (last_day - first_day).days > 92:
        first_day = last_day - timedelta(days=92)
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    index = {d: i for i, d in enumerate(days)}
    cr, tk, rq = [0] * len(days), [0] * len(days), [0] * len(days)
    stream = AccountKeys(account_id).usage
    lower, upper = str(day_start_ms(first_day)), str(day_start_ms(last_day) + DAY_MS - 1)
    scanned, truncated, keep = 0, False, f.scan()
    if db is not None:
        for day, credits_micro, tokens, requests in await daily_usage(db, account_id, keep, int(lower), int(upper)):
            i = index.get(date(1970, 1, 1) + timedelta(days=day))
            if i is not None:
                cr[i], tk[i], rq[i] = credits_micro, tokens, requests
        newest = await db.fetchval("SELECT max(ARRAY[sid_ms, sid_seq]) FROM usage WHERE account_id = $1", account_id)
        if newest and tuple(newest) >= (int(lower), 0):  # the tail: only what Postgres does not have yet
            lower = f"({newest[0]}-{newest[1]}"
    while True:
        batch = await redis.xrange(stream, min=lower, max=upper, count=1000)
        for rid, fields in batch:
            row = decode(fields)
            if not keep.matches(row):
                continue
            d = datetime.fromtimestamp(int(rid.split(b"-")[0]) / 1000, timezone.utc).date()
            i = index.get(d)
            if i is None:
                continue
            cr[i] += _int(row, "charged_micro")
            tk[i] += _int(row, "prompt_tokens") + _int(row, "completion_tokens")
            rq[i] += 1
        scanned += len(batch)
        if len(batch) < 1000:
            break
        if scanned >= budget:
            truncated = True
            break
        lower = "(" + batch[-1][0].decode()
    return DailySeries(days, cr, tk, rq, truncated,
                       {"credits_micro": sum(cr), "tokens": sum(tk), "requests": sum(rq)})


async def key_table(redis: Redis, accounts: Accounts, account_id: str) -> list[dict]:
    """The account's keys (never the keys themselves) with last use and spend, one extra round trip."""
    listed = await accounts.list_keys(account_id)
    if not listed:
        return []
    k = AccountKeys(account_id)
    async with redis.pipeline(transaction=False) as pipe:
        for key in listed:
            pipe.hmget(k.key_state(key["id"]), "tk_ts", "spend", "inflight")
        states = await pipe.execute()
    for key, (ts, spend, inflight) in zip(listed, states):
        key["last_used"] = float(ts) if ts else 0  # every admitted request stamps it (reserve.lua)
        key["spend_micro"] = int(spend or 0)
        key["inflight"] = int(inflight or 0)
    listed.sort(key=lambda r: -r["created"])
    return listed


async def holds(redis: Redis, account_id: str) -> list[dict]:
    k = AccountKeys(account_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(k.holds)
        pipe.zrange(k.deadlines, 0, -1, withscores=True)
        raw, deadlines = await pipe.execute()
    due = {m.decode(): int(s) for m, s in deadlines}
    out = []
    for rid, value in raw.items():
        hold = Hold.parse(value)
        out.append({"request_id": rid.decode(), "amount_micro": hold.amount_micro, "key_id": hold.key_id,
                    "deadline": due.get(rid.decode(), 0) / 1000})
    out.sort(key=lambda h: h["deadline"])
    return out


async def ledger_notes(redis: Redis, account_id: str, rows: list[tuple[str, dict]]) -> dict[str, str]:
    """The operator's reason for each adjustment among ``rows`` (kept with the adjustment's reference)."""
    refs = [f["ref"] for _, f in rows if f.get("reason") not in ("charge",) and f.get("ref")]
    if not refs:
        return {}
    values = await redis.hmget(AccountKeys(account_id).order_refs, refs)
    notes = {}
    for ref, raw in zip(refs, values):
        if raw:
            notes[ref] = orjson.loads(raw).get("note", "")
    return notes


async def account_rows(accounts: Accounts, db: Database | None, query: str = "", limit: int = 500
                       ) -> tuple[list[dict], int]:
    """Every account (operators), newest first, optionally filtered by a piece of its name or id."""
    q = query.strip().lower()
    listed = [a for a in await accounts.list_accounts()
              if not q or q in a["name"].lower() or q in a["id"].lower()]
    async with accounts.redis.pipeline(transaction=False) as pipe:
        for a in listed:
            pipe.scard(keys.account_users(a["id"]))
        user_counts = await pipe.execute()
    rows = [{"id": a["id"], "name": a["name"], "balance_micro": a["balance_micro"], "held_micro": a["held_micro"],
             "created": a["created"], "keys": len(a["keys"]), "users": n} for a, n in zip(listed, user_counts)]
    rows.sort(key=lambda r: (-r["created"], r["id"]))
    shown = rows[:limit]
    stored = await stored_by_account(db, [r["id"] for r in shown])
    for r in shown:
        r["files"], r["stored_bytes"] = stored[r["id"]].files, stored[r["id"]].bytes
    return shown, len(rows)


async def recent_failures(redis: Redis, minutes: int = 15, max_accounts: int = 2000,
                          db: Database | None = None) -> dict[str, dict[str, int]]:
    """Failed requests per node and error code over the last minutes: from the record (every account),
    else from the usage streams (bounded)."""
    since = str(int((time.time() - minutes * 60) * 1000))
    out: dict[str, dict[str, int]] = {}
    if db is not None:
        for node, code, n in await failures_since(db, int(since)):
            out.setdefault(node, {})[code] = n
        return out
    ids = [m.decode() for m in await redis.srandmember(keys.ACCOUNTS, max_accounts) or []]
    if not ids:
        return out
    async with redis.pipeline(transaction=False) as pipe:
        for a in ids:
            pipe.xrevrange(AccountKeys(a).usage, max="+", min=since, count=500)
        batches = await pipe.execute()
    for batch in batches:
        for _rid, fields in batch:
            row = decode(fields)
            if row.get("status") in ("failed", "expired"):
                node = row.get("node") or "?"
                code = row.get("error_code") or row.get("status")
                out.setdefault(node, {})
                out[node][code] = out[node].get(code, 0) + 1
    return out
