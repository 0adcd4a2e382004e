"""Sign-in throttling against the real gateway (issue 17 item 5).

The attacks: many concurrent guesses for one email (all were verified: the counters were read before
and written after argon2), a rotating X-Forwarded-For (a new "client" per guess from any private peer),
and a known user's email locked out for 15 minutes by anyone who types it wrong five times.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest
import redis as redis_sync

from shared import keys
from tests.gateway_helpers import extra_gateway
from tests.test_dashboard import PASSWORD, make_user

LOOPBACK = "127.0.0.1"


@pytest.fixture
def clean_loopback(stack):
    """These tests fail many sign-ins from 127.0.0.1; the rest of the suite signs in from there too."""
    r = redis_sync.Redis.from_url(stack.settings.redis_url)

    def clean() -> None:
        for pattern in (keys.login_throttle("client:*"), keys.login_inflight("client:*")):
            for key in r.scan_iter(pattern):
                r.delete(key)

    clean()
    yield
    clean()
    r.close()


def _token_and_cookie(page: httpx.Response) -> tuple[str, str]:
    """The sign-in form's CSRF token and its cookie (sent by hand: no cookie jar across tasks)."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return token, page.headers["set-cookie"].split(";")[0]


def sign_in(base: str, email: str, password: str, forwarded_for: str | None = None) -> httpx.Response:
    with httpx.Client(follow_redirects=False, timeout=30) as c:
        token, cookie = _token_and_cookie(c.get(base + "/dashboard/login"))
        headers = {"Cookie": cookie}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        return c.post(base + "/dashboard/login", data={"email": email, "password": password, "csrf_token": token},
                      headers=headers)


async def test_concurrent_guesses_for_one_email_are_not_all_verified(stack, admin, clean_loopback):
    email = make_user(admin, admin.account(1)["id"])
    base = stack.base_url
    async with httpx.AsyncClient(follow_redirects=False, timeout=60) as c:
        token, cookie = _token_and_cookie(await c.get(base + "/dashboard/login"))

        async def guess(i: int) -> int:
            r = await c.post(base + "/dashboard/login", headers={"Cookie": cookie},
                             data={"email": email, "password": f"guess number {i}", "csrf_token": token})
            return r.status_code

        statuses = await asyncio.gather(*(guess(i) for i in range(60)))
    verified = statuses.count(401)  # each 401 is one argon2 verification of a wrong password
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= verified <= 5, f"{verified} of 60 concurrent guesses were verified"


def test_a_rotating_x_forwarded_for_does_not_escape_the_per_client_limit(stack, admin, clean_loopback):
    """The session stack trusts no proxy: a client that writes X-Forwarded-For is still its own address."""
    statuses = []
    for i in range(40):
        email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"  # a new email each time: only the client scope counts
        r = sign_in(stack.base_url, email, "wrong password", forwarded_for=f"10.{i}.{i}.{i}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429, f"40 guesses from one address under rotating X-Forwarded-For: {statuses}"


def test_a_trusted_proxy_reports_the_client(stack, admin, clean_loopback):
    """Behind a configured proxy, the throttle counts the address the proxy reports, per client."""
    email = make_user(admin, admin.account(1)["id"])
    with extra_gateway(stack, {"APIINONE_TRUSTED_PROXIES": LOOPBACK}, "proxied-signin") as base:
        attacker, user = "203.0.113.7", "198.51.100.20"
        statuses = []
        for _ in range(40):
            other = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
            statuses.append(sign_in(base, other, "wrong password", forwarded_for=f"{LOOPBACK}, {attacker}").status_code)
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429, statuses
        # Someone else behind the same proxy signs in at once.
        assert sign_in(base, email, PASSWORD, forwarded_for=user).status_code == 303


def test_failures_on_a_known_email_delay_it_progressively_but_never_lock_it(stack, admin, clean_loopback):
    email = make_user(admin, admin.account(1)["id"])
    base = stack.base_url
    for _ in range(5):
        assert sign_in(base, email, "wrong password").status_code == 401
    refused = sign_in(base, email, PASSWORD)
    assert refused.status_code == 429 and "Too many failed sign-in attempts" in refused.text
    first_wait = int(refused.headers["Retry-After"])
    assert 0 < first_wait <= 60, f"a known user's email is locked for {first_wait} s by five wrong passwords"
    # One more failure after the delay: the next delay is longer, and still bounded.
    time.sleep(first_wait)
    assert sign_in(base, email, "wrong password").status_code == 401
    refused = sign_in(base, email, PASSWORD)
    assert refused.status_code == 429
    second_wait = int(refused.headers["Retry-After"])
    assert first_wait < second_wait <= 60
    time.sleep(second_wait)
    assert sign_in(base, email, PASSWORD).status_code == 303  # the owner gets in after the delay
