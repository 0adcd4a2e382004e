"""Accounts and API keys. Keys are ``aio_`` + random, stored only as a SHA-256 hash.

An account's ``rpm``/``tpm``/``max_concurrent`` are set by the operator. They are the
defaults of its new keys, the most any of its keys may be given (a key asking for
more gets the account's), and a ceiling across all its keys together, which
reserve.lua enforces with the account's own buckets. An account holds at most
``max_keys`` keys at once (``APIINONE_MAX_KEYS_PER_ACCOUNT``).

An account's ``price_multiplier_ppm`` (its hash; absent = x1) scales every price it pays
(shared/pricing.py). It is read with the key record, so admission knows it without another
round trip on a cached key; changing it drops the account's keys from every gateway's cache.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

from shared import ids, keys
from shared.credits import AccountNotFound, Credits, KeyLimits
from shared.db.database import DatabaseUnavailable
from shared.db.directory import Directory
from shared.keys import AccountKeys
from shared.money import micro_to_credits
from shared.pricing import PPM, multiplier_text

KEY_PREFIX = "aio_"
log = structlog.get_logger()


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "credit_limit_micro", "daily_credit_limit_micro")
ACCOUNT_DEFAULT_FIELDS = ("rpm", "tpm", "max_concurrent")  # an account's limits: its keys' defaults and ceiling
DEFAULT_MAX_KEYS = 100
MULTIPLIER_FIELD = "price_multiplier_ppm"  # in the account hash; absent = x1


class TooManyKeys(Exception):
    """The account holds as many keys as it may; revoking one makes room."""

    def __init__(self, max_keys: int) -> None:
        super().__init__(f"This account already has {max_keys} API keys, the most it may hold. Revoke one first.")
        self.max_keys = max_keys


def _int(raw: dict[bytes, bytes], field: str) -> int:
    value = raw.get(field.encode(), b"")
    return int(value) if value else 0


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway needs to admit a request made with one key."""

    id: str
    account_id: str
    name: str
    prefix: str
    limits: KeyLimits
    created: int = 0
    expires_at: int = 0  # unix seconds; 0 = never
    price_multiplier_ppm: int = PPM  # the account's, read with the record (``Accounts.lookup_key_hash``)

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes], price_multiplier_ppm: int = PPM) -> KeyRecord:
        return cls(
            id=raw[b"id"].decode(),
            account_id=raw[b"account_id"].decode(),
            name=raw.get(b"name", b"").decode(),
            prefix=raw.get(b"prefix", b"").decode(),
            limits=KeyLimits(**{f: _int(raw, f) for f in LIMIT_FIELDS}),
            created=_int(raw, "created"),
            expires_at=_int(raw, "expires_at"),
            price_multiplier_ppm=price_multiplier_ppm,
        )

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    def public(self) -> dict:
        """The key as listings show it: its prefix, never the key."""
        lim = self.limits
        return {"id": self.id, "object": "api_key", "account_id": self.account_id, "name": self.name,
                "prefix": self.prefix + "...", "created": self.created, "expires_at": self.expires_at or None,
                "rpm": lim.rpm or None, "tpm": lim.tpm or None, "max_concurrent": lim.max_concurrent or None,
                "credit_limit": micro_to_credits(lim.credit_limit_micro) if lim.credit_limit_micro else None,
                "daily_credit_limit": (micro_to_credits(lim.daily_credit_limit_micro)
                                       if lim.daily_credit_limit_micro else None)}


def _account_object(account_id: str, raw: dict[bytes, bytes], key_ids: set[bytes]) -> dict:
    info = {f.decode(): v.decode() for f, v in raw.items()}
    balance, held = int(info["balance"]), int(info.get("held", 0))
    multiplier = int(info.get(MULTIPLIER_FIELD) or PPM)
    return {
        "id": account_id,
        "object": "account",
        "name": info.get("name", ""),
        "balance": micro_to_credits(balance),
        "balance_micro": balance,
        "held_micro": held,
        "available_micro": balance - held,
        "created": int(info.get("created", 0)),
        "key_defaults": {f: int(info.get(f) or 0) or None for f in ACCOUNT_DEFAULT_FIELDS},
        "price_multiplier": multiplier_text(multiplier),  # exact decimal text: "1", "1.25"
        "price_multiplier_ppm": multiplier,
        "keys": sorted(m.decode() for m in key_ids),
    }


