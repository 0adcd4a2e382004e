"""Operator pages: every account (create, top up, adjust with a reason, add users, view as), nodes, batches."""

from __future__ import annotations

import json
import uuid

import structlog
from aiohttp import web

from gateway.admin import account_state
from gateway.audit_log import operator_actor
from gateway.dashboard.data import account_rows, key_table, ledger_notes, recent_failures
from shared.db.history_reads import order_rows
from shared.history import ledger_page
from gateway.dashboard.render import base_url, current_session, gateway, notify, render, see_other, sessions, users
from gateway.files import BATCH_STORE
from gateway.dashboard.views import _credit_amount
from shared import ids
from shared.account_storage import stored_by_account
from shared.credits import AccountNotFound
from shared.fallback_counts import fallback_counts
from shared.key_state import enable_key
from shared.keys import AccountKeys
from shared.money import micro_to_credits
from shared.nodes import node_status
from shared.operator_audit import Action
from shared.pricing import multiplier_text, parse_multiplier
from shared.users import ROLES, UserError

log = structlog.get_logger()

MAX_REFERENCE = 200


async def accounts_page(request: web.Request, form=None, errors: dict | None = None, status: int = 200):
    query = request.query.get("q", "")
    rows, total = await account_rows(gateway(request).accounts, gateway(request).db, query)
    return await render(request, "admin_accounts.html", {
        "accounts": rows, "total": total, "q": query, "form": form or {}, "errors": errors or {},
        "new_ref": uuid.uuid4().hex}, status=status, nav="admin_accounts")


async def create_account(request: web.Request) -> web.Response:
    form = await request.post()
    errors: dict[str, str] = {}
    name = str(form.get("name", "")).strip()
    if not name or len(name) > 200:
        errors["name"] = "Give the account a name (up to 200 characters)."
    initial = _credit_amount(form, "credits", "Starting credits", errors) or 0
    email, password = str(form.get("email", "")).strip(), str(form.get("password", ""))
    if bool(email) != bool(password):
        errors["email"] = "To add a first user, fill in both the email and the password (or leave both empty)."
    if errors:
        return await accounts_page(request, form, errors, status=400)
    gw = gateway(request)
    account = await gw.accounts.create_account(name, initial)
    await gw.operator_audit.record(operator_actor(request), Action.ACCOUNT_CREATE, account["id"], None,
                                   account_state(account))
    message = f"Account “{name}” created with {micro_to_credits(initial):g} credits."
    if email:
        try:
            user = await users(request).create(email, password, account["id"], "user")
            await gw.operator_audit.record(operator_actor(request), Action.USER_CREATE, user.id, None, user.public())
            message += f" {user.email} can sign in now."
        except UserError as exc:
            await notify(request, f"{message} The user was not added: {exc}", "error")
            return see_other(f"/dashboard/admin/accounts/{account['id']}")
    await notify(request, message)
    return see_other(f"/dashboard/admin/accounts/{account['id']}")


async def _account(request: web.Request) -> dict:
    account_id = request.match_info["account_id"]
    try:
        if not ids.ACCOUNT.matches(account_id):  # never a Redis key name built from junk
            raise AccountNotFound(account_id)
        return await gateway(request).accounts.get_account(account_id)
    except AccountNotFound:
        raise web.HTTPNotFound(text=f"There is no account {account_id!r}.") from None


