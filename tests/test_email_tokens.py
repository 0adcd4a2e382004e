"""Mailed links' tokens (shared/email_tokens.py) against a real Valkey: stored only hashed, expiring, single-use
(also when used concurrently), and one live token per subject."""

from __future__ import annotations

import asyncio

from shared import keys
from shared.email_tokens import EmailTokens, token_hash


async def test_tokens_are_stored_hashed_expire_and_work_once(stores):
    redis, _db = stores
    tokens = EmailTokens(redis, "reset", ttl_s=3600)
    token = await tokens.issue("user_1", {"user_id": "user_1"})
    stored = [k.decode() for k in await redis.keys("*")]
    assert not any(token in k for k in stored) and keys.email_token("reset", token_hash(token)) in stored
    for k in stored:
        value = await redis.hgetall(k) if await redis.type(k) == b"hash" else {b"": await redis.get(k)}
        assert all(token.encode() not in v for v in value.values())  # nowhere in Redis as text
        assert 0 < await redis.ttl(k) <= 3600  # everything about it expires

    assert (await tokens.peek(token))["user_id"] == "user_1"  # looking does not use it up
    results = await asyncio.gather(*(tokens.consume(token) for _ in range(8)))
    assert sum(1 for r in results if r) == 1 and await tokens.peek(token) is None

    expiring = await tokens.issue("user_2", {"user_id": "user_2"})
    await redis.pexpire(keys.email_token("reset", token_hash(expiring)), 1)
    await asyncio.sleep(0.01)
    assert await tokens.consume(expiring) is None
    assert await tokens.consume("x" * 500) is None and await tokens.peek(None) is None


async def test_a_new_token_replaces_the_subjects_last_one(stores):
    redis, _db = stores
    tokens = EmailTokens(redis, "signup", ttl_s=60)
    first = await tokens.issue("a@example.com", {"email": "a@example.com"})
    second = await tokens.issue("a@example.com", {"email": "a@example.com"})
    assert await tokens.peek(first) is None and await tokens.consume(second) is not None
    assert await redis.get(keys.email_token_subject("signup", "a@example.com")) is None