class Accounts:
    def __init__(self, redis: Redis, credits: Credits | None = None, directory: Directory | None = None,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.redis = redis
        self.credits = credits or Credits(redis)
        self.directory = directory  # Postgres: accounts, keys and users are recorded there first
        self.max_keys = max_keys

    async def create_account(self, name: str, credits_micro: int = 0, rpm: int = 0, tpm: int = 0,
                             max_concurrent: int = 0) -> dict:
        """A new account; ``rpm``/``tpm``/``max_concurrent`` are the defaults its new keys get."""
        account_id = ids.ACCOUNT.new()
        k = AccountKeys(account_id)
        record = {"id": account_id, "name": name, "balance": 0, "held": 0, "created": int(time.time()), "rpm": rpm,
                  "tpm": tpm, "max_concurrent": max_concurrent}
        if self.directory is not None:
            await self.directory.record_account(record)
            # Checked under this Redis: the recovery fence (settle.lua) applies to it from now on.
            record["synced"] = (await self.redis.info("server"))["run_id"]
        await self.redis.hset(k.account, mapping=record)
        await self.redis.sadd(keys.ACCOUNTS, account_id)
        if credits_micro:
            await self.credits.credit(account_id, credits_micro, reference=f"initial:{account_id}", reason="initial",
                                      note="credits given at account creation")
        return await self.get_account(account_id)

    async def get_account(self, account_id: str) -> dict:
        k = AccountKeys(account_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.account)
            pipe.smembers(k.keys)
            raw, key_ids = await pipe.execute()
        if not raw:
            raise AccountNotFound(account_id)
        return _account_object(account_id, raw, key_ids)

    async def list_accounts(self) -> list[dict]:
        """Every account as ``get_account`` shows it, by id, in one round trip."""
        ids = sorted(m.decode() for m in await self.redis.smembers(keys.ACCOUNTS))
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                k = AccountKeys(account_id)
                pipe.hgetall(k.account)
                pipe.smembers(k.keys)
            replies = await pipe.execute()
        return [_account_object(account_id, raw, key_ids)
                for account_id, raw, key_ids in zip(ids, replies[::2], replies[1::2]) if raw]

    async def account_exists(self, account_id: str) -> bool:
        return bool(await self.redis.exists(AccountKeys(account_id).account))

    async def account_limits(self, account_id: str) -> dict[str, int]:
        """The account's rpm, tpm and max_concurrent (0 = none)."""
        raw = await self.redis.hmget(AccountKeys(account_id).account, "id", *ACCOUNT_DEFAULT_FIELDS)
        if raw[0] is None:
            raise AccountNotFound(account_id)
        return {f: int(v or 0) for f, v in zip(ACCOUNT_DEFAULT_FIELDS, raw[1:])}

    async def create_key(self, account_id: str, name: str, expires_at: int = 0, **limits: int | None) -> dict:
        """A new key. Limits not given (None) are the account's (0: none); rpm, tpm and concurrency are at
        most the account's. Raises ``TooManyKeys`` when the account holds ``max_keys`` already."""
        ceiling = await self.account_limits(account_id)
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = ids.KEY.new()
        digest = hash_key(api_key)
        record = {"id": key_id, "account_id": account_id, "name": name, "prefix": api_key[:10],
                  "created": int(time.time()), "expires_at": expires_at}
        for field in LIMIT_FIELDS:
            given, cap = limits.get(field), ceiling.get(field, 0)
            value = given if given is not None else cap
            record[field] = cap if cap and (not value or value > cap) else value
        await self._claim_key_slot(account_id, key_id)
        if self.directory is not None:
            await self.directory.record_key(record, digest)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key(digest), mapping=record)
            pipe.set(keys.api_key_id(key_id), digest)
            await pipe.execute()
        return {**KeyRecord.from_redis({k.encode(): str(v).encode() for k, v in record.items()}).public(),
                "key": api_key, "created": record["created"]}

    async def _claim_key_slot(self, account_id: str, key_id: str) -> None:
        """Add the key to the account's set unless that makes more than ``max_keys``: each creator sees the
        count its own addition made (one MULTI), so racing creators cannot together pass the cap."""
        k = AccountKeys(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(k.keys, key_id)
            pipe.scard(k.keys)
            _, count = await pipe.execute()
        if count > self.max_keys:
            await self.redis.srem(k.keys, key_id)
            raise TooManyKeys(self.max_keys)

    async def lookup_key(self, api_key: str) -> KeyRecord | None:
        return await self.lookup_key_hash(hash_key(api_key))

    async def lookup_key_hash(self, digest: str) -> KeyRecord | None:
        """The key's record with its account's price multiplier (a second read, on a cache miss only)."""
        raw = await self.redis.hgetall(keys.api_key(digest))
        if not raw:
            return None
        multiplier = await self.redis.hget(AccountKeys(raw[b"account_id"].decode()).account, MULTIPLIER_FIELD)
        return KeyRecord.from_redis(raw, int(multiplier) if multiplier else PPM)

    async def set_price_multiplier(self, account_id: str, multiplier_ppm: int) -> dict:
        """Set the account's price multiplier (parts per million); every gateway drops the account's keys from
        its cache, so its next request is admitted, held and charged at the new multiplier."""
        k = AccountKeys(account_id)
        if not await self.redis.exists(k.account):
            raise AccountNotFound(account_id)
        key_ids = [m.decode() for m in await self.redis.smembers(k.keys)]
        digests = await self.redis.mget([keys.api_key_id(key_id) for key_id in key_ids]) if key_ids else []
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.account, MULTIPLIER_FIELD, multiplier_ppm)
            for digest in digests:
                if digest:
                    pipe.publish(keys.REVOCATIONS, digest)
            await pipe.execute()
        return await self.get_account(account_id)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        """The key's record; None once it is revoked."""
        digest = await self.redis.get(keys.api_key_id(key_id))
        return await self.lookup_key_hash(digest.decode()) if digest else None

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
        if self.directory is not None:
            try:
                await self.directory.revoke_key(key_id)
            except DatabaseUnavailable as exc:
                log.error("key revoked in Redis but not recorded in the database; revoke it again once the database "
                          "is back, or a restore would bring it back", key_id=key_id, error=str(exc))
        return True

    async def list_keys(self, account_id: str) -> list[dict]:
        out = []
        for key_id in sorted(m.decode() for m in await self.redis.smembers(AccountKeys(account_id).keys)):
            record = await self.key_by_id(key_id)
            if record is not None:
                out.append(record.public())
        return out
