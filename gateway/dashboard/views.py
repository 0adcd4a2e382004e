"""The pages every signed-in user has: overview, API keys, credits, usage, orders, models, playground, account.

Signing in and out: ``signin.py``.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

from aiohttp import web

from gateway.audit_log import operator_actor
from gateway.dashboard.alerts import current_alert
from gateway.dashboard.chart import daily_chart
from gateway.dashboard.data import (USAGE_STATUSES, FilterError, UsageFilters, daily_series, holds, key_table,
                                    ledger_notes)
from gateway.dashboard.render import (account_id, base_url, current_session, current_user, error_page, gateway,
                                      notify, render, see_other, sessions, throttle, users)
from gateway.dashboard.session import client_address
from gateway.record_reads import bounded_by
from gateway.usage_csv import stream_usage_csv
from gateway.dashboard.signin import current_password_ok, wait_text
from shared import ids, keys
from shared.credits import AccountNotFound
from shared.db.history_reads import order_rows
from shared.history import is_row_id, ledger_page, usage_page
from shared.keys import AccountKeys
from shared.money import credits_to_micro
from shared.operator_audit import Action
from shared.pricing import PPM
from shared.accounts import TooManyKeys
from shared.users import UserError

PAGE = 25
dashboard_read = bounded_by(account_id)  # pages that read the record: its account's slots (record_reads.py)


def _cursor(request: web.Request) -> str | None:
    after = request.query.get("after") or None
    return after if after is not None and is_row_id(after) else None


# --- overview --------------------------------------------------------------------------------
async def _balance(request: web.Request) -> dict:
    try:
        return await gateway(request).credits.balance(account_id(request))
    except AccountNotFound:
        raise web.HTTPNotFound(text="This account no longer exists. Ask an operator about it.") from None


@dashboard_read
async def overview(request: web.Request) -> web.Response:
    gw = gateway(request)
    acct = account_id(request)
    balance = await _balance(request)
    series = await daily_series(gw.redis, acct, UsageFilters(), default_days=14, budget=20_000, db=gw.db)
    recent = await usage_page(gw.redis, acct, UsageFilters().scan(), None, limit=5, budget=500, db=gw.db)
    key_count = await gw.redis.scard(AccountKeys(acct).keys)
    names = {k["id"]: k["name"] for k in await gw.accounts.list_keys(acct)}
    return await render(request, "overview.html", {
        "balance": balance, "series": series, "chart": daily_chart(series), "recent": recent.rows,
        "key_count": key_count, "key_names": names, "base_url": base_url(request),
    }, nav="overview")


# --- API keys ----------------------------------------------------------------------------------
def _positive_int(form, name: str, label: str, errors: dict, upper: int = 10**9) -> int | None:
    raw = str(form.get(name, "")).strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= upper:
        errors[name] = f"{label} must be a whole number from 1 to {upper:,}."
        return None
    return int(raw)


def _credit_amount(form, name: str, label: str, errors: dict, allow_negative: bool = False) -> int | None:
    raw = str(form.get(name, "")).strip().replace(",", "")
    if not raw:
        return None
    try:
        micro = credits_to_micro(raw)
    except ValueError:
        errors[name] = f"{label} must be a number of credits, like 25 or 2.5 (at most 6 decimals)."
        return None
    if micro == 0 or (micro < 0 and not allow_negative) or abs(micro) > 10**15:
        errors[name] = (f"{label} must not be zero." if micro == 0 else
                        f"{label} must be more than zero." if micro < 0 else f"{label} is too large.")
        return None
    return micro


async def _keys_context(request: web.Request) -> dict:
    gw = gateway(request)
    try:
        limits = await gw.accounts.account_limits(account_id(request))
    except AccountNotFound:
        raise web.HTTPNotFound(text="This account no longer exists.") from None
    return {"keys": await key_table(gw.redis, gw.accounts, account_id(request)), "base_url": base_url(request),
            "now": time.time(), "limits": limits}


def _within_account(value: int | None, cap: int, name: str, label: str, errors: dict) -> None:
    """The account's limit (set by the operator) is the most a key of it may be given."""
    if value is not None and cap and value > cap and name not in errors:
        errors[name] = f"{label} may be at most {cap:,}: that is your account's limit, set by the operator."


