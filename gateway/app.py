"""The gateway process (`apiinone gateway`): its app (routes from gateway/routes.py), error shape, lifecycle."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from gateway import dashboard, files, routes
from gateway.connections import listen, mark_requests
from gateway.edge import EDGE, Edge, security_headers
from gateway.middleware import cors, observe, openai_errors, response_headers
from gateway.state import GATEWAY, Gateway
from shared.batch_store import BatchStore
from shared.blob_store import blob_store
from shared.file_store import FileStore
from shared.catalog import get_catalog
from shared.settings import Settings, get_settings

log = structlog.get_logger()

MIN_ADMIN_TOKEN_CHARS = 16


class AdminTokenRefused(RuntimeError):
    """The gateway will not serve with this admin token (none, or one short enough to guess)."""


def check_admin_token(token: str | None) -> str:
    """Every replica must share one operator-chosen token: one generated here would be logged and differ per
    replica. ``apiinone run`` generates one and keeps it in ``var/admin-token`` (mode 0600)."""
    if not token:
        raise AdminTokenRefused("APIINONE_ADMIN_TOKEN is not set: the gateway needs the admin API's token "
                                "(e.g. `openssl rand -hex 24`), the same on every replica.")
    if len(token) < MIN_ADMIN_TOKEN_CHARS or token.upper().startswith("CHANGE"):
        raise AdminTokenRefused(f"APIINONE_ADMIN_TOKEN is too easy to guess: use at least {MIN_ADMIN_TOKEN_CHARS} "
                                "random characters (e.g. `openssl rand -hex 24`).")
    return token


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    check_admin_token(settings.admin_token)
    middlewares = [m for m in (mark_requests, observe, cors(settings.cors_origins), openai_errors) if m is not None]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[GATEWAY] = Gateway(settings, get_catalog())

    async def lifecycle(app: web.Application):
        await app[GATEWAY].start()
        yield
        await app[GATEWAY].stop()

    app.cleanup_ctx.append(lifecycle)
    app[EDGE] = Edge.from_settings(settings)  # trusted proxies, the public scheme (gateway/edge.py)
    app.on_response_prepare.append(response_headers)
    app.on_response_prepare.append(security_headers)
    gw = app[GATEWAY]
    # The Files and Batches APIs' storage: batches hot in Redis, files' bytes in the blob store, both recorded.
    app[files.BATCH_STORE] = BatchStore(gw.redis, settings, gw.scripts, gw.db)
    if gw.db is not None:
        blobs = blob_store(settings)
        app[files.FILE_STORE] = FileStore(gw.db, blobs, settings)
        app.on_cleanup.append(lambda _: blobs.close())
    routes.mount(app)  # every API route: gateway/routes.py (also the source of /openapi.json)
    dashboard.setup(app)  # /dashboard, the browser UI: HTML pages, not API routes
    return app


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    app = create_app(settings)
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the job.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           keepalive_timeout=settings.keepalive_timeout_s)
    await runner.setup()
    listener = await listen(runner, settings.host, settings.port, settings.header_timeout_s)
    log.info("gateway listening", host=settings.host, port=settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()  # no new connections; open ones finish their responses in runner.cleanup()
    await runner.cleanup()
