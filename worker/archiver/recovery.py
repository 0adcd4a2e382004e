"""After Redis restarts: what Postgres has and Redis lost is re-applied before an account is used again.

Redis (AOF, fsync once a second) may come back without its last writes: credits Postgres recorded
first, and charges the archiver had already committed. Each account hash carries the run id of
the Redis it was last checked under ("synced"); every money script refuses an account stamped
with another run id (the fence: Redis restarted, and nobody has looked yet). This loop notices a
new run id, and for every account re-applies, atomically with lifting its fence (recover.lua):

- credits without a stream id, or with one after the account's ledger stream's last id,
  unless Redis knows their reference (credit.lua applies a reference once);
- charges and expiries with a stream id after that last id: those entries were written by this
  Redis' lost tail and archived before it was lost.

An account Redis lost entirely is rebuilt from Postgres (``restore.py``); an account the record
never had (made before it existed) is copied into it first (``adopt.py``). ``apiinone admin recover``
runs the same pass on demand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import structlog
from redis.asyncio import Redis

from shared import keys
from shared.db.database import Database
from shared.keys import AccountKeys
from shared.metrics import RECOVERED, labelled
from shared.scripts import Scripts
from worker.archiver.adopt import Adopter
from worker.archiver.restore import Restorer

log = structlog.get_logger()
CREDIT, CHARGE, EXPIRY = "c", "x", "e"


async def redis_run_id(redis: Redis) -> str:
    return (await redis.info("server"))["run_id"]


@dataclass
class RecoveryReport:
    run_id: str
    accounts: int = 0
    rows_applied: int = 0
    restored: int = 0
    adopted: int = 0

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "accounts": self.accounts, "rows_reapplied": self.rows_applied,
                "accounts_restored": self.restored, "accounts_adopted": self.adopted}


class Recovery:
    def __init__(self, redis: Redis, db: Database, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.db = db
        self.scripts = scripts or Scripts(redis)
        self.restorer = Restorer(redis, db)
        self.adopter = Adopter(redis, db)

    async def check(self, force: bool = False) -> RecoveryReport | None:
        """One pass over every account if Redis' run id is new (or ``force``); None when nothing to do."""
        run_id = await redis_run_id(self.redis)
        done = await self.redis.get(keys.RECOVERED_RUN)
        if not force and done is not None and done.decode() == run_id:
            return None
        report = RecoveryReport(run_id)
        for account_id in await self.adopter.missing():
            if await self.adopter.adopt(account_id):
                report.adopted += 1
        rows = await self.db.fetch("SELECT id FROM accounts")
        ids = {r["id"] for r in rows} | {m.decode() for m in await self.redis.smembers(keys.ACCOUNTS)}
        for account_id in sorted(ids):
            applied = await self.recover_account(account_id, run_id, report)
            report.rows_applied += applied
            report.accounts += 1
        await self.redis.set(keys.RECOVERED_RUN, run_id)
        if report.adopted:
            log.warning("accounts made before the record existed were copied into it", accounts=report.adopted)
        if report.rows_applied or report.restored:
            log.warning("recovered what Redis had lost from Postgres", **report.as_dict())
        return report

    async def recover_account(self, account_id: str, run_id: str, report: RecoveryReport) -> int:
        k = AccountKeys(account_id)
        synced = await self.redis.hget(k.account, "synced")
        if synced is not None and synced.decode() == run_id:
            return 0
        if not await self.redis.exists(k.account):
            if await self.restorer.restore_account(account_id):
                report.restored += 1
            return 0
        for _attempt in range(20):
            last = await self._last_id(k)
            reply = await self._apply(account_id, k, last)
            if int(reply[0]) >= 0:
                return int(reply[0])
        raise RuntimeError(f"account {account_id}: its ledger kept moving during recovery")

    async def _last_id(self, k: AccountKeys) -> str:
        if not await self.redis.exists(k.ledger):
            return "0-0"
        info = await self.redis.xinfo_stream(k.ledger)
        last = info["last-generated-id"]
        return last.decode() if isinstance(last, bytes) else last

    async def _apply(self, account_id: str, k: AccountKeys, last: str) -> list:
        rows = await self.missing_rows(account_id, last)
        key_ids = sorted({r["key_id"] for r in rows if r["key_id"]})
        position = {key_id: i + 1 for i, key_id in enumerate(key_ids)}
        args: list = [last, int(time.time() * 1000)]
        for r in rows:
            args += [r["kind"], r["reason"], r["reference"], r["amount_micro"], position.get(r["key_id"], 0),
                     orjson.dumps(r["order"]).decode() if r["order"] else "", "1" if r["listed"] else "0"]
        reply = await self.scripts.recover(
            keys=[k.account, k.holds, k.deadlines, k.ledger, k.released, k.released_at, k.order_refs, k.orders,
                  keys.ARCHIVE_INDEX, *(k.key_state(key_id) for key_id in key_ids)], args=args)
        if int(reply[0]) > 0:
            for r in rows:
                labelled(RECOVERED, r["kind"]).inc()
        return reply

    async def missing_rows(self, account_id: str, last: str) -> list[dict]:
        """Ledger rows Redis may lack: recorded and not archived, or archived after its stream's last id."""
        ms, _, seq = last.partition("-")
        rows = await self.db.fetch(
            """SELECT l.reason, l.reference, l.amount_micro, o.body AS order, o.listed,
                      COALESCE(u.key_id, '') AS key_id
                 FROM ledger l
                 LEFT JOIN orders o ON o.account_id = l.account_id AND o.reference = l.reference AND o.kind = l.reason
                 LEFT JOIN LATERAL (SELECT key_id FROM usage WHERE account_id = l.account_id
                                     AND request_id = l.reference LIMIT 1) u ON o.id IS NULL
                WHERE l.account_id = $1 AND (l.sid_ms IS NULL OR (l.sid_ms, l.sid_seq) > ($2::bigint, $3::bigint))
                ORDER BY l.sid_ms NULLS LAST, l.sid_seq, l.recorded_at""", account_id, int(ms), int(seq or 0))
        out = []
        for r in rows:
            kind = CREDIT if r["order"] is not None else EXPIRY if r["reason"] == "hold_expired" else CHARGE
            out.append({"kind": kind, "reason": r["reason"], "reference": r["reference"],
                        "amount_micro": r["amount_micro"], "order": r["order"], "listed": bool(r["listed"]),
                        "key_id": r["key_id"]})
        return out
