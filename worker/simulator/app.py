"""aiohttp server speaking Gemini's native REST API (v1beta), for offline use, tests and benchmarks.

Routes:
  POST /v1beta/models/{model}:generateContent
  POST /v1beta/models/{model}:streamGenerateContent?alt=sse   (without alt=sse: a JSON array)
  POST /v1beta/models/{model}:countTokens
  GET  /v1beta/models, GET /v1beta/models/{model}
The same routes answer under /v1 (what google-genai uses when only base_url is set).

Auth: `x-goog-api-key` header or `?key=`; missing -> 403, the literal key "invalid" -> 400.
Per-key faults (429 for a while on generation, or on countTokens only; invalid, suspended, disabled):
`APIINONE_SIMULATOR_KEY_FAULTS` (key_faults.py).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
from typing import Any

import orjson
from aiohttp import web

from . import catalog
from .directives import Directives, parse_directives
from .errors import SimError, canned, invalid, invalid_key, missing_key, model_not_found
from .key_faults import KeyFaults
from .plan import Plan, build_plan
from .request import parse_count, parse_generate

_QUERY_PARAMS = frozenset({"key", "alt", "$alt", "prettyPrint", "fields", "quotaUser", "$.xgafv",
                           "upload_protocol", "uploadType", "access_token", "callback"})
_JSON = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Content-Disposition": "attachment",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
_ID_PREFIX = base64.urlsafe_b64encode(os.urandom(9)).decode()
_ids = itertools.count(1)
KEY_FAULTS = web.AppKey("key_faults", KeyFaults)


def _response_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON, charset="UTF-8")


def _error(err: SimError) -> web.Response:
    return _json(err.body(), err.code)


def _auth(request: web.Request, model: str = "", generation: bool = False, counting: bool = False) -> None:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        raise missing_key()
    if key == "invalid":
        raise invalid_key()
    request.app[KEY_FAULTS].check(key, model, generation, counting)


def _check_query(request: web.Request) -> None:
    for name in request.query:
        if name not in _QUERY_PARAMS:
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query '
                f"parameter. Field '{name}' could not be found in request message."
            )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON payload received. Unexpected token.\n{exc}") from None


async def _break_connection(request: web.Request) -> None:
    """Drop the connection without finishing the response (no terminating chunk)."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(200):  # let what was already written reach the client first
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    transport.abort()


# ------------------------------------------------------------------------------------ handlers

async def list_models(request: web.Request) -> web.Response:
    try:
        _auth(request)
    except SimError as err:
        return _error(err)
    return _json(orjson.dumps(catalog.listing()))


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        _auth(request)
        if not catalog.is_gemini(name):
            raise SimError(404, f"Model is not found: models/{name} for api version v1beta")
    except SimError as err:
        return _error(err)
    return _json(orjson.dumps(catalog.entry(name)))


async def model_method(request: web.Request) -> web.StreamResponse:
    model, colon, method = request.match_info["name"].rpartition(":")
    try:
        _auth(request, model, generation=method in ("generateContent", "streamGenerateContent"),
              counting=method == "countTokens")
        _check_query(request)
        if not colon:
            raise SimError(404, f"Method not found: POST {request.path}")
        if method not in ("generateContent", "streamGenerateContent", "countTokens"):
            raise model_not_found(model, method)
        if not catalog.is_gemini(model):
            raise model_not_found(model, method)
        body = await _body(request)
        if method == "countTokens":
            gen = parse_count(model, body)
            return _json(orjson.dumps({
                "totalTokens": gen.prompt_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": gen.text_tokens}]
                + ([{"modality": "IMAGE", "tokenCount": gen.media_tokens}]
                   if gen.media_tokens else []),
            }))
        gen = parse_generate(model, body)
        directives = parse_directives(gen.last_user_texts)
        if directives.error is not None and directives.error_model in (None, model):
            raise canned(directives.error)
        plan = build_plan(gen, directives)
    except SimError as err:
        return _error(err)
    if method == "generateContent":
        return await _unary(request, plan, directives)
    alt = request.query.get("alt") or request.query.get("$alt") or "json"
    return await _stream(request, plan, directives, sse=alt == "sse")


async def _unary(request: web.Request, plan: Plan, d: Directives) -> web.StreamResponse:
    delay = d.delay_ms / 1000
    if d.fail_after is None:
        if delay and len(plan.chunks) > 1:
            await asyncio.sleep(delay * (len(plan.chunks) - 1))
        return _json(orjson.dumps(plan.full(_response_id())))
    # Produce chunks (with their delays) until the K-th shown one, then drop the connection.
    emitted = 0
    for i, chunk in enumerate(plan.chunks):
        if delay and i:
            await asyncio.sleep(delay)
        if chunk.parts is None:
            continue
        if emitted >= d.fail_after:
            break
        emitted += 1
    await _break_connection(request)
    return web.Response(status=500)  # never reaches the client


async def _stream(request: web.Request, plan: Plan, d: Directives, sse: bool) -> web.StreamResponse:
    rid = _response_id()
    resp = web.StreamResponse(
        status=200,
        headers=_SSE_HEADERS if sse else {"Content-Type": "application/json; charset=UTF-8"},
    )
    await resp.prepare(request)
    delay = d.delay_ms / 1000
    emitted = 0
    for i, event in enumerate(plan.events(rid)):
        if delay and i:
            await asyncio.sleep(delay)
        if event is None:
            continue
        if d.fail_after is not None and emitted >= d.fail_after:
            break
        data = orjson.dumps(event)
        try:
            if sse:
                await resp.write(b"data: " + data + b"\r\n\r\n")
            else:
                await resp.write((b"[" if not emitted else b",\r\n") + data)
        except ConnectionResetError:  # the client went away: nothing more to do
            return resp
        emitted += 1
    if d.fail_after is not None:
        await _break_connection(request)
        return resp
    if not sse:
        await resp.write(b"\n]" if emitted else b"[]")  # Google ends the array on its own line
    await resp.write_eof()
    return resp


async def not_found(request: web.Request) -> web.Response:
    return _error(SimError(404, f"Method not found: {request.method} {request.path}"))


def create_app() -> web.Application:
    """The simulator as an aiohttp application."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[KEY_FAULTS] = KeyFaults.from_env()
    for version in ("v1beta", "v1"):  # the SDK uses /v1 when given a base_url alone
        app.router.add_get(f"/{version}/models", list_models)
        app.router.add_get(f"/{version}/models/{{name}}", get_model)
        app.router.add_post(f"/{version}/models/{{name}}", model_method)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def serve(host: str, port: int) -> None:
    """Run the simulator until SIGTERM/SIGINT (blocking). Uses uvloop when importable."""
    # A client that breaks a stream (or the fail_after directive) is not a server error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(),
        host=host,
        port=port,
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=1.0,
        loop=loop,
    )
