"""The operator audit log over HTTP: who acted (``actor``) and ``GET /admin/audit-log`` (shared/operator_audit.py).

Not ``GET /admin/audit``, the money audit (balance == ledger), which stays as it is.
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.edge import edge
from gateway.inputs import Paging, QueryParam
from gateway.state import GATEWAY
from shared.errors import ApiError
from shared.operator_audit import ADMIN_TOKEN_ACTOR, Action, Actor

CURSOR = re.compile(r"[0-9]{1,18}")  # a bigint id: ASCII digits that fit (str.isdigit takes "٣" and 30 digits)
TARGET = re.compile(r"[^\x00-\x1f\x7f]{1,200}")  # what the record's text column can hold
PAGING = Paging(50, 200, "The id of the last entry of the previous page.", lambda v: bool(CURSOR.fullmatch(v)),
                CURSOR.pattern)
FILTERS = (QueryParam("action", {"type": "string", "enum": [a.value for a in Action]}, "Only this action."),
           QueryParam("target", {"type": "string", "maxLength": 200},
                      "Only actions on this target (an account, key or batch id, or `catalog`)."))


def admin_actor(request: web.Request) -> Actor:
    """The admin API's caller: the one admin token, from the client address the gateway sees (trusted proxies)."""
    return Actor(ADMIN_TOKEN_ACTOR, edge(request).client_address(request))


def operator_actor(request: web.Request) -> Actor:
    """A dashboard operator: the signed-in user's email."""
    user = request.get("user")
    return Actor(user.email if user is not None else "dashboard", edge(request).client_address(request))


async def audit_log(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit, after = PAGING.read(request)
    action, target = request.query.get("action"), request.query.get("target")
    if action is not None and action not in {a.value for a in Action}:
        raise ApiError(400, f"Invalid value for 'action': expected one of {', '.join(a.value for a in Action)}.",
                       "invalid_request_error", "invalid_value", "action")
    if target is not None and not TARGET.fullmatch(target):
        raise ApiError(400, "Invalid value for 'target': at most 200 characters, no control characters.",
                       "invalid_request_error", "invalid_value", "target")
    if gw.db is None:
        raise ApiError(503, "The operator audit log is kept in Postgres: set DATABASE_URL.", "service_unavailable",
                       "database_unavailable")
    rows, more = await gw.operator_audit.page(int(after) if after else None, limit, action, target)
    return web.json_response({"object": "list", "data": rows, "has_more": more})
