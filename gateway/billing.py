"""The account's billing API (its own API key): credits, usage, orders, ledger."""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from gateway.state import GATEWAY
from shared.errors import bad_request
from shared.keys import AccountKeys

INT_FIELDS = {"prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "latency_ms", "ttft_ms",
              "queue_ms", "created", "charged_micro", "hold_micro", "stream", "amount", "balance"}
MAX_LIMIT = 100
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # a row id: <ms>-<seq>


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Invalid value for '{name}': expected an integer.", param=name) from None


def _row(stream_id: str, fields: dict, obj: str) -> dict:
    row: dict = {"id": stream_id, "object": obj}
    for k, v in fields.items():
        row[k] = int(v) if k in INT_FIELDS and v.lstrip("-").isdigit() else (None if v == "" and k in INT_FIELDS else v)
    return row


def _page_params(request: web.Request) -> tuple[int, str | None]:
    limit = _int_param(request, "limit", 20)
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"'limit' must be between 1 and {MAX_LIMIT}.", param="limit")
    after = request.query.get("after")
    if after is not None:
        # Redis rejects a malformed stream id (and "(0-0"): that is the client's 400, not our 503.
        m = STREAM_ID.fullmatch(after)
        ms, seq = (int(m[1]), int(m[2])) if m else (0, 0)
        if (ms, seq) == (0, 0) or ms >= 2**64 or seq >= 2**64:
            raise bad_request("Invalid value for 'after': expected the id of a row from a previous page.",
                              param="after")
    return limit, after


async def credits(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.keys.authenticate(request)
    return web.json_response(await gw.credits.balance(key.account_id), dumps=lambda o: orjson.dumps(o).decode())


async def usage(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.keys.authenticate(request)
    limit, after = _page_params(request)
    since = _int_param(request, "since", None)
    model, key_filter = request.query.get("model"), request.query.get("key")
    stream = AccountKeys(key.account_id).usage
    data: list[dict] = []
    has_more, more = False, True
    while more and not has_more:
        rows, more = await gw.credits.page(stream, MAX_LIMIT, after)
        for stream_id, fields in rows:
            after = stream_id
            if since is not None and int(stream_id.split("-")[0]) < since * 1000:
                more = False  # rows are newest first: everything after this is older
                break
            if (model and fields.get("model") != model) or (key_filter and fields.get("key_id") != key_filter):
                continue
            if len(data) == limit:
                has_more = True
                break
            data.append(_row(stream_id, fields, "billing.usage"))
    return web.json_response({"object": "list", "data": data, "has_more": has_more})


async def ledger(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.keys.authenticate(request)
    limit, after = _page_params(request)
    rows, more = await gw.credits.page(AccountKeys(key.account_id).ledger, limit, after)
    return web.json_response({"object": "list", "data": [_row(i, f, "billing.ledger_entry") for i, f in rows],
                              "has_more": more})


async def orders(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.keys.authenticate(request)
    limit, after = _page_params(request)
    rows, more = await gw.credits.page(AccountKeys(key.account_id).orders, limit, after)
    return web.json_response({"object": "list", "data": [orjson.loads(f["order"]) for _, f in rows],
                              "has_more": more})
