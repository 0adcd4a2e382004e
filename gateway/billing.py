"""The account's billing API (its own API key): credits (Redis, the hot state); usage, orders and ledger
(Postgres, the record, merged with the not-yet-archived Redis tail: ``shared/history.py``)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.auth import request_key
from gateway.inputs import Paging, QueryParam, int_param
from gateway.state import GATEWAY
from shared.errors import bad_request
from shared.db.history_reads import order_rows
from shared.history import ROW_ID_PATTERN, UsageFilter, is_row_id, ledger_page, usage_page
from shared.keys import AccountKeys

INT_FIELDS = {"prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "latency_ms", "ttft_ms",
              "queue_ms", "created", "charged_micro", "hold_micro", "stream", "amount", "balance",
              "price_multiplier_ppm", "input_tokens", "input_micro", "cached_input_micro", "output_micro",
              "catalog_version"}
# A malformed row id (or "0-0") is refused by Redis: that is the client's 400, never a 5xx.
PAGING = Paging(20, 100, "The id of the last row of the previous page.", is_row_id, ROW_ID_PATTERN)
MAX_SINCE_S = 10**12  # unix seconds: year 33,000
USAGE_FILTERS = (
    QueryParam("since", {"type": "integer"}, "Only rows from this time on (unix seconds)."),
    QueryParam("model", {"type": "string"}, "Only rows of this model."),
    QueryParam("key", {"type": "string"}, "Only rows of this key id."))


def _row(stream_id: str, fields: dict, obj: str) -> dict:
    row: dict = {"id": stream_id, "object": obj}
    for k, v in fields.items():
        row[k] = int(v) if k in INT_FIELDS and v.lstrip("-").isdigit() else (None if v == "" and k in INT_FIELDS else v)
    return row


async def credits(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    balance = await gw.credits.balance(request_key(request).account_id)
    return web.json_response(balance, dumps=lambda o: orjson.dumps(o).decode())


async def usage(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    since = int_param(request, "since", None)
    if since is not None and abs(since) > MAX_SINCE_S:  # its milliseconds would overflow Redis' and Postgres' ids
        raise bad_request(f"Invalid value for 'since': at most {MAX_SINCE_S} (unix seconds).", param="since")
    rows = UsageFilter.since(since, model=request.query.get("model") or "",
                             key_id=request.query.get("key") or "")
    page = await usage_page(gw.redis, request_key(request).account_id, rows, after, limit, budget=None, db=gw.db)
    return web.json_response({"object": "list", "data": [_row(r["id"], r, "billing.usage") for r in page.rows],
                              "has_more": page.next_after is not None})


async def ledger(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    rows, more = await ledger_page(gw.redis, gw.db, request_key(request).account_id, after, limit)
    return web.json_response({"object": "list", "data": [_row(i, f, "billing.ledger_entry") for i, f in rows],
                              "has_more": more})


async def orders(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    account_id = request_key(request).account_id
    if gw.db is not None:  # recorded there first: Postgres has every order
        rows, more = await order_rows(gw.db, account_id, after, limit)
        return web.json_response({"object": "list", "data": [body for _, body in rows], "has_more": more})
    rows, more = await gw.credits.page(AccountKeys(account_id).orders, limit, after)
    return web.json_response({"object": "list", "data": [orjson.loads(f["order"]) for _, f in rows],
                              "has_more": more})
