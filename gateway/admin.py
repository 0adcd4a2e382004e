"""The operator's admin API (``Authorization: Bearer $APIINONE_ADMIN_TOKEN``, checked by the route table).

Each change is written to the operator audit log (gateway/audit_log.py) once it took effect.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from aiohttp import web
from pydantic import Field

from gateway.audit_log import admin_actor
from gateway.inputs import read_body
from gateway.state import GATEWAY
from shared.accounts import TooManyKeys
from shared.credits import AccountNotFound
from shared.errors import ApiError, bad_request, not_found
from shared.key_state import enable_key
from shared.money import credits_to_micro
from shared.pricing import PPM, parse_multiplier
from shared.fallback_counts import fallback_counts
from shared.nodes import node_status
from shared.operator_audit import Action
from shared.protocol import RECORD_TEXT, WireModel
from shared.supervision import supervisor_status

log = structlog.get_logger()

PositiveInt = Annotated[int, Field(ge=1, le=2**31 - 1)]  # the record keeps these as 32-bit integers
MAX_CREDITS = 1_000_000_000  # per call; keeps every balance far inside Redis's 64-bit integers
Credits = Annotated[int | float, Field(gt=0, le=MAX_CREDITS)]
# A price multiplier: a JSON number or exact decimal text ("1.25"), above 0, at most 6 decimals (shared/pricing.py).
Multiplier = int | float | Annotated[str, Field(max_length=32)]


class NewAccount(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=RECORD_TEXT)]
    credits: Annotated[int | float, Field(ge=0, le=MAX_CREDITS)] = 0
    # defaults for the account's new keys
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    price_multiplier: Multiplier | None = None  # every price this account pays, times this (default 1)


class AccountUpdate(WireModel):
    price_multiplier: Multiplier


class NewKey(WireModel):
    name: Annotated[str, Field(max_length=200, pattern=RECORD_TEXT)] = "default"
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    credit_limit: Credits | None = None  # total credits this key may spend
    daily_credit_limit: Credits | None = None  # per UTC day
    expires_at: PositiveInt | None = None  # unix seconds


class NewTopup(WireModel):
    credits: Credits
    reference: Annotated[str, Field(min_length=1, max_length=200, pattern=RECORD_TEXT)]


def account_state(account: dict | None) -> dict | None:
    """An account as the audit log keeps it before and after a change."""
    if account is None:
        return None
    return {f: account[f] for f in ("id", "name", "balance_micro", "held_micro", "price_multiplier_ppm")}


def credits_param(credits: int | float, param: str) -> int:
    try:
        return credits_to_micro(credits)
    except ValueError as exc:
        raise bad_request(str(exc), param=param) from None


def _multiplier(value: int | float | str) -> int:
    try:
        return parse_multiplier(value)
    except ValueError as exc:
        raise bad_request(f"Invalid price_multiplier: {exc}.", param="price_multiplier") from None


async def create_account(request: web.Request) -> web.Response:
    body = await read_body(request, NewAccount)
    gw = request.app[GATEWAY]
    multiplier = PPM if body.price_multiplier is None else _multiplier(body.price_multiplier)
    account = await gw.accounts.create_account(body.name, credits_param(body.credits, "credits"), rpm=body.rpm or 0,
                                               tpm=body.tpm or 0, max_concurrent=body.max_concurrent or 0)
    if multiplier != PPM:
        account = await gw.accounts.set_price_multiplier(account["id"], multiplier)
    await gw.operator_audit.record(admin_actor(request), Action.ACCOUNT_CREATE, account["id"], None,
                                   account_state(account))
    return web.json_response(account, status=201)


async def update_account(request: web.Request) -> web.Response:
    """The account's price multiplier: its next request is held and charged at it (in flight ones keep theirs)."""
    body = await read_body(request, AccountUpdate)
    gw = request.app[GATEWAY]
    account_id = request.match_info["account_id"]
    try:
        before = await gw.accounts.get_account(account_id)
        account = await gw.accounts.set_price_multiplier(account_id, _multiplier(body.price_multiplier))
    except AccountNotFound:
        raise not_found(f"No account {account_id!r}.") from None
    await gw.operator_audit.record(admin_actor(request), Action.ACCOUNT_UPDATE, account_id, account_state(before),
                                   account_state(account))
    return web.json_response(account)


