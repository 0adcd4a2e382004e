"""Payment orders: created pending before the checkout, moved forward only by the provider's verified events.

Every credit goes through ``Credits.credit`` (recorded in Postgres first, applied once per reference):

* a payment credits the package once, reference ``<provider>:pay:<session id>``, and marks the order paid
  in the same transaction; it is credited only when its amount and currency are the order's;
* a refund takes back credits in proportion to the amount refunded (``credits * refunded / paid``,
  rounded down: partial refunds included), reference ``<provider>:refund:<refund id>``; the order is
  ``refunded`` once refunds reach what was paid;
* a dispute takes back the disputed share (``<provider>:dispute:<id>``), a won one gives it back
  (``<provider>:dispute_won:<id>``).

Statuses only move forward (pending -> paid -> refunded; pending -> failed | expired): each transition
is a conditional UPDATE. A refund or dispute for an order not paid yet (events arrive out of order) is
``NotYet``: the webhook answers 409 and the provider delivers it again later. A balance may go below
zero by a take-back; the account's requests are then refused (402) until it is positive again.
"""

from __future__ import annotations

import time
import uuid

import asyncpg
import structlog

from shared.credits import Credits
from shared.db.database import Database
from shared.money import micro_to_credits
from shared.payments.provider import EventKind, Package, PaymentEvent, PaymentProvider

log = structlog.get_logger()


class NotYet(Exception):
    """The event needs an earlier one applied first (the provider retries it)."""


def _public(row: asyncpg.Record | dict) -> dict:
    return {"id": row["id"], "object": "billing.payment", "provider": row["provider"], "package": row["package"],
            "credits": micro_to_credits(row["credits_micro"]), "amount": row["amount"], "currency": row["currency"],
            "status": row["status"], "refunded_amount": row["refunded_amount"], "session_id": row["session_id"],
            "created": row["created"], "updated": row["updated"]}


