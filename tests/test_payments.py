"""Payments in process: packages from settings, Stripe's events as order events, and a second provider that
fits by adding one class (run against real Valkey and Postgres through PaymentOrders)."""

from __future__ import annotations

import pytest

from shared.accounts import Accounts
from shared.audit import audit_account
from shared.credits import Credits
from shared.db.credits_record import CreditRecord
from shared.db.directory import Directory
from shared.payments.orders import NotYet, PaymentOrders
from shared.payments.provider import (Checkout, EventKind, Package, PaymentEvent, PaymentProvider, parse_packages)
from shared.payments.stripe_provider import events_of
from shared.scripts import Scripts

M = 1_000_000


def test_packages_come_from_settings():
    packages = parse_packages("starter=1000:1000:USD, pro=5500:5000:eur")
    assert packages["pro"] == Package("pro", 5500 * M, 5000, "eur") and packages["starter"].currency == "usd"
    for bad in ("x=1:0:usd", "x=1:2", "1x=1:2:usd"):
        with pytest.raises(ValueError):
            parse_packages(bad)


def test_stripe_events_mean_order_events():
    def one(etype, obj):
        return events_of({"id": "evt_1", "type": etype, "data": {"object": obj}})

    unpaid = {"id": "cs_1", "payment_status": "unpaid", "amount_total": 5, "currency": "USD", "payment_intent": "pi"}
    assert one("checkout.session.completed", unpaid)[0].kind == EventKind.AWAITING
    paid = one("checkout.session.completed", {**unpaid, "payment_status": "paid"})[0]
    assert (paid.kind, paid.session_id, paid.amount, paid.currency) == (EventKind.PAID, "cs_1", 5, "usd")
    refunds = one("charge.refunded", {"payment_intent": "pi", "refunds": {"data": [
        {"id": "re_1", "amount": 2, "currency": "usd", "status": "succeeded"},
        {"id": "re_2", "amount": 3, "currency": "usd", "status": "pending"}]}})
    assert [(e.kind, e.item_id) for e in refunds] == [(EventKind.REFUND, "re_1")]
    assert one("charge.dispute.closed", {"id": "dp", "status": "lost"})[0].kind == EventKind.IGNORED
    assert one("customer.created", {})[0].kind == EventKind.IGNORED


class LedgerPay(PaymentProvider):
    """A second provider: one class. Its events are trusted here (the test hands them in directly)."""

    name = "ledgerpay"

    async def create_checkout(self, order_id: str, package: Package, return_url: str) -> Checkout:
        return Checkout("lp_" + order_id, "https://ledgerpay.example/" + order_id)

    def parse_event(self, body: bytes, headers: dict[str, str]) -> list[PaymentEvent]:
        raise NotImplementedError


async def test_a_second_provider_fits_by_adding_one_class(stores):
    redis, db = stores
    credits = Credits(redis, Scripts(redis), record=CreditRecord(db))
    account = (await Accounts(redis, credits, Directory(db)).create_account("a", 0))["id"]
    package = Package("p", 300 * M, 300, "usd")
    orders = PaymentOrders(db, credits, LedgerPay(), {"p": package})
    order, url = await orders.create(account, package, "http://x")
    assert order["status"] == "pending" and url.endswith(order["id"])
    with pytest.raises(NotYet):
        await orders.apply(PaymentEvent(EventKind.REFUND, "e0", payment_id="pay1", amount=100, currency="usd",
                                        item_id="r1"))
    paid = PaymentEvent(EventKind.PAID, "e1", session_id=order["session_id"], payment_id="pay1", amount=300,
                        currency="usd")
    assert [await orders.apply(paid) for _ in range(3)] == ["credited", "replay", "replay"]
    refund = PaymentEvent(EventKind.REFUND, "e2", payment_id="pay1", amount=100, currency="usd", item_id="r1")
    assert [await orders.apply(refund) for _ in range(3)] == ["credited", "replay", "replay"]
    assert (await credits.balance(account))["balance_micro"] == 200 * M
    assert (await orders.list(account))[0]["status"] == "paid"
    assert (await audit_account(redis, db, account))["ok"]
