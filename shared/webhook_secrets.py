"""An account's webhook signing secret (batch completion callbacks), its rotation, and the signatures.

The secret (standard-webhooks ``whsec_`` form) is made the first time it is
asked for and kept in the account hash. Rotating it (``webhook_rotate.lua``)
keeps the old one for an overlap (``APIINONE_WEBHOOK_SECRET_OVERLAP_S``):
meanwhile every callback carries one signature per secret, space-separated
(``webhook-signature: v1,<new> v1,<old>``, as standard-webhooks allows), so a
receiver verifies with either and switches when it is ready. After the
overlap only the new secret signs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from redis.asyncio import Redis

from shared.credits import AccountNotFound
from shared.keys import AccountKeys
from shared.scripts import Scripts

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


async def webhook_secret(redis: Redis, account_id: str) -> str:
    """The account's current signing secret, made once."""
    k = AccountKeys(account_id)
    await redis.hsetnx(k.account, "webhook_secret", new_secret())
    return (await redis.hget(k.account, "webhook_secret")).decode()


async def previous_secret_expires_at(redis: Redis, account_id: str) -> int | None:
    """When the secret before the last rotation stops signing (unix s), or None when none signs."""
    raw = await redis.hget(AccountKeys(account_id).account, "webhook_secret_previous_until")
    ends = int(raw or 0)
    return ends if ends > time.time() else None


async def signing_secrets(redis: Redis, account_id: str) -> list[str]:
    """The secrets that sign the account's callbacks now: the current one, then the previous during its overlap."""
    current = await webhook_secret(redis, account_id)
    previous, until = await redis.hmget(AccountKeys(account_id).account, "webhook_secret_previous",
                                        "webhook_secret_previous_until")
    if previous and int(until or 0) > time.time():
        return [current, previous.decode()]
    return [current]


async def rotate(scripts: Scripts, account_id: str, overlap_s: int) -> tuple[str, int | None]:
    """A new secret for the account, and when the old one stops signing (None: there was none)."""
    fresh = new_secret()
    done, ends = await scripts.webhook_rotate(keys=[AccountKeys(account_id).account], args=[fresh, overlap_s])
    if not done:
        raise AccountNotFound(account_id)
    return fresh, int(ends) or None


def sign(signing: list[str], event_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret."""
    message = f"{event_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(base64.b64decode(s.removeprefix(PREFIX)), message,
                                                      hashlib.sha256).digest()).decode() for s in signing)
