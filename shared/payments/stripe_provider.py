"""Stripe Checkout, through the official ``stripe`` package (``STRIPE_API_BASE`` points it elsewhere in tests).

Webhooks are verified with ``stripe.WebhookSignature.verify_header``: the ``Stripe-Signature`` header's
HMAC-SHA256 over ``<timestamp>.<raw body>`` with ``STRIPE_WEBHOOK_SECRET``, the timestamp within the
tolerance. Events used (amounts in minor units):

* ``checkout.session.completed``: paid when ``payment_status`` is ``paid`` (else the payment is pending,
  an async method, and ``checkout.session.async_payment_succeeded``/``_failed`` follows);
* ``checkout.session.expired``;
* ``charge.refunded`` (each refund in ``refunds.data``) and ``refund.created``/``refund.updated``, keyed by
  the refund's id (only ``succeeded`` refunds take credits back);
* ``charge.dispute.created`` (credits taken back) and ``charge.dispute.closed`` with ``won`` (given back).
"""

from __future__ import annotations

import time

import orjson
import stripe

from shared.payments.provider import (Checkout, EventKind, InvalidEvent, Package, PaymentEvent, PaymentProvider,
                                     ProviderUnavailable)


def _session_event(kind: EventKind, event_id: str, session: dict) -> PaymentEvent:
    return PaymentEvent(kind, event_id, session_id=session.get("id") or "",
                        payment_id=session.get("payment_intent") or "", amount=int(session.get("amount_total") or 0),
                        currency=(session.get("currency") or "").lower())


def _refund_events(event_id: str, charge: dict) -> list[PaymentEvent]:
    refunds = (charge.get("refunds") or {}).get("data") or []
    return [PaymentEvent(EventKind.REFUND, event_id, payment_id=charge.get("payment_intent") or "",
                         amount=int(r.get("amount") or 0), currency=(r.get("currency") or "").lower(),
                         item_id=r["id"]) for r in refunds if r.get("status") == "succeeded"]


def events_of(event: dict) -> list[PaymentEvent]:
    """A verified Stripe event, as what it means for an order."""
    etype, obj, eid = event.get("type"), (event.get("data") or {}).get("object") or {}, event.get("id") or ""
    if etype == "checkout.session.completed":
        paid = obj.get("payment_status") in ("paid", "no_payment_required")
        return [_session_event(EventKind.PAID if paid else EventKind.AWAITING, eid, obj)]
    if etype == "checkout.session.async_payment_succeeded":
        return [_session_event(EventKind.PAID, eid, obj)]
    if etype == "checkout.session.async_payment_failed":
        return [_session_event(EventKind.FAILED, eid, obj)]
    if etype == "checkout.session.expired":
        return [_session_event(EventKind.EXPIRED, eid, obj)]
    if etype == "charge.refunded":
        return _refund_events(eid, obj)
    if etype in ("refund.created", "refund.updated") and obj.get("status") == "succeeded":
        return [PaymentEvent(EventKind.REFUND, eid, payment_id=obj.get("payment_intent") or "",
                             amount=int(obj.get("amount") or 0), currency=(obj.get("currency") or "").lower(),
                             item_id=obj.get("id") or "")]
    if etype == "charge.dispute.created":
        return [PaymentEvent(EventKind.DISPUTE_OPENED, eid, payment_id=obj.get("payment_intent") or "",
                             amount=int(obj.get("amount") or 0), currency=(obj.get("currency") or "").lower(),
                             item_id=obj.get("id") or "")]
    if etype == "charge.dispute.closed" and obj.get("status") == "won":
        return [PaymentEvent(EventKind.DISPUTE_WON, eid, payment_id=obj.get("payment_intent") or "",
                             amount=int(obj.get("amount") or 0), currency=(obj.get("currency") or "").lower(),
                             item_id=obj.get("id") or "")]
    return [PaymentEvent(EventKind.IGNORED, eid)]


def _with_query(url: str, query: str) -> str:
    """The customer comes back to ``url`` with the outcome and the order (the return page shows its state)."""
    return url + ("&" if "?" in url else "?") + query


class StripeProvider(PaymentProvider):
    name = "stripe"

    def __init__(self, secret_key: str, webhook_secret: str | None, api_base: str | None = None,
                 tolerance_s: int = 300) -> None:
        self.client = stripe.StripeClient(secret_key, base_addresses={"api": api_base} if api_base else None,
                                          http_client=stripe.AIOHTTPClient(), max_network_retries=2)
        self.webhook_secret = webhook_secret
        self.tolerance_s = tolerance_s

    async def create_checkout(self, order_id: str, package: Package, return_url: str) -> Checkout:
        try:
            session = await self._create_session(order_id, package, return_url)
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe: {exc.user_message or type(exc).__name__}") from None
        return Checkout(session.id, session.url or "")

    async def _create_session(self, order_id: str, package: Package, return_url: str):
        return await self.client.v1.checkout.sessions.create_async(params={
            "mode": "payment", "client_reference_id": order_id, "metadata": {"order_id": order_id},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": package.currency, "unit_amount": package.amount,
                "product_data": {"name": f"{package.credits_micro // 1_000_000} credits ({package.name})"}}}],
            "success_url": _with_query(return_url, "checkout=success&order=" + order_id),
            "cancel_url": _with_query(return_url, "checkout=cancelled&order=" + order_id),
        }, options={"idempotency_key": "checkout-" + order_id})

    def parse_event(self, body: bytes, headers: dict[str, str]) -> list[PaymentEvent]:
        if not self.webhook_secret:
            raise InvalidEvent("STRIPE_WEBHOOK_SECRET is not set: no event can be verified.")
        header = headers.get("Stripe-Signature") or ""
        try:
            stripe.WebhookSignature.verify_header(body.decode(), header, self.webhook_secret, self.tolerance_s)
            event = orjson.loads(body)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise InvalidEvent(str(exc) or "invalid event") from None
        # Stripe's check refuses only old timestamps; one from the future is as suspect (a clock far off or a forgery
        # made to outlive the tolerance), so refuse both sides.
        stamp = dict(part.split("=", 1) for part in header.split(",") if "=" in part).get("t", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > self.tolerance_s:
            raise InvalidEvent("the signature's timestamp is outside the tolerance")
        if not isinstance(event, dict):
            raise InvalidEvent("an event is a JSON object")
        return events_of(event)
