"""The audit: per account, Redis' balance agrees with the ledger, and its held total with its holds.

The ledger is split between the two stores: Postgres has what the archiver committed, Redis' ledger
stream what it has not trimmed yet (entries not archived, and a moment's worth archived but not yet
trimmed). So: ``balance == sum(Postgres rows up to the stream's last id) + sum(stream entries
Postgres does not have)``, and ``held == sum(holds)``. Balance, holds, the stream's entries and its
last id are read in one MULTI (one atomic snapshot); the Postgres rows after that last id are not
counted (they moved after the snapshot), and a stream entry already archived is counted once, by
its identity (account, reason, reference). Without Postgres the stream is the whole ledger.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys
from shared.contracts import Hold
from shared.db.database import Database
from shared.keys import AccountKeys


async def _snapshot(redis: Redis, k: AccountKeys) -> tuple[int, int, int, str, list[tuple[str, str, int]]]:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(k.account, "balance", "held")
        pipe.hvals(k.holds)
        pipe.xinfo_stream(k.ledger)
        pipe.xrange(k.ledger, "-", "+")
        raw, holds, info, tail = await pipe.execute(raise_on_error=False)
    last = "0-0"
    if isinstance(info, dict):
        value = info["last-generated-id"]
        last = value.decode() if isinstance(value, bytes) else value
    entries = [(f[b"reason"].decode(), f[b"ref"].decode(), int(f[b"amount"]))
               for _sid, f in (tail if isinstance(tail, list) else []) if b"amount" in f]
    held_sum = sum(Hold.parse(h).amount_micro for h in holds)
    return int(raw[0] or 0), int(raw[1] or 0), held_sum, last, entries


async def _archived(db: Database, account_id: str, last: str, tail: list[tuple[str, str, int]]
                    ) -> tuple[int, set[tuple[str, str]]]:
    """Postgres' sum up to ``last``, and which of the tail's identities it has among those rows."""
    ms, _, seq = last.partition("-")
    bound = (account_id, int(ms), int(seq or 0))
    async with db.connection() as conn:
        total = await conn.fetchval(
            """SELECT COALESCE(sum(amount_micro), 0) FROM ledger WHERE account_id = $1 AND sid_ms IS NOT NULL
               AND (sid_ms, sid_seq) <= ($2::bigint, $3::bigint)""", *bound)
        found = set()
        if tail:
            rows = await conn.fetch(
                """SELECT l.reason, l.reference FROM ledger l
                     JOIN unnest($4::text[], $5::text[]) AS t(reason, reference)
                       ON l.reason = t.reason AND l.reference = t.reference
                    WHERE l.account_id = $1 AND l.sid_ms IS NOT NULL
                      AND (l.sid_ms, l.sid_seq) <= ($2::bigint, $3::bigint)""",
                *bound, [e[0] for e in tail], [e[1] for e in tail])
            found = {(r["reason"], r["reference"]) for r in rows}
    return int(total), found


async def audit_account(redis: Redis, db: Database | None, account_id: str) -> dict:
    k = AccountKeys(account_id)
    balance, held, held_sum, last, tail = await _snapshot(redis, k)
    archived, found = (0, set()) if db is None else await _archived(db, account_id, last, tail)
    unarchived = [e for e in tail if (e[0], e[1]) not in found]
    total = archived + sum(e[2] for e in unarchived)
    return {
        "account_id": account_id,
        "balance_micro": balance,
        "ledger_sum_micro": total,
        "archived_sum_micro": archived,
        "unarchived_entries": len(unarchived),
        "held_micro": held,
        "holds_sum_micro": held_sum,
        "ok": balance == total and held == held_sum,
    }


async def audit(redis: Redis, db: Database | None) -> list[dict]:
    ids = sorted(m.decode() for m in await redis.smembers(keys.ACCOUNTS))
    return [await audit_account(redis, db, a) for a in ids]
