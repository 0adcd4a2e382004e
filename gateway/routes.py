"""Every API route, declared once: the aiohttp router and ``/openapi.json`` are both built from ``ROUTES``.

Routes as data, in the manner of Starlette: each is a method, a path and a
handler, plus what the document says about it (summary, request body, query
and path parameters, security, statuses). ``mount`` puts each on the router
behind a guard that does what the declaration says before the handler runs:

* ``security``: ``"apiKey"`` authenticates the account's key (the handler reads
  it with ``gateway.auth.request_key``), ``"adminToken"`` checks the operator's
  token, ``None`` is public;
* every path parameter is checked against its id format (``shared/ids.py``): an
  id that does not match is the same 404 as an id that does not exist, and never
  reaches a Redis key name.

So a route cannot be served undocumented (tests/test_routes.py compares the
router with the document) nor documented with a security it does not have.
The dashboard's HTML pages (``gateway/dashboard/``) are not API routes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal

from aiohttp import web

from gateway import (admin, admin_catalog, audit_log, balance_alert, batches, billing, chat, files, health, models,
                     openapi, payments, redemption)
from gateway.auth import check_admin
from gateway.dialects import DIALECT, Dialect
from gateway.gemini_api import handlers as gemini
from gateway.gemini_api import models as gemini_models
from gateway.messages_api import handlers as messages
from gateway.messages_api.wire import CountTokensRequest, MessagesRequest
from gateway.responses_api import handlers as responses
from gateway.responses_api.wire import ResponsesRequest
from gateway.dashboard import adminapi
from gateway.inputs import QueryParam
from gateway.state import GATEWAY
from shared import ids
from shared.errors import ApiError, not_found
from shared.protocol import BatchCreateRequest, ChatCompletionRequest, WireModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Security = Literal["apiKey", "adminToken"] | None


@dataclass(frozen=True)
class PathParam:
    name: str
    format: ids.IdFormat | ids.NameFormat
    missing: Callable[[str], ApiError]  # the route's 404 for an unknown id, also given for a malformed one
    description: str


@dataclass(frozen=True)
class Multipart:
    """A multipart/form-data body: the form's fields as a JSON schema."""

    schema: dict
    media_type = "multipart/form-data"


@dataclass(frozen=True)
class JsonBody:
    """A JSON body checked by its handler rather than a wire model (the native Gemini allowlist): its schema."""

    schema: dict
    media_type = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    security: Security = "apiKey"
    body: type[WireModel] | Multipart | JsonBody | None = None
    params: tuple[PathParam, ...] = ()
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = (401,)
    ok: tuple[int, ...] = (200,)
    media_type: str = "application/json"
    sse: bool = False  # also answers text/event-stream
    dialect: Dialect = "openai"  # whose wire API: its key headers and error shape (gateway/dialects.py)
    # A path both OpenAI's and Gemini's API use (/api/v1/models...): the handler for a request from a Gemini
    # client (gateway/gemini_api/models.py ``speaks_gemini``), which also gets Google's keys and errors.
    gemini_form: Handler | None = None

    def __post_init__(self) -> None:
        named = set(re.findall(r"{(\w+)}", self.path))
        if named != {p.name for p in self.params}:
            raise ValueError(f"{self.method} {self.path}: path parameters {named} declared as "
                             f"{[p.name for p in self.params]}")


FILE_ID = PathParam("file_id", ids.FILE, lambda v: not_found(f"No such File object: {v}", param="id"),
                    "A file's id (file-...)")
BATCH_ID = PathParam("batch_id", ids.BATCH, lambda v: not_found(f"No such Batch object: {v}", param="batch_id"),
                     "A batch's id (batch_...)")
ACCOUNT_ID = PathParam("account_id", ids.ACCOUNT, lambda v: not_found(f"No account {v!r}."),
                       "An account's id (acct_...)")
KEY_ID = PathParam("key_id", ids.KEY, lambda v: not_found(f"No key {v!r}."), "An API key's id (key_...)")
REDEMPTION_BATCH_ID = PathParam("batch_id", ids.REDEMPTION_BATCH,
                                lambda v: not_found(f"No redemption code batch {v!r}."),
                                "A batch of redemption codes' id (rcb_...)")
