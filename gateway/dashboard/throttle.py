"""Sign-in throttling: progressive delays per email and per client address, counted before the check.

Two scopes for every attempt: the email tried and the client's address (from
a trusted proxy only, ``gateway/edge.py``). Each allows a few failures, then
makes every further attempt wait a delay that doubles with each failure, and
verifies at most a few of its passwords at once. Both live in Redis (one Lua
call, ``shared/lua/login_begin.lua``), so every gateway replica counts alike,
and an attempt is counted as failed *before* its password is checked: a
burst of concurrent guesses cannot all pass a check that reads the counters
before any of them is written.

The per-email delay is capped at a minute: anyone can type a known user's
email with a wrong password, and that must only slow the user down, never
lock them out; the per-client delay, which only the guesser suffers, grows
to a quarter of an hour. The process-wide bound on argon2 work is in
``shared/users.py``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.scripts import Scripts

STALE_MS = 30_000  # an in-flight verification older than this died with its process


@dataclass(frozen=True)
class Scope:
    """How one scope throttles: free failures, then doubling delays; verifications at once."""

    prefix: str
    free: int
    base_delay_ms: int
    max_delay_ms: int
    max_inflight: int
    ttl_ms: int  # failures are forgotten this long after the last attempt

    def args(self) -> list[int]:
        return [self.free, self.base_delay_ms, self.max_delay_ms, self.max_inflight, self.ttl_ms]


EMAIL = Scope("email:", free=5, base_delay_ms=5_000, max_delay_ms=60_000, max_inflight=1, ttl_ms=15 * 60_000)
CLIENT = Scope("client:", free=30, base_delay_ms=5_000, max_delay_ms=15 * 60_000, max_inflight=4,
               ttl_ms=60 * 60_000)


@dataclass(frozen=True)
class Attempt:
    """A sign-in attempt: admitted (``wait_s == 0``) or told to wait."""

    id: str
    keys: list[str]
    wait_s: int = 0

    @property
    def admitted(self) -> bool:
        return self.wait_s == 0


class LoginThrottle:
    def __init__(self, redis: Redis, scripts: Scripts | None = None) -> None:
        self.scripts = scripts or Scripts(redis)

    async def begin(self, email: str, client: str) -> Attempt:
        """Admit an attempt (counted as failed until ``finish``) or say how long to wait."""
        scoped = [(EMAIL, EMAIL.prefix + email), (CLIENT, CLIENT.prefix + client)]
        attempt_keys = [k for _, name in scoped for k in (keys.login_throttle(name), keys.login_inflight(name))]
        attempt_id = secrets.token_hex(8)
        args: list[object] = [attempt_id, STALE_MS]
        for scope, _ in scoped:
            args += scope.args()
        admitted, wait_ms = await self.scripts.login_begin(keys=attempt_keys, args=args)
        return Attempt(attempt_id, attempt_keys, 0 if admitted else max(1, -(-int(wait_ms) // 1000)))

    async def finish(self, attempt: Attempt, outcome: str) -> None:
        """``failed``, ``succeeded`` (the email's failures are cleared) or ``not_checked``."""
        if attempt.admitted:
            await self.scripts.login_finish(keys=attempt.keys, args=[attempt.id, outcome])
