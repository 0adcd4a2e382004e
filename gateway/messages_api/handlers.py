"""``POST /api/v1/messages`` and ``POST /api/v1/messages/count_tokens`` (``anthropic-version`` accepted)."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import request_key
from gateway.chat import admit_chat_body
from gateway.exchange import exchange
from gateway.inputs import read_body
from gateway.messages_api.render import CountRenderer, MessagesRenderer
from gateway.messages_api.translate import chat_body, check_request
from gateway.messages_api.wire import CountTokensRequest, MessagesRequest
from gateway.state import GATEWAY, Gateway
from shared.contracts import Api, JobKind


async def create(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    req = await read_body(request, MessagesRequest)
    check_request(req)
    admitted = admit_chat_body(request, gw, request_key(request), chat_body(req),
                               api=Api.MESSAGES, stream=bool(req.stream), include_usage=True)
    return await exchange(request, admitted, lambda: MessagesRenderer(req.model), "msg-")


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Free: a token hold (settled at 0) that counts against the key's requests per minute, answered by the upstream's counter."""
    gw: Gateway = request.app[GATEWAY]
    req = await read_body(request, CountTokensRequest)
    check_request(req)
    admitted = admit_chat_body(request, gw, request_key(request), chat_body(req),
                               api=Api.MESSAGES, stream=False, include_usage=False, kind=JobKind.COUNT)
    return await exchange(request, admitted, CountRenderer, "count-")