class PaymentOrders:
    def __init__(self, db: Database, credits: Credits, provider: PaymentProvider, packages: dict[str, Package]) -> None:
        self.db = db
        self.credits = credits
        self.provider = provider
        self.packages = packages

    async def create(self, account_id: str, package: Package, return_url: str) -> tuple[dict, str]:
        """A pending order, recorded before the customer is sent to the checkout; (order, checkout url)."""
        order_id, now = "pay_" + uuid.uuid4().hex[:24], int(time.time())
        await self.db.execute(
            """INSERT INTO payment_orders (id, account_id, provider, package, credits_micro, amount, currency,
                                           status, created, updated)
               VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8)""",
            order_id, account_id, self.provider.name, package.name, package.credits_micro, package.amount,
            package.currency, now)
        checkout = await self.provider.create_checkout(order_id, package, return_url)
        row = await self.db.fetchrow("UPDATE payment_orders SET session_id = $2 WHERE id = $1 RETURNING *",
                                     order_id, checkout.session_id)
        return _public(row), checkout.url

    async def get(self, account_id: str, order_id: str) -> dict | None:
        """One of the account's payment orders (another account's is None, as an unknown one)."""
        row = await self.db.fetchrow("SELECT * FROM payment_orders WHERE id = $1 AND account_id = $2", order_id,
                                     account_id)
        return _public(row) if row else None

    async def list(self, account_id: str, limit: int = 100) -> list[dict]:
        rows = await self.db.fetch("SELECT * FROM payment_orders WHERE account_id = $1 ORDER BY created DESC, id "
                                   "LIMIT $2", account_id, limit)
        return [_public(r) for r in rows]

    async def apply(self, event: PaymentEvent) -> str:
        """What the event did: ``credited``, ``replay``, ``updated``, ``ignored``, ``unknown_order``, ``mismatch``."""
        if event.kind == EventKind.IGNORED:
            return "ignored"
        if event.kind in (EventKind.PAID, EventKind.AWAITING, EventKind.FAILED, EventKind.EXPIRED):
            order = await self.db.fetchrow("SELECT * FROM payment_orders WHERE session_id = $1 AND provider = $2",
                                           event.session_id, self.provider.name)
        else:
            order = await self.db.fetchrow("SELECT * FROM payment_orders WHERE payment_id = $1 AND provider = $2",
                                           event.payment_id, self.provider.name)
        if order is None:
            if event.kind in (EventKind.REFUND, EventKind.DISPUTE_OPENED, EventKind.DISPUTE_WON) and event.payment_id:
                raise NotYet(f"no paid order has payment {event.payment_id!r} yet")
            log.warning("payment event for no order of ours", kind=event.kind.value, event=event.event_id)
            return "unknown_order"
        if event.kind == EventKind.PAID:
            return await self._paid(order, event)
        if event.kind == EventKind.AWAITING:
            await self.db.execute("UPDATE payment_orders SET payment_id = $2, updated = $3 WHERE id = $1 AND "
                                  "status = 'pending'", order["id"], event.payment_id or None, int(time.time()))
            return "updated"
        if event.kind in (EventKind.FAILED, EventKind.EXPIRED):
            await self.db.execute("UPDATE payment_orders SET status = $2, updated = $3 WHERE id = $1 AND "
                                  "status = 'pending'", order["id"], event.kind.value, int(time.time()))
            return "updated"
        return await self._take_back_or_return(order, event)

    async def _paid(self, order: asyncpg.Record, event: PaymentEvent) -> str:
        if order["status"] not in ("pending", "paid", "refunded"):
            log.error("payment for a closed order", order=order["id"], status=order["status"], event=event.event_id)
            return "ignored"
        if event.amount != order["amount"] or event.currency != order["currency"]:
            log.error("payment amount or currency differs from the order's: not credited", order=order["id"],
                      paid=event.amount, currency=event.currency, expected=order["amount"])
            return "mismatch"

        async def mark_paid(conn: asyncpg.Connection, _order: dict) -> None:
            await conn.execute("UPDATE payment_orders SET status = 'paid', payment_id = COALESCE($2, payment_id), "
                               "updated = $3 WHERE id = $1 AND status = 'pending'",
                               order["id"], event.payment_id or None, int(time.time()))

        _, created = await self.credits.credit(
            order["account_id"], order["credits_micro"], f"{self.provider.name}:pay:{order['session_id']}",
            reason="topup", note=f"{self.provider.name} payment {order['id']}", also_record=mark_paid)
        return "credited" if created else "replay"

    async def _take_back_or_return(self, order: asyncpg.Record, event: PaymentEvent) -> str:
        if order["status"] not in ("paid", "refunded"):
            raise NotYet(f"order {order['id']} is {order['status']}")
        if event.currency != order["currency"]:
            log.error("refund or dispute currency differs from the order's", order=order["id"], event=event.event_id)
            return "mismatch"
        share = order["credits_micro"] * min(event.amount, order["amount"]) // order["amount"]
        name = self.provider.name
        if event.kind == EventKind.DISPUTE_WON:
            taken = await self.db.fetchval("SELECT 1 FROM orders WHERE account_id = $1 AND reference = $2",
                                           order["account_id"], f"{name}:dispute:{event.item_id}")
            if not taken:
                raise NotYet(f"dispute {event.item_id} was not applied yet")
            _, created = await self.credits.credit(order["account_id"], share, f"{name}:dispute_won:{event.item_id}",
                                                   reason="dispute_won", note=f"{name} dispute won {order['id']}")
            return "credited" if created else "replay"
        refund = event.kind == EventKind.REFUND

        async def count_refund(conn: asyncpg.Connection, _order: dict) -> None:
            if refund:
                await conn.execute(
                    """UPDATE payment_orders SET refunded_amount = refunded_amount + $2, updated = $3,
                              status = CASE WHEN refunded_amount + $2 >= amount THEN 'refunded' ELSE status END
                        WHERE id = $1""", order["id"], event.amount, int(time.time()))

        kind = "refund" if refund else "dispute"
        _, created = await self.credits.credit(order["account_id"], -share, f"{name}:{kind}:{event.item_id}",
                                               reason=kind, note=f"{name} {kind} {order['id']}",
                                               also_record=count_refund)
        return "credited" if created else "replay"