async def account_page(request: web.Request, errors: dict | None = None, form=None, status: int = 200):
    gw = gateway(request)
    account = await _account(request)
    k = AccountKeys(account["id"])
    if gw.db is not None:
        orders = [(rid, {"order": json.dumps(body)}) for rid, body in (await order_rows(gw.db, account["id"], None, 10))[0]]
    else:
        orders, _ = await gw.credits.page(k.orders, 10, None)
    ledger, _ = await ledger_page(gw.redis, gw.db, account["id"], None, 15)
    notes = await ledger_notes(gw.redis, account["id"], ledger)
    return await render(request, "admin_account.html", {
        "account": account, "keys": await key_table(gw.redis, gw.accounts, account["id"]),
        "members": await users(request).list_users(account["id"]),
        "orders": [json.loads(f["order"]) for _, f in orders],
        "ledger": [{"id": rid, "amount_micro": int(f.get("amount", 0)), "reason": f.get("reason", ""),
                    "ref": f.get("ref", ""), "balance_micro": int(f.get("balance", 0)),
                    "note": notes.get(f.get("ref"), "")} for rid, f in ledger],
        "errors": errors or {}, "form": form or {}, "roles": ROLES,
        "topup_ref": "dash-topup-" + uuid.uuid4().hex[:16], "adjust_ref": uuid.uuid4().hex,
        "stored": (await stored_by_account(gw.db, [account["id"]]))[account["id"]],
        "max_files": gw.settings.account_max_files, "max_stored_bytes": gw.settings.account_max_stored_bytes,
    }, status=status, nav="admin_accounts")


def _reference(form, default_prefix: str) -> str:
    ref = str(form.get("reference", "")).strip()[:MAX_REFERENCE]
    return ref or f"{default_prefix}-{uuid.uuid4().hex[:16]}"


async def topup(request: web.Request) -> web.Response:
    form = await request.post()
    account = await _account(request)
    errors: dict[str, str] = {}
    amount = _credit_amount(form, "credits", "The top-up", errors)
    if amount is None and not errors:
        errors["credits"] = "Enter how many credits to add."
    if errors:
        return await account_page(request, errors, form, status=400)
    reference = _reference(form, "dash-topup")
    gw = gateway(request)
    order, created = await gw.credits.credit(account["id"], amount, reference, reason="topup",
                                             note=str(form.get("note", "")).strip()[:500])
    if created:
        await gw.operator_audit.record(operator_actor(request), Action.CREDITS_TOPUP, account["id"],
                                       account_state(account), {**account_state(await gw.accounts.get_account(
                                           account["id"])), "order": order})
        await notify(request, f"Added {micro_to_credits(amount):g} credits to “{account['name']}” (order {order['id']}).")
    else:
        await notify(request, f"That top-up (reference {reference}) was already recorded; nothing was added twice.",
                     "error")
    return see_other(f"/dashboard/admin/accounts/{account['id']}")


async def price_multiplier(request: web.Request) -> web.Response:
    """Every price the account pays, times this: its next requests are held and charged at it."""
    form = await request.post()
    account = await _account(request)
    try:
        ppm = parse_multiplier(str(form.get("price_multiplier", "")).strip())
    except ValueError as exc:
        return await account_page(request, {"price_multiplier": f"Enter a multiplier such as 1 or 1.25 ({exc})."},
                                  form, status=400)
    gw = gateway(request)
    after = await gw.accounts.set_price_multiplier(account["id"], ppm)
    await gw.operator_audit.record(operator_actor(request), Action.ACCOUNT_UPDATE, account["id"],
                                   account_state(account), account_state(after))
    await notify(request, f"“{account['name']}” now pays ×{multiplier_text(ppm)} the catalog prices.")
    return see_other(f"/dashboard/admin/accounts/{account['id']}")


async def adjust(request: web.Request) -> web.Response:
    form = await request.post()
    account = await _account(request)
    errors: dict[str, str] = {}
    amount = _credit_amount(form, "amount", "The adjustment", errors, allow_negative=True)
    reason = str(form.get("reason", "")).strip()
    if amount is None and not errors:
        errors["amount"] = "Enter the credits to add (e.g. 10) or remove (e.g. -10)."
    if not reason:
        errors["reason"] = "Say why: the reason is kept in the account's ledger."
    elif len(reason) > 500:
        errors["reason"] = "Keep the reason under 500 characters."
    if amount is not None and amount < 0 and account["balance_micro"] + amount < 0:
        errors["amount"] = (f"That would take the balance below zero (it is {micro_to_credits(account['balance_micro']):g} "
                            "credits).")
    if errors:
        return await account_page(request, errors, form, status=400)
    ref = "adjust-" + (str(form.get("idempotency", "")).strip()[:64] or uuid.uuid4().hex)
    gw = gateway(request)
    _, created = await gw.credits.credit(account["id"], amount, ref, reason="adjust", note=reason)
    if created:
        await gw.operator_audit.record(operator_actor(request), Action.CREDITS_ADJUST, account["id"],
                                       account_state(account), {**account_state(await gw.accounts.get_account(
                                           account["id"])), "adjustment_micro": amount, "reason": reason})
        await notify(request, f"Adjusted “{account['name']}” by {micro_to_credits(amount):+g} credits: {reason}")
    else:
        await notify(request, "That adjustment was already recorded; nothing changed twice.", "error")
    return see_other(f"/dashboard/admin/accounts/{account['id']}")


