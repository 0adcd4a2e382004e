"""Stored Responses (OpenAI's ``store`` / ``previous_response_id``): one interface, kept hot in Redis.

A stored record is the Responses object the client got plus the conversation it ends (OpenAI chat
messages, the form every front end's jobs run), so a follow-up with ``previous_response_id``
continues it without walking a chain. ``RedisResponseStore`` keeps records for
``APIINONE_RESPONSES_TTL_S`` under ``APIINONE_RESPONSES_MAX_BYTES_PER_ACCOUNT`` per account (the
oldest dropped first: shared/lua/response_put.lua). Keys carry the account, so another account's id
is simply not found.

The system of record (Postgres) plugs in behind the same ``ResponseStore``: ``put`` also hands the
record to the archiver, and ``get`` falls back to the archive on a Redis miss.
"""

from __future__ import annotations

from typing import Protocol

import orjson
from redis.asyncio import Redis

from shared.keys import AccountKeys
from shared.scripts import Scripts


class ResponseStore(Protocol):
    async def put(self, account_id: str, response_id: str, record: dict) -> bool:
        """Keep ``record`` (``{"response", "messages"}``); False when it is larger than the account's cap."""

    async def get(self, account_id: str, response_id: str) -> dict | None: ...

    async def delete(self, account_id: str, response_id: str) -> bool: ...


class RedisResponseStore:
    def __init__(self, redis: Redis, scripts: Scripts, ttl_s: float, max_bytes: int) -> None:
        self.redis = redis
        self.scripts = scripts
        self.ttl_ms = int(ttl_s * 1000)
        self.max_bytes = max_bytes

    @staticmethod
    def _keys(account_id: str, response_id: str) -> list[str]:
        k = AccountKeys(account_id)
        return [k.response(response_id), k.responses, k.response_bytes]

    async def put(self, account_id: str, response_id: str, record: dict) -> bool:
        stored = await self.scripts.response_put(
            keys=self._keys(account_id, response_id),
            args=[response_id, orjson.dumps(record), self.ttl_ms, self.max_bytes,
                  AccountKeys(account_id).response_prefix])
        return stored == 1

    async def get(self, account_id: str, response_id: str) -> dict | None:
        raw = await self.redis.get(AccountKeys(account_id).response(response_id))
        return orjson.loads(raw) if raw else None

    async def delete(self, account_id: str, response_id: str) -> bool:
        return await self.scripts.response_delete(keys=self._keys(account_id, response_id), args=[response_id]) == 1