async def keys_page(request: web.Request) -> web.Response:
    return await render(request, "keys.html", {**await _keys_context(request), "form": {}, "errors": {}}, nav="keys")


async def create_key(request: web.Request) -> web.Response:
    form = await request.post()
    errors: dict[str, str] = {}
    name = str(form.get("name", "")).strip()
    if not name:
        errors["name"] = "Give the key a name, so you can tell it apart later (e.g. “production”)."
    elif len(name) > 100:
        errors["name"] = "The name must be at most 100 characters."
    context = await _keys_context(request)
    rpm = _positive_int(form, "rpm", "Requests per minute", errors)
    tpm = _positive_int(form, "tpm", "Tokens per minute", errors)
    conc = _positive_int(form, "max_concurrent", "Concurrent requests", errors, upper=100_000)
    for value, field, label in ((rpm, "rpm", "Requests per minute"), (tpm, "tpm", "Tokens per minute"),
                                (conc, "max_concurrent", "Concurrent requests")):
        _within_account(value, context["limits"][field], field, label, errors)
    limit = _credit_amount(form, "credit_limit", "The total credit limit", errors)
    daily = _credit_amount(form, "daily_credit_limit", "The daily credit limit", errors)
    days = _positive_int(form, "expires_days", "Expiry", errors, upper=3650)
    gw = gateway(request)
    if not errors:
        try:
            created = await gw.accounts.create_key(
                account_id(request), name, expires_at=int(time.time()) + days * 86400 if days else 0, rpm=rpm,
                tpm=tpm, max_concurrent=conc, credit_limit_micro=limit, daily_credit_limit_micro=daily)
        except AccountNotFound:
            raise web.HTTPNotFound(text="This account no longer exists.") from None
        except TooManyKeys as exc:
            errors["name"] = str(exc)
    if errors:
        return await render(request, "keys.html", {**context, "form": form, "errors": errors}, status=400,
                            nav="keys")
    await audit_if_operator(request, Action.KEY_CREATE, created["id"], None,
                            {f: v for f, v in created.items() if f != "key"})  # never the key itself
    # Shown once, in this answer only: the key is stored hashed and never displayed again.
    return await render(request, "keys.html", {**await _keys_context(request), "form": {}, "errors": {},
                                               "new_key": created}, status=201, nav="keys")


async def audit_if_operator(request: web.Request, action: Action, target: str, before, after) -> None:
    """An operator acting on an account's own pages (viewing as it) is an operator action; its user's is not."""
    user = request.get("user")
    if user is not None and user.is_operator:
        await gateway(request).operator_audit.record(operator_actor(request), action, target, before, after)


async def _own_key(request: web.Request, key_id: str) -> dict | None:
    if not ids.KEY.matches(key_id):
        return None
    gw = gateway(request)
    digest = await gw.redis.get(keys.api_key_id(key_id))
    if not digest:
        return None
    record = await gw.accounts.lookup_key_hash(digest.decode())
    if record is None or record.account_id != account_id(request):
        return None
    return record.public()


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    key = await _own_key(request, key_id)
    if key is None:
        await notify(request, "That key was not found: it may have been revoked already.", "error")
        return see_other("/dashboard/keys")
    await gateway(request).accounts.revoke_key(key_id)
    await audit_if_operator(request, Action.KEY_REVOKE, key_id, key, {"id": key_id, "revoked": True})
    await notify(request, f"Key “{key['name']}” ({key['prefix']}) is revoked: the API refuses it from now on.")
    return see_other("/dashboard/keys")


