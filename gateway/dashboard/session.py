"""Dashboard sessions, CSRF tokens and sign-in throttling, all in Redis.

A session is a random token in an HttpOnly, SameSite=Strict cookie scoped to
``/dashboard`` (so the browser never sends it to the API); Redis holds only the
token's SHA-256. A session ends after ``IDLE_S`` without a request or
``MAX_AGE_S`` after sign-in, whichever comes first, and at sign-out or a
password change. Every session carries its own CSRF token, which every form
posts back. Sign-in throttling is ``throttle.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from gateway.edge import edge
from shared import keys

SESSION_COOKIE = "aio_session"
LOGIN_CSRF_COOKIE = "aio_login_csrf"
COOKIE_PATH = "/dashboard"
IDLE_S = 2 * 3600  # signed out after two hours without a request
MAX_AGE_S = 12 * 3600  # and twelve hours after signing in in any case


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Session:
    token_hash: str
    user_id: str
    csrf: str
    account_id: str  # the account the pages show (an operator may switch it)
    created: int
    expires_at: int


class Sessions:
    def __init__(self, redis: Redis, idle_s: int = IDLE_S, max_age_s: int = MAX_AGE_S) -> None:
        self.redis = redis
        self.idle_s = idle_s
        self.max_age_s = max_age_s

    async def create(self, user_id: str, account_id: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        s = Session(_digest(token), user_id, secrets.token_urlsafe(32), account_id, now, now + self.max_age_s)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.dashboard_session(s.token_hash), mapping={
                "user_id": user_id, "csrf": s.csrf, "account_id": account_id, "created": now,
                "expires_at": s.expires_at})
            pipe.expire(keys.dashboard_session(s.token_hash), min(self.idle_s, self.max_age_s))
            pipe.sadd(keys.user_sessions(user_id), s.token_hash)
            pipe.expire(keys.user_sessions(user_id), self.max_age_s)
            await pipe.execute()
        return token, s

    async def load(self, token: str | None) -> Session | None:
        """The live session for this cookie value (and one more idle period for it), or None."""
        if not token or len(token) > 128:
            return None
        key = keys.dashboard_session(_digest(token))
        now = int(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self.idle_s, xx=True)
            raw, _ = await pipe.execute()
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}
        expires_at = int(f.get("expires_at") or 0)
        if expires_at <= now:
            await self.redis.delete(key)
            return None
        if expires_at - now < self.idle_s:
            await self.redis.expireat(key, expires_at)
        return Session(_digest(token), f["user_id"], f["csrf"], f.get("account_id", ""), int(f.get("created") or 0),
                       expires_at)

    async def set_account(self, session: Session, account_id: str) -> None:
        await self.redis.hset(keys.dashboard_session(session.token_hash), "account_id", account_id)
        session.account_id = account_id

    async def flash(self, session: Session, message: str, kind: str = "ok") -> None:
        """A one-time notice shown on the next page this session loads."""
        await self.redis.hset(keys.dashboard_session(session.token_hash), "flash", f"{kind}:{message}")

    async def pop_flash(self, session: Session) -> tuple[str, str] | None:
        key = keys.dashboard_session(session.token_hash)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, "flash")
            pipe.hdel(key, "flash")
            raw, _ = await pipe.execute()
        if not raw:
            return None
        kind, _, message = raw.decode().partition(":")
        return kind, message

    async def drop(self, session: Session) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.dashboard_session(session.token_hash))
            pipe.srem(keys.user_sessions(session.user_id), session.token_hash)
            await pipe.execute()

    async def drop_all(self, user_id: str, keep: Session | None = None) -> None:
        """End every session of a user (after a password change), except ``keep``."""
        hashes = [h.decode() for h in await self.redis.smembers(keys.user_sessions(user_id))]
        doomed = [h for h in hashes if keep is None or h != keep.token_hash]
        if doomed:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(keys.dashboard_session(h) for h in doomed))
                pipe.srem(keys.user_sessions(user_id), *doomed)
                await pipe.execute()


# --- cookies and CSRF ------------------------------------------------------------------
def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int,
               path: str = COOKIE_PATH) -> None:
    """HttpOnly, SameSite=Strict, and Secure whenever clients use https (``gateway/edge.py``)."""
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="Strict",
                        secure=edge(request).is_https(request))


def clear_cookie(response: web.StreamResponse, name: str, path: str = COOKIE_PATH) -> None:
    response.del_cookie(name, path=path)


def tokens_match(expected: str | None, offered: str | None) -> bool:
    return bool(expected) and bool(offered) and hmac.compare_digest(expected.encode(), offered.encode())


def client_address(request: web.Request) -> str:
    """Who is signing in, for throttling: the peer, or what a trusted proxy says (``gateway/edge.py``)."""
    return edge(request).client_address(request)[:64]


def same_origin(request: web.Request) -> bool:
    """A browser's Origin (or Referer) header, when present, must name this host."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin != "null"
    rest = origin.split("://", 1)[-1]
    host = rest.split("/", 1)[0]
    return host == request.host
