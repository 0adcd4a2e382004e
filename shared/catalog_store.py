"""The live catalog's store: the current version in Redis, every version in Postgres.

Redis holds one hash (``keys.CATALOG``: the version number and the whole document) that every
gateway and worker follows (shared/live_catalog.py); a change is one compare-and-set script
(shared/lua/catalog_put.lua) that also announces the new version on ``keys.CATALOG_CHANNEL``.
Postgres (``catalog_versions``) records each version in the same transaction that makes it current:
the row is written first and committed only once the compare-and-set took, so a refused change
leaves no record, and two operators racing for one version get one winner and one 409.

An empty store is seeded: from the newest recorded version (Redis was wiped), else from the TOML
file as version 1. Nothing here runs on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson
import structlog
from redis.asyncio import Redis

from shared import keys
from shared.catalog import Catalog, validate_catalog
from shared.db.database import Database, DatabaseUnavailable
from shared.scripts import Scripts

log = structlog.get_logger()

SEED_ACTOR = "seed"


class VersionConflict(Exception):
    """The catalog is no longer at the version the change was made against."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the catalog is at version {current}")
        self.current = current


@dataclass(frozen=True)
class StoredCatalog:
    version: int
    document: dict


class CatalogStore:
    def __init__(self, redis: Redis, scripts: Scripts, db: Database | None = None) -> None:
        self.redis = redis
        self.scripts = scripts
        self.db = db

    async def version(self) -> int:
        """The current version (0: the store is empty); one small read, for the periodic check."""
        raw = await self.redis.hget(keys.CATALOG, "version")
        return int(raw) if raw else 0

    async def current(self) -> StoredCatalog | None:
        version, document = await self.redis.hmget(keys.CATALOG, "version", "document")
        if not version or not document:
            return None
        return StoredCatalog(int(version), orjson.loads(document))

    async def _compare_and_set(self, expected: int, version: int, document: dict) -> tuple[bool, int]:
        ok, current = await self.scripts.catalog_put(
            keys=[keys.CATALOG], args=[expected, version, orjson.dumps(document), keys.CATALOG_CHANNEL])
        return bool(ok), int(current)

    async def put(self, document: dict, expected: int, actor: str, note: str = "") -> Catalog:
        """Validate ``document`` and make it version ``expected + 1``; ``VersionConflict`` when the
        catalog is not at ``expected``; ``CatalogInvalid`` (nothing stored) when it cannot be served."""
        version = expected + 1
        catalog = validate_catalog(document, version)
        if self.db is None:
            ok, current = await self._compare_and_set(expected, version, document)
            if not ok:
                raise VersionConflict(current)
            return catalog
        async with self.db.transaction() as conn:
            # The row first (its lock serializes racers for this version), committed only if the swap took:
            # an exception below rolls it back. An upsert: a version Redis never made current may be recorded.
            await conn.execute(
                "INSERT INTO catalog_versions (version, document, actor, note) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (version) DO UPDATE SET document = $2, actor = $3, note = $4, created_at = now()",
                version, document, actor, note)
            ok, current = await self._compare_and_set(expected, version, document)
            if not ok:
                raise VersionConflict(current)
        return catalog

    async def seed(self, held: StoredCatalog) -> None:
        """Fill an empty store with the newest of the recorded versions and ``held`` (what the caller serves: the
        file as version 1 at a first start, its current version after Redis was wiped); with the record, also
        bring the record and Redis level: record a current version it lacks, restore a newer one."""
        stored = await self.current()
        readable, latest = await self._latest_recorded()
        if stored is None:
            source = latest if latest is not None and latest.version >= held.version else held
            validate_catalog(source.document, source.version)  # a broken file fails the process loudly
            ok, _ = await self._compare_and_set(0, source.version, source.document)
            if ok:
                log.info("catalog store seeded", version=source.version, source="record" if source is latest else "held")
            stored = source if ok else await self.current()
        if not readable or stored is None:
            return
        if latest is None or latest.version < stored.version:
            await self.db.execute("INSERT INTO catalog_versions (version, document, actor, note) VALUES ($1, $2, $3, $4) "
                                  "ON CONFLICT (version) DO NOTHING", stored.version, stored.document, SEED_ACTOR,
                                  "recorded from the live store")
        elif latest.version > stored.version:  # Redis lost changes (a restore from an old snapshot)
            ok, _ = await self._compare_and_set(stored.version, latest.version, latest.document)
            if ok:
                log.warning("catalog store restored from the record", version=latest.version, was=stored.version)

    async def _latest_recorded(self) -> tuple[bool, StoredCatalog | None]:
        """(readable, the newest recorded version or None). Not readable without the record, or while it is
        unreachable or not migrated yet: it is levelled later (the gateway seeds again after its migrations)."""
        if self.db is None:
            return False, None
        try:
            row = await self.db.fetchrow("SELECT version, document FROM catalog_versions ORDER BY version DESC LIMIT 1")
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.info("catalog record not readable yet", error=str(exc))
            return False, None
        return True, (StoredCatalog(row["version"], row["document"]) if row else None)

    async def recorded(self, version: int) -> StoredCatalog | None:
        if self.db is None:
            stored = await self.current()
            return stored if stored and stored.version == version else None
        row = await self.db.fetchrow("SELECT version, document FROM catalog_versions WHERE version = $1", version)
        return StoredCatalog(row["version"], row["document"]) if row else None

    async def history(self, before: int | None, limit: int) -> list[dict]:
        """Versions newest first (without their documents), below ``before`` when given."""
        if self.db is None:
            stored = await self.current()
            return [{"version": stored.version, "actor": "", "note": "", "created_at": None}] if stored else []
        rows = await self.db.fetch(
            "SELECT version, actor, note, created_at FROM catalog_versions WHERE ($1::int IS NULL OR version < $1) "
            "ORDER BY version DESC LIMIT $2", before, limit)
        return [{"version": r["version"], "actor": r["actor"], "note": r["note"],
                 "created_at": int(r["created_at"].timestamp())} for r in rows]
