"""Gateway: what one gateway process holds."""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.auth import KeyCache
from shared.accounts import Accounts
from shared.catalog import Catalog
from shared.dispatch import Dispatcher
from shared.response_store import RedisResponseStore
from shared.settings import Settings


class Gateway:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gateway_id = uuid.uuid4().hex[:12]
        self.keys: KeyCache | None = None
        # The request lifecycle (shared/dispatch.py); revocations arrive on its reply channel.
        self.dispatch = Dispatcher(settings, catalog, self.gateway_id,
                                   on_revocation=lambda digest: self.keys.revoke(digest))
        self.redis = self.dispatch.redis
        self.scripts = self.dispatch.scripts
        self.credits = self.dispatch.credits
        self.breaker = self.dispatch.breaker
        self.hub = self.dispatch.hub
        self.accounts = Accounts(self.redis, self.credits, max_keys=settings.max_keys_per_account)
        self.keys = KeyCache(self.accounts)
        # Stored OpenAI Responses (store / previous_response_id): hot in Redis, per-account cap and TTL.
        self.responses = RedisResponseStore(self.redis, self.scripts, settings.responses_ttl_s,
                                            settings.responses_max_bytes_per_account)

    @property
    def live_workers(self) -> dict[str, int]:
        return self.dispatch.liveness.live_workers

    async def start(self) -> None:
        await self.dispatch.start()

    async def stop(self) -> None:
        await self.dispatch.stop()


GATEWAY = web.AppKey("gateway", Gateway)  # request.app[GATEWAY]: this process's Gateway