NODE_ID = PathParam("node", ids.NODE, lambda v: not_found(f"No node {v!r}."), "A node of the catalog")
UPSTREAM_KEY = PathParam("key", ids.UPSTREAM_KEY_LABEL, lambda v: not_found(f"The node has no upstream key {v!r}."),
                         "An upstream key of the node, by its last 4 characters")
RESPONSE_ID = PathParam("response_id", ids.RESPONSE, lambda v: not_found(f"Response with id '{v}' not found."),
                        "A stored response's id (resp_...)")
GEMINI_REQUEST = JsonBody({
    "type": "object", "required": ["contents"], "additionalProperties": False,
    "description": "A GenerateContentRequest, checked against an allowlist (gateway/gemini_api/wire.py)",
    "properties": {
        "contents": {"type": "array", "items": {"type": "object", "properties": {
            "role": {"enum": ["user", "model"]}, "parts": {"type": "array", "items": {"type": "object"}}}}},
        "systemInstruction": {"type": "object"}, "tools": {"type": "array", "items": {"type": "object"}},
        "toolConfig": {"type": "object"}, "generationConfig": {"type": "object"},
        "safetySettings": {"type": "array", "items": {"type": "object"}}}})
GEMINI_COUNT_REQUEST = JsonBody({
    "type": "object", "additionalProperties": False, "description": "A CountTokensRequest",
    "properties": {"contents": GEMINI_REQUEST.schema["properties"]["contents"],
                   "generateContentRequest": {"type": "object"}}})
GEMINI_MODEL = PathParam("model", ids.MODEL, gemini_models.missing_model, "A model id from GET /api/v1beta/models")
MODEL_ID = PathParam("model_id", ids.MODEL, lambda v: not_found(f"The model '{v}' does not exist.",
                                                                 code="model_not_found", param="model"),
                     "A model id from GET /api/v1/models")

CATALOG_VERSION = PathParam("version", ids.NameFormat(r"[0-9]{1,9}"),
                            lambda v: not_found(f"No catalog version {v!r}.", param="version"), "A catalog version number")
