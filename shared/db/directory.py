"""Accounts, API key metadata and limits, and dashboard users, as recorded in Postgres.

Written by the admin paths (never the request path) when they change Redis: an account, a key or
a user is recorded before Redis has it, so that a wiped Redis can be rebuilt (`apiinone admin
restore`); a revocation is recorded after Redis has dropped the key (it must work at once even
while the database is down: then it is logged, and the restore would bring the key back).
"""

from __future__ import annotations

import time

from shared.db.database import Database


class Directory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_account(self, record: dict) -> None:
        await self.db.execute(
            """INSERT INTO accounts (id, name, created, rpm, tpm, max_concurrent) VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (id) DO NOTHING""",
            record["id"], record["name"], int(record["created"]), int(record.get("rpm") or 0),
            int(record.get("tpm") or 0), int(record.get("max_concurrent") or 0))

    async def record_key(self, record: dict, key_hash: str) -> None:
        await self.db.execute(
            """INSERT INTO api_keys (id, account_id, key_hash, name, prefix, created, expires_at, rpm, tpm,
                                     max_concurrent, credit_limit_micro, daily_credit_limit_micro)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING""",
            record["id"], record["account_id"], key_hash, record["name"], record["prefix"], int(record["created"]),
            int(record.get("expires_at") or 0), *(int(record.get(f) or 0) for f in (
                "rpm", "tpm", "max_concurrent", "credit_limit_micro", "daily_credit_limit_micro")))

    async def revoke_key(self, key_id: str) -> None:
        await self.db.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                              key_id, int(time.time()))

    async def record_user(self, record: dict) -> None:
        await self.db.execute(
            """INSERT INTO users (id, email, password_hash, role, account_id, created)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING""",
            record["id"], record["email"], record["password_hash"], record["role"], record["account_id"],
            int(record["created"]))

    async def set_password(self, user_id: str, password_hash: str) -> None:
        await self.db.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash)