# --- credits, orders --------------------------------------------------------------------------
@dashboard_read
async def credits_page(request: web.Request) -> web.Response:
    gw = gateway(request)
    acct = account_id(request)
    balance = await _balance(request)
    after = _cursor(request)
    rows, more = await ledger_page(gw.redis, gw.db, acct, after, PAGE)
    notes = await ledger_notes(gw.redis, acct, rows)
    entries = [{"id": rid, "time": rid, "amount_micro": int(f.get("amount", 0)), "reason": f.get("reason", ""),
                "ref": f.get("ref", ""), "balance_micro": int(f.get("balance", 0)), "note": notes.get(f.get("ref"), "")}
               for rid, f in rows]
    return await render(request, "credits.html", {
        "balance": balance, "holds": await holds(gw.redis, acct), "entries": entries, "after": after,
        "next": rows[-1][0] if more and rows else None, "alerts_on": gw.db is not None,
        "alert": await current_alert(request)}, nav="credits")


@dashboard_read
async def orders_page(request: web.Request) -> web.Response:
    gw = gateway(request)
    after = _cursor(request)
    if gw.db is not None:
        rows, more = await order_rows(gw.db, account_id(request), after, PAGE)
        orders = [{**body, "row_id": rid} for rid, body in rows]
    else:
        rows, more = await gw.credits.page(AccountKeys(account_id(request)).orders, PAGE, after)
        orders = [{**json.loads(f["order"]), "row_id": rid} for rid, f in rows]
    return await render(request, "orders.html", {
        "orders": orders, "balance": await _balance(request), "after": after,
        "next": rows[-1][0] if more and rows else None}, nav="orders")


# --- usage -----------------------------------------------------------------------------------
async def _usage_filters(request: web.Request) -> tuple[UsageFilters, str]:
    try:
        return UsageFilters.from_query(request.query), ""
    except FilterError as exc:
        return UsageFilters(), str(exc)


@dashboard_read
async def usage_view(request: web.Request) -> web.Response:
    gw = gateway(request)
    acct = account_id(request)
    f, error = await _usage_filters(request)
    after = _cursor(request)
    page = await usage_page(gw.redis, acct, f.scan(), after, limit=PAGE, db=gw.db)
    series = await daily_series(gw.redis, acct, f, db=gw.db)
    key_list = await gw.accounts.list_keys(acct)
    names = {k["id"]: k["name"] for k in key_list}
    return await render(request, "usage.html", {
        "f": f, "error": error, "rows": page.rows, "truncated": page.truncated, "after": after,
        "next_url": "?" + urlencode(f.query(after=page.next_after)) if page.next_after else None,
        "first_url": "?" + urlencode(f.query()), "csv_url": "/dashboard/usage.csv?" + urlencode(f.query()),
        "series": series, "chart": daily_chart(series), "keys": key_list, "key_names": names,
        "models": sorted(gw.catalog.models), "statuses": USAGE_STATUSES,
        "days": list(zip(series.days, series.credits_micro, series.tokens, series.requests)),
    }, nav="usage")


@dashboard_read
async def usage_csv(request: web.Request) -> web.StreamResponse:
    acct = account_id(request)
    try:
        f = UsageFilters.from_query(request.query)
    except FilterError as exc:
        return await error_page(request, 400, "Those filters can't be used", str(exc))
    # Streamed as Postgres hands the rows over (a server-side cursor): memory stays flat for any range.
    return await stream_usage_csv(request, acct, f.scan())


