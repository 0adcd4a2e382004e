"""One asyncpg pool per process, opened lazily, with one error for "the database is unreachable".

A process starts whether or not Postgres answers: the pool is opened on first use and again after
a failure, so a database that comes back is used again without a restart. Callers catch
``DatabaseUnavailable`` (readiness, the archiver's wait, a 503 naming the database).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg
import orjson

CONNECT_TIMEOUT_S = 3.0
COMMAND_TIMEOUT_S = 30.0
# What a dead, restarting or unreachable server raises, before or during a query.
UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)


class DatabaseUnavailable(Exception):
    """Postgres (DATABASE_URL) did not answer; the message says why."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                              schema="pg_catalog")


# Every statement is planned with its values, never with a generic plan: the index that fits a page
# (partial indexes by status, sql/0010) and the row estimates of its time bounds depend on them, and a
# generic plan a long-lived connection settles on after five runs read every row of a status where
# ~10 pages do. Planning is ~0.1-0.3 ms, and no statement here is on the request path.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


class Database:
    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.url, min_size=1, max_size=self.pool_size, timeout=CONNECT_TIMEOUT_S,
                        command_timeout=COMMAND_TIMEOUT_S, init=_init_connection,
                        server_settings=SERVER_SETTINGS)
                except UNAVAILABLE as exc:
                    raise DatabaseUnavailable(_why(exc)) from exc
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any loss of the server on the way is ``DatabaseUnavailable``."""
        pool = await self.pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(_why(exc)) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def dedicated(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, outside the pool, for a long read (an export streaming millions of rows
        at the client's pace) that must not hold a pooled connection the pages need."""
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
                                         server_settings=SERVER_SETTINGS)
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(_why(exc)) from exc
        try:
            await _init_connection(conn)
            yield conn
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(_why(exc)) from exc
        finally:
            try:
                await conn.close(timeout=5)
            except (asyncio.TimeoutError, *UNAVAILABLE):
                conn.terminate()

    async def fetch(self, query: str, *args) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args):
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args) -> str:
        async with self.connection() as conn:
            return await conn.execute(query, *args)

    async def ping(self) -> None:
        """Raises ``DatabaseUnavailable`` unless the server answers a query now."""
        await self.fetchrow("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (asyncio.TimeoutError, *UNAVAILABLE):
                pool.terminate()


def _why(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".strip().rstrip(":")
