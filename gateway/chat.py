"""POST /api/v1/chat/completions: admission of an OpenAI chat request, relayed by gateway/exchange.py.

The gateway never calls a provider: it admits the request (``admit``: key, model, the job, the
worst-case hold), and ``exchange`` submits attempts on the shared lifecycle (shared/dispatch.py)
and relays what the worker publishes: SSE chunks as they come, or one chat.completion. The other
front ends (Responses, Messages) translate their own validated request into the same chat body
(JSON, the form the job carries) and admit it with ``admit_chat_body``, so every request is held,
clamped and billed by the same code, and none is validated twice.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.exchange import SSE_HEADERS, exchange
from gateway.inputs import read_body
from gateway.state import GATEWAY, Gateway
from shared.accounts import KeyRecord
from shared.admission import check_request, count_hold, estimated_tokens, plan_hold, prompt_token_bound
from shared.catalog import Catalog, Model
from shared.contracts import COUNT_KINDS, Api, ErrorCode, JobKind
from shared.dispatch import Admitted, first_fallback
from shared.errors import ApiError, not_found
from shared.protocol import ChatCompletionRequest


def wants_stream(explicit: bool | None, accept: str, stream_default: bool) -> bool:
    """An explicit ``stream`` wins; otherwise SSE only for clients that ask for it.

    The openai SDKs send ``Accept: application/json`` and the Vercel AI SDK
    ``*/*`` when they want one JSON answer, so the drop-in default is JSON.
    ``APIINONE_STREAM_DEFAULT=true`` gives the product page's literal default:
    SSE unless the client asks for JSON.
    """
    if explicit is not None:
        return explicit
    accept = accept.lower()
    if "text/event-stream" in accept:
        return True
    return stream_default and "application/json" not in accept


async def admit(request: web.Request, gw: Gateway) -> Admitted:
    key = await gw.keys.authenticate(request)
    req = await read_body(request, ChatCompletionRequest)
    stream = wants_stream(req.stream, request.headers.get("Accept", ""), gw.settings.stream_default)
    return admit_chat_body(request, gw, key, req.model_dump(exclude_none=True, by_alias=True), api=Api.CHAT,
                           stream=stream, include_usage=bool(req.stream_options and req.stream_options.include_usage))


def find_model(catalog: Catalog, model_id: str) -> Model:
    """The model a request names (an alias names its target: served and billed as it; the job's
    ``requested_model`` keeps the alias)."""
    model = catalog.resolve(model_id)
    if model is None:
        raise not_found(f"The model '{model_id}' does not exist. GET /api/v1/models lists the models.",
                        code="model_not_found", param="model")
    return model


def admit_chat_body(request: web.Request, gw: Gateway, key: KeyRecord, body: dict, *, api: Api,
                    stream: bool, include_usage: bool, kind: JobKind = JobKind.CHAT) -> Admitted:
    """A validated chat body as JSON (the client's request dumped, or what a front end translated its own
    validated request into) as an ``Admitted``: the model's checks, the job every attempt shares, the
    tokens/min estimate and the worst-case hold. A count (``kind`` COUNT) is free: a token hold settled
    at 0; only its request counts against the key. A prompt too long for the model goes to the first of
    its fallbacks that takes it (catalog fallbacks)."""
    catalog = gw.catalog  # read once: the request keeps this version to its end (fallbacks included)
    requested = find_model(catalog, body["model"])

    def admit_for(model: Model, fallbacks: tuple[str, ...]) -> Admitted:
        prompt_estimate = check_request(body, model, gw.settings.max_messages)
        job = {"account_id": key.account_id, "key_id": key.id, "model": model.id, "trace_id": request["request_id"],
               "stream": stream, "include_usage": include_usage, "api": api, "kind": kind, "body": body}
        if model.id != body["model"]:  # an alias, or a fallback: the usage row keeps the name the client sent
            job["requested_model"] = body["model"]
        if kind in COUNT_KINDS:
            return Admitted(key, model, job, 0, count_hold(prompt_token_bound(body)), catalog=catalog)
        return Admitted(key, model, job, estimated_tokens(body, prompt_estimate),
                        plan_hold(body, model, gw.settings.min_output_tokens, key.price_multiplier_ppm),
                        fallbacks, admit_for, catalog)

    try:
        return admit_for(requested, requested.fallbacks)
    except ApiError as exc:
        if exc.code != ErrorCode.CONTEXT_LENGTH_EXCEEDED or kind in COUNT_KINDS:
            raise
        admitted = first_fallback(catalog, requested.fallbacks, admit_for)
        if admitted is None:
            raise
        return admitted


class ChatRenderer:
    """OpenAI's chat wording: ``data: <chunk>`` events ending in ``data: [DONE]``, or one chat.completion."""

    headers = SSE_HEADERS

    def chunk(self, payload: bytes) -> list[bytes]:
        return [b"data: " + payload + b"\n\n"]

    def done(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]

    def result(self, payload: bytes) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    def stream_error(self, error: ApiError) -> bytes:
        return b"data: " + orjson.dumps({"error": error.body()["error"]}) + b"\n\n"

    async def finish(self) -> None:
        pass


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GATEWAY]
    admitted = await admit(request, gw)
    return await exchange(request, admitted, ChatRenderer, "chatcmpl-")
