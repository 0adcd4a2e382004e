"""Self-service sign-up and password reset, by mailed single-use links (``shared/email_tokens.py``).

Sign-up (off unless ``APIINONE_SIGNUP_ENABLED``): the password is hashed at once and kept with the
verification token, nothing else is made until the link is followed; then an account (named after
the email) and its user are created, with the starting grant if the client address that signed up
has not had ``signup_grants_per_ip_daily`` grants today. Reset: a link to set a new password, for
an hour; using it ends the user's sessions (the caller drops them).

Neither form says whether an address has a user: ``request_signup`` and ``request_reset`` mail the
address either way (a sign-up for a known address gets "you already have an account", a reset for
an unknown one gets nothing) and are meant to run after the answer is sent (``gateway/dashboard/
selfserve.py`` runs them as background tasks), so their work, argon2 hashing included, shows in no
answer's timing. Both forms are limited per address and per client address (``MailRequestLimits``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.accounts import Accounts
from shared.email_tokens import EmailTokens
from shared.mail import Mail
from shared.money import credits_to_micro
from shared.settings import Settings
from shared.users import User, UserExists, Users, normalize_email

VERIFYING_LOCK_S = 30


@dataclass(frozen=True)
class MailRequestLimits:
    """Mail-sending requests (sign-up, reset) per hour, per address and per client address."""

    redis: Redis
    per_address: int
    per_client: int

    async def admit(self, email: str, client: str) -> int:
        """0 when admitted (and counted), else the seconds until the hour ends."""
        hour = int(time.time()) // 3600
        scoped = [(keys.mail_requests("email:" + email, hour), self.per_address),
                  (keys.mail_requests("client:" + client, hour), self.per_client)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _ in scoped:
                pipe.incr(key)
                pipe.expire(key, 3600, nx=True)
            counts = (await pipe.execute())[::2]
        if any(count > limit for count, (_, limit) in zip(counts, scoped)):
            return 3600 - int(time.time()) % 3600
        return 0


def _verify_mail(email: str, link: str, hours: int) -> Mail:
    return Mail(email, "Confirm your email for API in One", (
        f"Someone (we hope you) signed up for API in One with this address.\n\n"
        f"To confirm it and create your account, open this link within {hours} hours:\n\n{link}\n\n"
        "If it wasn't you, ignore this mail: no account is made without the link.\n"))


def _already_mail(email: str, base: str) -> Mail:
    return Mail(email, "You already have an API in One account", (
        "Someone (we hope you) tried to sign up for API in One with this address, which already has an "
        f"account.\n\nSign in: {base}/dashboard/login\nForgot the password? {base}/dashboard/reset\n\n"
        "If it wasn't you, ignore this mail: nothing was changed.\n"))


def _reset_mail(email: str, link: str, minutes: int) -> Mail:
    return Mail(email, "Reset your API in One password", (
        f"Someone (we hope you) asked to reset the password of the API in One user {email}.\n\n"
        f"To choose a new password, open this link within {minutes} minutes (it works once):\n\n{link}\n\n"
        "If it wasn't you, ignore this mail: your password stays as it is.\n"))


class SelfService:
    def __init__(self, redis: Redis, users: Users, accounts: Accounts, settings: Settings) -> None:
        self.redis = redis
        self.users = users
        self.accounts = accounts
        self.settings = settings
        self.signups = EmailTokens(redis, "signup", settings.signup_token_ttl_s)
        self.resets = EmailTokens(redis, "reset", settings.reset_token_ttl_s)
        self.limits = MailRequestLimits(redis, settings.mail_requests_per_address_hourly,
                                        settings.mail_requests_per_client_hourly)

    # --- sign-up ----------------------------------------------------------------
    async def request_signup(self, email: str, password: str, client: str, base: str) -> Mail:
        """The mail to send for a sign-up of a checked email and password (run after answering)."""
        if await self.users.by_email(email) is not None:
            return _already_mail(email, base)
        digest = await self.users.hash_new_password(password)
        token = await self.signups.issue(email, {"email": email, "password_hash": digest, "client": client})
        return _verify_mail(email, f"{base}/dashboard/signup/verify?token={token}",
                            self.settings.signup_token_ttl_s // 3600 or 1)

    async def verify_signup(self, token: str | None) -> User | None:
        """Create the account and user a live link stands for; None when the link is unknown, used or expired,
        or the email has a user already (both mean: sign in)."""
        pending = await self.signups.peek(token)
        if pending is None:
            return None
        email = pending["email"]
        if not await self.redis.set(keys.signup_verifying(email), "1", nx=True, ex=VERIFYING_LOCK_S):
            return None  # the same email is being verified right now (another tab, a mail scanner)
        try:
            if await self.signups.consume(token) is None or await self.users.by_email(email) is not None:
                return None
            account = await self.accounts.create_account(email, self._grant(await self._grant_allowed(
                pending.get("client", ""))))
            return await self.users.create(email, None, account["id"], password_hash=pending["password_hash"])
        except UserExists:
            return None
        finally:
            await self.redis.delete(keys.signup_verifying(email))

    def _grant(self, allowed: bool) -> int:
        return credits_to_micro(str(self.settings.signup_grant_credits)) if allowed else 0

    async def _grant_allowed(self, client: str) -> bool:
        if not self.settings.signup_grant_credits:
            return False
        key = keys.signup_grants(client, int(time.time()) // 86400)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 86400, nx=True)
            count, _ = await pipe.execute()
        return count <= self.settings.signup_grants_per_ip_daily

    # --- password reset -----------------------------------------------------------
    async def request_reset(self, email: str, base: str) -> Mail | None:
        """The reset mail for a known address, None for an unknown one (run after answering)."""
        user = await self.users.by_email(normalize_email(email))
        if user is None:
            return None
        token = await self.resets.issue(user.id, {"user_id": user.id, "email": user.email})
        return _reset_mail(user.email, f"{base}/dashboard/reset/confirm?token={token}",
                           self.settings.reset_token_ttl_s // 60)

    async def reset_target(self, token: str | None) -> str | None:
        """The email a live reset link is for (to show on its form), without using it up."""
        pending = await self.resets.peek(token)
        return pending["email"] if pending else None

    async def reset_password(self, token: str | None, password: str) -> User | None:
        """Set the new (already checked) password with a live link, using it up; None when it is not live.

        The link is looked at before the password is hashed: a made-up token costs no argon2 work."""
        if await self.resets.peek(token) is None:
            return None
        digest = await self.users.hash_new_password(password)
        pending = await self.resets.consume(token)
        if pending is None:
            return None
        user = await self.users.get(pending["user_id"])
        if user is None:
            return None
        await self.users.set_password_hash(user.id, digest)
        return user