# --- models, playground ---------------------------------------------------------------------------
def _examples(base: str, model_id: str) -> dict[str, str]:
    body = {"model": model_id, "messages": [{"role": "user", "content": "Explain quantum computing in simple terms."}],
            "stream": False, "include_thoughts": True}
    curl = (f"curl -X POST {base}/api/v1/chat/completions \\\n"
            f"  -H \"Authorization: Bearer $APIINONE_API_KEY\" \\\n"
            f"  -H \"Content-Type: application/json\" \\\n"
            f"  --data-raw '{json.dumps(body, indent=2)}'")
    python = f'''import os
from openai import OpenAI

client = OpenAI(base_url="{base}/api/v1", api_key=os.environ["APIINONE_API_KEY"])

response = client.chat.completions.create(
    model="{model_id}",
    messages=[{{"role": "user", "content": "Explain quantum computing in simple terms."}}],
    reasoning_effort="high",
    extra_body={{"include_thoughts": True}},
)
message = response.choices[0].message
print("Thinking:", message.model_extra.get("reasoning_content"))
print("Answer:", message.content)
print("Credits charged:", response.usage.model_extra["credits_charged"])'''
    node = f'''import OpenAI from "openai";

const client = new OpenAI({{
  baseURL: "{base}/api/v1",
  apiKey: process.env.APIINONE_API_KEY,
}});

const stream = await client.chat.completions.create({{
  model: "{model_id}",
  messages: [{{ role: "user", content: "Explain quantum computing in simple terms." }}],
  stream: true,
  stream_options: {{ include_usage: true }},
}});
for await (const chunk of stream) {{
  const delta = chunk.choices[0]?.delta ?? {{}};
  if (delta.reasoning_content) process.stderr.write(delta.reasoning_content);
  if (delta.content) process.stdout.write(delta.content);
  if (chunk.usage) console.log("\\ncredits charged:", chunk.usage.credits_charged);
}}'''
    return {"curl": curl, "python": python, "node": node}


async def models_page(request: web.Request) -> web.Response:
    gw = gateway(request)
    base = base_url(request)
    models = []
    catalog = gw.catalog  # one version for the whole page
    for m in catalog.models.values():
        info = m.public()
        provider = catalog.providers.get(m.provider)
        models.append({**info, "provider_name": provider.display_name if provider else m.provider,
                       "aliases": sorted(a for a, target in catalog.aliases.items() if target == m.id),
                       "base_cost_micro": m.base_cost_micro, "rates": m.prices.standard,
                       "long_context": m.prices.long_context,
                       "node_status": [{"id": n, "workers": gw.live_workers.get(n, 0)} for n in m.nodes],
                       "examples": _examples(base, m.id)})
    try:
        multiplier_ppm = (await gw.accounts.get_account(account_id(request)))["price_multiplier_ppm"]
    except AccountNotFound:
        multiplier_ppm = PPM
    return await render(request, "models.html", {"models": models, "base_url": base,
                                                 "multiplier_ppm": multiplier_ppm}, nav="models")


async def playground(request: web.Request) -> web.Response:
    gw = gateway(request)
    return await render(request, "playground.html", {
        "models": [m.public() for m in gw.catalog.models.values()], "base_url": base_url(request)},
        nav="playground")


# --- the user's own account -----------------------------------------------------------------------
async def account_page(request: web.Request, errors: dict | None = None, status: int = 200) -> web.Response:
    user = current_user(request)
    gw = gateway(request)
    own = await gw.accounts.get_account(user.account_id) if await gw.accounts.account_exists(user.account_id) else None
    return await render(request, "account.html", {"own_account": own, "errors": errors or {},
                                                  "expires_at": current_session(request).expires_at},
                        status=status, nav="account")


async def change_password(request: web.Request) -> web.Response:
    form = await request.post()
    user = current_user(request)
    store = users(request)
    errors = {}
    attempt = await throttle(request).begin(user.email, client_address(request))  # a stolen session guessing
    if not attempt.admitted:
        errors["current"] = f"Too many wrong passwords. Wait {wait_text(attempt.wait_s)} and try again."
    elif not await current_password_ok(request, attempt, user.email, str(form.get("current", ""))):
        errors["current"] = "That is not your current password."
    elif form.get("new") != form.get("confirm"):
        errors["confirm"] = "The two new passwords are not the same."
    else:
        try:
            await store.set_password(user.id, str(form.get("new", "")))
        except UserError as exc:
            errors["new"] = str(exc)
    if errors:
        return await account_page(request, errors, status=400)
    await sessions(request).drop_all(user.id, keep=current_session(request))
    await notify(request, "Your password is changed. Other signed-in browsers were signed out.")
    return see_other("/dashboard/account")


async def not_found(request: web.Request) -> web.Response:
    return await error_page(request, 404, "Page not found",
                            "There is no dashboard page at this address. Use the menu to find your way.")
