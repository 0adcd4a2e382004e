"""Accounts and API keys. Keys are ``aio_`` + random, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.credits import AccountNotFound, Credits
from shared.keys import AccountKeys

KEY_PREFIX = "aio_"


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway needs to admit a request made with one key."""

    id: str
    account_id: str
    name: str
    prefix: str
    rpm: int | None
    tpm: int | None

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> KeyRecord:
        rpm, tpm = raw.get(b"rpm", b""), raw.get(b"tpm", b"")
        return cls(
            id=raw[b"id"].decode(),
            account_id=raw[b"account_id"].decode(),
            name=raw.get(b"name", b"").decode(),
            prefix=raw.get(b"prefix", b"").decode(),
            rpm=int(rpm) if rpm else None,
            tpm=int(tpm) if tpm else None,
        )

    def public(self) -> dict:
        return {"id": self.id, "object": "api_key", "account_id": self.account_id, "name": self.name,
                "prefix": self.prefix, "rpm": self.rpm, "tpm": self.tpm}


class Accounts:
    def __init__(self, redis: Redis, credits: Credits | None = None) -> None:
        self.redis = redis
        self.credits = credits or Credits(redis)

    async def create_account(self, name: str, credits_micro: int = 0) -> dict:
        account_id = "acct_" + uuid.uuid4().hex[:16]
        k = AccountKeys(account_id)
        await self.redis.hset(k.account, mapping={"id": account_id, "name": name, "balance": 0, "held": 0,
                                                  "created": int(time.time())})
        await self.redis.sadd(keys.ACCOUNTS, account_id)
        if credits_micro:
            await self.credits.credit(account_id, credits_micro, reference=f"initial:{account_id}", reason="initial",
                                      note="credits given at account creation")
        return await self.get_account(account_id)

    async def get_account(self, account_id: str) -> dict:
        k = AccountKeys(account_id)
        raw = await self.redis.hgetall(k.account)
        if not raw:
            raise AccountNotFound(account_id)
        info = {f.decode(): v.decode() for f, v in raw.items()}
        balance, held = int(info["balance"]), int(info.get("held", 0))
        key_ids = sorted(m.decode() for m in await self.redis.smembers(k.keys))
        return {
            "id": account_id,
            "object": "account",
            "name": info.get("name", ""),
            "balance": balance / 1_000_000,
            "balance_micro": balance,
            "held_micro": held,
            "available_micro": balance - held,
            "created": int(info.get("created", 0)),
            "keys": key_ids,
        }

    async def account_exists(self, account_id: str) -> bool:
        return bool(await self.redis.exists(AccountKeys(account_id).account))

    async def create_key(self, account_id: str, name: str, rpm: int | None = None, tpm: int | None = None) -> dict:
        if not await self.account_exists(account_id):
            raise AccountNotFound(account_id)
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + uuid.uuid4().hex[:16]
        digest = hash_key(api_key)
        record = {"id": key_id, "account_id": account_id, "name": name, "prefix": api_key[:10],
                  "rpm": "" if rpm is None else rpm, "tpm": "" if tpm is None else tpm,
                  "created": int(time.time())}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key(digest), mapping=record)
            pipe.set(keys.api_key_id(key_id), digest)
            pipe.sadd(AccountKeys(account_id).keys, key_id)
            await pipe.execute()
        return {**KeyRecord.from_redis({k.encode(): str(v).encode() for k, v in record.items()}).public(),
                "key": api_key, "created": record["created"]}

    async def lookup_key(self, api_key: str) -> KeyRecord | None:
        return await self.lookup_key_hash(hash_key(api_key))

    async def lookup_key_hash(self, digest: str) -> KeyRecord | None:
        raw = await self.redis.hgetall(keys.api_key(digest))
        return KeyRecord.from_redis(raw) if raw else None

    async def revoke_key(self, key_id: str) -> bool:
        """Delete the key and tell every gateway to drop it from its cache."""
        digest = await self.redis.get(keys.api_key_id(key_id))
        if digest is None:
            return False
        digest = digest.decode()
        raw = await self.redis.hgetall(keys.api_key(digest))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.api_key(digest), keys.api_key_id(key_id))
            if raw:
                pipe.srem(AccountKeys(raw[b"account_id"].decode()).keys, key_id)
            pipe.publish(keys.REVOCATIONS, digest)
            await pipe.execute()
        return True

    async def list_keys(self, account_id: str) -> list[dict]:
        out = []
        for key_id in sorted(m.decode() for m in await self.redis.smembers(AccountKeys(account_id).keys)):
            digest = await self.redis.get(keys.api_key_id(key_id))
            raw = await self.redis.hgetall(keys.api_key(digest.decode())) if digest else None
            if raw:
                out.append(KeyRecord.from_redis(raw).public())
        return out
