"""Redis connections: one pooled client per process, built the same way everywhere.

``REDIS_URL`` may name a Sentinel-managed primary instead of a server:
``redis+sentinel://host1:26379,host2:26379/<master name>[/<db>]``; every
connection then asks the sentinels for the current primary, so a failover
needs no restart.
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

R = TypeVar("R", bound=Redis)


def make_redis(url: str, *, cls: type[R] = Redis, max_connections: int = 512,
               socket_timeout: float | None = 5.0, retries: int = 1) -> R:
    """A pooled asyncio client. Commands fail fast (no hang) when Redis is down.

    ``socket_timeout=None`` is for connections that block on purpose (BZPOPMIN, pub/sub);
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
    return cls(connection_pool=ConnectionPool.from_url(url, **options))


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
