"""The dashboard in a real browser: Playwright driving Debian's headless Chromium against the test stack.

Sign in, create a key, call the API with it (openai SDK), see the usage row and the balance change, revoke it
and see the API refuse it, an operator's top-up in the user's orders, the playground streaming; CSRF, session
expiry, sign-in throttling, roles. Screenshots of the main pages go to $APIINONE_SCREENSHOTS (a folder; the
README's are made with `APIINONE_SCREENSHOTS=docs/screenshots pytest tests/test_dashboard.py`), else to a
temporary folder. The browser tests skip, saying why, where /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import redis as redis_sync
from openai import OpenAI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - dev extra missing
    sync_playwright = None

browser_needed = pytest.mark.skipif(
    sync_playwright is None or not Path(CHROMIUM).exists(),
    reason=("browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install chromium) and the "
            "playwright package (pip install -e '.[dev]'); neither browser download nor `playwright install` is used"))


# --- helpers ---------------------------------------------------------------------------------
def make_user(admin, account_id: str, role: str = "user", email: str | None = None) -> str:
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    r = admin.http.post("/admin/users", json={"email": email, "password": PASSWORD, "account_id": account_id,
                                              "role": role})
    assert r.status_code == 201, r.text
    return email


def session_key(cookie_value: str) -> str:
    return "aio:dsession:" + hashlib.sha256(cookie_value.encode()).hexdigest()


@pytest.fixture(scope="module")
def shots() -> Path:
    target = os.environ.get("APIINONE_SCREENSHOTS")
    if target:
        path = Path(target)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        path = Path(tempfile.mkdtemp(prefix="dashboard-shots-"))
        yield path
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None or not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium or playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield b
        b.close()


@pytest.fixture
def context_factory(browser):
    made = []

    def new():
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        ctx.set_default_timeout(10_000)
        made.append(ctx)
        return ctx

    yield new
    for ctx in made:
        ctx.close()


def sign_in(page, base: str, email: str, password: str = PASSWORD, next_path: str = "/dashboard") -> None:
    page.goto(base + next_path)
    assert "/dashboard/login" in page.url  # every page asks for a sign-in first
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(base + next_path) + r"$"))


def credits_value(page) -> float:
    return float(page.get_by_test_id("balance").inner_text().replace(",", ""))


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- the journey -------------------------------------------------------------------------------
@browser_needed
def test_user_journey_key_call_usage_revoke_topup(stack, admin, context_factory, shots):
    base = stack.base_url
    account = admin.account(credits=20, name="Acme Robotics")
    email = make_user(admin, account["id"])
    page = context_factory().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Sign in; the session cookie is HttpOnly, SameSite=Strict and scoped to /dashboard.
    sign_in(page, base, email)
    cookie = next(c for c in page.context.cookies() if c["name"] == "aio_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".account-chip")).to_contain_text("Acme Robotics")
    page.screenshot(path=shots / "overview-empty.png", full_page=True)

    # Credits before.
    page.goto(base + "/dashboard/credits")
    before = credits_value(page)
    assert before == 20

    # Create a key with limits; it is shown once.
    page.goto(base + "/dashboard/keys")
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    page.get_by_label("Name").fill("production")
    page.get_by_label("Requests per minute").fill("120")
    page.get_by_role("button", name="Create key").click()
    new_key = page.get_by_test_id("new-key-value").input_value()
    assert new_key.startswith("aio_")
    expect(page.get_by_test_id("new-key")).to_contain_text("only time it is shown")
    row = page.get_by_test_id("keys-table").locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("production")
    expect(row).to_contain_text("120 req/min")
    expect(row).to_contain_text("never")  # not used yet
    assert new_key not in page.get_by_test_id("keys-table").inner_text()
    page.screenshot(path=shots / "keys-new-key.png", full_page=True)
    page.goto(base + "/dashboard/keys")  # shown once: the listing never shows the key again
    assert new_key not in page.content()

    # Call the API with that key through the openai SDK.
    client = OpenAI(base_url=base + "/api/v1", api_key=new_key, max_retries=0)
    r = client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hello [[sim output_tokens=40 thinking_tokens=12]]"}])
    assert r.choices[0].message.content and r.usage.model_extra["credits_charged"] > 0
    charged = r.usage.model_extra["credits_charged"]

    # The usage row appears (settled within 2 s), with the key's name and the token counts.
    def usage_row():
        page.goto(base + "/dashboard/usage")
        rows = page.get_by_test_id("usage-table").locator("tbody tr") if page.get_by_test_id("usage-table").count() \
            else None
        return rows if rows is not None and rows.count() == 1 else None

    rows = wait_for(usage_row, 5, "the usage row")
    text = rows.first.inner_text()
    assert "production" in text and "succeeded" in text and "gemini" in text and "12" in text
    assert r.id in rows.first.inner_html()

    # Filters: by status (no failed rows), by model, and a CSV export with the same row.
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text("No requests match these filters.")).to_be_visible()
    page.goto(base + "/dashboard/usage?model=gemini")
    expect(page.get_by_test_id("usage-table").locator("tbody tr")).to_have_count(1)
    with page.expect_download() as dl:
        page.get_by_test_id("csv-link").click()
    csv_text = Path(dl.value.path()).read_text()
    assert csv_text.startswith("time_utc,request_id,key_id,key_name") and r.id in csv_text and "production" in csv_text
    page.goto(base + "/dashboard/usage")
    page.screenshot(path=shots / "usage.png", full_page=True)

    # The balance moved by exactly the charge, and the ledger says why.
    page.goto(base + "/dashboard/credits")
    after = credits_value(page)
    assert after == pytest.approx(before - charged, abs=1e-6)
    expect(page.get_by_test_id("ledger-table")).to_contain_text("Request charged")
    page.screenshot(path=shots / "credits.png", full_page=True)

    # The key shows when it was last used.
    page.goto(base + "/dashboard/keys")
    expect(page.get_by_test_id("keys-table").locator("tbody tr")).to_contain_text("just now")

    # The playground streams a chat with that key: thinking apart from the answer, and what it cost.
    page.goto(base + "/dashboard/playground")
    page.get_by_label("API key", exact=True).fill(new_key)
    page.get_by_label("Message").fill("Explain quantum computing in simple terms. "
                                      "[[sim output_tokens=60 thinking_tokens=24 delay_ms=5]]")
    page.get_by_role("button", name="Send").click()
    meta = page.get_by_test_id("meta")
    expect(meta).to_contain_text("credits", timeout=15_000)
    expect(meta).to_contain_text("of which thinking 24")
    thinking = page.get_by_test_id("thinking").text_content().strip()  # folded once the answer began
    answer = page.get_by_test_id("answer").text_content().strip()
    assert thinking and answer and thinking != answer
    playground_cost = float(re.search(r"credits ([0-9.]+)", meta.inner_text()).group(1))

    def playground_balance():  # refreshed with the key once billing has settled the request
        m = re.search(r"([0-9.,]+) credits available", page.locator("#pg-balance").inner_text())
        return m and abs(float(m[1].replace(",", "")) - (after - playground_cost)) < 1e-4

    wait_for(playground_balance, 5, "the playground's balance after the request")
    page.get_by_test_id("thinking").locator("xpath=..").locator("summary").click()  # unfold for the picture
    page.screenshot(path=shots / "playground.png", full_page=True)

    # Revoke the key in the dashboard; the API refuses it at once.
    page.goto(base + "/dashboard/keys")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Revoke production").click()
    expect(page.locator(".flash.ok")).to_contain_text("revoked")
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Hello again"}])

    # An operator tops the account up in their own browser; the order shows in the user's orders.
    op_email = make_user(admin, admin.account(credits=0, name="Operators")["id"], role="operator")
    op = context_factory().new_page()
    sign_in(op, base, op_email, next_path="/dashboard/admin/accounts")
    op.get_by_label("Search accounts").fill(account["id"])
    op.get_by_role("button", name="Search").click()
    op.get_by_role("link", name="Acme Robotics").click()
    reference = "invoice-" + uuid.uuid4().hex[:8]
    op.get_by_label("Credits to add").fill("50")
    op.get_by_label("Payment reference").fill(reference)
    op.get_by_role("button", name="Add credits").click()
    expect(op.locator(".flash.ok")).to_contain_text("Added 50 credits")
    # An adjustment needs a reason, and the reason lands in the ledger.
    op.get_by_label("Credits (+ or −)").fill("-1.5")
    op.get_by_role("button", name="Adjust balance").click()
    expect(op.locator("#e-reason")).to_contain_text("Say why")
    op.get_by_label("Credits (+ or −)").fill("-1.5")
    op.get_by_label("Reason").fill("goodwill correction")
    op.get_by_role("button", name="Adjust balance").click()
    expect(op.locator(".flash.ok")).to_contain_text("goodwill correction")
    op.screenshot(path=shots / "operator-account.png", full_page=True)
    # An operator can look at the account's own pages, then go back to theirs.
    op.get_by_role("button", name="View this account's pages").click()
    expect(op.locator(".account-chip")).to_contain_text("Acme Robotics")
    expect(op.locator(".account-chip")).to_contain_text("viewing as operator")
    assert credits_value(op) == pytest.approx(after - playground_cost + 48.5, abs=1e-6)
    op.get_by_role("button", name="Back to my account").click()
    expect(op.locator(".account-chip")).to_contain_text("Operators")

    page.goto(base + "/dashboard/orders")
    orders = page.get_by_test_id("orders-table")
    expect(orders).to_contain_text(reference)
    expect(orders).to_contain_text("50.00")
    page.screenshot(path=shots / "orders.png", full_page=True)
    page.goto(base + "/dashboard/credits")
    assert credits_value(page) == pytest.approx(after - playground_cost + 50 - 1.5, abs=1e-6)
    assert credits_value(page) == admin.get_account(account["id"])["balance_micro"] / 1_000_000
    expect(page.get_by_test_id("ledger-table")).to_contain_text("goodwill correction")
    page.goto(base + "/dashboard")
    page.screenshot(path=shots / "overview.png", full_page=True)

    # The rest of the operator's pages.
    op.goto(base + "/dashboard/admin/nodes")
    expect(op.get_by_test_id("workers-node62")).to_have_text(re.compile(r"[1-9]"))
    op.screenshot(path=shots / "operator-nodes.png", full_page=True)
    op.goto(base + "/dashboard/admin/accounts")
    op.screenshot(path=shots / "operator-accounts.png", full_page=True)
    page.goto(base + "/dashboard/models")
    expect(page.locator("#ex-gemini-curl")).to_contain_text(base + "/api/v1/chat/completions")
    page.get_by_role("tab", name="Python").click()
    expect(page.locator("#ex-gemini-python")).to_contain_text(f'base_url="{base}/api/v1"')
    page.get_by_role("tab", name="curl").click()
    page.screenshot(path=shots / "models.png", full_page=True)
    assert not errors, errors


# --- security ------------------------------------------------------------------------------------
@browser_needed
def test_csrf_token_required_on_every_form(stack, admin, context_factory):
    base = stack.base_url
    account, key = admin.account_with_key(10)
    email = make_user(admin, account["id"])
    page = context_factory().new_page()
    sign_in(page, base, email)
    # A post carrying the session cookie but no CSRF token is refused and changes nothing.
    r = page.request.post(base + "/dashboard/keys", form={"name": "sneaky"}, max_redirects=0)
    assert r.status == 403 and "expired" in r.text()
    r = page.request.post(base + "/dashboard/keys", form={"name": "sneaky", "csrf_token": "forged"}, max_redirects=0)
    assert r.status == 403
    assert [k["name"] for k in admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"]] == ["test"]
    # The same form with the page's token works.
    page.goto(base + "/dashboard/keys")
    token = page.locator("input[name=csrf_token]").first.input_value()
    r = page.request.post(base + "/dashboard/keys", form={"name": "legit", "csrf_token": token}, max_redirects=0)
    assert r.status == 201
    # Revoking and signing out need the token too.
    key_id = admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"][0]["id"]
    assert page.request.post(base + f"/dashboard/keys/{key_id}/revoke", form={}, max_redirects=0).status == 403
    assert page.request.post(base + "/dashboard/logout", form={}, max_redirects=0).status == 403
    # A token from another origin's page is refused even when it matches (Origin checked).
    r = page.request.post(base + "/dashboard/keys", form={"name": "x", "csrf_token": token},
                          headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert r.status == 403
    # The sign-in form has its own token (double submit): a bare post is refused.
    r = httpx.post(base + "/dashboard/login", data={"email": email, "password": PASSWORD})
    assert r.status_code == 403


@browser_needed
def test_session_expiry_and_sign_out(stack, admin, context_factory):
    base = stack.base_url
    account = admin.account(5)
    email = make_user(admin, account["id"])
    r = redis_sync.Redis.from_url(stack.settings.redis_url)
    try:
        ctx = context_factory()
        page = ctx.new_page()
        sign_in(page, base, email)
        token = next(c["value"] for c in ctx.cookies() if c["name"] == "aio_session")
        ttl = r.ttl(session_key(token))
        assert 0 < ttl <= 2 * 3600  # the idle timeout is a Redis TTL, renewed on every request

        # Past its absolute end (12 h after sign-in) the session is over even if it was busy.
        r.hset(session_key(token), "expires_at", int(time.time()) - 1)
        page.goto(base + "/dashboard/credits")
        assert "/dashboard/login" in page.url and "expired=1" in page.url
        expect(page.get_by_role("status")).to_contain_text("Your session has ended")
        assert not r.exists(session_key(token))

        # Idle past the TTL: gone too; signing in again brings the user back where they were going.
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/dashboard/credits")
        token = next(c["value"] for c in ctx.cookies() if c["name"] == "aio_session")
        r.pexpire(session_key(token), 1)
        time.sleep(0.05)
        page.goto(base + "/dashboard/keys")
        assert "/dashboard/login" in page.url

        # Sign out ends the session on the server, not only in the browser.
        sign_in(page, base, email)
        token = next(c["value"] for c in ctx.cookies() if c["name"] == "aio_session")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("status")).to_contain_text("You have signed out")
        assert not r.exists(session_key(token))
        stolen = httpx.get(base + "/dashboard/keys", cookies={"aio_session": token})
        assert stolen.status_code == 303 and "/dashboard/login" in stolen.headers["location"]
    finally:
        r.close()


@browser_needed
def test_sign_out_clears_the_playgrounds_saved_keys(stack, admin, context_factory):
    """A key saved in the playground must not outlive the session in a shared browser."""
    base = stack.base_url
    account, key = admin.account_with_key(5)
    email = make_user(admin, account["id"])
    page = context_factory().new_page()
    stored = "JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
    for leave in ("sign out", "session ends"):
        sign_in(page, base, email)
        page.goto(base + "/dashboard/playground")
        page.get_by_label("API key", exact=True).fill(key)
        page.get_by_label("Remember this key in this browser").check()
        page.get_by_label("API key", exact=True).press("Tab")  # the key is taken on change
        assert key in page.evaluate(stored)
        if leave == "sign out":
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("status")).to_contain_text("You have signed out")
        else:  # the session expires server-side: the next page is the sign-in form
            r = redis_sync.Redis.from_url(stack.settings.redis_url)
            token = next(c["value"] for c in page.context.cookies() if c["name"] == "aio_session")
            r.delete(session_key(token))
            r.close()
            page.goto(base + "/dashboard/keys")
            assert "/dashboard/login" in page.url
        assert key not in page.evaluate(stored), f"the playground's key survived: {leave}"


@browser_needed
def test_roles_and_screens(stack, admin, context_factory, shots):
    base = stack.base_url
    account = admin.account(5)
    email = make_user(admin, account["id"])
    page = context_factory().new_page()
    page.goto(base + "/dashboard/login")
    page.screenshot(path=shots / "sign-in.png")
    sign_in(page, base, email)
    expect(page.get_by_role("link", name="Accounts")).to_have_count(0)  # no operator menu
    page.goto(base + "/dashboard/admin/accounts")
    expect(page.get_by_role("heading", name="Operators only")).to_be_visible()
    page.goto(base + "/dashboard/admin/nodes")
    expect(page.get_by_role("heading", name="Operators only")).to_be_visible()
    page.goto(base + "/dashboard/no-such-page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    # A narrow screen: the menu folds above the content and nothing overflows sideways.
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(base + "/dashboard/keys")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    page.screenshot(path=shots / "keys-mobile.png", full_page=True)


# --- no browser needed ----------------------------------------------------------------------------
def _login_form(client: httpx.Client, base: str) -> str:
    page = client.get(base + "/dashboard/login")
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_sign_in_is_rate_limited(stack, admin):
    account = admin.account(1)
    email = make_user(admin, account["id"])
    base = stack.base_url
    with httpx.Client(follow_redirects=False) as c:
        for _ in range(5):
            r = c.post(base + "/dashboard/login", data={"email": email, "password": "wrong password",
                                                        "csrf_token": _login_form(c, base)})
            assert r.status_code == 401 and "don&#39;t match" in r.text
        r = c.post(base + "/dashboard/login", data={"email": email, "password": PASSWORD,
                                                    "csrf_token": _login_form(c, base)})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert "Too many failed sign-in attempts" in r.text
    # Another user is not locked out by it.
    other = make_user(admin, account["id"])
    with httpx.Client(follow_redirects=False) as c:
        r = c.post(base + "/dashboard/login", data={"email": other, "password": PASSWORD,
                                                    "csrf_token": _login_form(c, base)})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()


def test_api_keys_never_sign_in(stack, admin):
    account, key = admin.account_with_key(5)
    base = stack.base_url
    r = httpx.get(base + "/dashboard/keys", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
    r = httpx.get(base + "/dashboard/keys", headers={"Authorization": f"Bearer {stack.settings.admin_token}"})
    assert r.status_code == 303
    # A key typed as the password of the account's user does not work either.
    email = make_user(admin, account["id"])
    with httpx.Client(follow_redirects=False) as c:
        r = c.post(base + "/dashboard/login", data={"email": email, "password": key,
                                                    "csrf_token": _login_form(c, base)})
        assert r.status_code == 401


def test_dashboard_pages_are_locked_down(stack):
    r = httpx.get(stack.base_url + "/dashboard/login")
    h = r.headers
    assert "script-src 'self'" in h["content-security-policy"] and "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["cache-control"] == "no-store"
    assert "cdn" not in r.text.lower() and "https://" not in r.text  # everything is served locally
    css = re.search(r'href="(/dashboard/static/app\.css[^"]*)"', r.text).group(1)
    assert httpx.get(stack.base_url + css).status_code == 200


def test_sign_up_is_off_unless_the_operator_turns_it_on(stack):
    login = httpx.get(stack.base_url + "/dashboard/login").text
    assert "/dashboard/signup" not in login and "/dashboard/reset" in login  # password reset is always there
    assert httpx.get(stack.base_url + "/dashboard/signup").status_code == 404
    assert httpx.get(stack.base_url + "/dashboard/signup/verify?token=x").status_code == 404


def test_admin_users_api(stack, admin):
    account = admin.account(1)
    email = f"api-{uuid.uuid4().hex[:6]}@example.com"
    body = {"email": email.upper(), "password": PASSWORD, "account_id": account["id"]}
    r = admin.http.post("/admin/users", json=body)
    assert r.status_code == 201 and r.json()["email"] == email and r.json()["role"] == "user"
    assert "password" not in r.text
    assert admin.http.post("/admin/users", json=body).status_code == 409
    assert admin.http.post("/admin/users", json={**body, "email": "x" + email, "password": "short"}).status_code == 400
    assert admin.http.post("/admin/users", json={**body, "email": "y" + email, "role": "root"}).status_code == 400
    r = admin.http.post("/admin/users", json={**body, "email": "z" + email, "account_id": "acct_missing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "account_id"
    assert httpx.post(stack.base_url + "/admin/users", json=body).status_code == 401
    listed = admin.http.get("/admin/users", params={"account_id": account["id"]}).json()["data"]
    assert [u["email"] for u in listed] == [email]


def test_operator_sees_every_accounts_batches(stack, admin, context_factory, shots):
    from openai import OpenAI

    account, key = admin.account_with_key(50)
    client = OpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    line = ('{"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gemini", '
            '"messages": [{"role": "user", "content": "hi"}]}}\n')
    upload = client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", 20, "the batch to complete")

    operator = make_user(admin, admin.account(1)["id"], role="operator")
    page = context_factory().new_page()
    sign_in(page, stack.base_url, operator)
    page.goto(stack.base_url + "/dashboard/admin/batches?status=completed")
    row = page.get_by_test_id(f"batch-{batch.id}")
    expect(row).to_be_visible()
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text(account["name"])
    page.screenshot(path=shots / "operator-batches.png", full_page=True)


def test_operator_sets_a_price_multiplier_and_the_user_sees_prices_and_breakdowns(stack, admin, context_factory):
    """Issue 20: the multiplier on the account's page; every price dimension on the models page; the usage
    page's per-request breakdown."""
    import httpx as _httpx

    account, key = admin.account_with_key(20)
    operator = make_user(admin, admin.account(1)["id"], role="operator")
    page = context_factory().new_page()
    sign_in(page, stack.base_url, operator)
    page.goto(f"{stack.base_url}/dashboard/admin/accounts/{account['id']}")
    expect(page.get_by_test_id("price-multiplier")).to_have_text("×1")
    page.fill("#f-price_multiplier", "abc")
    page.get_by_role("button", name="Set multiplier").click()
    expect(page.locator("#e-price_multiplier")).to_be_visible()
    page.fill("#f-price_multiplier", "1.25")
    page.get_by_role("button", name="Set multiplier").click()
    expect(page.get_by_test_id("price-multiplier")).to_have_text("×1.25")
    assert admin.get_account(account["id"])["price_multiplier_ppm"] == 1_250_000

    r = _httpx.post(stack.base_url + "/api/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                    json={"model": "gemini", "stream": False, "messages": [{"role": "user", "content":
                          "hi [[sim prompt_tokens=1000 cached_tokens=400 output_tokens=300 thinking_tokens=200]]"}]})
    assert r.json()["usage"]["charged_micro"] == 227_500  # README's worked example at x1.25
    user = make_user(admin, account["id"])
    page = context_factory().new_page()
    sign_in(page, stack.base_url, user)
    page.goto(stack.base_url + "/dashboard/models")
    pricing = page.get_by_test_id("pricing-gemini")
    expect(pricing).to_contain_text("50.00 credits / 1M input tokens")
    expect(pricing).to_contain_text("5.00 credits / 1M cached input tokens")
    expect(pricing).to_contain_text("×1.25")
    page.goto(stack.base_url + "/dashboard/usage")
    wait_for(lambda: (page.reload() or True) and page.get_by_test_id("price-breakdown").count() > 0, 5,
             "the usage row")
    breakdown = page.get_by_test_id("price-breakdown").first
    expect(breakdown).to_contain_text("cached 400")
    expect(breakdown).to_contain_text("×1.25")