async def list_accounts(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response({"object": "list", "data": await gw.accounts.list_accounts(), "has_more": False})


async def get_account(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        return web.json_response(await gw.accounts.get_account(request.match_info["account_id"]))
    except AccountNotFound:
        raise not_found(f"No account {request.match_info['account_id']!r}.") from None


async def create_key(request: web.Request) -> web.Response:
    body = await read_body(request, NewKey)
    gw = request.app[GATEWAY]
    try:
        key = await gw.accounts.create_key(
            request.match_info["account_id"], body.name, expires_at=body.expires_at or 0, rpm=body.rpm, tpm=body.tpm,
            max_concurrent=body.max_concurrent,
            credit_limit_micro=credits_param(body.credit_limit, "credit_limit") if body.credit_limit else None,
            daily_credit_limit_micro=(credits_param(body.daily_credit_limit, "daily_credit_limit")
                                      if body.daily_credit_limit else None))
    except AccountNotFound:
        raise not_found(f"No account {request.match_info['account_id']!r}.") from None
    except TooManyKeys as exc:
        raise ApiError(409, str(exc), "invalid_request_error", "too_many_keys") from None
    await gw.operator_audit.record(admin_actor(request), Action.KEY_CREATE, key["id"], None,
                                   {f: v for f, v in key.items() if f != "key"})  # never the key itself
    return web.json_response(key, status=201)


async def list_keys(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response({"object": "list", "data": await gw.accounts.list_keys(request.match_info["account_id"]),
                              "has_more": False})


async def delete_key(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key_id = request.match_info["key_id"]
    record = await gw.accounts.key_by_id(key_id)
    if not await gw.accounts.revoke_key(key_id):
        raise not_found(f"No key {key_id!r}.")
    await gw.operator_audit.record(admin_actor(request), Action.KEY_REVOKE, key_id,
                                   record.public() if record else {"id": key_id}, {"id": key_id, "revoked": True})
    return web.json_response({"id": key_id, "object": "api_key", "deleted": True})


async def create_topup(request: web.Request) -> web.Response:
    body = await read_body(request, NewTopup)
    gw = request.app[GATEWAY]
    account_id = request.match_info["account_id"]
    try:
        before = await gw.accounts.get_account(account_id)
        order, created = await gw.credits.credit(account_id, credits_param(body.credits, "credits"), body.reference)
        if created:  # a repeated reference changed nothing: nothing to audit
            await gw.operator_audit.record(admin_actor(request), Action.CREDITS_TOPUP, account_id,
                                           account_state(before), {**account_state(await gw.accounts.get_account(
                                               account_id)), "order": order})
    except AccountNotFound:
        raise not_found(f"No account {account_id!r}.") from None
    return web.json_response(order, status=201 if created else 200)


async def nodes(request: web.Request) -> web.Response:
    """The nodes' worker pools, (under `apiinone run`) the supervised processes with their restarts, and the
    requests moved to a fallback model, per model and fallback."""
    gw = request.app[GATEWAY]
    return web.json_response({"object": "list",
                              "data": await node_status(gw.redis, gw.catalog, gw.settings.worker_lease_s),
                              "supervisors": await supervisor_status(gw.redis),
                              "fallbacks": await fallback_counts(gw.redis)})


async def enable_upstream_key(request: web.Request) -> web.Response:
    """Every worker of the node takes the key back at once (shared/key_state.py)."""
    gw = request.app[GATEWAY]
    node, label = request.match_info["node"], request.match_info["key"]
    if node not in gw.catalog.nodes:
        raise not_found(f"No node {node!r}.")
    was_disabled = await enable_key(gw.redis, gw.scripts, node, label)
    if was_disabled is None:
        raise not_found(f"Node {node!r} has no upstream key ending in {label!r}.")
    log.warning("upstream key re-enabled by an operator", node=node, key=label, was_disabled=was_disabled)
    await gw.operator_audit.record(admin_actor(request), Action.UPSTREAM_KEY_ENABLE, f"{node}/{label}",
                                   {"disabled": was_disabled}, {"state": "active"})
    return web.json_response({"object": "upstream_key", "node": node, "key": label, "state": "active",
                              "was_disabled": was_disabled})


async def audit(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rows = await gw.credits.audit()  # across Redis and Postgres (shared/audit.py)
    return web.json_response({"object": "list", "data": rows, "ok": all(r["ok"] for r in rows)})