async def create_user(request: web.Request) -> web.Response:
    form = await request.post()
    account = await _account(request)
    role = str(form.get("role", "user"))
    try:
        user = await users(request).create(str(form.get("email", "")), str(form.get("password", "")), account["id"],
                                           role)
    except UserError as exc:
        return await account_page(request, {"user": str(exc)}, form, status=400)
    await gateway(request).operator_audit.record(operator_actor(request), Action.USER_CREATE, user.id, None,
                                                 user.public())
    await notify(request, f"{user.email} ({user.role}) can now sign in to “{account['name']}”.")
    return see_other(f"/dashboard/admin/accounts/{account['id']}")


async def view_as(request: web.Request) -> web.Response:
    account = await _account(request)
    await sessions(request).set_account(current_session(request), account["id"])
    await notify(request, f"You are now looking at “{account['name']}”. Its keys, credits and usage are below.")
    return see_other("/dashboard")


async def nodes_page(request: web.Request) -> web.Response:
    gw = gateway(request)
    nodes = await node_status(gw.redis, gw.catalog, gw.settings.worker_lease_s)
    failures = await recent_failures(gw.redis, db=gw.db)
    for n in nodes:
        n["breaker"] = gw.breaker.state(n["id"])
        n["failures"] = sorted(failures.get(n["id"], {}).items(), key=lambda kv: -kv[1])
        n["failed_total"] = sum(c for _, c in n["failures"])
    return await render(request, "admin_nodes.html", {"nodes": nodes, "fallbacks": await fallback_counts(gw.redis)},
                        nav="admin_nodes")


async def enable_upstream_key(request: web.Request) -> web.Response:
    """The nodes page's "Re-enable" button: the key is back in its node's rotation on every worker at once."""
    gw = gateway(request)
    node, label = request.match_info["node"], request.match_info["key"]
    was = await enable_key(gw.redis, gw.scripts, node, label) if node in gw.catalog.nodes else None
    if was is None:
        await notify(request, f"Node {node} has no upstream key ending in {label}.", kind="error")
    else:
        log.warning("upstream key re-enabled by an operator", node=node, key=label, was_disabled=was)
        await gw.operator_audit.record(operator_actor(request), Action.UPSTREAM_KEY_ENABLE, f"{node}/{label}",
                                       {"disabled": was}, {"state": "active"})
        await notify(request, f"Upstream key …{label} of {node} is back in rotation.")
    return see_other("/dashboard/admin/nodes")


BATCHES_SHOWN = 100


async def batches_page(request: web.Request) -> web.Response:
    """Every account's recent batches, newest first, with their progress and cost."""
    gw = gateway(request)
    store = request.config_dict[BATCH_STORE]
    rows, _total = await account_rows(gw.accounts, gw.db)
    names = {row["id"]: row["name"] for row in rows}
    status = request.query.get("status", "")
    # The record's newest batches of every account, one query (live state from Redis); a status filter
    # reads further back, since a running batch's recorded status is the one it was created with.
    recent = await store.recent_batches(BATCHES_SHOWN * (5 if status else 1))
    batches = [{**b, "account_id": account_id, "account_name": names.get(account_id, "")} for account_id, b in recent]
    if status:
        batches = [b for b in batches if b["status"] == status]
    return await render(request, "admin_batches.html", {"batches": batches[:BATCHES_SHOWN], "status": status,
                                                         "base_url": base_url(request)}, nav="admin_batches")
