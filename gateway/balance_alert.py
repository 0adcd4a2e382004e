"""GET/POST /billing/alert: the account's low-balance alert over the API, as the dashboard's Credits page sets it.

One mail to the account's users (and, with a webhook URL, one signed event) when a charge takes the
balance below the threshold; re-armed when credits lift it back (``shared/low_balance.py``). The
rules for a threshold and a webhook URL are defined here once; the dashboard's form uses them too.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from gateway.admin import Credits, credits_param
from gateway.auth import request_key
from gateway.inputs import read_body
from gateway.record_reads import record_read
from gateway.state import GATEWAY
from shared.callback_targets import url_refusal
from shared.errors import ApiError, bad_request
from shared.low_balance import BalanceAlerts
from shared.money import micro_to_credits
from shared.protocol import WireModel
from shared.settings import Settings

MAX_THRESHOLD_MICRO = 10**15
MAX_URL = 2048


class AlertSettings(WireModel):
    threshold: Credits | None  # credits; null turns the alert off
    webhook_url: Annotated[str, Field(min_length=1, max_length=MAX_URL)] | None = None


def webhook_refusal(webhook_url: str | None, settings: Settings) -> str | None:
    """Why this webhook URL is refused (the batch callbacks' rule: public https only), or None."""
    if webhook_url is None:
        return None
    if len(webhook_url) > MAX_URL:
        return "is too long"
    return url_refusal(webhook_url, settings.callback_allow_private)


def alert_object(row: dict | None) -> dict:
    threshold = row["threshold_micro"] if row else None
    return {"object": "billing.alert", "enabled": row is not None,
            "threshold": micro_to_credits(threshold) if threshold is not None else None,
            "threshold_micro": threshold, "webhook_url": row["webhook_url"] if row else None,
            "armed": bool(row and row["armed"]), "alerted_at": row["alerted_at"] if row else None}


def _alerts(request: web.Request) -> BalanceAlerts:
    db = request.app[GATEWAY].db
    if db is None:
        raise ApiError(503, "Low-balance alerts need the record (Postgres), which this service runs without.",
                       "server_error", "database_unavailable")
    return BalanceAlerts(db)


@record_read
async def get_alert(request: web.Request) -> web.Response:
    return web.json_response(alert_object(await _alerts(request).get(request_key(request).account_id)))


@record_read
async def set_alert(request: web.Request) -> web.Response:
    """Set (and arm) the threshold and the webhook URL, or turn the alert off with ``threshold: null``."""
    body = await read_body(request, AlertSettings)
    alerts, account_id = _alerts(request), request_key(request).account_id
    if body.threshold is None:
        await alerts.set(account_id, None)
    else:
        micro = credits_param(body.threshold, "threshold")
        if micro > MAX_THRESHOLD_MICRO:
            raise bad_request(f"The threshold is at most {micro_to_credits(MAX_THRESHOLD_MICRO):g} credits.",
                              param="threshold")
        refusal = webhook_refusal(body.webhook_url, request.app[GATEWAY].settings)
        if refusal:
            raise bad_request(f"The webhook URL {refusal}.", param="webhook_url")
        await alerts.set(account_id, micro, body.webhook_url)
    return web.json_response(alert_object(await alerts.get(account_id)))
