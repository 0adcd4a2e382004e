"""The dashboard's middleware (sign-in, CSRF, roles, HTML errors, headers), page rendering and filters."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from urllib.parse import quote

import aiohttp_jinja2
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.state import GATEWAY
from gateway.dashboard.session import SESSION_COOKIE, Session, Sessions, clear_cookie, same_origin, tokens_match
from gateway.dashboard.throttle import LoginThrottle
from gateway.edge import edge
from shared.errors import ApiError
from shared.keys import AccountKeys
from shared.money import micro_to_decimal
from shared.pricing import PPM, multiplier_text
from shared.redis_client import store_unavailable
from shared.users import User, Users

log = structlog.get_logger()

USERS = web.AppKey("dashboard_users", Users)
SESSIONS = web.AppKey("dashboard_sessions", Sessions)
THROTTLE = web.AppKey("dashboard_login_throttle", LoginThrottle)

# Pages anyone may open without a session: sign-in, and sign-up and password reset (selfserve.py).
PUBLIC_PAGES = frozenset(("/dashboard/login", "/dashboard/signup", "/dashboard/signup/verify", "/dashboard/reset",
                          "/dashboard/reset/confirm"))
NEXT_PATH = re.compile(r"/dashboard(/[A-Za-z0-9_./?=&%:+-]*)?")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# --- filters -------------------------------------------------------------------------
def credits(micro: int | str | None, places: int = 6) -> str:
    """Micro-credits as credits: exact (up to 6 decimals, at least 2), thousands separated."""
    if micro in (None, ""):
        return "—"
    value = micro_to_decimal(micro)
    text = f"{value:,.{6}f}".rstrip("0")
    whole, _, frac = text.partition(".")
    frac = (frac + "00")[:max(2, min(len(frac), places))]
    return f"{whole}.{frac}"


def usd(micro: int | str | None) -> str:
    """Micro-credits as dollars (1 credit = $0.01): cents always shown, up to 4 decimals ($0.10, $10.00, $0.125)."""
    if micro in (None, ""):
        return "—"
    dollars = micro_to_decimal(micro) / 100
    whole, _, frac = f"{dollars:,.4f}".partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def signed_credits(micro: int | str) -> str:
    micro = int(micro)
    return ("+" if micro > 0 else "−" if micro < 0 else "") + credits(abs(micro))


def when(ts: int | float | str | None) -> str:
    """Unix seconds as a UTC time; '—' when unknown."""
    if ts in (None, "", 0, "0"):
        return "—"
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def when_id(stream_id: str) -> str:
    """A stream row id (<ms>-<seq>) as a UTC time with seconds."""
    ms = int(stream_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: int | float | str | None) -> str:
    if ts in (None, "", 0, "0"):
        return "never"
    delta = time.time() - float(ts)
    if delta < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= size:
            n = int(delta // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def number(n: int | str | None) -> str:
    if n in (None, ""):
        return "—"
    return f"{int(n):,}"


def multiplier(ppm: int | str | None) -> str:
    """A price multiplier in parts per million as "×1.25" (a row from before multipliers: ×1)."""
    return "×" + multiplier_text(int(ppm) if ppm not in (None, "") else PPM)


def size(n: int | None) -> str:
    """Bytes as people read them: "0 B", "512 B", "1.5 MB", "10.0 GB" (powers of 1024)."""
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


FILTERS = {"credits": credits, "usd": usd, "signed_credits": signed_credits, "when": when, "when_id": when_id,
           "ago": ago, "number": number, "multiplier": multiplier, "size": size}


# --- request context -------------------------------------------------------------------
def gateway(request: web.Request):
    return request.config_dict[GATEWAY]


def users(request: web.Request) -> Users:
    return request.config_dict[USERS]


def sessions(request: web.Request) -> Sessions:
    return request.config_dict[SESSIONS]


def throttle(request: web.Request) -> LoginThrottle:
    return request.config_dict[THROTTLE]


def current_user(request: web.Request) -> User:
    return request["user"]


def current_session(request: web.Request) -> Session:
    return request["session"]


def account_id(request: web.Request) -> str:
    """The account the pages show: the user's own; for an operator, the one they chose to view."""
    return request["account_id"]


def base_url(request: web.Request) -> str:
    configured = gateway(request).settings.public_base_url
    if configured:
        return configured.rstrip("/")
    return f"{'https' if edge(request).is_https(request) else 'http'}://{request.host}"


def own_base_url(request: web.Request) -> str:
    """The service's address from its settings, never from the request's Host header: for links that leave
    the browser (mails, the payment provider's way back), which a forged Host must not redirect."""
    s = gateway(request).settings
    return (s.public_base_url or f"http://{s.host}:{s.port}").rstrip("/")


