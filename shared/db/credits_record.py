"""Credits in, recorded first: the order and its ledger row committed to Postgres before Redis applies it.

Once per (account, reference), as credit.lua applies a reference once: a repeated reference returns
the order recorded the first time and records nothing. The ledger row has no stream id until the
archiver brings Redis' entry for it (same identity: account, reason, reference); until then it is a
credit Redis may not have applied, which the recovery applies (worker/archiver/recovery.py).
"""

from __future__ import annotations

from typing import Awaitable, Callable

import asyncpg

from shared.db.database import Database

# More to record with a credit, in its transaction (a redemption's use: shared/redemption.py): (conn, order).
AlsoRecord = Callable[[asyncpg.Connection, dict], Awaitable[None]]


class CreditRecord:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_credit(self, account_id: str, order: dict, listed: bool,
                            also: AlsoRecord | None = None) -> tuple[dict, bool]:
        """(the order as recorded, True when recorded now); raises ``DatabaseUnavailable``.

        ``also`` runs in the same transaction when the order is recorded now (not on a repeat)."""
        async with self.db.transaction() as conn:
            inserted = await conn.fetchval(
                """INSERT INTO orders (id, account_id, reference, kind, amount_micro, listed, body, created)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account_id, reference) DO NOTHING
                   RETURNING id""",
                order["id"], account_id, order["reference"], order["kind"], order["amount_micro"], listed, order,
                order["created"])
            if inserted is None:
                body = await conn.fetchval("SELECT body FROM orders WHERE account_id = $1 AND reference = $2",
                                           account_id, order["reference"])
                return body, False
            await conn.execute(
                """INSERT INTO ledger (account_id, reason, reference, amount_micro) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (account_id, reason, reference) DO NOTHING""",
                account_id, order["kind"], order["reference"], order["amount_micro"])
            if also is not None:
                await also(conn, order)
        return order, True
