"""An account's history as Postgres has it: usage rows, ledger entries, orders; newest first, by cursor.

Each query walks one index that fits its filter (``sql/0001_record.sql``, ``0010``: usage by
account, by key, by model, succeeded, by other status; all ending in the stream id, newest first),
so a page costs the same on an account with a million rows as on one with ten. Rows come back in the shape of the Redis
stream entries they were archived from (fields as strings, the stream id as ``id``), so the
readers merge them with the not-yet-archived tail (``shared/history.py``).
"""

from __future__ import annotations

from shared.contracts import RequestStatus
from shared.db.database import Database

MAX_ID = 2**63 - 1
_STATUSES = frozenset(s.value for s in RequestStatus)


def _bound(after: str | None) -> tuple[int, int]:
    if not after:
        return MAX_ID, MAX_ID
    ms, _, seq = after.partition("-")
    return min(int(ms), MAX_ID), min(int(seq or 0), MAX_ID)


def _since(min_id: str) -> int:
    return 0 if min_id in ("-", "") else int(min_id.partition("-")[0])


def _until(max_id: str) -> int:
    return MAX_ID if max_id in ("+", "") else min(int(max_id.partition("-")[0]), MAX_ID)


def _matching(account_id: str, f) -> tuple[list[str], list]:
    """WHERE clauses and their arguments for ``f``'s key, model and status (``$1`` is the account)."""
    clauses, args = ["account_id = $1"], [account_id]
    for column, value in (("key_id", f.key_id), ("model", f.model)):
        if value:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if f.status in _STATUSES:
        # A literal, one of a closed set: each status gets its own plan, which can use the partial
        # index that fits it (sql/0010_usage_identity_probe.sql); "status = $n" could prove neither
        # predicate once a long-lived connection switched to a generic plan.
        clauses.append(f"status = '{f.status}'")
    elif f.status:
        clauses.append("false")  # no row has another status
    return clauses, args


def usage_export_query(account_id: str, f, before: str | None) -> tuple[str, list]:
    """Every row matching ``f`` older than ``before`` (None: the newest), newest first: the statement
    ``shared/usage_export.py`` runs through a server-side cursor (never ``fetch``: it may be millions)."""
    clauses, args = _matching(account_id, f)
    ms, seq = _bound(before)
    args += [ms, seq, _since(f.min_id), _until(f.max_id)]
    n = len(args)
    return (f"""SELECT fields, sid_ms, sid_seq FROM usage
                 WHERE {' AND '.join(clauses)} AND (sid_ms, sid_seq) < (${n - 3}::bigint, ${n - 2}::bigint)
                   AND sid_ms >= ${n - 1} AND sid_ms <= ${n}
                 ORDER BY sid_ms DESC, sid_seq DESC""", args)


def usage_page_query(account_id: str, f, after: str | None, limit: int) -> tuple[str, list]:
    """Up to ``limit`` rows matching ``f`` (a ``shared.history.UsageFilter``) older than ``after``."""
    clauses, args = _matching(account_id, f)
    ms, seq = _bound(after)
    args += [ms, seq, _since(f.min_id), _until(f.max_id), limit]
    n = len(args)
    return (f"""SELECT fields, sid_ms, sid_seq FROM usage
                 WHERE {' AND '.join(clauses)} AND (sid_ms, sid_seq) < (${n - 4}::bigint, ${n - 3}::bigint)
                   AND sid_ms >= ${n - 2} AND sid_ms <= ${n - 1}
                 ORDER BY sid_ms DESC, sid_seq DESC LIMIT ${n}""", args)


async def usage_rows(db: Database, account_id: str, f, after: str | None, limit: int) -> list[dict]:
    sql, args = usage_page_query(account_id, f, after, limit)
    rows = await db.fetch(sql, *args)
    return [{**r["fields"], "id": f"{r['sid_ms']}-{r['sid_seq']}"} for r in rows]


async def ledger_rows(db: Database, account_id: str, after: str | None, limit: int) -> list[tuple[str, dict]]:
    ms, seq = _bound(after)
    rows = await db.fetch(
        """SELECT reason, reference, amount_micro, balance_micro, sid_ms, sid_seq FROM ledger
            WHERE account_id = $1 AND sid_ms IS NOT NULL AND (sid_ms, sid_seq) < ($2::bigint, $3::bigint)
            ORDER BY sid_ms DESC, sid_seq DESC LIMIT $4""", account_id, ms, seq, limit)
    return [(f"{r['sid_ms']}-{r['sid_seq']}", {"amount": str(r["amount_micro"]), "reason": r["reason"],
                                               "ref": r["reference"], "balance": str(r["balance_micro"] or 0)})
            for r in rows]


async def order_rows(db: Database, account_id: str, after: str | None, limit: int) -> tuple[list[tuple[str, dict]], bool]:
    """Listed orders (top-ups, initial credits), newest first; the cursor is ``<n>-0`` (recording order)."""
    before, _ = _bound(after)
    rows = await db.fetch(
        """SELECT body, seq FROM orders WHERE account_id = $1 AND listed AND seq < $2
            ORDER BY seq DESC LIMIT $3""", account_id, before, limit + 1)
    return [(f"{r['seq']}-0", r["body"]) for r in rows[:limit]], len(rows) > limit


async def daily_usage(db: Database, account_id: str, f, first_ms: int, last_ms: int) -> list[tuple[int, int, int, int]]:
    """(day number, credits charged, tokens, requests) per UTC day with usage in the range."""
    clauses, args = _matching(account_id, f)
    args += [first_ms, last_ms]
    clauses += [f"sid_ms >= ${len(args) - 1}", f"sid_ms <= ${len(args)}"]
    rows = await db.fetch(
        f"""SELECT sid_ms / 86400000 AS day, sum(charged_micro) AS credits, count(*) AS requests,
                   sum(COALESCE(NULLIF(fields->>'prompt_tokens', '')::bigint, 0)
                       + COALESCE(NULLIF(fields->>'completion_tokens', '')::bigint, 0)) AS tokens
              FROM usage WHERE {' AND '.join(clauses)} GROUP BY 1""", *args)
    return [(int(r["day"]), int(r["credits"]), int(r["tokens"]), int(r["requests"])) for r in rows]


async def recent_failures(db: Database, since_ms: int) -> list[tuple[str, str, int]]:
    """(node, error code, count) of failed and expired requests since ``since_ms``, every account."""
    rows = await db.fetch(
        """SELECT COALESCE(NULLIF(fields->>'node', ''), '?') AS node,
                  COALESCE(NULLIF(fields->>'error_code', ''), status) AS code, count(*) AS n
             FROM usage WHERE status IN ('failed', 'expired') AND sid_ms >= $1 GROUP BY 1, 2""", since_ms)
    return [(r["node"], r["code"], int(r["n"])) for r in rows]
