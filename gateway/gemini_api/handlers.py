"""The native Gemini routes: generateContent, streamGenerateContent (``alt=sse``, or Google's JSON
array), countTokens (free: a zero hold that counts against the key's requests per minute); the
model list and object are ``models.py``. Keys: ``x-goog-api-key``, ``?key=`` or Bearer; errors in Google's shape."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.auth import request_key
from gateway.dialects import error_body
from gateway.exchange import SSE_HEADERS, exchange, json_response
from gateway.gemini_api.models import KEY_PARAM, missing_model, served_natively
from gateway.gemini_api.wire import NativeRequest, parse_count, parse_generate
from gateway.inputs import QueryParam, read_json
from gateway.state import GATEWAY, Gateway
from shared.admission import OUTPUT_ESTIMATE, count_hold, plan_hold_for
from shared.catalog import Catalog, Model
from shared.contracts import Api, JobKind
from shared.dispatch import Admitted
from shared.errors import ApiError

QUERY = (QueryParam("alt", {"type": "string", "enum": ["sse", "json"]},
                    "streamGenerateContent: server-sent events (sse) or one JSON array (json, the default)."),
         KEY_PARAM)
JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8", "Cache-Control": "no-cache"}


def _model(request: web.Request, catalog: Catalog, method: str) -> Model:
    name = request.match_info["model"]
    model = catalog.resolve(name)  # an alias names its target
    if model is None or not served_natively(catalog, model):
        raise missing_model(name, method)
    return model


def _admit(request: web.Request, gw: Gateway, catalog: Catalog, model: Model, native: NativeRequest, kind: JobKind,
           stream: bool) -> Admitted:
    key = request_key(request)
    job = {"account_id": key.account_id, "key_id": key.id, "model": model.id, "trace_id": request["request_id"],
           "stream": stream, "include_usage": False, "api": Api.GEMINI, "kind": kind, "body": native.body}
    if request.match_info["model"] != model.id:  # an alias: the usage row keeps the name the client sent
        job["requested_model"] = request.match_info["model"]
    if kind == JobKind.GEMINI_COUNT:
        return Admitted(key, model, job, 0, count_hold(native.prompt_bound), catalog=catalog)
    estimate = native.prompt_estimate + (native.max_output_tokens or OUTPUT_ESTIMATE)
    hold = plan_hold_for(native.prompt_bound, native.max_output_tokens, model, gw.settings.min_output_tokens,
                         key.price_multiplier_ppm)
    return Admitted(key, model, job, estimate, hold, catalog=catalog)


class GeminiRenderer:
    """Gemini's own events, relayed as they came: SSE (``alt=sse``), a JSON array, or one response."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.headers = SSE_HEADERS if sse else JSON_HEADERS
        self.sent = 0

    def chunk(self, payload: bytes) -> list[bytes]:
        self.sent += 1
        if self.sse:
            return [b"data: " + payload + b"\r\n\r\n"]
        return [(b"[" if self.sent == 1 else b",\r\n") + payload]

    def done(self) -> list[bytes]:
        if self.sse:
            return []
        return [b"\n]" if self.sent else b"[]"]

    def result(self, payload: bytes) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    def stream_error(self, error: ApiError) -> bytes:
        body = orjson.dumps(error_body(error, "gemini"))
        if self.sse:
            return b"data: " + body + b"\r\n\r\n"
        return (b"[" if not self.sent else b",\r\n") + body + b"\n]"

    async def finish(self) -> None:
        pass


class CountRenderer(GeminiRenderer):
    def result(self, payload: bytes) -> web.Response:
        return json_response({"totalTokens": orjson.loads(payload)["prompt_tokens"]})


async def _generate(request: web.Request, stream: bool) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    catalog = gw.catalog  # read once: the request keeps this version to its end
    model = _model(request, catalog, "streamGenerateContent" if stream else "generateContent")
    native = parse_generate(await read_json(request), model, gw.settings.max_messages)
    admitted = _admit(request, gw, catalog, model, native, JobKind.GEMINI, stream)
    sse = request.query.get("alt") == "sse"
    return await exchange(request, admitted, lambda: GeminiRenderer(sse), "gen-")


async def generate_content(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=False)


async def stream_generate_content(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=True)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    catalog = gw.catalog
    model = _model(request, catalog, "countTokens")
    native = parse_count(await read_json(request), model, gw.settings.max_messages)
    admitted = _admit(request, gw, catalog, model, native, JobKind.GEMINI_COUNT, False)
    return await exchange(request, admitted, lambda: CountRenderer(False), "count-")
