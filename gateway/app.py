"""The gateway process (`apiinone gateway`): its app (routes from gateway/routes.py), error shape, lifecycle."""

from __future__ import annotations

import asyncio
import secrets
import signal

import structlog
from aiohttp import web

from gateway import dashboard, files, routes
from gateway.middleware import cors, observe, openai_errors, response_headers
from gateway.state import GATEWAY, Gateway
from shared.batch_store import BatchStore
from shared.catalog import get_catalog
from shared.settings import Settings, get_settings

log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    if not settings.admin_token:
        settings.admin_token = "adm_" + secrets.token_urlsafe(24)
        log.warning("APIINONE_ADMIN_TOKEN unset; generated one for this process", admin_token=settings.admin_token)
    middlewares = [m for m in (observe, cors(settings.cors_origins), openai_errors) if m is not None]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[GATEWAY] = Gateway(settings, get_catalog())

    async def lifecycle(app: web.Application):
        await app[GATEWAY].start()
        yield
        await app[GATEWAY].stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(response_headers)
    app[files.BATCH_STORE] = BatchStore(app[GATEWAY].redis, settings, app[GATEWAY].scripts)  # the Files and Batches APIs' storage
    routes.mount(app)  # every API route: gateway/routes.py (also the source of /openapi.json)
    dashboard.setup(app)  # /dashboard, the browser UI: HTML pages, not API routes
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
