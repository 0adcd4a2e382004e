"""Redis connections: one pooled client per process, built the same way everywhere.

``REDIS_URL`` may name a Sentinel-managed primary instead of a server:
``redis+sentinel://host1:26379,host2:26379/<master name>[/<db>]``; every
connection then asks the sentinels for the current primary, so a failover
needs no restart.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, DataError, OutOfMemoryError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

R = TypeVar("R", bound=Redis)


class _LeanSend:
    """A socket write without redis-py's ``asyncio.wait_for`` around it, of commands packed in C.

    redis-py wraps every command's write in ``wait_for(..., socket_timeout)``, which on
    Python 3.11 runs the write in a task of its own: a task per Redis command. The write
    itself never waits unless the socket's buffer is full, so the timeout guards only the
    drain here, with ``asyncio.timeout`` (no task). Failure handling is redis-py's own:
    any error or cancellation mid-write closes the connection.

    Packing: redis-py's asyncio connection packs in Python, one encode per argument (~54 us
    for a settlement's ~80 arguments, most of the billing worker's time); hiredis' packer,
    which sync redis-py uses when hiredis is installed, does it in ~5 us and byte for byte
    alike (tests/test_redis_client.py).
    """

    def pack_command(self, *args) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            if " " in name:  # "CLIENT SETNAME": redis-py sends a command's words as arguments
                args = (*name.split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # None, a bool, a list: redis-py's own error for it
            raise DataError(f"Invalid input among {[type(a).__name__ for a in args]}: "
                            "convert to a bytes, string, int or float first.") from None

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()
        elif check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            self._writer.writelines(command)
            async with asyncio.timeout(self.socket_timeout):
                await self._writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class LeanConnection(_LeanSend, Connection):
    pass


class LeanUnixConnection(_LeanSend, UnixDomainSocketConnection):
    pass


_LEAN = {Connection: LeanConnection, UnixDomainSocketConnection: LeanUnixConnection}


class LeanConnectionPool(ConnectionPool):
    """redis-py's pool, without a socket probe on every checkout.

    Stock ``get_connection`` takes a lock and reads the socket (non-blocking) before every
    command, to find connections returned with unread replies. Ours never are: redis-py
    closes a connection whenever a read or write is interrupted. A connection the server
    closed while idle fails on use and the client's retry reconnects, as it would anyway.
    """

    async def get_connection(self, command_name=None, *keys, **options):
        connection = self.get_available_connection()
        if not connection.is_connected:
            try:
                await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def release(self, connection) -> None:
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


def make_redis(url: str, *, cls: type[R] = Redis, max_connections: int = 512,
               socket_timeout: float | None = 5.0, retries: int = 1) -> R:
    """A pooled asyncio client. Commands fail fast (no hang) when Redis is down.

    ``socket_timeout=None`` is for connections that block on purpose (BZMPOP, pub/sub);
    ``retries=0`` for a pub/sub connection whose owner must notice every reconnect.
    """
    options = dict(
        max_connections=max_connections,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, cls, options)
    if url.startswith("unix://"):
        options.pop("socket_keepalive")
    pool = LeanConnectionPool.from_url(url, **options)
    pool.connection_class = _LEAN.get(pool.connection_class, pool.connection_class)  # TLS keeps redis-py's
    return cls(connection_pool=pool)


def _sentinel_client(url: str, cls: type[R], options: dict) -> R:
    parts = urlsplit(url)
    hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]) if ":" in h else 26379)
             for h in parts.netloc.rsplit("@", 1)[-1].split(",")]
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs the master name: redis+sentinel://host:26379/mymaster/0")
    master, db = path[0], int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    sentinel = Sentinel(hosts, sentinel_kwargs={"socket_connect_timeout": 1.0, "socket_timeout": 1.0})
    pool = SentinelConnectionPool(master, sentinel, db=db, password=password, **options)
    return cls(connection_pool=pool)


# Errors that say the store cannot serve us right now (down, loading, failing over, full): a client
# may retry later. Any other RedisError (WRONGTYPE, a script error, a bad argument) is a bug of ours.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterDownError, TryAgainError,
               OutOfMemoryError)


def store_unavailable(exc: RedisError) -> bool:
    """True when ``exc`` means "the data store is unavailable", not "we sent it something wrong"."""
    return isinstance(exc, UNAVAILABLE)
