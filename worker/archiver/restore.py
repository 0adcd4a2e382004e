"""`apiinone admin restore`: a wiped (or partly lost) Redis rebuilt from Postgres, the record.

Per account missing in Redis: its hash (balance = the sum of its ledger in Postgres, nothing
held), its keys that are not revoked with their limits and their spend (total and today's, from
the usage rows), its users, and the references of its credits (so none is applied twice). Its
ledger stream is started after every archived entry, so the recovery never takes an archived
row for a lost one. What cannot come back is what Redis held and never archived: charges of the
last moments before the loss, in the customers' favour; the report says since when that window runs.
A batch the loss cut off mid-run is ended, with the lines that ran (``lost_batches.py``).
"""

from __future__ import annotations

import time

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.db.database import Database
from shared.file_store import FileStore
from shared.keys import AccountKeys
from shared.redemption import restore_codes
from worker.archiver.lost_batches import end_lost_batches

DAY_S = 86400


class Restorer:
    def __init__(self, redis: Redis, db: Database, files: FileStore | None = None,
                 batch_retention_s: float = 30 * DAY_S) -> None:
        self.redis = redis
        self.db = db
        self.files = files  # the batch files' store: batches cut off mid-run are ended (lost_batches.py)
        self.batch_retention_s = batch_retention_s

    async def restore_all(self) -> dict:
        """Every account Postgres has and Redis lacks; a report of what was and was not restored."""
        restored, keys_, users = 0, 0, 0
        for row in await self.db.fetch("SELECT id FROM accounts ORDER BY id"):
            counts = await self.restore_account(row["id"])
            if counts:
                restored += 1
                keys_ += counts["keys"]
                users += counts["users"]
        codes = await restore_codes(self.redis, self.db)
        batches = (await end_lost_batches(self.redis, self.db, self.files, self.batch_retention_s)
                   if self.files is not None else 0)
        newest = await self.db.fetchrow("SELECT max(sid_ms) AS ms FROM ledger")
        unapplied = await self.db.fetchrow("SELECT count(*) AS n FROM ledger WHERE sid_ms IS NULL")
        return {"accounts_restored": restored, "keys_restored": keys_, "users_restored": users,
                "redemption_codes_restored": codes, "batches_ended_as_lost": batches,
                "credits_never_archived": unapplied["n"],
                "unarchived_charges": {
                    "count": "unknown: Redis held them and was lost before the archiver committed them",
                    "since_ms": newest["ms"],
                    "note": "charges after this time that were not archived are lost, in the customers' favour"}}

    async def restore_account(self, account_id: str) -> dict | None:
        """Rebuild one account from Postgres unless Redis has it; None when not restored."""
        k = AccountKeys(account_id)
        if await self.redis.exists(k.account):
            return None
        account = await self.db.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
        if account is None:
            return None
        balance = await self.db.fetchrow(
            "SELECT COALESCE(sum(amount_micro), 0) AS total FROM ledger WHERE account_id = $1", account_id)
        orders = await self.db.fetch("SELECT reference, body FROM orders WHERE account_id = $1", account_id)
        api_keys = await self.db.fetch(
            "SELECT * FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL", account_id)
        spend = await self._spend(account_id)
        users = await self.db.fetch("SELECT * FROM users WHERE account_id = $1", account_id)
        run_id = (await self.redis.info("server"))["run_id"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.account, mapping={
                "id": account_id, "name": account["name"], "balance": int(balance["total"]), "held": 0,
                "created": account["created"], "rpm": account["rpm"], "tpm": account["tpm"],
                "max_concurrent": account["max_concurrent"], "synced": run_id})
            pipe.sadd(keys.ACCOUNTS, account_id)
            if orders:
                pipe.hset(k.order_refs, mapping={o["reference"]: orjson.dumps(o["body"]) for o in orders})
            # The ledger stream starts after every archived entry (its last id is now).
            pipe.xadd(k.ledger, {"restored": "1"})
            pipe.xtrim(k.ledger, maxlen=0, approximate=False)
            for key in api_keys:
                self._key(pipe, k, key, spend.get(key["id"], (0, 0)))
            for user in users:
                self._user(pipe, user)
            await pipe.execute()
        return {"keys": len(api_keys), "users": len(users)}

    async def _spend(self, account_id: str) -> dict[str, tuple[int, int]]:
        today_ms = int(time.time()) // DAY_S * DAY_S * 1000
        rows = await self.db.fetch(
            """SELECT key_id, sum(charged_micro) AS total,
                      COALESCE(sum(charged_micro) FILTER (WHERE sid_ms >= $2), 0) AS today
                 FROM usage WHERE account_id = $1 GROUP BY key_id""", account_id, today_ms)
        return {r["key_id"]: (int(r["total"]), int(r["today"])) for r in rows}

    @staticmethod
    def _key(pipe, k: AccountKeys, key, spend: tuple[int, int]) -> None:
        record = {f: key[f] for f in ("id", "account_id", "name", "prefix", "created", "expires_at", "rpm", "tpm",
                                      "max_concurrent", "credit_limit_micro", "daily_credit_limit_micro")}
        pipe.hset(keys.api_key(key["key_hash"]), mapping=record)
        pipe.set(keys.api_key_id(key["id"]), key["key_hash"])
        pipe.sadd(k.keys, key["id"])
        total, today = spend
        if total:
            pipe.hset(k.key_state(key["id"]), mapping={"spend": total, f"spend:{int(time.time()) // DAY_S}": today})

    @staticmethod
    def _user(pipe, user) -> None:
        pipe.hset(keys.user(user["id"]), mapping={
            "id": user["id"], "email": user["email"], "password_hash": user["password_hash"], "role": user["role"],
            "account_id": user["account_id"], "created": user["created"], "last_login": 0})
        pipe.set(keys.user_email(user["email"]), user["id"])
        pipe.sadd(keys.USERS, user["id"])
        pipe.sadd(keys.account_users(user["account_id"]), user["id"])
