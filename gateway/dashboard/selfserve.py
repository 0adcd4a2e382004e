"""Sign-up and password reset pages (public: no session), over ``shared/self_service.py``.

Every form carries a double-submit CSRF token (a random value in a cookie and in the form) and must
come from this origin. A request that mails someone answers the same page whether or not the address
has a user, and the mail is made and sent after the answer, in a task of its own, so that neither
the page nor its timing tells. Links in mails are built from ``APIINONE_PUBLIC_BASE_URL`` (else the
gateway's own host and port), never from the request's Host header: a forged Host must not send
someone's reset token elsewhere.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from aiohttp import web

from gateway.dashboard.render import error_page, gateway, own_base_url, render, see_other, sessions
from gateway.dashboard.session import client_address, same_origin, set_cookie, tokens_match
from gateway.dashboard.signin import LOGIN_PATH, wait_text
from shared.mail import Mail, MailFailed, Mailer
from shared.self_service import SelfService
from shared.users import MAX_PASSWORD, PasswordWorkBusy, UserError, check_email, check_password, normalize_email

log = structlog.get_logger()

SELF_SERVICE = web.AppKey("dashboard_self_service", SelfService)
MAILER = web.AppKey("dashboard_mailer", Mailer)
FORM_CSRF_COOKIE = "aio_form_csrf"
_background: set[asyncio.Task] = set()  # mail tasks, kept referenced until done


def _service(request: web.Request) -> SelfService:
    return request.config_dict[SELF_SERVICE]


async def _form(request: web.Request, template: str, context: dict, status: int = 200,
                headers: dict | None = None) -> web.Response:
    token = secrets.token_urlsafe(24)
    resp = await render(request, template, {**context, "csrf": token}, status=status)
    set_cookie(request, resp, FORM_CSRF_COOKIE, token, max_age=3600)
    resp.headers.update(headers or {})
    return resp


async def _checked_form(request: web.Request):
    """The posted form, or None when its CSRF token is missing or it came from another origin."""
    form = await request.post()
    if tokens_match(request.cookies.get(FORM_CSRF_COOKIE), form.get("csrf_token")) and same_origin(request):
        return form
    return None


async def _expired_form(request: web.Request) -> web.Response:
    return await error_page(request, 403, "This form has expired",
                            "Reload the page and try again. (The form's security token was missing or did not "
                            "match.)")


def _mail_later(request: web.Request, make_mail) -> None:
    """Make and send a mail after the answer: ``make_mail`` is a coroutine giving a ``Mail`` or None."""
    mailer = request.config_dict[MAILER]

    async def run() -> None:
        try:
            mail: Mail | None = await make_mail
            if mail is not None:
                await mailer.send(mail)
        except MailFailed as exc:
            log.error("mail could not be sent", error=str(exc))
        except Exception:  # noqa: BLE001 - a background task: logged, never lost silently
            log.exception("self-service mail failed")

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _admitted(request: web.Request, email: str, template: str, context: dict) -> web.Response | None:
    """None when the address and client may ask for another mail this hour, else the 429 page."""
    wait_s = await _service(request).limits.admit(email, client_address(request))
    if not wait_s:
        return None
    return await _form(request, template, {**context, "error": "Too many requests for mail from here or for this "
                                           f"address. Wait {wait_text(wait_s)} and try again."},
                       status=429, headers={"Retry-After": str(wait_s)})


# --- sign-up -----------------------------------------------------------------------
def _signup_enabled(request: web.Request) -> bool:
    return gateway(request).settings.signup_enabled


async def signup_form(request: web.Request) -> web.Response:
    if not _signup_enabled(request):
        return await _signup_closed(request)
    return await _form(request, "signup.html", {"form": {}, "errors": {}})


async def _signup_closed(request: web.Request) -> web.Response:
    return await error_page(request, 404, "Sign-up is closed",
                            "This service does not take sign-ups: ask its operator for a user.")


async def signup(request: web.Request) -> web.Response:
    if not _signup_enabled(request):
        return await _signup_closed(request)
    form = await _checked_form(request)
    if form is None:
        return await _expired_form(request)
    email, password = normalize_email(str(form.get("email", "")))[:320], str(form.get("password", ""))
    errors: dict[str, str] = {}
    try:
        email = check_email(email)
    except UserError as exc:
        errors["email"] = str(exc)
    password_errors = _new_password_errors(password, form.get("confirm"))
    if "password" in password_errors or not errors:  # a mismatch is worth saying once the rest is right
        errors.update(password_errors)
    context = {"form": {"email": email}, "errors": errors}
    if errors:
        return await _form(request, "signup.html", context, status=400)
    if (refused := await _admitted(request, email, "signup.html", context)) is not None:
        return refused
    _mail_later(request, _service(request).request_signup(email, password, client_address(request),
                                                          own_base_url(request)))
    return await render(request, "mail_sent.html", {"email": email, "what": "signup"})


async def verify(request: web.Request) -> web.Response:
    if not _signup_enabled(request):
        return await _signup_closed(request)
    user = await _service(request).verify_signup(request.query.get("token"))
    if user is None:
        return await error_page(request, 400, "This link does not work any more",
                                "It was used already, or it expired, or a newer sign-up replaced it. If you "
                                "confirmed your email before, sign in; otherwise sign up again.")
    log.info("self-service sign-up verified", user_id=user.id, account_id=user.account_id)
    return see_other(LOGIN_PATH + "?verified=1")


# --- password reset ------------------------------------------------------------------
async def reset_form(request: web.Request) -> web.Response:
    return await _form(request, "reset_request.html", {"form": {}, "errors": {}})


async def reset(request: web.Request) -> web.Response:
    form = await _checked_form(request)
    if form is None:
        return await _expired_form(request)
    email = normalize_email(str(form.get("email", "")))[:320]
    try:
        email = check_email(email)
    except UserError as exc:
        return await _form(request, "reset_request.html", {"form": {"email": email}, "errors": {"email": str(exc)}},
                           status=400)
    context = {"form": {"email": email}, "errors": {}}
    if (refused := await _admitted(request, email, "reset_request.html", context)) is not None:
        return refused
    _mail_later(request, _service(request).request_reset(email, own_base_url(request)))
    return await render(request, "mail_sent.html", {"email": email, "what": "reset"})


async def _dead_reset_link(request: web.Request) -> web.Response:
    return await error_page(request, 400, "This reset link does not work any more",
                            "It was used already, or it expired, or a newer one was sent. Ask for a new link.")


async def reset_confirm_form(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    email = await _service(request).reset_target(token)
    if email is None:
        return await _dead_reset_link(request)
    return await _form(request, "reset_confirm.html", {"token": token, "email": email, "errors": {}})


def _new_password_errors(password: str, confirm: object) -> dict[str, str]:
    """A chosen password's form error: too weak, else not typed the same twice (sign-up and reset alike)."""
    try:
        check_password(password[:MAX_PASSWORD + 1])
    except UserError as exc:
        return {"password": str(exc)}
    if password != confirm:
        return {"confirm": "The two passwords are not the same."}
    return {}


