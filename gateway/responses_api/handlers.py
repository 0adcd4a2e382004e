"""``POST /api/v1/responses`` and ``GET``/``DELETE /api/v1/responses/{response_id}``."""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import request_key
from gateway.chat import admit_chat_body
from gateway.exchange import exchange, json_response
from gateway.inputs import read_body
from gateway.responses_api.render import ResponsesRenderer
from gateway.responses_api.translate import chat_body, check_request
from gateway.responses_api.wire import ResponsesRequest
from gateway.state import GATEWAY, Gateway
from shared import ids
from shared.contracts import Api
from shared.errors import not_found

log = structlog.get_logger()


def missing(response_id: str, param: str | None = None) -> Exception:
    return not_found(f"Response with id '{response_id}' not found.", param=param)


def _shell(req: ResponsesRequest, response_id: str, store: bool) -> dict:
    """The response object's fields that echo the request."""
    reasoning = req.reasoning
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "model": req.model,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None},
        "store": store, "temperature": req.temperature, "top_p": req.top_p,
        "text": req.text.model_dump(exclude_none=True, by_alias=True) if req.text and req.text.format
        else {"format": {"type": "text"}},
        "tool_choice": (req.tool_choice if isinstance(req.tool_choice, str)
                        else req.tool_choice.model_dump() if req.tool_choice else "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "truncation": req.truncation or "disabled", "user": req.user,
    }


async def create(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    key = request_key(request)
    req = await read_body(request, ResponsesRequest)
    check_request(req)
    history: list[dict] = []
    if req.previous_response_id is not None:
        record = (await gw.responses.get(key.account_id, req.previous_response_id)
                  if ids.RESPONSE.matches(req.previous_response_id) else None)
        if record is None:
            raise missing(req.previous_response_id, "previous_response_id")
        history = record["messages"]
    body, conversation = chat_body(req, history)
    admitted = admit_chat_body(request, gw, key, body, api=Api.RESPONSES,
                               stream=bool(req.stream), include_usage=True)
    response_id = ids.RESPONSE.new()
    store = req.store is not False

    async def keep(final: dict, assistant: dict) -> None:
        if not store or final["status"] == "failed":
            return
        try:
            kept = await gw.responses.put(key.account_id, response_id,
                                          {"response": final, "messages": conversation + [assistant]})
        except RedisError as exc:  # the answer stands; only its follow-ups will not find it
            log.warning("response not stored", response_id=response_id, error=str(exc))
            return
        if not kept:
            log.info("response larger than the account's stored-responses cap; not stored", response_id=response_id)

    shell = _shell(req, response_id, store)
    return await exchange(request, admitted, lambda: ResponsesRenderer(shell, keep), "resp-")


async def retrieve(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    response_id = request.match_info["response_id"]
    record = await gw.responses.get(request_key(request).account_id, response_id)
    if record is None:
        raise missing(response_id)
    return json_response(record["response"])


async def delete(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    response_id = request.match_info["response_id"]
    if not await gw.responses.delete(request_key(request).account_id, response_id):
        raise missing(response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})
