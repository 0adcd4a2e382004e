"""Stored Responses kept by the record (issue 21): the archiver writes them to Postgres off the request path,
and a response Redis no longer has (its TTL passed, the account's cap dropped it) is still found, continued
and deleted. In process against real Valkey and Postgres, then once through the stack with the openai SDK."""

from __future__ import annotations

import asyncio
import time

import pytest
from openai import AsyncOpenAI, NotFoundError
from redis.asyncio import Redis

from shared import keys
from shared.db import stored_responses
from shared.db.database import Database
from shared.keys import AccountKeys
from shared.response_store import RecordedResponseStore, RedisResponseStore
from shared.scripts import Scripts
from worker.archiver import responses as responses_archiver
from worker.archiver.responses import ResponseArchiver, archive_op

DAY_S = 86400.0


def record(text: str) -> dict:
    return {"response": {"id": "x", "output_text": text}, "messages": [{"role": "user", "content": text}]}


async def drain(archiver: ResponseArchiver) -> None:
    await archiver.ensure_group()
    while await archiver.round(block_ms=20):
        pass


async def test_archived_responses_outlive_redis_and_deletes_are_never_undone(stores):
    redis, db = stores
    store = RecordedResponseStore(redis, Scripts(redis), 60, 1 << 20, db)
    archiver = ResponseArchiver(redis, db, 30 * DAY_S, "test")
    assert await store.put("acct_a", "resp_1", record("one")) and await store.put("acct_a", "resp_2", record("two"))
    assert await db.fetchval("SELECT count(*) FROM stored_responses") == 0  # nothing on the request path
    await store.delete("acct_a", "resp_2")  # deleted before it was archived
    await drain(archiver)
    assert await redis.xlen(keys.RESPONSE_ARCHIVE) == 0  # acked and removed after the commit
    rows = await db.fetch("SELECT response_id, expires_ms - created_ms AS kept FROM stored_responses")
    assert [(r["response_id"], r["kept"]) for r in rows] == [("resp_1", 30 * DAY_S * 1000)]

    await redis.delete(AccountKeys("acct_a").response("resp_1"))  # Redis' TTL passed, or the cap dropped it
    assert await store.get("acct_a", "resp_1") == record("one")
    assert await store.get("acct_b", "resp_1") is None  # another account's id is not found
    assert await store.delete("acct_a", "resp_1") and await store.get("acct_a", "resp_1") is None
    await drain(archiver)  # its delete entry changes nothing more
    assert await store.get("acct_a", "resp_1") is None and not await store.delete("acct_a", "resp_1")


class ArchiverFirst:
    """Scripts whose response_delete is followed at once by the archiver applying its delete entry."""

    def __init__(self, scripts: Scripts, archiver: ResponseArchiver) -> None:
        self.scripts, self.archiver = scripts, archiver

    def __getattr__(self, name: str):
        return getattr(self.scripts, name)

    async def response_delete(self, **kw):
        deleted = await self.scripts.response_delete(**kw)
        await drain(self.archiver)
        return deleted


async def test_a_delete_the_archiver_applies_first_still_answers_deleted(stores):
    redis, db = stores
    store = RecordedResponseStore(redis, Scripts(redis), 60, 1 << 20, db)
    archiver = ResponseArchiver(redis, db, 30 * DAY_S, "test")
    await store.put("acct_a", "resp_1", record("one"))
    await drain(archiver)
    await redis.delete(AccountKeys("acct_a").response("resp_1"))  # only the record has it
    store.scripts = ArchiverFirst(store.scripts, archiver)
    assert await store.delete("acct_a", "resp_1")  # not a 404 because the archiver was quicker
    assert await store.get("acct_a", "resp_1") is None


async def test_a_kill_before_the_ack_archives_once_and_retention_removes(stores, monkeypatch):
    redis, db = stores
    store = RecordedResponseStore(redis, Scripts(redis), 60, 1 << 20, db)
    await store.put("acct_a", "resp_1", record("one"))
    dead = ResponseArchiver(redis, db, 30 * DAY_S, "dead")
    await dead.ensure_group()
    await redis.xreadgroup(keys.RESPONSE_ARCHIVE_GROUP, "dead", {keys.RESPONSE_ARCHIVE: ">"}, count=10)
    async with db.transaction() as conn:  # it committed, then died before acking
        entries = await redis.xrange(keys.RESPONSE_ARCHIVE)
        await stored_responses.apply(conn, [archive_op(i, f) for i, f in entries], dead.retention_ms)
    monkeypatch.setattr(responses_archiver, "RECLAIM_IDLE_MS", 0)
    await drain(ResponseArchiver(redis, db, 30 * DAY_S, "alive"))  # takes the dead one's entries over
    assert await redis.xlen(keys.RESPONSE_ARCHIVE) == 0
    assert await db.fetchval("SELECT count(*) FROM stored_responses") == 1
    await db.execute("UPDATE stored_responses SET expires_ms = $1", int(time.time() * 1000) - 1)
    await redis.delete(AccountKeys("acct_a").response("resp_1"))
    assert await store.get("acct_a", "resp_1") is None  # past its retention: gone, even before it is removed
    assert await stored_responses.forget_expired(db) == 1


async def test_without_a_database_nothing_is_handed_to_an_archiver(stores):
    redis, _ = stores
    store = RedisResponseStore(redis, Scripts(redis), 60, 1 << 20)
    assert await store.put("acct_a", "resp_1", record("one"))
    await store.delete("acct_a", "resp_1")
    assert await redis.exists(keys.RESPONSE_ARCHIVE) == 0  # no archiver would ever empty it


async def test_through_the_stack_a_response_redis_lost_is_found_and_continued(stack, funded):
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=funded[1], max_retries=0)
    first = await client.responses.create(model="gemini", input="remember 42 [[sim output_tokens=5]]")
    db = Database(stack.settings.database_url)
    redis = Redis.from_url(stack.settings.redis_url)
    try:
        deadline = time.monotonic() + 20  # milliseconds once the archiver runs (it may still be starting)
        while not await stored_responses.read(db, funded[0]["id"], first.id):
            assert time.monotonic() < deadline, "not archived"
            await asyncio.sleep(0.05)
        await redis.delete(AccountKeys(funded[0]["id"]).response(first.id))
        assert (await client.responses.retrieve(first.id)).output_text == first.output_text
        follow = await client.responses.create(model="gemini", input="and now? [[sim output_tokens=5]]",
                                               previous_response_id=first.id)
        assert follow.status == "completed"
        await client.responses.delete(first.id)
        with pytest.raises(NotFoundError):
            await client.responses.retrieve(first.id)
    finally:
        await db.close()
        await redis.aclose()
