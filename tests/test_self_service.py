"""Customers serve themselves, tried as a new user would: sign up and confirm by mail, reset a forgotten
password by mail, buy a package through the checkout (the local Stripe fake's hosted page) and come back to
see the order go from pending to paid, redeem a code, and get one low-balance mail after spending down.

One stack of its own, with sign-up on, a starting grant, the Stripe fake, and its mail going to a real SMTP
server on loopback (aiosmtpd). The browser tests use Playwright with Debian's Chromium, as
tests/test_dashboard.py does, and skip (saying why) without them; the rest is plain HTTP.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from email import message_from_bytes
from email.message import Message

import httpx
import pytest
from aiosmtpd.controller import Controller

from apiinone.launcher import free_port
from tests.conftest import Admin, audited_stack
from tests.stripe_fake import FakeStripe
from tests.test_dashboard import PASSWORD, browser, browser_needed, context_factory, sign_in  # noqa: F401

SECRET = "whsec_test_" + uuid.uuid4().hex
GRANT = 25
M = 1_000_000


class Inbox:
    """What the SMTP server received, by recipient."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]

    def wait(self, address: str, count: int = 1, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(found := self.to(address)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{address} got {len(found)} mails, not {count}")
            time.sleep(0.05)
        return found


def link_in(mail: Message, path: str) -> str:
    match = re.search(r"https?://\S+" + re.escape(path) + r"\?token=[\w-]+", mail.get_payload(decode=True).decode())
    assert match, mail.get_payload()
    return match.group(0)


@pytest.fixture(scope="module")
def inbox():
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def fake():
    stripe = FakeStripe().start()
    yield stripe
    stripe.stop()


@pytest.fixture(scope="module")
def shop(inbox, fake):
    env = {"STRIPE_SECRET_KEY": "sk_test_fake", "STRIPE_WEBHOOK_SECRET": SECRET, "STRIPE_API_BASE": fake.url,
           "APIINONE_PAYMENT_PACKAGES": "starter=1000:1000:usd,pro=5500:5000:usd",
           "APIINONE_SMTP_HOST": "127.0.0.1", "APIINONE_SMTP_PORT": str(inbox[1]), "APIINONE_SMTP_SECURITY": "none",
           "APIINONE_SIGNUP_ENABLED": "true", "APIINONE_SIGNUP_GRANT_CREDITS": str(GRANT),
           "APIINONE_SIGNUP_GRANTS_PER_IP_DAILY": "2", "APIINONE_REDEMPTION_RECONCILE_AFTER_S": "1"}
    with audited_stack(env) as st:
        fake.webhook_url = st.base_url + "/billing/webhooks/stripe"
        fake.webhook_secret = SECRET
        yield st, Admin(st.base_url, st.settings.admin_token)


def new_email() -> str:
    return f"new-{uuid.uuid4().hex[:10]}@example.com"


def sign_up(page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(base + "/dashboard/login")
    page.get_by_role("link", name="Create one").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password, again").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.get_by_test_id("mail-sent").wait_for()


# --- sign-up and password reset, in the browser ------------------------------------------------------
@browser_needed
def test_sign_up_confirm_by_mail_and_sign_in(shop, inbox, context_factory):
    st, _ = shop
    box, _ = inbox
    email = new_email()
    page = context_factory().new_page()
    sign_up(page, st.base_url, email)
    assert "Check your mail" in page.content()

    mail = box.wait(email)[0]
    assert mail["Subject"] == "Confirm your email for API in One"
    link = link_in(mail, "/dashboard/signup/verify")
    page.goto(link)
    page.get_by_text("Your email is confirmed").wait_for()
    sign_in(page, st.base_url, email)
    page.goto(st.base_url + "/dashboard/credits")
    assert page.get_by_test_id("balance").inner_text() == f"{GRANT}.00"  # the starting grant

    # The link works once.
    page.goto(link)
    assert "does not work any more" in page.content()


@browser_needed
def test_password_reset_by_mail(shop, inbox, context_factory):
    st, _ = shop
    box, _ = inbox
    email = new_email()
    page = context_factory().new_page()
    sign_up(page, st.base_url, email)
    page.goto(link_in(box.wait(email)[0], "/dashboard/signup/verify"))
    sign_in(page, st.base_url, email)  # a session with the old password, to be ended by the reset

    other = context_factory().new_page()
    other.goto(st.base_url + "/dashboard/login")
    other.get_by_role("link", name="Forgot your password?").click()
    other.get_by_label("Email").fill(email)
    other.get_by_role("button", name="Mail me a link").click()
    other.get_by_test_id("mail-sent").wait_for()
    mail = box.wait(email, 2)[1]
    assert mail["Subject"] == "Reset your API in One password"
    link = link_in(mail, "/dashboard/reset/confirm")
    other.goto(link)
    other.get_by_label("New password", exact=True).fill("a brand new secret")
    other.get_by_label("New password, again").fill("a brand new secret")
    other.get_by_role("button", name="Set password").click()
    other.get_by_text("Your password is changed").wait_for()
    sign_in(other, st.base_url, email, password="a brand new secret")

    page.goto(st.base_url + "/dashboard/credits")  # the old session is over
    assert "/dashboard/login" in page.url
    page.goto(link)  # and the link was used up
    assert "does not work any more" in page.content()