async def reset_confirm(request: web.Request) -> web.Response:
    form = await _checked_form(request)
    if form is None:
        return await _expired_form(request)
    token, password = str(form.get("token", "")), str(form.get("password", ""))
    errors = _new_password_errors(password, form.get("confirm"))
    if errors:
        email = await _service(request).reset_target(token)
        if email is None:
            return await _dead_reset_link(request)
        return await _form(request, "reset_confirm.html", {"token": token, "email": email, "errors": errors},
                           status=400)
    try:
        user = await _service(request).reset_password(token, password)
    except PasswordWorkBusy:
        return await error_page(request, 503, "Busy right now", "Too many passwords are being set or checked at "
                                "once. Go back and try again in a moment; the link still works.", {"Retry-After": "2"})
    if user is None:
        return await _dead_reset_link(request)
    await sessions(request).drop_all(user.id)  # a thief signed in with the old password is out
    log.info("password reset by mailed link", user_id=user.id)
    return see_other(LOGIN_PATH + "?reset=1")


def setup(sub: web.Application, self_service: SelfService, mailer: Mailer) -> None:
    sub[SELF_SERVICE] = self_service
    sub[MAILER] = mailer
    r = sub.router
    r.add_get("/signup", signup_form, name="signup")
    r.add_post("/signup", signup)
    r.add_get("/signup/verify", verify, name="signup_verify")
    r.add_get("/reset", reset_form, name="reset")
    r.add_post("/reset", reset)
    r.add_get("/reset/confirm", reset_confirm_form, name="reset_confirm")
    r.add_post("/reset/confirm", reset_confirm)