def test_operator_sees_what_each_account_stores_on_its_pages_and_in_metrics(stack, admin, context_factory, shots):
    """Issue 18 (4): per-account files and bytes beside the caps, on the accounts list, the account's page and
    /metrics."""
    account, key = admin.account_with_key(5)
    client = OpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    line = b'{"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gemini"}}\n'
    for n in (3, 5):
        client.files.create(file=("in.jsonl", line * n), purpose="batch")
    stored = len(line) * 8

    operator = make_user(admin, admin.account(1)["id"], role="operator")
    page = context_factory().new_page()
    sign_in(page, stack.base_url, operator)
    page.goto(stack.base_url + f"/dashboard/admin/accounts?q={account['id']}")
    expect(page.get_by_test_id(f"files-{account['id']}")).to_have_text("2")
    expect(page.get_by_test_id(f"stored-{account['id']}")).to_have_text(f"{stored} B")
    page.goto(stack.base_url + f"/dashboard/admin/accounts/{account['id']}")
    card = page.get_by_test_id("storage")
    expect(page.get_by_test_id("stored-bytes")).to_have_text(f"{stored} B")
    expect(page.get_by_test_id("stored-files")).to_have_text("2")
    expect(card).to_contain_text("caps 1,000 files, 10.0 GB")
    page.screenshot(path=shots / "operator-account-storage.png", full_page=True)

    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("account", "")): s.value for family in
               text_string_to_metric_families(httpx.get(stack.base_url + "/metrics").text) for s in family.samples}
    assert samples[("apiinone_account_stored_files", account["id"])] == 2
    assert samples[("apiinone_account_stored_bytes", account["id"])] == stored
    assert samples[("apiinone_account_max_files", "")] == 1000
    assert samples[("apiinone_account_max_stored_bytes", "")] == 10 * 1024**3
