"""Redemption codes over HTTP: the operator makes and disables batches, the customer redeems (shared/redemption.py)."""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated

import orjson
from aiohttp import web
from pydantic import Field

from gateway.admin import Credits, credits_param
from gateway.auth import request_key
from gateway.edge import edge
from gateway.inputs import QueryParam, read_body
from gateway.state import GATEWAY
from shared.errors import ApiError, bad_request, not_found, rate_limited
from shared.money import micro_to_decimal
from shared.protocol import WireModel
from shared.redemption import MAX_CODE_TEXT, Outcome

MAX_CODES_PER_BATCH = 10_000
MAX_USES = 1_000_000
FORMAT = QueryParam("format", {"type": "string", "enum": ["json", "csv"]},
                    "csv: the codes as a CSV file (code,credits,uses,expires_at,batch_id) to hand out; shown once.")


class NewCodes(WireModel):
    count: Annotated[int, Field(ge=1, le=MAX_CODES_PER_BATCH)]
    credits: Credits  # each use credits this much
    uses: Annotated[int, Field(ge=1, le=MAX_USES)] = 1  # per code
    expires_at: Annotated[int, Field(ge=1)] | None = None  # unix seconds


class Redeem(WireModel):
    code: Annotated[str, Field(min_length=1, max_length=MAX_CODE_TEXT)]


def invalid_code() -> ApiError:
    return not_found("This code is unknown, used up, disabled or expired.", code="invalid_code", param="code")


def codes_csv(batch: dict, status: int = 201) -> web.Response:
    """A new batch's codes as a CSV file to hand out (also the dashboard's download)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["code", "credits", "uses", "expires_at", "batch_id"])
    credits_text = format(micro_to_decimal(batch["credits_micro"]).normalize(), "f")  # "2", "2.5", "50": exact
    for code in batch["codes"]:
        writer.writerow([code, credits_text, batch["uses"], batch["expires_at"] or "", batch["id"]])
    return web.Response(status=status, body=out.getvalue().encode(), content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{batch["id"]}.csv"', "Cache-Control": "no-store"})


async def create_codes(request: web.Request) -> web.Response:
    """A batch of codes, shown only in this answer (JSON, or CSV with ``?format=csv``)."""
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise bad_request("Invalid value for 'format': expected 'json' or 'csv'.", param="format")
    body = await read_body(request, NewCodes)
    if body.expires_at is not None and body.expires_at <= time.time():
        raise bad_request("expires_at is in the past.", param="expires_at")
    gw = request.app[GATEWAY]
    batch = await gw.redemptions.create_batch(body.count, credits_param(body.credits, "credits"), body.uses,
                                              body.expires_at or 0)
    if fmt == "csv":
        return codes_csv(batch)
    return web.json_response(batch, status=201, headers={"Cache-Control": "no-store"})


async def disable_codes(request: web.Request) -> web.Response:
    """Every code of the batch stops working at once (uses already redeemed stay credited)."""
    gw = request.app[GATEWAY]
    batch_id = request.match_info["batch_id"]
    result = await gw.redemptions.disable_batch(batch_id)
    if result is None:
        raise not_found(f"No redemption code batch {batch_id!r}.")
    return web.json_response(result)


async def redeem(request: web.Request) -> web.Response:
    """Credit the account with one use of a code; the answer is its balance (as GET /billing/credits)."""
    body = await read_body(request, Redeem)
    gw = request.app[GATEWAY]
    account_id = request_key(request).account_id
    result = await gw.redemptions.redeem(account_id, body.code, edge(request).client_address(request))
    if result.outcome == Outcome.THROTTLED:
        raise rate_limited("Too many unknown codes tried; try again later.", result.retry_after_s)
    if result.outcome != Outcome.CLAIMED:
        raise invalid_code()
    balance = await gw.credits.balance(account_id)
    balance["order"] = result.order
    return web.json_response(balance, dumps=lambda o: orjson.dumps(o).decode())
