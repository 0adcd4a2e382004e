"""Customers serve themselves, tried as a new user would: sign up and confirm by mail, reset a forgotten
password by mail, buy a package through the checkout (the local Stripe fake's hosted page) and come back to
see the order go from pending to paid, redeem a code, and get one low-balance mail after spending down; an
operator makes a batch of codes, downloads it once and disables it.

One stack of its own, with sign-up on, a starting grant, the Stripe fake, and its mail going to a real SMTP
server on loopback (aiosmtpd). The browser tests use Playwright with Debian's Chromium, as
tests/test_dashboard.py does, and skip (saying why) without them; the rest is plain HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
import time
import uuid
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

from apiinone.launcher import free_port
from tests.conftest import Admin, audited_stack
from tests.stripe_fake import FakeStripe
from tests.test_dashboard import PASSWORD, browser, browser_needed, context_factory, sign_in  # noqa: F401

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser tests skip
    expect = None

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
           "APIINONE_SIGNUP_GRANTS_PER_IP_DAILY": "2", "APIINONE_REDEMPTION_RECONCILE_AFTER_S": "1",
           "APIINONE_CALLBACK_ALLOW_PRIVATE": "true"}  # the low-balance webhook goes to a loopback receiver
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


# --- what the forms do not tell, and their limits (HTTP) ---------------------------------------------
def post_form(st, path: str, data: dict, client_ip: str | None = None) -> httpx.Response:
    """GET the form (its CSRF cookie and token), then POST it from this origin, as a browser does."""
    with httpx.Client(base_url=st.base_url, timeout=30) as http:
        page = http.get(path)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        return http.post(path, data={**data, "csrf_token": token}, headers={"Origin": st.base_url})


def test_reset_and_sign_up_answer_alike_whether_or_not_the_address_exists(shop, inbox):
    st, admin = shop
    box, _ = inbox
    known = new_email()
    account = admin.account(credits=0)
    r = admin.http.post("/admin/users", json={"email": known, "password": PASSWORD, "account_id": account["id"]})
    assert r.status_code == 201, r.text
    unknown = new_email()

    answers = [post_form(st, "/dashboard/reset", {"email": e}) for e in (known, unknown)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].text.replace(known, "ADDRESS") == answers[1].text.replace(unknown, "ADDRESS")
    assert len(box.wait(known)) == 1
    # a sign-up with a known address: the same page as a new one; its mail says "you have an account"
    signups = [post_form(st, "/dashboard/signup", {"email": e, "password": PASSWORD, "confirm": PASSWORD})
               for e in (known, unknown)]
    assert [a.status_code for a in signups] == [200, 200]
    assert signups[0].text.replace(known, "ADDRESS") == signups[1].text.replace(unknown, "ADDRESS")
    assert box.wait(known, 2)[1]["Subject"] == "You already have an API in One account"
    assert box.wait(unknown)[0]["Subject"] == "Confirm your email for API in One"
    time.sleep(0.3)
    assert len(box.to(unknown)) == 1  # the reset for the unknown address mailed nobody


def test_mail_requests_are_limited_per_address_and_forms_need_their_token(shop, inbox):
    st, _ = shop
    email = new_email()
    codes = [post_form(st, "/dashboard/reset", {"email": email}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # three per address and hour
    refused = post_form(st, "/dashboard/signup", {"email": email, "password": PASSWORD, "confirm": PASSWORD})
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
    forged = httpx.post(st.base_url + "/dashboard/reset", data={"email": new_email()})
    assert forged.status_code == 403
    bad = post_form(st, "/dashboard/signup", {"email": new_email(), "password": "short", "confirm": "short"})
    assert bad.status_code == 400 and "at least 8 characters" in bad.text


def test_verification_links_are_single_use_under_concurrency_and_grants_are_capped(shop, inbox):
    st, admin = shop
    box, _ = inbox
    links = []
    for _ in range(3):  # the stack allows 2 grants per client address and day; all come from 127.0.0.1
        email = new_email()
        assert post_form(st, "/dashboard/signup", {"email": email, "password": PASSWORD,
                                                   "confirm": PASSWORD}).status_code == 200
        links.append((email, link_in(box.wait(email)[0], "/dashboard/signup/verify")))
    email, link = links[0]
    with ThreadPoolExecutor(6) as pool:  # the same link followed six times at once: one account
        results = list(pool.map(lambda _: httpx.get(link, timeout=30).status_code, range(6)))
    assert sorted(results) == [303] + [400] * 5, results
    for _email, other in links[1:]:
        assert httpx.get(other, timeout=30).status_code == 303
    users = admin.http.get("/admin/users").json()["data"]
    assert sum(1 for u in users if u["email"] == email) == 1
    # Every account made by a sign-up from 127.0.0.1 in this stack: at most two got the starting grant today.
    balances = [admin.get_account(u["account_id"])["balance"] for u in users if u["email"].startswith("new-")]
    assert set(balances) <= {0, GRANT} and balances.count(GRANT) <= 2 and 0 in balances


# --- buying and redeeming, in the browser ---------------------------------------------------------
def customer_page(shop, context_factory, credits: float = 0):
    st, admin = shop
    account = admin.account(credits=credits)
    email = new_email()
    r = admin.http.post("/admin/users", json={"email": email, "password": PASSWORD, "account_id": account["id"]})
    assert r.status_code == 201, r.text
    page = context_factory().new_page()
    sign_in(page, st.base_url, email)
    return page, account


@browser_needed
def test_buy_a_package_through_the_checkout_and_see_the_order_paid(shop, fake, context_factory):
    st, admin = shop
    page, account = customer_page(shop, context_factory)
    page.goto(st.base_url + "/dashboard/credits")
    page.get_by_role("link", name="Add credits").click()
    fake.hold_webhooks = True  # the customer is back before the provider's webhook lands
    try:
        page.get_by_role("button", name="Buy pro").click()
        page.get_by_role("heading", name="Pay 50.00 USD").wait_for()  # the provider's (fake's) checkout page
        page.get_by_role("button", name="Pay").click()
        page.wait_for_url(re.compile(re.escape(st.base_url) + r"/dashboard/credits/checkout\?checkout=success"))
        status = page.get_by_test_id("order-status")
        assert status.inner_text() == "pending" and page.get_by_test_id("balance").inner_text() == "0.00"
    finally:
        fake.hold_webhooks = False
        fake.release()
    expect(status).to_have_text("paid")  # the page follows the order as the webhook lands
    expect(page.get_by_test_id("balance")).to_have_text("5,500.00")
    assert admin.get_account(account["id"])["balance"] == 5500

    page.goto(st.base_url + "/dashboard/orders")
    expect(page.get_by_test_id("orders-table")).to_contain_text("stripe payment")

    # Cancelled at the provider: back on the dashboard, nothing charged.
    page.goto(st.base_url + "/dashboard/credits/add")
    page.get_by_role("button", name="Buy starter").click()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("heading", name="Checkout cancelled").wait_for()
    expect(page.get_by_test_id("order-status")).to_have_text("pending")
    assert admin.get_account(account["id"])["balance"] == 5500


@browser_needed
def test_redeem_a_code_on_the_dashboard(shop, context_factory):
    st, admin = shop
    batch = admin.http.post("/admin/redemption-codes", json={"count": 1, "credits": 12.5}).json()
    page, account = customer_page(shop, context_factory)
    page.goto(st.base_url + "/dashboard/credits/add")
    page.get_by_label("Code").fill(batch["codes"][0].lower().replace("-", " "))
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_test_id("redeemed")).to_contain_text("+12.50")
    expect(page.get_by_test_id("balance")).to_have_text("12.50")
    page.get_by_label("Code").fill(batch["codes"][0])  # used up now
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_test_id("add-error")).to_contain_text("unknown, used up, disabled or expired")
    page.goto(st.base_url + "/dashboard/credits")
    expect(page.get_by_test_id("ledger-table")).to_contain_text("Code redeemed")
    assert admin.get_account(account["id"])["balance"] == 12.5


# --- a redemption whose gateway died between claim and record ---------------------------------------
def test_the_archiver_credits_a_use_a_dead_gateway_claimed(shop):
    from redis.asyncio import Redis

    from shared import keys
    from shared.redemption import code_hash
    from shared.scripts import Scripts
    from tests.test_redemption import claim_and_die

    st, admin = shop
    account, key = admin.account_with_key(0)
    code = admin.http.post("/admin/redemption-codes", json={"count": 1, "credits": 4}).json()["codes"][0]

    async def claim() -> bool:  # redeem.lua's claim, as a gateway makes it right before it dies
        redis = Redis.from_url(st.settings.redis_url)
        try:
            await claim_and_die(Scripts(redis), account["id"], code)
            return True
        finally:
            await redis.aclose()

    async def claim_noted() -> bool:
        redis = Redis.from_url(st.settings.redis_url)
        try:
            return bool(await redis.hexists(keys.REDEMPTION_CLAIMS, f"{code_hash(code)}:1"))
        finally:
            await redis.aclose()

    def run(coro):  # in a thread of its own: the module's sync Playwright owns this thread's event loop
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    run(claim())
    deadline = time.monotonic() + 15  # the stack's reconciler takes claims older than 1 s
    while admin.get_account(account["id"])["balance"] != 4:
        assert time.monotonic() < deadline, "the claimed use was never credited"
        time.sleep(0.2)
    time.sleep(1.0)  # and only once
    assert admin.get_account(account["id"])["balance"] == 4 and not run(claim_noted())
    r = httpx.post(st.base_url + "/billing/redeem", json={"code": code}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404  # its one use is taken


# --- low-balance alerts ---------------------------------------------------------------------------------
def spend(st, key: str, n: int) -> None:
    for _ in range(n):
        r = httpx.post(st.base_url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "gemini", "messages": [{"role": "user",
                                                                "content": "hi [[sim output_tokens=8]]"}]},
                       timeout=30)
        assert r.status_code == 200, r.text


class HookReceiver:
    """Signed events POSTed to a loopback address: (headers, body) each."""

    def __init__(self) -> None:
        self.events: list[tuple[dict, bytes]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                events.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed_by(secret: str, headers: dict, body: bytes) -> bool:
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    mac = hmac.new(base64.b64decode(secret.removeprefix("whsec_")), message, hashlib.sha256).digest()
    return headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def balance_micro(st, key: str) -> int:
    """The balance once every request so far is settled (no holds left)."""
    deadline = time.monotonic() + 5
    while (body := httpx.get(st.base_url + "/billing/credits", headers={"Authorization": f"Bearer {key}"}).json())[
            "held_micro"]:
        assert time.monotonic() < deadline, "a request was never settled"
        time.sleep(0.05)
    return body["balance_micro"]


@browser_needed
def test_one_low_balance_mail_per_crossing_rearmed_by_a_top_up(shop, inbox, context_factory):
    st, admin = shop
    box, _ = inbox
    page, account = customer_page(shop, context_factory, credits=10)
    email = page.locator(".user-chip span").first.inner_text()
    key = admin.key(account["id"])["key"]
    spend(st, key, 1)
    charge = 10 * M - balance_micro(st, key)  # what one such request costs (settled: the next read sees it)
    threshold = balance_micro(st, key) - charge // 2  # the next charge crosses it
    hooks = HookReceiver()
    page.goto(st.base_url + "/dashboard/credits")
    page.get_by_label("Threshold (credits)").fill(f"{threshold / M:.6f}")
    page.get_by_label("Webhook URL").fill(hooks.url)
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator("#alert")).to_contain_text("Now: below")

    try:
        spend(st, key, 3)  # the first charge crosses the threshold; the next two stay below it: one mail
        mail = box.wait(email)[0]
        assert mail["Subject"] == "Your API in One balance is low" and account["name"] in mail.get_payload()
        time.sleep(1.2)  # the archiver moves entries within milliseconds: the other two were walked long ago
        assert len(box.to(email)) == 1 and len(hooks.events) == 1
    finally:
        hooks.close()
    headers, body = hooks.events[0]
    event = json.loads(body)
    assert event["type"] == "billing.low_balance" and event["data"]["account_id"] == account["id"]
    assert event["data"]["threshold_micro"] == threshold and event["data"]["balance_micro"] < threshold
    secret = httpx.get(st.base_url + "/api/v1/webhook_secret", headers={"Authorization": f"Bearer {key}"}).json()
    assert signed_by(secret["secret"], headers, body)  # as batch callbacks are signed

    # A top-up that lifts the balance just above the threshold re-arms it; the next charge mails again.
    lift = threshold - balance_micro(st, key) + charge // 4
    r = admin.http.post(f"/admin/accounts/{account['id']}/topups",
                        json={"credits": lift / M, "reference": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    spend(st, key, 2)
    box.wait(email, 2)
    time.sleep(1.2)
    assert len(box.to(email)) == 2


# --- the operator's code batches on the dashboard ------------------------------------------------------
@browser_needed
def test_an_operator_makes_downloads_and_disables_a_code_batch(shop, context_factory):
    st, admin = shop
    operator = new_email()
    home = admin.account(credits=0)
    r = admin.http.post("/admin/users", json={"email": operator, "password": PASSWORD, "account_id": home["id"],
                                              "role": "operator"})
    assert r.status_code == 201, r.text
    page = context_factory().new_page()
    sign_in(page, st.base_url, operator)
    page.get_by_role("link", name="Redemption codes").click()
    page.get_by_label("Number of codes").fill("3")
    page.get_by_label("Credits per use").fill("2")
    with page.expect_download() as download:
        page.get_by_role("button", name="Create and download").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == 3 and {r["credits"] for r in rows} == {"2"} and rows[0]["batch_id"].startswith("rcb_")
    batch_id = rows[0]["batch_id"]

    _, key = admin.account_with_key(0)
    redeem = lambda code: httpx.post(st.base_url + "/billing/redeem", json={"code": code},  # noqa: E731
                                     headers={"Authorization": f"Bearer {key}"}).status_code
    assert redeem(rows[0]["code"]) == 200
    page.goto(st.base_url + "/dashboard/admin/codes")
    row = page.locator(f"tr[data-batch='{batch_id}']")
    expect(row).to_contain_text("1 / 3")
    page.on("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Disable").click()
    expect(page.locator(f"tr[data-batch='{batch_id}']")).to_contain_text("disabled")
    assert redeem(rows[1]["code"]) == 404
