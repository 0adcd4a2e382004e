"""One process's catalog: an immutable ``Catalog`` swapped whole when a new version is announced.

Every gateway and worker holds a ``LiveCatalog``. ``current`` is one attribute read, so a request
that reads it once at admission keeps one version to its end, and no request ever sees half of a
change: a version is parsed in full (``validate_catalog``) before it replaces the one before. The
swap is event-driven (the store's pub/sub notice, shared/catalog_store.py), with a periodic version
check as a safety net (a notice lost while reconnecting): nothing is read from Redis per request.

Without a live store (``APIINONE_CATALOG_LIVE=false``) the TOML file is the catalog, for good.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.catalog import Catalog, CatalogInvalid, load_catalog, load_document, validate_catalog
from shared.catalog_store import CatalogStore, StoredCatalog
from shared.db.database import Database
from shared.metrics import CATALOG_VERSION
from shared.redis_client import make_redis
from shared.scripts import Scripts
from shared.settings import Settings

log = structlog.get_logger()

KEEP_VERSIONS = 8  # older versions kept for jobs admitted under them (a worker prices and runs them alike)


class LiveCatalog:
    def __init__(self, initial: Catalog, store: CatalogStore | None, redis_url: str | None,
                 check_s: float = 5.0) -> None:
        self.current = initial
        self.store = store  # None: the file is the catalog (no live store)
        self.redis_url = redis_url
        self.check_s = check_s
        self._recent: dict[int, Catalog] = {initial.version: initial}
        self._listeners: list[Callable[[Catalog], None]] = []
        self._refreshing = asyncio.Lock()
        self._document: dict | None = None  # the current version's document (the file's, until a store version)
        self._task: asyncio.Task | None = None
        self.owned_redis: Redis | None = None  # a client made for this follower alone (closed with it)

    @property
    def live(self) -> bool:
        return self.store is not None

    def on_swap(self, listener: Callable[[Catalog], None]) -> None:
        """Called with each new version, right after it became ``current``."""
        self._listeners.append(listener)

    def at(self, version: int | None) -> Catalog | None:
        """The version a job was admitted under, if this process still holds it."""
        return self.current if version is None else self._recent.get(version)

    async def start(self, seed_document: dict) -> None:
        if self.store is None:
            return
        self._document = seed_document
        try:
            await self.refresh()
        except RedisError as exc:  # the follower keeps trying; meanwhile the file's catalog serves
            log.warning("catalog store unreachable at start; serving the file until it answers", error=str(exc))
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.owned_redis is not None:
            await self.owned_redis.aclose()

    async def level(self) -> None:
        """Bring the store and its record level (a version the record lacks, a store behind it), then follow."""
        await self.store.seed(StoredCatalog(self.current.version or 1, self._document))
        await self.refresh()

    async def refresh(self) -> Catalog:
        """Read the store's version; on a change, parse the new one and swap it in."""
        if self.store is None:
            return self.current
        async with self._refreshing:
            version = await self.store.version()  # 0: the store is empty
            if version and version == self.current.version:
                return self.current
            stored = await self.store.current()
            if stored is None:  # a first start (the file, as version 1), or Redis was wiped: what we serve
                held = self.current.version or 1
                await self.store.seed(StoredCatalog(held, self._document))
                stored = await self.store.current()
            if stored is None or stored.version == self.current.version:
                return self.current
            try:
                catalog = validate_catalog(stored.document, stored.version)
            except CatalogInvalid as exc:  # stored by another release's rules: keep serving the one we have
                log.error("catalog version refused; keeping the current one", version=stored.version, error=str(exc),
                          current=self.current.version)
                return self.current
            self._document = stored.document
            self._swap(catalog)
            return catalog

    def _swap(self, catalog: Catalog) -> None:
        previous = self.current.version
        self._recent[catalog.version] = catalog
        for old in sorted(self._recent)[:-KEEP_VERSIONS]:
            del self._recent[old]
        self.current = catalog
        CATALOG_VERSION.set(catalog.version)
        for listener in self._listeners:
            listener(catalog)
        log.info("catalog version now current", version=catalog.version, previous=previous)

    async def _follow(self) -> None:
        """Refresh on every notice, and every ``check_s`` seconds without one."""
        # Its own connection without a read timeout: an idle subscription is silent by design.
        listener = make_redis(self.redis_url, max_connections=1, socket_timeout=None)
        try:
            while True:
                pubsub = listener.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(keys.CATALOG_CHANNEL)
                    await self.refresh()  # a change made while we were not subscribed
                    while True:
                        await pubsub.get_message(timeout=self.check_s)  # a notice, or the periodic check
                        await self.refresh()
                except RedisError as exc:
                    log.warning("catalog follower lost Redis, reconnecting", error=str(exc))
                    await asyncio.sleep(0.5)
                except Exception:  # noqa: BLE001 - the follower must outlive any one bad read
                    log.exception("catalog follower failed; retrying")
                    await asyncio.sleep(self.check_s)
                finally:
                    await pubsub.aclose()
        finally:
            await listener.aclose()


def open_live_catalog(settings: Settings, redis: Redis, scripts: Scripts, initial: Catalog,
                      db: Database | None = None) -> LiveCatalog:
    """The process's catalog: followed from the live store (seeded from the record too, with ``db``), or
    (``catalog_live`` off) the file for good."""
    store = CatalogStore(redis, scripts, db) if settings.catalog_live else None
    return LiveCatalog(initial, store, settings.redis_url, settings.catalog_check_s)


async def start_live_catalog(settings: Settings) -> LiveCatalog:
    """A worker process's catalog, with its own Redis client, started (the current version read)."""
    redis = make_redis(settings.redis_url, max_connections=2)
    live = open_live_catalog(settings, redis, Scripts(redis), load_catalog(settings.catalog))
    live.owned_redis = redis
    await live.start(load_document(settings.catalog))
    return live