def safe_next(target: str | None) -> str:
    if target and NEXT_PATH.fullmatch(target) and "//" not in target and ".." not in target:
        return target
    return "/dashboard"


async def render(request: web.Request, template: str, context: dict | None = None, status: int = 200,
                 nav: str = "") -> web.Response:
    ctx = dict(context or {})
    user: User | None = request.get("user")
    session: Session | None = request.get("session")
    ctx.setdefault("nav", nav)
    ctx["user"] = user
    ctx["csrf"] = session.csrf if session else ctx.get("csrf", "")
    if user is not None:
        gw = gateway(request)
        raw = await gw.redis.hget(AccountKeys(account_id(request)).account, "name")
        ctx["account_name"] = raw.decode() if raw else "(account removed)"
        ctx["account_id"] = account_id(request)
        ctx["viewing_other"] = account_id(request) != user.account_id
        if session is not None and "flash" not in ctx:
            ctx["flash"] = await sessions(request).pop_flash(session)
    return aiohttp_jinja2.render_template(template, request, ctx, status=status)


async def error_page(request: web.Request, status: int, title: str, message: str,
                     headers: dict | None = None) -> web.Response:
    try:
        resp = await render(request, "error.html", {"status": status, "title": title, "message": message},
                            status=status)
    except RedisError:
        resp = web.Response(status=status, text=f"{title}\n\n{message}\n", content_type="text/plain")
    resp.headers.update(headers or {})
    return resp


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


async def notify(request: web.Request, message: str, kind: str = "ok") -> None:
    await sessions(request).flash(current_session(request), message, kind)


# --- the middleware ---------------------------------------------------------------------
def _headers(response: web.StreamResponse, static: bool) -> None:
    if response.prepared:  # a streamed answer (the CSV export) set its own before sending them
        return
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    if not static:
        h.setdefault("Cache-Control", "no-store")


@web.middleware
async def guard(request: web.Request, handler):
    """Sign-in, roles and CSRF for every dashboard page; errors as pages, never JSON."""
    path = request.path
    static = path.startswith("/dashboard/static/")
    public = static or path in PUBLIC_PAGES
    try:
        response = await _guarded(request, handler, public)
    except web.HTTPException as exc:
        if exc.status < 400:
            _headers(exc, static)
            raise
        response = await error_page(request, exc.status, exc.reason, exc.text if exc.text != exc.reason else
                                    "Something about this request wasn't right.")
    except ApiError as exc:  # a limit the pages share with the API (gateway/record_reads.py)
        response = await error_page(request, exc.status, "Not now" if exc.status == 429 else "That didn't work",
                                    exc.message, {"Retry-After": f"{exc.retry_after:g}"} if exc.retry_after else None)
    except RedisError as exc:
        if not store_unavailable(exc):
            log.error("dashboard: redis refused a command", error=str(exc), error_class=type(exc).__name__,
                      path=path)
            response = await error_page(request, 500, "Something went wrong",
                                        "The dashboard hit an unexpected error. It has been logged; try again.")
        else:
            log.warning("dashboard: redis unavailable", error=str(exc), path=path)
            response = await error_page(request, 503, "The data store is unavailable",
                                        "The dashboard cannot reach its data store right now. Try again in a "
                                        "moment.", {"Retry-After": "2"})
    except Exception:  # noqa: BLE001 - a page, not a stack trace
        log.exception("dashboard: unhandled error", path=path)
        response = await error_page(request, 500, "Something went wrong",
                                    "The dashboard hit an unexpected error. It has been logged; try again.")
    _headers(response, static)
    return response


async def _guarded(request: web.Request, handler, public: bool):
    if public:
        return await handler(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = await sessions(request).load(cookie)
    user = await users(request).get(session.user_id) if session else None
    if user is None:
        if request.method == "GET":
            target = "/dashboard/login?next=" + quote(request.path_qs, safe="/")
        else:
            target = "/dashboard/login"
        if cookie:
            target += ("&" if "?" in target else "?") + "expired=1"
        response = web.HTTPSeeOther(target)
        if cookie:
            clear_cookie(response, SESSION_COOKIE)
        raise response
    request["session"] = session
    request["user"] = user
    request["account_id"] = (session.account_id or user.account_id) if user.is_operator else user.account_id
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        form = await request.post()
        if not (tokens_match(session.csrf, form.get("csrf_token")) and same_origin(request)):
            log.warning("dashboard: csrf check failed", path=request.path, user_id=user.id)
            return await error_page(request, 403, "This form has expired",
                                    "The form was missing its security token or came from another site, so "
                                    "nothing was changed. Go back, reload the page and try again.")
    if request.path.startswith("/dashboard/admin/") and not user.is_operator:
        return await error_page(request, 403, "Operators only",
                                "This page is for the service's operators. Your account's pages are in the menu.")
    return await handler(request)
