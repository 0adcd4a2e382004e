"""What a payment provider does for top-ups, whichever it is: packages, checkouts, and its signed events.

A provider is one class (``shared/payments/stripe_provider.py`` is the first): it starts a checkout for
a pending order and turns a webhook's raw body and headers into ``PaymentEvent``s, refusing any whose
signature does not verify. What the events do to orders and credits is ``shared/payments/orders.py``'s,
the same for every provider.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import Enum

from shared.money import credits_to_micro


class InvalidEvent(Exception):
    """A webhook whose signature (or timestamp, or body) does not verify: 400, nothing changes."""


class ProviderUnavailable(Exception):
    """The provider refused or did not answer a call (a checkout could not start): 502."""


@dataclass(frozen=True)
class Package:
    """What a customer may buy: credits for an amount in a currency's minor units."""

    name: str
    credits_micro: int
    amount: int
    currency: str


def parse_packages(text: str) -> dict[str, Package]:
    """``name=credits:amount:currency,...`` (APIINONE_PAYMENT_PACKAGES)."""
    packages = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, spec = item.partition("=")
        credits, amount, currency = spec.split(":")
        if not name.isidentifier() or int(amount) < 1:
            raise ValueError(f"payment package {item!r}: name=credits:amount:currency")
        packages[name] = Package(name, credits_to_micro(int(credits)), int(amount), currency.lower())
    return packages


class EventKind(str, Enum):
    PAID = "paid"  # the payment succeeded: credit the order once
    AWAITING = "awaiting"  # checkout done, the payment not yet (an async method): remember the payment id
    FAILED = "failed"
    EXPIRED = "expired"
    REFUND = "refund"  # one refund (by its id) of part or all of the payment
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"
    IGNORED = "ignored"


@dataclass(frozen=True)
class PaymentEvent:
    kind: EventKind
    event_id: str
    session_id: str = ""  # checkout events
    payment_id: str = ""  # every event that has it (refunds and disputes find their order by it)
    amount: int = 0  # minor units: paid, refunded or disputed
    currency: str = ""
    item_id: str = ""  # the refund's or the dispute's id


@dataclass(frozen=True)
class Checkout:
    session_id: str
    url: str


class PaymentProvider(abc.ABC):
    name: str

    @abc.abstractmethod
    async def create_checkout(self, order_id: str, package: Package, return_url: str) -> Checkout:
        """Start the provider's checkout for a pending order; raises ``ProviderUnavailable``."""

    @abc.abstractmethod
    def parse_event(self, body: bytes, headers: dict[str, str]) -> list[PaymentEvent]:
        """The events of a webhook, its signature verified; raises ``InvalidEvent``."""
