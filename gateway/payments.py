"""Top-ups through a payment provider: packages, checkout, the provider's webhook (shared/payments/)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from gateway.auth import request_key
from gateway.inputs import read_body
from gateway.state import GATEWAY
from shared.errors import ApiError, bad_request
from shared.payments.orders import NotYet, PaymentOrders
from shared.payments.provider import InvalidEvent, ProviderUnavailable
from shared.protocol import WireModel


class NewCheckout(WireModel):
    package: Annotated[str, Field(min_length=1, max_length=64)]


def _payments(request: web.Request) -> PaymentOrders:
    payments = request.app[GATEWAY].payments
    if payments is None:
        raise ApiError(503, "Payments are not configured on this service.", "service_unavailable",
                       "payments_not_configured")
    return payments


async def packages(request: web.Request) -> web.Response:
    payments = request.app[GATEWAY].payments
    data = [] if payments is None else [
        {"object": "billing.package", "id": p.name, "credits": p.credits_micro // 1_000_000, "amount": p.amount,
         "currency": p.currency} for p in payments.packages.values()]
    return web.json_response({"object": "list", "data": data, "has_more": False})


async def checkout(request: web.Request) -> web.Response:
    """A pending order and the provider's checkout URL to send the customer to."""
    body = await read_body(request, NewCheckout)
    payments = _payments(request)
    package = payments.packages.get(body.package)
    if package is None:
        raise bad_request(f"No package {body.package!r}; see GET /billing/packages.", param="package")
    gw = request.app[GATEWAY]
    base = gw.settings.public_base_url or f"http://{gw.settings.host}:{gw.settings.port}"
    return_url = gw.settings.payment_return_url or base + "/dashboard/credits/checkout"  # shows the order
    try:
        order, url = await payments.create(request_key(request).account_id, package, return_url)
    except ProviderUnavailable as exc:
        raise ApiError(502, f"The payment provider could not start the checkout ({exc}); try again.",
                       "api_error", "provider_unavailable") from None
    return web.json_response({**order, "url": url}, status=201)


async def payment_orders(request: web.Request) -> web.Response:
    payments = _payments(request)
    rows = await payments.list(request_key(request).account_id)
    return web.json_response({"object": "list", "data": rows, "has_more": False})


async def stripe_webhook(request: web.Request) -> web.Response:
    """Stripe's events, verified over the raw body; 400 (nothing changes) when the signature does not verify."""
    payments = _payments(request)
    body = await request.read()
    try:
        events = payments.provider.parse_event(body, dict(request.headers))
    except InvalidEvent as exc:
        raise bad_request(f"Invalid event: {exc}", code="invalid_signature") from None
    try:
        results = [await payments.apply(event) for event in events]
    except NotYet as exc:  # an earlier event is missing: the provider delivers this one again later
        raise ApiError(409, f"Not applicable yet: {exc}", "invalid_request_error", "retry_later") from None
    return web.json_response({"received": True, "results": results})
