"""Bearer-key authentication with a small per-process cache.

A key's record is one HGETALL by the key's SHA-256; hits are cached for
``TTL_S``. Revocation publishes the key hash and every gateway drops it at
once (``shared/reply_hub.py``); the TTL bounds the damage if that message is lost.

A lookup in flight when a revocation is heard may carry the record from
before it: every revocation bumps a counter, and a record read while the
counter moved is read again (after the revocation, so it is current) and is
not cached unless that second read saw no revocation either.
"""

from __future__ import annotations

import hmac
import time

from aiohttp import web

from shared.accounts import Accounts, KeyRecord, hash_key
from shared.errors import ApiError, unauthorized

TTL_S = 30.0
MAX_ENTRIES = 100_000


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
    return token.strip()


class KeyCache:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self._entries: dict[str, tuple[KeyRecord, float]] = {}
        self._revocations = 0  # how many revocations this process has heard

    async def authenticate(self, request: web.Request) -> KeyRecord:
        """The request's key (401 otherwise); once per request, however many times it is asked."""
        if "key" in request:
            return request["key"]
        token = bearer_token(request)
        digest = hash_key(token)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > now and not entry[0].expired(time.time()):
            request["key"] = entry[0]
            return entry[0]
        record, current = await self._lookup(digest)
        if record is None:
            raise unauthorized(f"Incorrect API key provided: {token[:8]}****. Keys are created by the operator.")
        if record.expired(time.time()):
            raise unauthorized("This API key has expired.")
        if current:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (record, now + TTL_S)
        request["key"] = record
        return record

    async def _lookup(self, digest: str) -> tuple[KeyRecord | None, bool]:
        """The key's record, and whether it may be cached (no revocation was heard while it was read)."""
        heard = self._revocations
        record = await self.accounts.lookup_key_hash(digest)
        if heard == self._revocations:
            return record, True
        heard = self._revocations
        record = await self.accounts.lookup_key_hash(digest)  # sent after the revocation: reads past it
        return record, heard == self._revocations

    def revoke(self, digest: str | None) -> None:
        """Drop one key (``None``: all, after a missed-message window)."""
        self._revocations += 1
        if digest is None:
            self._entries.clear()
        else:
            self._entries.pop(digest, None)


def check_admin(request: web.Request, admin_token: str) -> None:
    token = bearer_token(request)
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise ApiError(401, "Invalid admin token.", "invalid_request_error", "invalid_admin_token")


def request_key(request: web.Request) -> KeyRecord:
    """The API key that authenticated this request (routes declared with ``security="apiKey"``)."""
    return request["key"]
