"""Operator pages for the live catalog (prices, routes, aliases, its versions) and the operator audit log.

Every change goes through the same path as the admin API (shared/catalog_edits.py): validated by the
catalog's parser, stored as the next version against the version the form was drawn from (a change
made meanwhile is refused, not overwritten), followed by every gateway and worker within a second,
and written to the audit log under the signed-in operator's email. A form saves only what the operator
edited, in the form the document holds it (a number stays a number, ``nodes`` stay ``nodes`` unless the
routes were edited), so a form saved untouched changes nothing and makes no version.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from aiohttp import web

from gateway.audit_log import operator_actor
from gateway.dashboard.render import gateway, notify, render, see_other
from shared.catalog import CatalogInvalid
from shared.catalog_edits import CatalogEmpty, change_catalog, set_aliases, set_model_fields
from shared.catalog_store import VersionConflict
from shared.operator_audit import Action

HISTORY_SHOWN = 20
AUDIT_PAGE = 50
MAX_AMOUNT_DIGITS = 18  # far above any amount the catalog's bounds allow (shared/catalog.py MAX_PRICE_MICRO)


def _routes_text(model: dict) -> str:
    if "routes" in model:
        return "\n".join(f"{r['node']} {r.get('priority', 0)} {r.get('weight', 1)}" for r in model["routes"])
    return "\n".join(f"{node} {priority} 1" for priority, node in enumerate(model.get("nodes", [])))


def _parse_routes(text: str) -> list[dict]:
    """``node [priority] [weight]`` per line."""
    routes = []
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        parts = line.split()
        if len(parts) > 3 or not all(p.isdigit() for p in parts[1:]):
            raise CatalogInvalid(f"route {line!r}: write a node, then optionally its priority and weight (numbers)")
        routes.append({"node": parts[0], "priority": int(parts[1]) if len(parts) > 1 else 0,
                       "weight": int(parts[2]) if len(parts) > 2 else 1})
    return routes


def _same_amount(typed: str, loaded: object) -> bool:
    try:
        return Decimal(typed) == Decimal(str(loaded))
    except InvalidOperation:
        return False


def _as_number(typed: str) -> object:
    """A typed amount for a field the document holds as a JSON number: an int, or a float whose shortest
    text is exactly the typed decimal (the parser reads a float through that text); else the text itself,
    which the parser reads exactly (or names as invalid)."""
    try:
        value = Decimal(typed)
    except InvalidOperation:
        return typed
    if not value.is_finite() or value.adjusted() > MAX_AMOUNT_DIGITS:  # out of bounds anyway: never int("1e9999999")
        return typed
    if value == value.to_integral_value():
        return int(value)
    return float(value) if Decimal(repr(float(value))) == value else typed


def _amount(typed: str, loaded: object) -> object:
    """An amount as typed, in the type the document held it: the loaded value itself when it is unchanged."""
    if loaded is not None and _same_amount(typed, loaded):
        return loaded
    if isinstance(loaded, (int, float)) and not isinstance(loaded, bool):
        return _as_number(typed)
    return typed


def _model_edits(form, model: dict) -> dict:
    """The fields of ``model`` (its document) the operator changed on its form; nothing when none."""
    fields: dict = {}
    loaded = dict(model.get("pricing") or {})
    pricing = dict(loaded)  # long_context (not on the form) is kept
    for name in ("input", "cached_input", "output"):
        typed = str(form.get(name, "")).strip()
        if typed:
            pricing[name] = _amount(typed, loaded.get(name))
        else:
            pricing.pop(name, None)
    if pricing != loaded:
        fields["pricing"] = pricing
    base_cost = str(form.get("base_cost_credits", "")).strip()
    if base_cost and _amount(base_cost, model.get("base_cost_credits")) != model.get("base_cost_credits"):
        fields["base_cost_credits"] = _amount(base_cost, model.get("base_cost_credits"))
    routes = _parse_routes(str(form.get("routes", "")))
    if routes != _parse_routes(_routes_text(model)):  # as shown: a model's `nodes` stay `nodes`
        fields["routes"] = routes
    return fields


def _aliases_text(aliases: dict) -> str:
    return "\n".join(f"{alias} = {target}" for alias, target in sorted(aliases.items()))


def _parse_aliases(text: str, current: dict) -> dict[str, str | None]:
    """The whole list as typed (``alias = model`` per line), as a merge patch of the current aliases."""
    wanted: dict[str, str] = {}
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        alias, sep, target = (p.strip() for p in line.partition("="))
        if not sep or not alias or not target:
            raise CatalogInvalid(f"alias line {line!r}: write `alias = model`")
        wanted[alias] = target
    return {**{alias: None for alias in current if alias not in wanted}, **wanted}


async def catalog_page(request: web.Request, errors: dict | None = None, status: int = 200) -> web.Response:
    gw = gateway(request)
    stored = await gw.catalog_store.current() if gw.live.live else None
    document = stored.document if stored else {"models": {}, "aliases": dict(gw.catalog.aliases)}
    models = [{"id": mid, "display_name": m.get("display_name", mid), "pricing": dict(m.get("pricing") or {}),
               "base_cost_credits": m.get("base_cost_credits", ""), "routes": _routes_text(m)}
              for mid, m in sorted(document.get("models", {}).items())]
    return await render(request, "admin_catalog.html", {
        "live": gw.live.live, "version": stored.version if stored else gw.catalog.version,
        "serving": gw.catalog.version, "models": models, "nodes": sorted(gw.catalog.nodes),
        "aliases": _aliases_text(document.get("aliases") or {}),
        "history": await gw.catalog_store.history(None, HISTORY_SHOWN) if gw.live.live else [],
        "errors": errors or {}}, status=status, nav="admin_catalog")


async def _apply(request: web.Request, change, expected: str, note: str, error_key: str) -> web.Response:
    gw = gateway(request)
    try:
        outcome = await change_catalog(gw.catalog_store, gw.operator_audit, operator_actor(request), change,
                                       int(expected) if expected.isdigit() else None, note)
    except CatalogInvalid as exc:
        return await catalog_page(request, {error_key: f"Not saved: {exc}."}, status=400)
    except VersionConflict as exc:
        return await catalog_page(request, {error_key: f"Not saved: the catalog changed meanwhile (it is at version "
                                                       f"{exc.current}). Here it is as it is now."}, status=409)
    except CatalogEmpty:
        return await catalog_page(request, {error_key: "Not saved: the catalog store is not seeded yet."}, status=503)
    if not outcome.changed:
        await notify(request, f"Nothing changed: catalog version {outcome.catalog.version} stays current.")
        return see_other("/dashboard/admin/catalog")
    await gw.live.refresh()
    await notify(request, f"Catalog version {outcome.catalog.version} is live ({note}); every gateway and worker "
                          "follows within a second.")
    return see_other("/dashboard/admin/catalog")


async def update_model(request: web.Request) -> web.Response:
    form = await request.post()
    model_id = request.match_info["model_id"]
    gw = gateway(request)
    if not gw.live.live:
        return await catalog_page(request, {model_id: "The catalog is the fixed file here."}, status=409)
    stored = await gw.catalog_store.current()
    try:
        # Compared with the current version: a form drawn from an older one is refused by _apply anyway.
        fields = _model_edits(form, stored.document.get("models", {}).get(model_id, {}) if stored else {})
    except CatalogInvalid as exc:
        return await catalog_page(request, {model_id: f"Not saved: {exc}."}, status=400)
    return await _apply(request, set_model_fields(model_id, fields), str(form.get("version", "")),
                        f"{model_id}: {', '.join(sorted(fields)) or 'nothing'}", model_id)


async def update_aliases(request: web.Request) -> web.Response:
    form = await request.post()
    gw = gateway(request)
    if not gw.live.live:
        return await catalog_page(request, {"aliases": "The catalog is the fixed file here."}, status=409)
    stored = await gw.catalog_store.current()
    try:
        # An empty store (not seeded again yet after a Redis loss) is refused by _apply, as for a model's form.
        changes = _parse_aliases(str(form.get("aliases", "")), (stored.document.get("aliases") or {}) if stored else {})
    except CatalogInvalid as exc:
        return await catalog_page(request, {"aliases": f"Not saved: {exc}."}, status=400)
    return await _apply(request, set_aliases(changes), str(form.get("version", "")), "aliases", "aliases")


async def audit_log_page(request: web.Request) -> web.Response:
    gw = gateway(request)
    action = request.query.get("action") or None
    after = request.query.get("after", "")
    if action is not None and action not in {a.value for a in Action}:
        action = None
    rows, more = ([], False) if gw.db is None else await gw.operator_audit.page(
        int(after) if after.isdigit() and len(after) <= 18 else None, AUDIT_PAGE, action, None)
    next_url = (f"/dashboard/admin/audit-log?after={rows[-1]['id']}" + (f"&action={action}" if action else "")
                if more else None)
    return await render(request, "admin_audit_log.html", {
        "rows": rows, "actions": [a.value for a in Action], "action": action or "", "after": after,
        "next_url": next_url, "has_db": gw.db is not None}, nav="admin_audit_log")
