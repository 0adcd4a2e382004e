"""The low-balance alert's threshold and webhook URL, set on the Credits page (``shared/low_balance.py`` alerts).

The webhook URL is held to the batch callbacks' rule (public https addresses only, unless
``APIINONE_CALLBACK_ALLOW_PRIVATE``; ``gateway/balance_alert.py``, which the API uses too), checked here
and again when the event is sent.
"""

from __future__ import annotations

from aiohttp import web

from gateway.balance_alert import MAX_THRESHOLD_MICRO, webhook_refusal
from gateway.dashboard.render import account_id, gateway, notify, see_other
from shared.low_balance import BalanceAlerts
from shared.money import credits_to_micro


async def current_alert(request: web.Request) -> dict | None:
    db = gateway(request).db
    return await BalanceAlerts(db).get(account_id(request)) if db is not None else None


async def set_alert(request: web.Request) -> web.Response:
    db = gateway(request).db
    if db is None:
        raise web.HTTPNotFound(text="Alerts need the record (Postgres), which this service runs without.")
    form = await request.post()
    raw = str(form.get("threshold", "")).strip().replace(",", "")
    webhook_url = str(form.get("webhook_url", "")).strip() or None
    if not raw:
        await BalanceAlerts(db).set(account_id(request), None)
        await notify(request, "The low-balance alert is off.")
        return see_other("/dashboard/credits#alert")
    try:
        micro = credits_to_micro(raw)
    except ValueError:
        micro = 0
    if not 0 < micro <= MAX_THRESHOLD_MICRO:
        await notify(request, "The threshold must be a number of credits above zero, like 100 or 2.5.", "error")
        return see_other("/dashboard/credits#alert")
    refusal = webhook_refusal(webhook_url, gateway(request).settings)
    if refusal:
        await notify(request, f"The webhook URL {refusal}; nothing was changed.", "error")
        return see_other("/dashboard/credits#alert")
    await BalanceAlerts(db).set(account_id(request), micro, webhook_url)
    also = " and post a signed event to your webhook" if webhook_url else ""
    await notify(request, f"We'll mail you{also} once when a charge takes the balance below {raw} credits.")
    return see_other("/dashboard/credits#alert")


def setup(sub: web.Application) -> None:
    sub.router.add_post("/credits/alert", set_alert)
