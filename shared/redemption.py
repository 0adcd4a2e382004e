"""Redemption codes: batches an operator generates, which customers redeem for credits.

A code is 28 characters from a 32-letter alphabet (140 random bits), shown once when its batch is
made and stored only as the SHA-256 of its normalized text: with that much entropy a fast hash is a
lookup, not a password hash. Redis holds each code's hot state (``keys.redemption_code``); one Lua
call (``shared/lua/redeem.lua``) throttles wrong guesses and claims a use, so every gateway counts
alike and N concurrent redemptions of a code with U uses claim exactly min(N, U) uses. The claimed
use is then credited through the one credit path (``Credits.credit``), reason ``redeem``, reference
``redeem:<code hash>:<use number>``: recorded in Postgres first with the redemption row and the
code's use count (one transaction), then applied by credit.lua. A use whose credit could not be
recorded (Postgres down) is handed back and claimed again by the next redemption.

A gateway that dies between the claim and the record would lose the use (claimed, never credited):
redeem.lua notes every claim (``keys.REDEMPTION_CLAIMS``: code hash and use number -> account and
time) and the gateway drops the note once the use is recorded or handed back. ``reconcile_claims``
(the archiver's periodic work) takes over notes older than a minute, and records and credits each
use once: the same reference as the gateway's, so a gateway that was only slow credits nothing twice.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import ids, keys
from shared.credits import AccountFenced, AccountNotFound, Credits
from shared.db.database import Database, DatabaseUnavailable
from shared.money import micro_to_credits
from shared.scripts import Scripts

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 letters, no I/O/0/1 to misread
CODE_CHARS = 28  # 28 * 5 = 140 random bits
GROUP = 4  # shown as XXXX-XXXX-...; dashes and spaces are ignored when redeemed
MAX_CODE_TEXT = 100
REDIS_CHUNK = 1000  # codes written per pipeline

log = structlog.get_logger()


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
    return "-".join(raw[i:i + GROUP] for i in range(0, CODE_CHARS, GROUP))


def normalize(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


def code_hash(code: str) -> str:
    return hashlib.sha256(normalize(code).encode()).hexdigest()


class Outcome(IntEnum):
    """redeem.lua's first reply value."""

    CLAIMED = 1
    NO_USE_LEFT = 0  # used up, disabled or expired
    UNKNOWN = -1
    THROTTLED = -2


@dataclass(frozen=True)
class Redemption:
    outcome: Outcome
    order: dict | None = None  # CLAIMED: the redemption's order
    retry_after_s: int = 0  # THROTTLED


@dataclass(frozen=True)
class ThrottlePolicy:
    """Unknown codes tried per window, per account and per client address."""

    per_account: int = 10
    per_client: int = 30
    window_s: int = 900


