"""The customer adds credits: buy a package through the payment provider's checkout, or redeem a code.

Buying creates the pending order server-side (``shared/payments/orders.py``) and sends the browser to
the provider's checkout page; the provider sends it back to ``/dashboard/credits/checkout`` with the
order's id, where the page shows the order as it is and follows it (``checkout.js`` asks
``/dashboard/credits/checkout/status`` each second) until the provider's webhook moves it on: the
customer may come back before the payment is confirmed. Redeeming goes through
``shared/redemption.py``, as ``POST /billing/redeem`` does, under the same throttles.
"""

from __future__ import annotations

from aiohttp import web

from gateway.dashboard.render import account_id, error_page, gateway, own_base_url, render
from gateway.dashboard.session import client_address
from gateway.dashboard.signin import wait_text
from shared.credits import AccountFenced, AccountNotFound
from shared.db.database import DatabaseUnavailable
from shared.payments.provider import ProviderUnavailable
from shared.redemption import MAX_CODE_TEXT, Outcome

ORDER_ID_MAX = 64


def _packages(request: web.Request) -> list[dict]:
    payments = gateway(request).payments
    if payments is None:
        return []
    return [{"name": p.name, "credits_micro": p.credits_micro, "amount": p.amount, "currency": p.currency.upper()}
            for p in payments.packages.values()]


async def add_page(request: web.Request, redeemed: dict | None = None, error: str = "", code: str = "",
                   status: int = 200, headers: dict | None = None) -> web.Response:
    gw = gateway(request)
    balance = await gw.credits.balance(account_id(request))
    resp = await render(request, "add_credits.html", {
        "packages": _packages(request), "payments_on": gw.payments is not None, "balance": balance,
        "redeemed": redeemed, "error": error, "code": code}, status=status, nav="credits")
    resp.headers.update(headers or {})
    return resp


async def buy(request: web.Request) -> web.Response:
    form = await request.post()
    gw = gateway(request)
    if gw.payments is None:
        return await error_page(request, 404, "Card payments are off",
                                "This service takes no card payments; ask its operator, or redeem a code.")
    package = gw.payments.packages.get(str(form.get("package", "")))
    if package is None:
        return await add_page(request, error="Pick one of the packages below.", status=400)
    back = own_base_url(request) + "/dashboard/credits/checkout"
    try:
        order, url = await gw.payments.create(account_id(request), package, back)
    except (ProviderUnavailable, DatabaseUnavailable) as exc:
        return await add_page(request, error=f"The checkout could not be started ({exc}). Try again in a moment.",
                              status=502)
    # A page that moves on by itself, not a redirect: the pages' CSP (form-action 'self') stops a form's redirect
    # to another origin, and the provider's checkout is one.
    return await render(request, "checkout_redirect.html", {"order": order, "checkout_url": url},
                        nav="credits")


async def _own_order(request: web.Request) -> dict:
    payments = gateway(request).payments
    order_id = request.query.get("order", "")[:ORDER_ID_MAX]
    order = await payments.get(account_id(request), order_id) if payments and order_id else None
    if order is None:
        raise web.HTTPNotFound(text="There is no such order for this account.")
    return order


async def checkout_return(request: web.Request) -> web.Response:
    order = await _own_order(request)
    gw = gateway(request)
    return await render(request, "checkout_return.html", {
        "order": order, "cancelled": request.query.get("checkout") == "cancelled",
        "balance": await gw.credits.balance(account_id(request))}, nav="credits")


async def checkout_status(request: web.Request) -> web.Response:
    order = await _own_order(request)
    balance = await gateway(request).credits.balance(account_id(request))
    return web.json_response({"id": order["id"], "status": order["status"],
                              "balance_micro": balance["balance_micro"]})


async def redeem(request: web.Request) -> web.Response:
    form = await request.post()
    code = str(form.get("code", "")).strip()[:MAX_CODE_TEXT]
    if not code:
        return await add_page(request, error="Type or paste the code first.", status=400)
    gw = gateway(request)
    try:
        result = await gw.redemptions.redeem(account_id(request), code, client_address(request))
    except (DatabaseUnavailable, AccountFenced):
        return await add_page(request, error="Codes cannot be redeemed right now. Try again in a moment; the code "
                              "was not used.", code=code, status=503, headers={"Retry-After": "5"})
    except AccountNotFound:
        raise web.HTTPNotFound(text="This account no longer exists.") from None
    if result.outcome == Outcome.THROTTLED:
        return await add_page(request, error=f"Too many unknown codes were tried. Wait "
                              f"{wait_text(result.retry_after_s)} and try again.", code=code, status=429,
                              headers={"Retry-After": str(result.retry_after_s)})
    if result.outcome != Outcome.CLAIMED:
        return await add_page(request, error="This code is unknown, used up, disabled or expired. Check it and "
                              "try again.", code=code, status=404)
    return await add_page(request, redeemed=result.order)


def setup(sub: web.Application) -> None:
    r = sub.router
    r.add_get("/credits/add", add_page, name="add_credits")
    r.add_post("/credits/buy", buy)
    r.add_post("/credits/redeem", redeem)
    r.add_get("/credits/checkout", checkout_return, name="checkout_return")
    r.add_get("/credits/checkout/status", checkout_status, name="checkout_status")
