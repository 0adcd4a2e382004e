"""Admin API for dashboard users (``Authorization: Bearer $APIINONE_ADMIN_TOKEN``, checked by the route table).

    POST /admin/users {"email", "password", "account_id", "role"?: "user"|"operator"} -> 201 user
    GET  /admin/users[?account_id=...] -> {"object": "list", "data": [user, ...]}
"""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from gateway.audit_log import admin_actor
from gateway.inputs import QueryParam, read_body
from gateway.state import GATEWAY
from shared.credits import AccountNotFound
from shared.errors import ApiError, bad_request, not_found
from shared.operator_audit import Action
from shared.protocol import RECORD_TEXT, WireModel
from shared.users import UserError, UserExists, Users

LIST_FILTERS = (QueryParam("account_id", {"type": "string"}, "Only the users of this account."),)


def _users(request: web.Request) -> Users:
    return Users(request.app[GATEWAY].redis, request.app[GATEWAY].directory)


class NewUser(WireModel):
    email: Annotated[str, Field(min_length=3, max_length=254, pattern=RECORD_TEXT)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    account_id: str
    role: Literal["user", "operator"] = "user"


async def create_user(request: web.Request) -> web.Response:
    store = _users(request)
    body = await read_body(request, NewUser)
    try:
        user = await store.create(body.email, body.password, body.account_id, body.role)
    except AccountNotFound:
        raise not_found(f"No account {body.account_id!r}.", param="account_id") from None
    except UserExists as exc:
        raise ApiError(409, str(exc), "invalid_request_error", "user_exists", "email") from None
    except UserError as exc:
        raise bad_request(str(exc)) from None
    await request.app[GATEWAY].operator_audit.record(admin_actor(request), Action.USER_CREATE, user.id, None,
                                                     user.public())
    return web.json_response(user.public(), status=201)


async def list_users(request: web.Request) -> web.Response:
    store = _users(request)
    found = await store.list_users(request.query.get("account_id") or None)
    return web.json_response({"object": "list", "data": [u.public() for u in found], "has_more": False})
