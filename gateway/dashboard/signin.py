"""Signing in and out of the dashboard: the sign-in form, its throttling, the session cookie, sign-out.

Sign-in posts are CSRF-checked by a double-submit token (the form's and a
cookie's), throttled per email and per client (``throttle.py``) before any
password is verified, and answered the same way for a wrong email and a
wrong password. Sign-out ends the session on the server and tells the browser
to clear the origin's storage: the playground's saved API keys go with it.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from gateway.dashboard.render import (current_session, error_page, render, safe_next, see_other, sessions, throttle,
                                      users)
from gateway.dashboard.session import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, clear_cookie, client_address,
                                       same_origin, set_cookie, tokens_match)
from gateway.dashboard.throttle import Attempt
from gateway.state import GATEWAY
from shared.users import MAX_PASSWORD, PasswordWorkBusy, normalize_email

LOGIN_PATH = "/dashboard/login"
# Sent with sign-out: the browser drops this origin's localStorage and sessionStorage (the playground's keys).
CLEAR_STORAGE = '"storage"'


def wait_text(seconds: int) -> str:
    """A throttle's wait as people read it: "5 seconds", "2 minutes"."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


async def _login_page(request: web.Request, error: str = "", email: str = "", status: int = 200,
                      headers: dict | None = None) -> web.Response:
    token = secrets.token_urlsafe(24)
    notice = ""
    if request.query.get("expired"):
        notice = "Your session has ended. Sign in again to continue."
    elif request.query.get("signed_out"):
        notice = "You have signed out."
    elif request.query.get("verified"):
        notice = "Your email is confirmed and your account is ready. Sign in."
    elif request.query.get("reset"):
        notice = "Your password is changed. Sign in with the new one."
    resp = await render(request, "login.html", {"csrf": token, "error": error, "email": email, "notice": notice,
                                                "next": safe_next(request.query.get("next")),
                                                "signup": request.config_dict[GATEWAY].settings.signup_enabled},
                          status=status)
    # The sign-in form's CSRF token: the same random value in a cookie and in the form (double submit).
    set_cookie(request, resp, LOGIN_CSRF_COOKIE, token, max_age=3600, path=LOGIN_PATH)
    resp.headers.update(headers or {})
    return resp


async def login_form(request: web.Request) -> web.Response:
    session = await sessions(request).load(request.cookies.get(SESSION_COOKIE))
    if session and await users(request).get(session.user_id):
        return see_other(safe_next(request.query.get("next")))
    return await _login_page(request)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    if not (tokens_match(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf_token")) and same_origin(request)):
        return await error_page(request, 403, "This sign-in form has expired",
                                "Reload the sign-in page and try again. (The form's security token was missing "
                                "or did not match.)")
    email = normalize_email(str(form.get("email", "")))[:320]
    password = str(form.get("password", ""))[:MAX_PASSWORD]
    mismatch = "That email and password don't match. Check both and try again."
    if not (email and password):
        return await _login_page(request, mismatch, email, status=401)
    attempt = await throttle(request).begin(email, client_address(request))
    if not attempt.admitted:
        return await _login_page(request, f"Too many failed sign-in attempts. Wait {wait_text(attempt.wait_s)} "
                                 "and try again.", email, status=429, headers={"Retry-After": str(attempt.wait_s)})
    outcome = "not_checked"
    try:
        user = await users(request).authenticate(email, password)
        outcome = "failed" if user is None else "succeeded"
    except PasswordWorkBusy:
        return await _login_page(request, "Signing in is busy right now. Try again in a moment.", email,
                                 status=503, headers={"Retry-After": "2"})
    finally:
        await throttle(request).finish(attempt, outcome)
    if user is None:
        return await _login_page(request, mismatch, email, status=401)
    store = sessions(request)
    token, _ = await store.create(user.id, user.account_id)
    resp = see_other(safe_next(str(form.get("next", ""))))
    set_cookie(request, resp, SESSION_COOKIE, token, max_age=store.max_age_s)
    clear_cookie(resp, LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return resp


async def logout(request: web.Request) -> web.Response:
    await sessions(request).drop(current_session(request))
    resp = see_other(LOGIN_PATH + "?signed_out=1")
    clear_cookie(resp, SESSION_COOKIE)
    resp.headers["Clear-Site-Data"] = CLEAR_STORAGE
    return resp


async def current_password_ok(request: web.Request, attempt: Attempt, email: str, password: str) -> bool:
    """Whether ``password`` is the signed-in user's (a password change asks), within an admitted attempt."""
    outcome = "not_checked"
    try:
        ok = bool(password) and await users(request).authenticate(email, password) is not None
        outcome = "succeeded" if ok else "failed"
        return ok
    except PasswordWorkBusy:
        return False
    finally:
        await throttle(request).finish(attempt, outcome)
