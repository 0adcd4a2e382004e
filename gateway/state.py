"""Gateway: what one gateway process holds."""

from __future__ import annotations

import asyncio
import uuid

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import KeyCache
from gateway.record_reads import RecordReadSlots
from shared.accounts import Accounts
from shared.catalog import Catalog, load_document
from shared.catalog_store import CatalogStore
from shared.db.credits_record import CreditRecord
from shared.db.database import Database, DatabaseUnavailable
from shared.db.directory import Directory
from shared.db.migrations import migrate
from shared.dispatch import Dispatcher
from shared.live_catalog import open_live_catalog
from shared.operator_audit import OperatorAudit
from shared.payments.orders import PaymentOrders
from shared.payments.provider import parse_packages
from shared.payments.stripe_provider import StripeProvider
from shared.redemption import RedemptionCodes, ThrottlePolicy
from shared.response_store import RecordedResponseStore, RedisResponseStore
from shared.settings import Settings

log = structlog.get_logger()


class Gateway:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
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
        # Postgres, the record: admin writes and history reads (and stored responses Redis no longer has);
        # never the request path.
        self.db = Database(settings.database_url, settings.database_pool_size) if settings.database_url else None
        self.directory = Directory(self.db) if self.db else None
        if self.db is not None:
            self.credits.record = CreditRecord(self.db)
        # The catalog, live: ``self.catalog`` is the current version; a request reads it once, at admission.
        # Changes (the admin API, the dashboard) go through ``catalog_store``: each version recorded in Postgres.
        self.live = open_live_catalog(settings, self.redis, self.scripts, catalog, self.db)
        self.live.on_swap(self.dispatch.use_catalog)
        self.catalog_store = self.live.store or CatalogStore(self.redis, self.scripts, self.db)
        self.operator_audit = OperatorAudit(self.db)
        self.accounts = Accounts(self.redis, self.credits, self.directory, max_keys=settings.max_keys_per_account)
        self.keys = KeyCache(self.accounts)
        self.record_reads = RecordReadSlots(settings.record_reads_per_account)  # gateway/record_reads.py
        self.redemptions = RedemptionCodes(self.redis, self.scripts, self.credits, self.db, ThrottlePolicy(
            settings.redeem_failures_per_account, settings.redeem_failures_per_client,
            settings.redeem_throttle_window_s))
        # Top-ups through Stripe (shared/payments/): with a secret key and the record only.
        self.payments = None
        if settings.stripe_secret_key and self.db is not None:
            self.payments = PaymentOrders(self.db, self.credits, StripeProvider(
                settings.stripe_secret_key, settings.stripe_webhook_secret, settings.stripe_api_base,
                settings.stripe_webhook_tolerance_s), parse_packages(settings.payment_packages))
        # Stored OpenAI Responses (store / previous_response_id): hot in Redis, per-account cap and TTL; with
        # the record, archived to Postgres by the archiver and read there when Redis no longer has them.
        self.responses = RecordedResponseStore(self.redis, self.scripts, settings.responses_ttl_s,
                                               settings.responses_max_bytes_per_account, self.db) if self.db else \
            RedisResponseStore(self.redis, self.scripts, settings.responses_ttl_s,
                               settings.responses_max_bytes_per_account)
        self._migrating: asyncio.Task | None = None

    @property
    def catalog(self) -> Catalog:
        return self.live.current

    @property
    def live_workers(self) -> dict[str, int]:
        return self.dispatch.liveness.live_workers

    async def start(self) -> None:
        await self.dispatch.start()
        await self.live.start(load_document(self.settings.catalog))
        if self.db is not None:  # in the background: the gateway serves (and /readyz says why not) meanwhile
            self._migrating = asyncio.create_task(self._migrate())

    async def _migrate(self) -> None:
        while True:
            try:
                await migrate(self.db)
                break
            except DatabaseUnavailable as exc:
                log.warning("database unreachable; migrations wait for it", error=str(exc))
                await asyncio.sleep(2)
        if self.live.live:  # the record and the live store level (a version it lacks, a wiped Redis)
            try:
                await self.live.level()
            except (RedisError, DatabaseUnavailable) as exc:
                log.warning("catalog record not levelled with the store", error=str(exc))

    async def stop(self) -> None:
        if self._migrating is not None:
            self._migrating.cancel()
        await self.live.stop()
        await self.dispatch.stop()
        if self.db is not None:
            await self.db.close()


GATEWAY = web.AppKey("gateway", Gateway)  # request.app[GATEWAY]: this process's Gateway
