"""Operators' redemption code batches on the dashboard: make one (its codes download once, as a CSV), list, disable.

The same operations as ``POST /admin/redemption-codes`` and ``.../disable`` (``gateway/redemption.py``),
over ``shared/redemption.py``; the codes are in the download only, never stored or shown again.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.dashboard.render import gateway, notify, render, see_other
from gateway.dashboard.views import _credit_amount, _positive_int
from gateway.redemption import MAX_CODES_PER_BATCH, MAX_USES, codes_csv
from shared import ids


async def codes_page(request: web.Request, form=None, errors: dict | None = None, status: int = 200):
    gw = gateway(request)
    batches = await gw.redemptions.list_batches() if gw.db is not None else []
    return await render(request, "admin_codes.html", {"batches": batches, "form": form or {}, "errors": errors or {},
                                                      "now": time.time(), "record": gw.db is not None},
                        status=status, nav="admin_codes")


async def create_codes(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    errors: dict[str, str] = {}
    count = _positive_int(form, "count", "The number of codes", errors, upper=MAX_CODES_PER_BATCH)
    credits_micro = _credit_amount(form, "credits", "Credits per use", errors)
    uses = _positive_int(form, "uses", "Uses per code", errors, upper=MAX_USES) or 1
    days = _positive_int(form, "expires_days", "Expiry", errors, upper=3650)
    if count is None and "count" not in errors:
        errors["count"] = "How many codes? A whole number from 1 to 10,000."
    if credits_micro is None and "credits" not in errors:
        errors["credits"] = "How many credits does one use give?"
    if errors:
        return await codes_page(request, form, errors, status=400)
    expires_at = int(time.time()) + days * 86400 if days else 0
    batch = await gateway(request).redemptions.create_batch(count, credits_micro, uses, expires_at)
    return codes_csv(batch, status=200)  # the one time the codes are shown


async def disable_codes(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    result = await gateway(request).redemptions.disable_batch(batch_id) if ids.REDEMPTION_BATCH.matches(
        batch_id) else None
    if result is None:
        await notify(request, "There is no such batch.", "error")
    else:
        await notify(request, f"Batch {batch_id} is disabled: its {result['count']} codes stop working now.")
    return see_other("/dashboard/admin/codes")


def setup(sub: web.Application) -> None:
    r = sub.router
    r.add_get("/admin/codes", codes_page, name="admin_codes")
    r.add_post("/admin/codes", create_codes)
    r.add_post("/admin/codes/{batch_id}/disable", disable_codes)