CATALOG_DOCUMENT = JsonBody({
    "type": "object", "required": ["document"], "description": "The whole catalog, as the TOML file has it (JSON)",
    "properties": {"document": {"type": "object", "properties": {
        "providers": {"type": "object"}, "nodes": {"type": "object"}, "models": {"type": "object"},
        "aliases": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "note": {"type": "string", "maxLength": 500}}})
ALIAS_PATCH = JsonBody({"type": "object", "additionalProperties": {"type": ["string", "null"]},
                        "description": "alias -> model id to set it; alias -> null to remove it"})

UPLOAD_FORM = Multipart({"type": "object", "required": ["file", "purpose"], "properties": {
    "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": list(files.PURPOSES)}}})
ADMIN = "adminToken"
PUBLIC = None


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


ROUTES: tuple[Route, ...] = (
    # --- OpenAI-compatible API (the account's API key) ---
    Route("POST", "/api/v1/chat/completions", chat.chat_completions,
          "Create a chat completion (OpenAI-compatible)", body=ChatCompletionRequest, sse=True,
          errors=(400, 401, 402, 404, 413, 429, 502, 503, 504)),
    Route("POST", "/api/v1/responses", responses.create, "Create a model response (OpenAI Responses API)",
          body=ResponsesRequest, sse=True, errors=(400, 401, 402, 404, 413, 429, 502, 503, 504)),
    Route("GET", "/api/v1/responses/{response_id}", responses.retrieve, "Retrieve a stored response",
          params=(RESPONSE_ID,), errors=(401, 404)),
    Route("DELETE", "/api/v1/responses/{response_id}", responses.delete, "Delete a stored response",
          params=(RESPONSE_ID,), errors=(401, 404)),
    # --- Anthropic Messages (x-api-key or Bearer; Anthropic's error shape) ---
    Route("POST", "/api/v1/messages", messages.create, "Create a message (Anthropic Messages API)",
          body=MessagesRequest, sse=True, errors=(400, 401, 402, 404, 413, 429, 502, 503, 504), dialect="anthropic"),
    Route("POST", "/api/v1/messages/count_tokens", messages.count_tokens,
          "Count a message's input tokens (Anthropic; free, counts against the key's requests per minute)",
          body=CountTokensRequest, errors=(400, 401, 402, 404, 429, 502, 503, 504), dialect="anthropic"),
    # --- native Gemini (x-goog-api-key, ?key= or Bearer; Google's error shape), also under /api/v1 ---
    *(route for prefix in ("/api/v1beta", "/api/v1") for route in (
        Route("POST", prefix + "/models/{model}:generateContent", gemini.generate_content,
              "Generate content (native Gemini API)", body=GEMINI_REQUEST, params=(GEMINI_MODEL,), query=gemini.QUERY,
              errors=(400, 401, 402, 404, 413, 429, 502, 503, 504), dialect="gemini"),
        Route("POST", prefix + "/models/{model}:streamGenerateContent", gemini.stream_generate_content,
              "Stream generated content (native Gemini API; alt=sse for server-sent events)", body=GEMINI_REQUEST,
              params=(GEMINI_MODEL,), query=gemini.QUERY, sse=True, errors=(400, 401, 402, 404, 413, 429, 502, 503, 504),
              dialect="gemini"),
        Route("POST", prefix + "/models/{model}:countTokens", gemini.count_tokens,
              "Count tokens (native Gemini API; free, counts against the key's requests per minute)",
              body=GEMINI_COUNT_REQUEST, params=(GEMINI_MODEL,), query=gemini.QUERY, errors=(400, 401, 404, 429, 502, 503, 504),
              dialect="gemini"))),
    Route("GET", "/api/v1beta/models", gemini_models.list_models, "List models (native Gemini API)",
          query=gemini_models.QUERY, errors=(400, 401), dialect="gemini"),
    Route("GET", "/api/v1beta/models/{model}", gemini_models.get_model, "Retrieve a model (native Gemini API)",
          params=(GEMINI_MODEL,), query=gemini_models.QUERY[:1], errors=(401, 404), dialect="gemini"),
    Route("GET", "/api/v1/models", models.list_models, "List models (in Gemini's shape for a Gemini client: an "
          "x-goog-api-key or x-goog-api-client header, or a key, pageSize or pageToken parameter)",
          query=gemini_models.QUERY, errors=(400, 401), gemini_form=gemini_models.list_models),
    Route("GET", "/api/v1/models/{model_id}", models.get_model, "Retrieve a model (in Gemini's shape for a Gemini "
          "client, as the list)", params=(MODEL_ID,), query=gemini_models.QUERY[:1], errors=(401, 404),
          gemini_form=gemini_models.get_model),
    Route("POST", "/api/v1/files", files.upload, "Upload a JSONL batch input file", body=UPLOAD_FORM,
          errors=(400, 401, 402, 413)),
    Route("GET", "/api/v1/files", files.list_files, "List files, newest first",
          query=files.PAGING.params + files.LIST_FILTERS, errors=(400, 401)),
    Route("GET", "/api/v1/files/{file_id}", files.get_file, "Retrieve a file", params=(FILE_ID,),
          errors=(401, 404)),
    Route("DELETE", "/api/v1/files/{file_id}", files.delete_file, "Delete a file", params=(FILE_ID,),
          errors=(401, 404)),
    Route("GET", "/api/v1/files/{file_id}/content", files.content, "A file's content", params=(FILE_ID,),
          errors=(401, 404), media_type="application/jsonl"),
    Route("POST", "/api/v1/batches", batches.create, "Create a batch", body=BatchCreateRequest,
          errors=(400, 401, 402, 404)),
    Route("GET", "/api/v1/batches", batches.list_batches, "List batches, newest first",
          query=batches.PAGING.params, errors=(400, 401)),
    Route("GET", "/api/v1/batches/{batch_id}", batches.retrieve, "Retrieve a batch", params=(BATCH_ID,),
          errors=(401, 404)),
    Route("POST", "/api/v1/batches/{batch_id}/cancel", batches.cancel, "Cancel a batch", params=(BATCH_ID,),
          errors=(401, 404, 409)),
    Route("GET", "/api/v1/webhook_secret", batches.get_webhook_secret,
          "The account's secret for signed batch callbacks"),
    Route("POST", "/api/v1/webhook_secret/rotate", batches.rotate_webhook_secret,
          "Replace the callback signing secret; the old one also signs for APIINONE_WEBHOOK_SECRET_OVERLAP_S",
          errors=(401, 404)),
    # --- billing (the account's API key) ---
    Route("GET", "/billing/credits", billing.credits, "The account's balance, holds and available credits"),
    Route("GET", "/billing/usage", billing.usage, "Usage rows, newest first",
          query=billing.PAGING.params + billing.USAGE_FILTERS, errors=(400, 401)),
    Route("GET", "/billing/usage/export", billing.usage_export,
          "Usage rows of a time range as a CSV file, newest first, streamed (any range the account has)",
          query=billing.EXPORT_FILTERS, errors=(400, 401, 503), media_type="text/csv"),
    Route("GET", "/billing/orders", billing.orders, "Top-up orders, newest first", query=billing.PAGING.params,
          errors=(400, 401)),
    Route("GET", "/billing/ledger", billing.ledger, "Every balance change, newest first",
          query=billing.PAGING.params, errors=(400, 401)),
    Route("POST", "/billing/redeem", redemption.redeem,
          "Redeem a code: one use credits the account (an order); answers the balance, as GET /billing/credits",
          body=redemption.Redeem, errors=(400, 401, 404, 429)),
    Route("GET", "/billing/alert", balance_alert.get_alert, "The account's low-balance alert", errors=(401, 503)),
    Route("POST", "/billing/alert", balance_alert.set_alert,
          "Set the low-balance alert (a threshold in credits, an optional webhook URL), or turn it off with "
          "threshold null", body=balance_alert.AlertSettings, errors=(400, 401, 503)),
    Route("GET", "/billing/packages", payments.packages, "The credit packages a customer may buy"),
    Route("POST", "/billing/checkout", payments.checkout,
          "Buy a package: a pending order and the payment provider's checkout URL", body=payments.NewCheckout,
          ok=(201,), errors=(400, 401, 502, 503)),
    Route("GET", "/billing/payments", payments.payment_orders,
          "Payment orders, newest first: pending, paid, refunded, failed or expired", errors=(401, 503)),
    Route("POST", "/billing/webhooks/stripe", payments.stripe_webhook,
          "Stripe's events (no API key: the Stripe-Signature header is verified over the raw body)", PUBLIC,
          errors=(400, 409, 503)),
    # --- the operator's admin API (APIINONE_ADMIN_TOKEN) ---
    Route("POST", "/admin/accounts", admin.create_account, "Create an account", ADMIN, body=admin.NewAccount,
          ok=(201,), errors=(400, 401)),
    Route("GET", "/admin/accounts", admin.list_accounts, "List accounts", ADMIN),
    Route("GET", "/admin/accounts/{account_id}", admin.get_account, "Retrieve an account", ADMIN,
          params=(ACCOUNT_ID,), errors=(401, 404)),
    Route("PATCH", "/admin/accounts/{account_id}", admin.update_account,
          "Set an account's price multiplier (every price dimension times it; default 1)", ADMIN,
          body=admin.AccountUpdate, params=(ACCOUNT_ID,), errors=(400, 401, 404)),
    Route("POST", "/admin/accounts/{account_id}/keys", admin.create_key,
          "Create an API key (shown only here); rpm, tpm and concurrency at most the account's",
          ADMIN, body=admin.NewKey, params=(ACCOUNT_ID,), ok=(201,), errors=(400, 401, 404, 409)),
    Route("GET", "/admin/accounts/{account_id}/keys", admin.list_keys, "List an account's keys (prefixes only)",
          ADMIN, params=(ACCOUNT_ID,), errors=(401, 404)),
    Route("POST", "/admin/accounts/{account_id}/topups", admin.create_topup,
          "Top up, once per reference (a repeated reference answers 200 with the first order)", ADMIN,
          body=admin.NewTopup, params=(ACCOUNT_ID,), ok=(201, 200), errors=(400, 401, 404)),
    Route("POST", "/admin/redemption-codes", redemption.create_codes,
          "Generate a batch of redemption codes, shown only in this answer (?format=csv: as a CSV file)", ADMIN,
          body=redemption.NewCodes, query=(redemption.FORMAT,), ok=(201,), errors=(400, 401)),
    Route("POST", "/admin/redemption-codes/{batch_id}/disable", redemption.disable_codes,
          "Disable every code of a batch at once", ADMIN, params=(REDEMPTION_BATCH_ID,), errors=(401, 404)),
    Route("DELETE", "/admin/keys/{key_id}", admin.delete_key, "Revoke a key on every gateway at once", ADMIN,
          params=(KEY_ID,), errors=(401, 404)),
    Route("POST", "/admin/users", adminapi.create_user, "Create a dashboard user", ADMIN, body=adminapi.NewUser,
          ok=(201,), errors=(400, 401, 404, 409)),
    Route("GET", "/admin/users", adminapi.list_users, "List dashboard users", ADMIN,
          query=adminapi.LIST_FILTERS),
    Route("GET", "/admin/nodes", admin.nodes, "Nodes: workers, capacity, in-flight, queue depth; `apiinone run`'s "
          "supervised processes and their restarts; each upstream key's state", ADMIN),
    Route("POST", "/admin/nodes/{node}/keys/{key}/enable", admin.enable_upstream_key,
          "Put a disabled (or cooling down) upstream key back in its node's rotation", ADMIN,
          params=(NODE_ID, UPSTREAM_KEY), errors=(401, 404)),
    Route("GET", "/admin/audit", admin.audit, "Check balance == sum(ledger) for every account", ADMIN),
    Route("GET", "/admin/audit-log", audit_log.audit_log,
          "Operator actions (catalog, accounts, credits, keys, codes): who, what, when, from where, before and "
          "after; newest first", ADMIN, query=audit_log.PAGING.params + audit_log.FILTERS, errors=(400, 401, 503)),
    # --- the live catalog (every gateway and worker follows a change within a second) ---
    Route("GET", "/admin/catalog", admin_catalog.get_catalog,
          "The current catalog version and its document (ETag: the version)", ADMIN),
    Route("PUT", "/admin/catalog", admin_catalog.put_catalog,
          "Replace the catalog (If-Match: the version it replaces); validated before it is stored; the same "
          "document again stores nothing and answers the current version", ADMIN,
          body=CATALOG_DOCUMENT, errors=(400, 401, 409, 412, 503)),
    Route("PATCH", "/admin/catalog/models/{model_id}", admin_catalog.patch_model,
          "Change a model's pricing, routes, base cost or fallbacks (If-Match: the current version)", ADMIN, body=admin_catalog.ModelChange,
          params=(MODEL_ID,), errors=(400, 401, 404, 409, 412, 503)),
    Route("PATCH", "/admin/catalog/aliases", admin_catalog.patch_aliases,
          "Set ({alias: model}) or remove ({alias: null}) aliases (If-Match: the current version)", ADMIN, body=ALIAS_PATCH,
          errors=(400, 401, 409, 412, 503)),
    Route("GET", "/admin/catalog/versions", admin_catalog.list_versions, "The catalog's versions, newest first",
          ADMIN, query=admin_catalog.VERSIONS.params, errors=(400, 401)),
    Route("GET", "/admin/catalog/versions/{version}", admin_catalog.get_version, "One catalog version's document",
          ADMIN, params=(CATALOG_VERSION,), errors=(401, 404)),
    # --- operations (no credentials) ---
    Route("GET", "/healthz", health.healthz, "The process is alive", PUBLIC, errors=()),
    Route("GET", "/readyz", health.readyz, "Redis answers and every node has a live worker", PUBLIC,
          errors=(503,)),
    Route("GET", "/metrics", health.metrics, "Prometheus metrics", PUBLIC, errors=(),
          media_type="text/plain"),
    Route("GET", "/openapi.json", openapi_json, "This document", PUBLIC, errors=()),
)


def _guarded(route: Route) -> Handler:
    """The handler behind the route's declared security and path id formats."""

    @functools.wraps(route.handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        handler, request[DIALECT] = route.handler, route.dialect
        if route.gemini_form is not None and gemini_models.speaks_gemini(request):
            handler, request[DIALECT] = route.gemini_form, "gemini"
        if route.security == "apiKey":
            await gw.keys.authenticate(request)
        elif route.security == "adminToken":
            check_admin(request, gw.settings.admin_token)
        for param in route.params:
            value = request.match_info[param.name]
            if not param.format.matches(value):
                raise param.missing(value)
        return await handler(request)

    return guarded


def mount(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        if route.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(route.path, _guarded(route))
        else:
            app.router.add_route(route.method, route.path, _guarded(route))


@functools.lru_cache(maxsize=1)
def document() -> dict:
    """The OpenAPI 3.1 document of ``ROUTES``."""
    return openapi.build(ROUTES)
