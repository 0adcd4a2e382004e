"""Mailed links' tokens: random, single-use, expiring, stored only as their SHA-256.

A token is 256 random bits in a link (sign-up verification, password reset). Redis keeps the SHA-256
of it (``keys.email_token``) with what it stands for and a TTL: someone reading Redis cannot follow a
link. A subject (an email, a user id) has one live token per purpose: issuing a new one drops the
last (``keys.email_token_subject``). ``consume`` reads and deletes in one MULTI, so of two concurrent
uses of a link exactly one gets its fields.
"""

from __future__ import annotations

import hashlib
import secrets

from redis.asyncio import Redis

from shared import keys

MAX_TOKEN_TEXT = 128  # what a link's token may be; longer is no token of ours (and not worth hashing)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EmailTokens:
    def __init__(self, redis: Redis, purpose: str, ttl_s: int) -> None:
        self.redis = redis
        self.purpose = purpose
        self.ttl_s = ttl_s

    async def issue(self, subject: str, fields: dict[str, str | int]) -> str:
        """A new token for ``subject`` (the last one stops working); returns the token for the link."""
        token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        pointer = keys.email_token_subject(self.purpose, subject)
        previous = await self.redis.get(pointer)
        async with self.redis.pipeline(transaction=True) as pipe:
            if previous:
                pipe.delete(keys.email_token(self.purpose, previous.decode()))
            pipe.hset(keys.email_token(self.purpose, digest), mapping={**fields, "subject": subject})
            pipe.expire(keys.email_token(self.purpose, digest), self.ttl_s)
            pipe.set(pointer, digest, ex=self.ttl_s)
            await pipe.execute()
        return token

    async def peek(self, token: str | None) -> dict[str, str] | None:
        """What a live token stands for, without using it up; None when unknown, used or expired."""
        if not token or len(token) > MAX_TOKEN_TEXT:
            return None
        raw = await self.redis.hgetall(keys.email_token(self.purpose, token_hash(token)))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    async def consume(self, token: str | None) -> dict[str, str] | None:
        """Use a token up: its fields to exactly one caller, None to every other (and to unknown tokens)."""
        if not token or len(token) > MAX_TOKEN_TEXT:
            return None
        key = keys.email_token(self.purpose, token_hash(token))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields:
            pointer = keys.email_token_subject(self.purpose, fields.get("subject", ""))
            if await self.redis.get(pointer) == token_hash(token).encode():
                await self.redis.delete(pointer)
        return fields or None
