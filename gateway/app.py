"""The gateway process (`apiinone gateway`): routes, error shape, lifecycle."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway import admin, billing, chat, health, models
from gateway.state import Gateway
from shared.catalog import get_catalog
from shared.errors import ApiError, unavailable
from shared.metrics import HTTP_DURATION, HTTP_REQUESTS
from shared.settings import Settings, get_settings

log = structlog.get_logger()


def _error_response(err: ApiError) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return web.Response(status=err.status, body=err.json(), content_type="application/json", headers=headers)


@web.middleware
async def http_metrics(request: web.Request, handler):
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 499  # the client left before an answer
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        HTTP_REQUESTS.labels(route, str(status)).inc()
        HTTP_DURATION.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure leaves in OpenAI's error shape, with the status the SDKs map."""
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
    except RedisError as exc:
        log.warning("redis unavailable", error=str(exc), path=request.path)
        return _error_response(unavailable("The gateway's data store is unavailable; try again shortly."))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        return _error_response(ApiError(500, "Internal server error.", "server_error", "internal_error"))


def _reset(ms: int) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{seconds:.0f}s" if minutes else f"{seconds:.3g}s"


async def ratelimit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI's x-ratelimit-* headers on every answer to a key that has limits."""
    reservation = request.get("reservation")
    key = request.get("key")
    if reservation is None or key is None:
        return
    h, lim = response.headers, key.limits
    if lim.rpm:
        h["x-ratelimit-limit-requests"] = str(lim.rpm)
        h["x-ratelimit-remaining-requests"] = str(max(0, reservation.rpm_remaining))
        h["x-ratelimit-reset-requests"] = _reset(reservation.rpm_reset_ms)
    if lim.tpm:
        h["x-ratelimit-limit-tokens"] = str(lim.tpm)
        h["x-ratelimit-remaining-tokens"] = str(max(0, reservation.tpm_remaining))
        h["x-ratelimit-reset-tokens"] = _reset(reservation.tpm_reset_ms)


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    if not settings.admin_token:
        settings.admin_token = "adm_" + secrets.token_urlsafe(24)
        log.warning("APIINONE_ADMIN_TOKEN unset; generated one for this process", admin_token=settings.admin_token)
    app = web.Application(middlewares=[http_metrics, openai_errors], client_max_size=settings.max_body_bytes)
    app["gateway"] = Gateway(settings, get_catalog())

    async def lifecycle(app: web.Application):
        await app["gateway"].start()
        yield
        await app["gateway"].stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(ratelimit_headers)
    r = app.router
    r.add_post("/api/v1/chat/completions", chat.chat_completions)
    r.add_get("/api/v1/models", models.list_models)
    r.add_get("/api/v1/models/{model_id}", models.get_model)
    r.add_get("/billing/credits", billing.credits)
    r.add_get("/billing/usage", billing.usage)
    r.add_get("/billing/orders", billing.orders)
    r.add_get("/billing/ledger", billing.ledger)
    r.add_post("/admin/accounts", admin.create_account)
    r.add_get("/admin/accounts", admin.list_accounts)
    r.add_get("/admin/accounts/{account_id}", admin.get_account)
    r.add_post("/admin/accounts/{account_id}/keys", admin.create_key)
    r.add_get("/admin/accounts/{account_id}/keys", admin.list_keys)
    r.add_post("/admin/accounts/{account_id}/topups", admin.create_topup)
    r.add_delete("/admin/keys/{key_id}", admin.delete_key)
    r.add_get("/admin/nodes", admin.nodes)
    r.add_get("/admin/audit", admin.audit)
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics)
    return app


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    app = create_app(settings)
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the job.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
    await site.start()
    log.info("gateway listening", host=settings.host, port=settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
