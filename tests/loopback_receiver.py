"""A webhook receiver on a free loopback port, for the tests of batch completion callbacks."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web


@contextlib.asynccontextmanager
async def loopback_receiver(hook: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """Serve ``POST /hook`` with ``hook`` on 127.0.0.1; yields the URL to post to, stopped on exit."""
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()
