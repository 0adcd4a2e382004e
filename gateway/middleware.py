"""Gateway middleware: request ids and access logs, metrics, OpenAI error shape, response headers."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.dialects import dialect_of, error_response
from shared.contracts import ErrorCode
from shared.credits import AccountFenced
from shared.db.database import DatabaseUnavailable
from shared.errors import ApiError, database_unavailable, unavailable
from shared.metrics import HTTP_DURATION, HTTP_REQUESTS, labelled
from shared.redis_client import store_unavailable

log = structlog.get_logger()

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}
INTERNAL = ApiError(500, "Internal server error.", "server_error", ErrorCode.INTERNAL_ERROR)




@web.middleware
async def observe(request: web.Request, handler):
    """One request id (the client's X-Request-Id if sane) on every log line, metrics, one access line."""
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if REQUEST_ID.fullmatch(offered) else "req_" + secrets.token_hex(12)
    request["request_id"] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 499  # the client left before an answer
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        labelled(HTTP_REQUESTS, route, str(status)).inc()
        labelled(HTTP_DURATION, route).observe(elapsed)
        if route not in QUIET_ROUTES:
            key = request.get("key")
            log.info("request", method=request.method, route=route, status=status, ms=round(elapsed * 1000, 2),
                     key_id=key.id if key else None)
        structlog.contextvars.unbind_contextvars("request_id")


CORS_EXPOSED = "X-Request-Id, Retry-After, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, " \
               "x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, " \
               "x-ratelimit-reset-tokens"


def cors(origins: str):
    """Off (no middleware at all) unless APIINONE_CORS_ORIGINS lists origins (or "*")."""
    allowed = {o.strip() for o in origins.split(",") if o.strip()}
    if not allowed:
        return None

    @web.middleware
    async def cors_middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is None or not ("*" in allowed or origin in allowed):
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-Id",
                "Access-Control-Max-Age": "600"})
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        response.headers["Vary"] = "Origin"
        return response

    return cors_middleware


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure leaves in its route's error shape (OpenAI's unless the route speaks another API's,
    gateway/dialects.py), with the status the SDKs map."""

    def _error_response(err: ApiError) -> web.Response:
        return error_response(err, dialect_of(request))

    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error_response(ApiError(413, f"Request body too large: {exc.text}", "invalid_request_error",
                                        "request_too_large"))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error_response(ApiError(exc.status, exc.reason, "invalid_request_error",
                                            "not_found" if exc.status == 404 else None))
        raise
    except DatabaseUnavailable as exc:
        log.warning("database unavailable", error=str(exc), path=request.path)
        return _error_response(database_unavailable())
    except AccountFenced:
        return _error_response(unavailable("The credit store restarted; this account is being recovered from the "
                                           "database. Try again in a moment."))
    except RedisError as exc:
        if store_unavailable(exc):
            log.warning("redis unavailable", error=str(exc), path=request.path)
            return _error_response(unavailable("The gateway's data store is unavailable; try again shortly."))
        log.error("redis refused a command", error=str(exc), error_class=type(exc).__name__, path=request.path)
        return _error_response(INTERNAL)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        return _error_response(INTERNAL)


def _reset(ms: int) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{seconds:.0f}s" if minutes else f"{seconds:.3g}s"


async def response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """X-Request-Id on every answer; OpenAI's x-ratelimit-* on every answer to a key with limits."""
    h = response.headers
    if "request_id" in request:
        h["X-Request-Id"] = request["request_id"]
    reservation = request.get("reservation")
    key = request.get("key")
    if reservation is None or key is None:
        return
    lim = key.limits
    if lim.rpm:
        h["x-ratelimit-limit-requests"] = str(lim.rpm)
        h["x-ratelimit-remaining-requests"] = str(max(0, reservation.rpm_remaining))
        h["x-ratelimit-reset-requests"] = _reset(reservation.rpm_reset_ms)
    if lim.tpm:
        h["x-ratelimit-limit-tokens"] = str(lim.tpm)
        h["x-ratelimit-remaining-tokens"] = str(max(0, reservation.tpm_remaining))
        h["x-ratelimit-reset-tokens"] = _reset(reservation.tpm_reset_ms)
