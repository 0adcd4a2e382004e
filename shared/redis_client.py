"""Redis connections: one pooled client per process, built the same way everywhere."""

from __future__ import annotations

from typing import TypeVar

from redis.asyncio import ConnectionPool, Redis
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
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return cls(connection_pool=pool)
