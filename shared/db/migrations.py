"""Versioned SQL migrations (``shared/db/sql/NNNN_name.sql``), applied in order and recorded.

Every process that uses the database applies what is missing when it starts (``migrate``), under
an advisory lock so that concurrent starts apply each migration once; ``apiinone migrate`` does
the same on demand (a deploy's init step). A migration runs in one transaction with its record
in ``schema_migrations``: it is applied entirely or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared.db.database import Database

SQL_DIR = Path(__file__).with_name("sql")
LOCK_KEY = 0x61706969  # pg_advisory_lock key: "apii"
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    out = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        m = _NAME.fullmatch(path.name)
        if m is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        out.append(Migration(int(m[1]), m[2], path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version: {versions}")
    return out


async def migrate(db: Database) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    applied_now = []
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in available():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                       migration.version, migration.name)
                applied_now.append(f"{migration.version:04d}_{migration.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now


async def applied(db: Database) -> list[int]:
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]
