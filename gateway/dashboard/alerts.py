"""The low-balance alert's threshold, set on the Credits page (``shared/low_balance.py`` does the alerting)."""

from __future__ import annotations

from aiohttp import web

from gateway.dashboard.render import account_id, gateway, notify, see_other
from shared.low_balance import BalanceAlerts
from shared.money import credits_to_micro

MAX_THRESHOLD_MICRO = 10**15


async def current_alert(request: web.Request) -> dict | None:
    db = gateway(request).db
    return await BalanceAlerts(db).get(account_id(request)) if db is not None else None


async def set_alert(request: web.Request) -> web.Response:
    db = gateway(request).db
    if db is None:
        raise web.HTTPNotFound(text="Alerts need the record (Postgres), which this service runs without.")
    raw = str((await request.post()).get("threshold", "")).strip().replace(",", "")
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
    await BalanceAlerts(db).set(account_id(request), micro)
    await notify(request, f"We'll mail you once when a charge takes the balance below {raw} credits.")
    return see_other("/dashboard/credits#alert")


def setup(sub: web.Application) -> None:
    sub.router.add_post("/credits/alert", set_alert)