async def store_codes(redis: Redis, batch_id: str, hashes: list[str], credits_micro: int, uses: int,
                      expires_at: int, used: dict[str, int], disabled: bool = False) -> None:
    """Write codes' hot state (and their batch's set of hashes) to Redis."""
    for start in range(0, len(hashes), REDIS_CHUNK):
        chunk = hashes[start:start + REDIS_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for h in chunk:
                pipe.hset(keys.redemption_code(h), mapping={
                    "batch": batch_id, "credits_micro": credits_micro, "uses": uses, "used": used.get(h, 0),
                    "expires_at": expires_at, "disabled": "1" if disabled else "0"})
            pipe.sadd(keys.redemption_batch(batch_id), *chunk)
            await pipe.execute()


async def restore_codes(redis: Redis, db: Database) -> int:
    """Rebuild from Postgres the batches Redis lost (``apiinone admin restore``); returns how many codes."""
    loaded = 0
    for batch in await db.fetch("SELECT * FROM redemption_batches"):
        if await redis.exists(keys.redemption_batch(batch["id"])):
            continue
        rows = await db.fetch(
            """SELECT c.code_hash, array_remove(array_agg(r.use_number), NULL) AS uses_recorded
                 FROM redemption_codes c LEFT JOIN redemptions r ON r.code_hash = c.code_hash
                WHERE c.batch_id = $1 GROUP BY c.code_hash""", batch["id"])
        recorded = {r["code_hash"]: set(r["uses_recorded"]) for r in rows}
        used = {h: max(nums, default=0) for h, nums in recorded.items()}
        await store_codes(redis, batch["id"], list(recorded), batch["credits_micro"], batch["uses"],
                          batch["expires_at"], used=used, disabled=batch["disabled_at"] is not None)
        for h, nums in recorded.items():  # a use claimed above one never recorded: hand that one back
            if gaps := sorted(set(range(1, used[h] + 1)) - nums):
                await redis.rpush(keys.redemption_returned(h), *gaps)
        loaded += len(rows)
    return loaded


class RedemptionCodes:
    def __init__(self, redis: Redis, scripts: Scripts, credits: Credits, db: Database | None,
                 throttle: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.redis = redis
        self.scripts = scripts
        self.credits = credits
        self.db = db  # None: Redis only (no record)
        self.throttle = throttle

    # --- the operator -------------------------------------------------------
    async def create_batch(self, count: int, credits_micro: int, uses: int, expires_at: int = 0) -> dict:
        """A batch of ``count`` new codes; the codes are in the answer only (never stored)."""
        batch = {"id": ids.REDEMPTION_BATCH.new(), "object": "redemption_code_batch", "count": count,
                 "credits": micro_to_credits(credits_micro), "credits_micro": credits_micro, "uses": uses,
                 "expires_at": expires_at or None, "created": int(time.time())}
        codes = [new_code() for _ in range(count)]
        hashes = [code_hash(c) for c in codes]
        if self.db is not None:  # recorded first: a wiped Redis is rebuilt from it (``restore_codes``)
            await self._record_batch(batch, hashes)
        await store_codes(self.redis, batch["id"], hashes, credits_micro, uses, expires_at, used={})
        return {**batch, "codes": codes}

    async def _record_batch(self, batch: dict, hashes: list[str]) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                """INSERT INTO redemption_batches (id, count, credits_micro, uses, expires_at, created)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                batch["id"], batch["count"], batch["credits_micro"], batch["uses"], batch["expires_at"] or 0,
                batch["created"])
            await conn.executemany("INSERT INTO redemption_codes (code_hash, batch_id) VALUES ($1, $2)",
                                   [(h, batch["id"]) for h in hashes])

    async def list_batches(self, limit: int = 100) -> list[dict]:
        """The newest batches from the record, with the uses recorded so far (never the codes)."""
        rows = await self.db.fetch(
            """SELECT b.*, COALESCE(SUM(c.used), 0)::bigint AS used FROM redemption_batches b
                 LEFT JOIN redemption_codes c ON c.batch_id = b.id
                GROUP BY b.id ORDER BY b.created DESC, b.id LIMIT $1""", limit)
        return [{**dict(r), "credits": micro_to_credits(r["credits_micro"])} for r in rows]

    async def disable_batch(self, batch_id: str) -> dict | None:
        """Every code of the batch stops working at once; None when there is no such batch."""
        if self.db is not None:
            await self.db.execute("UPDATE redemption_batches SET disabled_at = $2 WHERE id = $1 AND disabled_at "
                                  "IS NULL", batch_id, int(time.time()))
        hashes = [h.decode() for h in await self.redis.smembers(keys.redemption_batch(batch_id))]
        if not hashes:
            return None
        for start in range(0, len(hashes), REDIS_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for h in hashes[start:start + REDIS_CHUNK]:
                    pipe.hset(keys.redemption_code(h), "disabled", "1")
                await pipe.execute()
        return {"id": batch_id, "object": "redemption_code_batch", "disabled": True, "count": len(hashes)}

    # --- the customer ---------------------------------------------------------
    async def redeem(self, account_id: str, code: str, client: str) -> Redemption:
        """Claim a use of ``code`` and credit it to the account, or say why not."""
        digest = code_hash(code[:MAX_CODE_TEXT])
        t = self.throttle
        outcome, value, credits_micro = (int(v) for v in await self.scripts.redeem(
            keys=[keys.redemption_code(digest), keys.redemption_returned(digest), keys.REDEMPTION_CLAIMS,
                  keys.redeem_failures("acct:" + account_id), keys.redeem_failures("client:" + client[:64])],
            args=[int(time.time()), t.window_s * 1000, account_id, t.per_account, t.per_client]))
        if outcome == Outcome.THROTTLED:
            return Redemption(Outcome.THROTTLED, retry_after_s=max(1, -(-value // 1000)))
        if outcome != Outcome.CLAIMED:
            return Redemption(Outcome(outcome))
        claim = f"{digest}:{value}"
        try:
            order, _ = await self.credits.credit(
                account_id, credits_micro, f"redeem:{digest}:{value}", reason="redeem",
                note=f"redemption code ...{normalize(code)[-4:]}",
                also_record=self._use_recorder(account_id, digest, value))
        except (DatabaseUnavailable, AccountNotFound, AccountFenced):
            # nothing was recorded: the use goes back to the code for the next redemption (unless the
            # reconciler took the claim over meanwhile: then it records the use)
            await self.scripts.redeem_release(keys=[keys.REDEMPTION_CLAIMS, keys.redemption_returned(digest)],
                                              args=[claim, value])
            raise
        await self.redis.hdel(keys.REDEMPTION_CLAIMS, claim)
        return Redemption(Outcome.CLAIMED, order=order)

    # --- the reconciler (the archiver) -------------------------------------------
    async def reconcile_claims(self, older_than_s: float, now: float | None = None) -> int:
        """Record and credit, once, the uses claimed over ``older_than_s`` ago that no gateway finished
        (it died between the claim and the record); returns how many were credited now."""
        now = time.time() if now is None else now
        credited = 0
        for field, value in (await self.redis.hgetall(keys.REDEMPTION_CLAIMS)).items():
            claim, (account_id, _, claimed_at) = field.decode(), value.decode().rpartition(":")
            if now - int(claimed_at or 0) < older_than_s:
                continue
            if not await self.redis.hdel(keys.REDEMPTION_CLAIMS, claim):
                continue  # the gateway finished, or another reconciler took it
            digest, _, use = claim.rpartition(":")
            try:
                credited += await self._record_claimed(account_id, digest, int(use))
            except (DatabaseUnavailable, AccountFenced):
                await self.redis.hset(keys.REDEMPTION_CLAIMS, claim, value)  # the next round tries again
                raise
        return credited

    async def _record_claimed(self, account_id: str, digest: str, use: int) -> int:
        raw = await self.redis.hget(keys.redemption_code(digest), "credits_micro")
        if raw is None:
            log.error("a claimed redemption use names no code; left alone", code_hash=digest, use=use)
            return 0
        try:
            _, created = await self.credits.credit(
                account_id, int(raw), f"redeem:{digest}:{use}", reason="redeem",
                note="redemption code (recorded after its gateway stopped)",
                also_record=self._use_recorder(account_id, digest, use))
        except AccountNotFound:  # the claimant is gone: the use goes back to the code
            await self.redis.rpush(keys.redemption_returned(digest), use)
            return 0
        if created:
            log.warning("redemption use recorded by the reconciler: its gateway stopped before recording it",
                        account_id=account_id, code_hash=digest, use=use)
        return int(created)

    @staticmethod
    def _use_recorder(account_id: str, digest: str, use_number: int):
        async def record_use(conn: asyncpg.Connection, order: dict) -> None:
            inserted = await conn.fetchval(
                """INSERT INTO redemptions (code_hash, use_number, account_id, order_id, created)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING use_number""",
                digest, use_number, account_id, order["id"], order["created"])
            if inserted is not None:
                await conn.execute("UPDATE redemption_codes SET used = used + 1 WHERE code_hash = $1", digest)
        return record_use
