"""Accounts made before the record existed: copied from Redis into Postgres once, when the recovery
first sees them (an upgrade's first archiver start goes over every account).

Copied: the account, its keys (metadata, limits and the key's hash, never the key), its dashboard
users and its credits' orders. Its ledger and usage streams were never trimmed before the record,
so they hold its whole history: the account is noted in the archive index and the archiver brings
every entry with its stream id, as it does for new ones (``archive.py``). After that the record's
sum(ledger) is the balance, and ``apiinone admin restore`` can rebuild it like any other.
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.credits import LISTED_REASONS
from shared.db.database import Database
from shared.db.directory import Directory
from shared.keys import AccountKeys


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class Adopter:
    def __init__(self, redis: Redis, db: Database) -> None:
        self.redis = redis
        self.db = db
        self.directory = Directory(db)

    async def missing(self) -> list[str]:
        """Accounts Redis has and the record does not."""
        in_redis = {m.decode() for m in await self.redis.smembers(keys.ACCOUNTS)}
        if not in_redis:
            return []
        recorded = {r["id"] for r in await self.db.fetch("SELECT id FROM accounts WHERE id = ANY($1::text[])",
                                                         sorted(in_redis))}
        return sorted(in_redis - recorded)

    async def adopt(self, account_id: str) -> dict | None:
        """Record one account and what belongs to it; None when Redis does not have it."""
        k = AccountKeys(account_id)
        account = _text(await self.redis.hgetall(k.account))
        if not account:
            return None
        account.setdefault("name", account_id)
        account.setdefault("created", "0")
        key_ids = sorted(m.decode() for m in await self.redis.smembers(k.keys))
        recorded_keys = 0
        for key_id in key_ids:
            digest = await self.redis.get(keys.api_key_id(key_id))
            record = _text(await self.redis.hgetall(keys.api_key(digest.decode()))) if digest else {}
            if record:
                await self.directory.record_key(record, digest.decode())
                recorded_keys += 1
        user_ids = sorted(m.decode() for m in await self.redis.smembers(keys.account_users(account_id)))
        recorded_users = 0
        for user_id in user_ids:
            user = _text(await self.redis.hgetall(keys.user(user_id)))
            if user:
                await self.directory.record_user(user)
                recorded_users += 1
        orders = [orjson.loads(body) for body in (await self.redis.hgetall(k.order_refs)).values()]
        async with self.db.transaction() as conn:
            for order in orders:
                await conn.execute(
                    """INSERT INTO orders (id, account_id, reference, kind, amount_micro, listed, body, created)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account_id, reference) DO NOTHING""",
                    order["id"], account_id, order["reference"], order["kind"], int(order["amount_micro"]),
                    order["kind"] in LISTED_REASONS, order, int(order.get("created") or 0))
        # The account row last: until it exists, the next pass adopts the account again (all idempotent).
        await self.directory.record_account(account)
        # Its whole ledger and usage history to the archiver, as new entries are.
        if await self.redis.hsetnx(k.account, "archive_pending", "1"):
            await self.redis.xadd(keys.ARCHIVE_INDEX, {"a": account_id})
        return {"keys": recorded_keys, "users": recorded_users, "orders": len(orders)}
