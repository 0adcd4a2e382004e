"""Dashboard users: an email and an argon2 password hash, a role, and the account they belong to.

Users sign in to the dashboard only; API keys never do, and users never call
the API with their password. Roles: ``user`` sees and manages its own account
(keys, credits, usage, orders); ``operator`` sees every account and the nodes.
Created by the admin API (``POST /admin/users``), the CLI (``apiinone admin
users create``), an operator in the dashboard, or `make run` (first operator).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.asyncio import Redis

from shared import ids, keys
from shared.credits import AccountNotFound
from shared.db.directory import Directory
from shared.keys import AccountKeys

ROLES = ("user", "operator")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s.]{1,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 512  # argon2 hashes anything, but a megabyte "password" is only a way to burn CPU

_hasher = PasswordHasher()  # argon2id, the library's (RFC 9106 low-memory) defaults
# Verified when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")

# argon2 work at once in this process (each takes 64 MiB and a core for tens of ms), and how many may queue for
# it; past that, sign-in answers "busy" instead of queueing CPU work without end. Per-email and per-client
# bounds come first (gateway/dashboard/throttle.py).
MAX_HASHING = 2
MAX_WAITING = 64


class UserError(ValueError):
    """A request about users that cannot be done; the message is meant for people."""


class UserExists(UserError):
    pass


class PasswordWorkBusy(Exception):
    """Too many passwords are being hashed or verified in this process: try again in a moment."""


class _HashingSlots:
    def __init__(self, limit: int, waiting: int) -> None:
        self._limit = asyncio.Semaphore(limit)
        self._max_waiting = waiting
        self._waiting = 0

    async def run(self, work, *args):
        if self._waiting >= self._max_waiting:
            raise PasswordWorkBusy()
        self._waiting += 1
        try:
            async with self._limit:
                return await asyncio.to_thread(work, *args)
        finally:
            self._waiting -= 1


_slots = _HashingSlots(MAX_HASHING, MAX_WAITING)


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def check_email(email: str) -> str:
    email = normalize_email(email)
    if not EMAIL.fullmatch(email):
        raise UserError("That doesn't look like an email address.")
    return email


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise UserError(f"The password must be at least {MIN_PASSWORD} characters long.")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"The password must be at most {MAX_PASSWORD} characters long.")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: str
    account_id: str
    created: int
    last_login: int = 0

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> User:
        get = lambda f: raw.get(f.encode(), b"").decode()  # noqa: E731
        return cls(id=get("id"), email=get("email"), role=get("role") or "user", account_id=get("account_id"),
                   created=int(get("created") or 0), last_login=int(get("last_login") or 0))

    def public(self) -> dict:
        return {"id": self.id, "object": "user", "email": self.email, "role": self.role,
                "account_id": self.account_id, "created": self.created, "last_login": self.last_login or None}


class Users:
    def __init__(self, redis: Redis, directory: Directory | None = None) -> None:
        self.redis = redis
        self.directory = directory  # Postgres: users are recorded there before Redis has them

    async def create(self, email: str, password: str | None, account_id: str, role: str = "user",
                     password_hash: str | None = None) -> User:
        """A new user; ``password_hash`` instead of ``password``: hashed already (a verified sign-up's)."""
        email = check_email(email)
        if password_hash is None:
            check_password(password or "")
        if role not in ROLES:
            raise UserError(f"The role must be one of: {', '.join(ROLES)}.")
        if not await self.redis.exists(AccountKeys(account_id).account):
            raise AccountNotFound(account_id)
        digest = password_hash or await _slots.run(hash_password, password)
        user_id = ids.USER.new()
        # Claim the email first (SET NX): two creations racing for one email cannot both win.
        if not await self.redis.set(keys.user_email(email), user_id, nx=True):
            raise UserExists(f"There is already a user with the email {email}.")
        record = {"id": user_id, "email": email, "password_hash": digest, "role": role, "account_id": account_id,
                  "created": int(time.time()), "last_login": 0}
        if self.directory is not None:
            try:
                await self.directory.record_user(record)
            except Exception:
                await self.redis.delete(keys.user_email(email))  # the email is free again
                raise
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.user(user_id), mapping=record)
            pipe.sadd(keys.USERS, user_id)
            pipe.sadd(keys.account_users(account_id), user_id)
            await pipe.execute()
        return User.from_redis({k.encode(): str(v).encode() for k, v in record.items()})

    async def get(self, user_id: str) -> User | None:
        raw = await self.redis.hgetall(keys.user(user_id))
        return User.from_redis(raw) if raw else None

    async def by_email(self, email: str) -> User | None:
        user_id = await self.redis.get(keys.user_email(normalize_email(email)))
        return await self.get(user_id.decode()) if user_id else None

    async def authenticate(self, email: str, password: str) -> User | None:
        """The user whose email and password these are, or None (same work either way).

        Raises ``PasswordWorkBusy`` when this process is verifying too many passwords already."""
        email = normalize_email(email)
        user_id = await self.redis.get(keys.user_email(email)) if email else None
        stored = await self.redis.hget(keys.user(user_id.decode()), "password_hash") if user_id else None
        password = (password or "")[:MAX_PASSWORD]
        ok = await _slots.run(verify_password, stored.decode() if stored else _DUMMY_HASH, password)
        if not (ok and stored):
            return None
        await self.redis.hset(keys.user(user_id.decode()), "last_login", int(time.time()))
        return await self.get(user_id.decode())

    async def hash_new_password(self, password: str) -> str:
        """A password checked and hashed (in the bounded hashing slots), for ``create(password_hash=...)``."""
        return await _slots.run(hash_password, check_password(password))

    async def set_password(self, user_id: str, password: str) -> None:
        check_password(password)
        await self.set_password_hash(user_id, await _slots.run(hash_password, password))

    async def set_password_hash(self, user_id: str, digest: str) -> None:
        if self.directory is not None:
            await self.directory.set_password(user_id, digest)
        await self.redis.hset(keys.user(user_id), "password_hash", digest)

    async def list_users(self, account_id: str | None = None) -> list[User]:
        ids = await self.redis.smembers(keys.account_users(account_id) if account_id else keys.USERS)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in ids:
                pipe.hgetall(keys.user(uid.decode()))
            rows = await pipe.execute()
        return sorted((User.from_redis(r) for r in rows if r), key=lambda u: (u.created, u.email))

    async def count(self) -> int:
        return await self.redis.scard(keys.USERS)
