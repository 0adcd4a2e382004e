"""The live catalog over the admin API: read it and its versions, change it (shared/catalog_edits.py).

    GET   /admin/catalog                     the current version and its document (ETag: the version)
    PUT   /admin/catalog                     a whole new document; If-Match: the version it replaces
    PATCH /admin/catalog/models/{model_id}   some fields of one model (pricing, routes, base cost, fallbacks)
    PATCH /admin/catalog/aliases             a JSON merge patch of the aliases
    GET   /admin/catalog/versions[/{n}]      the recorded versions, newest first; one version's document

A document is validated by the catalog's own parser before it is stored: a 400 naming what is wrong,
nothing stored. Every change names the version it was made against (If-Match); a change against a
version that is no longer current is a 412. Every change is in
the operator audit log. A change that leaves the document as it is answers the current version
(no new version, nothing audited). The answer comes once this gateway serves the new version; the others follow
within a second (their pub/sub notice).
"""

from __future__ import annotations

import re
from typing import Annotated

from aiohttp import web
from pydantic import Field

from gateway.audit_log import admin_actor
from gateway.inputs import Paging, read_body, read_json
from gateway.state import GATEWAY, Gateway
from shared.catalog import Catalog, CatalogInvalid, load_document, parse_catalog
from shared.catalog_edits import CatalogEmpty, change_catalog, replace_with, set_aliases, set_model_fields
from shared.catalog_store import VersionConflict
from shared.errors import ApiError, bad_request, not_found, unavailable
from shared.protocol import WireModel

VERSION_CURSOR = re.compile(r"[0-9]{1,9}")  # ASCII digits that fit the record's integer (str.isdigit takes "٣")
VERSIONS = Paging(20, 100, "The version number of the last item of the previous page.",
                  lambda v: bool(VERSION_CURSOR.fullmatch(v)), VERSION_CURSOR.pattern)
NOTE = Annotated[str, Field(max_length=500)]


class ModelChange(WireModel):
    """The fields of one model an operator changes most; as in the catalog file (credits per 1M tokens)."""

    pricing: dict | None = None  # {input, cached_input?, output, long_context?}
    routes: list[dict] | None = None  # [{node, priority?, weight?}, ...]
    base_cost_credits: int | float | str | None = None
    fallbacks: list[str] | None = None  # other models, in order (README "Fallbacks")
    note: NOTE = ""


class NewCatalog(WireModel):
    """PUT's body: the whole document (providers, nodes, models, aliases), and why."""

    document: dict
    note: NOTE = ""


def catalog_answer(gw: Gateway, catalog: Catalog, document: dict | None) -> web.Response:
    body = {"object": "catalog", "version": catalog.version, "live": gw.live.live, "document": document,
            "serving": gw.catalog.version,  # the version this gateway admits requests under now
            "models": sorted(catalog.models), "aliases": catalog.aliases}
    return web.json_response(body, headers={"ETag": f'"{catalog.version}"'})


def if_match(request: web.Request) -> int:
    """The version a change was made against: every change names it, so none overwrites one it never saw."""
    raw = request.headers.get("If-Match")
    if raw is None:
        raise bad_request("Send If-Match with the catalog version this change is made against (GET /admin/catalog "
                          "answers it as its ETag).", param="If-Match", code="missing_if_match")
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 9:
        raise bad_request("If-Match must be a catalog version, such as \"3\".", param="If-Match")
    return int(text)


async def _change(request: web.Request, change, expected: int | None, note: str,
                  invalid_param: str = "document") -> web.Response:
    """Apply ``change`` as the next version; a catalog it makes invalid is a 400 naming ``invalid_param``
    (what the request sent: the whole document, a model's one field, the aliases)."""
    gw: Gateway = request.app[GATEWAY]
    if not gw.live.live:
        raise ApiError(409, "The catalog is the fixed file (APIINONE_CATALOG_LIVE=false): edit the file and restart.",
                       "invalid_request_error", "catalog_fixed")
    try:
        outcome = await change_catalog(gw.catalog_store, gw.operator_audit, admin_actor(request), change, expected,
                                       note)
    except CatalogInvalid as exc:
        raise bad_request(f"Invalid catalog: {exc}.", param=invalid_param, code="invalid_catalog") from None
    except VersionConflict as exc:
        raise ApiError(412, f"The catalog changed meanwhile: it is at version {exc.current}; read it again.",
                       "invalid_request_error", "catalog_version_conflict", "If-Match") from None
    except CatalogEmpty:
        raise unavailable("The catalog store is not seeded yet; retry in a moment.", retry_after=1) from None
    if outcome.changed:
        await gw.live.refresh()  # this gateway serves it before answering; the others follow their notice
    return catalog_answer(gw, outcome.catalog, outcome.document)


async def get_catalog(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    stored = await gw.catalog_store.current() if gw.live.live else None
    if stored is None:  # the fixed file (or a store not seeded yet): what this gateway serves
        return catalog_answer(gw, gw.catalog, load_document(gw.settings.catalog))
    catalog = gw.catalog if gw.catalog.version == stored.version else parse_catalog(stored.document, stored.version)
    return catalog_answer(gw, catalog, stored.document)


async def put_catalog(request: web.Request) -> web.Response:
    expected = if_match(request)
    body = await read_body(request, NewCatalog)
    return await _change(request, replace_with(body.document), expected, body.note or "replaced")


async def patch_model(request: web.Request) -> web.Response:
    expected = if_match(request)
    body = await read_body(request, ModelChange)
    fields = body.model_dump(exclude_none=True, exclude={"note"})
    if not fields:
        raise bad_request("Name at least one of pricing, routes, base_cost_credits, fallbacks.", param="pricing")
    model_id = request.match_info["model_id"]
    if model_id not in request.app[GATEWAY].catalog.models:
        raise not_found(f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
    return await _change(request, set_model_fields(model_id, fields), expected,
                         body.note or f"{model_id}: {', '.join(sorted(fields))}",
                         next(iter(fields)) if len(fields) == 1 else "document")


async def patch_aliases(request: web.Request) -> web.Response:
    expected = if_match(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not all(isinstance(v, str) or v is None for v in body.values()):
        raise bad_request("Send {\"alias\": \"model id\"} to set an alias, {\"alias\": null} to remove one.",
                          param="aliases")
    return await _change(request, set_aliases(body), expected, "aliases: " + ", ".join(sorted(body)), "aliases")


async def list_versions(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    limit, after = VERSIONS.read(request)
    rows = await gw.catalog_store.history(int(after) if after else None, limit + 1)
    return web.json_response({"object": "list", "data": rows[:limit], "has_more": len(rows) > limit,
                              "current": gw.catalog.version})


async def get_version(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    raw = request.match_info["version"]
    stored = await gw.catalog_store.recorded(int(raw)) if raw.isdigit() and len(raw) <= 9 else None
    if stored is None:
        raise not_found(f"No catalog version {raw!r}.", param="version")
    return web.json_response({"object": "catalog", "version": stored.version, "document": stored.document})
