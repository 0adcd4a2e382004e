"""The gateway process (`apiinone gateway`): routes, error shape, lifecycle."""

from __future__ import annotations

import asyncio
import secrets
import signal

import structlog
from aiohttp import web

from gateway import admin, batches, billing, chat, files, health, models, openapi
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
    r = app.router
    r.add_post("/api/v1/chat/completions", chat.chat_completions)
    r.add_get("/api/v1/models", models.list_models)
    r.add_get("/api/v1/models/{model_id}", models.get_model)
    # Batch: OpenAI Files + Batches API (gateway/files.py, gateway/batches.py; run by worker/batch/)
    app[files.BATCH_STORE] = BatchStore(app[GATEWAY].redis, settings, app[GATEWAY].scripts)
    r.add_post("/api/v1/files", files.upload)
    r.add_get("/api/v1/files", files.list_files)
    r.add_get("/api/v1/files/{file_id}", files.get_file)
    r.add_delete("/api/v1/files/{file_id}", files.delete_file)
    r.add_get("/api/v1/files/{file_id}/content", files.content)
    r.add_post("/api/v1/batches", batches.create)
    r.add_get("/api/v1/batches", batches.list_batches)
    r.add_get("/api/v1/batches/{batch_id}", batches.retrieve)
    r.add_post("/api/v1/batches/{batch_id}/cancel", batches.cancel)
    r.add_get("/api/v1/webhook_secret", batches.get_webhook_secret)
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
    r.add_get("/openapi.json", openapi.openapi_json)
    from gateway import dashboard
    dashboard.setup(app)  # /dashboard (the browser UI) and /admin/users
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
