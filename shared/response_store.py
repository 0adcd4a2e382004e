"""Stored Responses (OpenAI's ``store`` / ``previous_response_id``): hot in Redis, kept by the record.

A stored record is the Responses object the client got plus the conversation it ends (OpenAI chat
messages, the form every front end's jobs run), so a follow-up with ``previous_response_id``
continues it without walking a chain. ``RedisResponseStore`` keeps records for
``APIINONE_RESPONSES_TTL_S`` under ``APIINONE_RESPONSES_MAX_BYTES_PER_ACCOUNT`` per account (the
oldest dropped first: shared/lua/response_put.lua). Keys carry the account, so another account's id
is simply not found.

With a database (``DATABASE_URL``), ``RecordedResponseStore``: the same put (one script call, no
extra round trip) also hands the record to the archiver on the response archive stream, which
writes it to Postgres off the request path (worker/archiver/responses.py), kept
``APIINONE_RESPONSES_RETENTION_DAYS``. A read that misses Redis (its TTL passed, or the cap dropped
it) is answered from Postgres; a delete removes both, and its entry on the stream follows the put,
so a response deleted before it was archived is never written back.
"""

from __future__ import annotations

from typing import Protocol

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.db import stored_responses
from shared.db.database import Database
from shared.keys import AccountKeys
from shared.scripts import Scripts

ARCHIVE_LENGTH = 100_000  # entries the response archive stream keeps at most (about) while the archiver is behind


class ResponseStore(Protocol):
    async def put(self, account_id: str, response_id: str, record: dict) -> bool:
        """Keep ``record`` (``{"response", "messages"}``); False when it is larger than the account's cap."""

    async def get(self, account_id: str, response_id: str) -> dict | None: ...

    async def delete(self, account_id: str, response_id: str) -> bool: ...


class RedisResponseStore:
    archive_length = 0  # no record: nothing is handed to an archiver

    def __init__(self, redis: Redis, scripts: Scripts, ttl_s: float, max_bytes: int) -> None:
        self.redis = redis
        self.scripts = scripts
        self.ttl_ms = int(ttl_s * 1000)
        self.max_bytes = max_bytes

    @staticmethod
    def _keys(account_id: str, response_id: str) -> list[str]:
        k = AccountKeys(account_id)
        return [k.response(response_id), k.responses, k.response_bytes, keys.RESPONSE_ARCHIVE]

    async def put(self, account_id: str, response_id: str, record: dict) -> bool:
        stored = await self.scripts.response_put(
            keys=self._keys(account_id, response_id),
            args=[response_id, orjson.dumps(record), self.ttl_ms, self.max_bytes,
                  AccountKeys(account_id).response_prefix, account_id, self.archive_length])
        return stored == 1

    async def get(self, account_id: str, response_id: str) -> dict | None:
        raw = await self.redis.get(AccountKeys(account_id).response(response_id))
        return orjson.loads(raw) if raw else None

    async def delete(self, account_id: str, response_id: str) -> bool:
        return await self.scripts.response_delete(keys=self._keys(account_id, response_id),
                                                  args=[response_id, account_id, self.archive_length]) == 1


class RecordedResponseStore(RedisResponseStore):
    """Redis first; Postgres (the archiver's copy) when Redis no longer has it. The database's reads and
    deletes raise ``DatabaseUnavailable`` when it does not answer."""

    archive_length = ARCHIVE_LENGTH

    def __init__(self, redis: Redis, scripts: Scripts, ttl_s: float, max_bytes: int, db: Database) -> None:
        super().__init__(redis, scripts, ttl_s, max_bytes)
        self.db = db

    async def get(self, account_id: str, response_id: str) -> dict | None:
        hot = await super().get(account_id, response_id)
        if hot is not None:
            return hot
        raw = await stored_responses.read(self.db, account_id, response_id)
        return orjson.loads(raw) if raw else None

    async def delete(self, account_id: str, response_id: str) -> bool:
        # Postgres first: the Redis delete hands the archiver a delete entry, which it may apply before
        # this call's own delete would run (and then this would not know the response existed). A put
        # the archiver had not written yet is undone by that entry, moments later.
        cold = await stored_responses.delete(self.db, account_id, response_id)
        return await super().delete(account_id, response_id) or cold
