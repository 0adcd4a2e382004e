"""The account's billing API (its own API key): credits (Redis, the hot state); usage, orders and ledger
(Postgres, the record, merged with the not-yet-archived Redis tail: ``shared/history.py``); the usage
export, every row of a time range as a CSV file streamed in constant memory (``gateway/usage_csv.py``)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.auth import request_key
from gateway.inputs import Paging, QueryParam, int_param
from gateway.record_reads import record_read
from gateway.state import GATEWAY
from gateway.usage_csv import stream_usage_csv
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
EXPORT_FILTERS = (
    QueryParam("since", {"type": "integer"}, "Only rows from this time on (unix seconds; default: the first)."),
    QueryParam("until", {"type": "integer"}, "Only rows before this time (unix seconds; default: now)."),
    *USAGE_FILTERS[1:])


def _row(stream_id: str, fields: dict, obj: str) -> dict:
    row: dict = {"id": stream_id, "object": obj}
    for k, v in fields.items():
        row[k] = int(v) if k in INT_FIELDS and v.lstrip("-").isdigit() else (None if v == "" and k in INT_FIELDS else v)
    return row


async def credits(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    balance = await gw.credits.balance(request_key(request).account_id)
    return web.json_response(balance, dumps=lambda o: orjson.dumps(o).decode())


def _time_param(request: web.Request, name: str) -> int | None:
    value = int_param(request, name, None)
    if value is not None and abs(value) > MAX_SINCE_S:  # its milliseconds would overflow Redis' and Postgres' ids
        raise bad_request(f"Invalid value for '{name}': at most {MAX_SINCE_S} (unix seconds).", param=name)
    return value


@record_read
async def usage(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    since = _time_param(request, "since")
    rows = UsageFilter.since(since, model=request.query.get("model") or "",
                             key_id=request.query.get("key") or "")
    page = await usage_page(gw.redis, request_key(request).account_id, rows, after, limit, budget=None, db=gw.db)
    return web.json_response({"object": "list", "data": [_row(r["id"], r, "billing.usage") for r in page.rows],
                              "has_more": page.next_after is not None})


@record_read
async def usage_export(request: web.Request) -> web.StreamResponse:
    """Every usage row from ``since`` (inclusive) to ``until`` (exclusive), newest first, as CSV."""
    since, until = _time_param(request, "since"), _time_param(request, "until")
    if since is not None and until is not None and until < since:
        raise bad_request("Invalid value for 'until': it is before 'since'.", param="until")
    rows = UsageFilter(model=request.query.get("model") or "", key_id=request.query.get("key") or "",
                       min_id=str(since * 1000) if since and since > 0 else "-",
                       max_id=str(max(until * 1000 - 1, 0)) if until is not None else "+")
    return await stream_usage_csv(request, request_key(request).account_id, rows)


@record_read
async def ledger(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    rows, more = await ledger_page(gw.redis, gw.db, request_key(request).account_id, after, limit)
    return web.json_response({"object": "list", "data": [_row(i, f, "billing.ledger_entry") for i, f in rows],
                              "has_more": more})


@record_read
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
