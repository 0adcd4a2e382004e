"""The OpenAPI 3.1 document the gateway serves at /openapi.json.

Request bodies come from the same pydantic models that validate them, so the
spec cannot drift from the code; tests/test_fuzz.py throws generated and
malformed input at every operation it lists.
"""

from __future__ import annotations

from functools import lru_cache

from aiohttp import web

from gateway.admin import NewAccount, NewKey, NewTopup
from gateway.dashboard.adminapi import NewUser
from shared.protocol import BatchCreateRequest, ChatCompletionRequest

ERROR = {"$ref": "#/components/schemas/Error"}
OBJECT = {"type": "object"}


def _responses(ok: int = 200, ok_schema: dict = OBJECT, errors: tuple[int, ...] = (400, 401), sse: bool = False):
    content = {"application/json": {"schema": ok_schema}}
    if sse:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    out = {str(ok): {"description": "OK", "content": content}}
    for status in errors:
        out[str(status)] = {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": ERROR}}}
    return out


def _body(model: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def _op(summary: str, responses: dict, *, security: str | None = "apiKey", body: str | None = None,
        params: list | None = None) -> dict:
    op: dict = {"summary": summary, "responses": responses}
    if security:
        op["security"] = [{security: []}]
    if body:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


PAGE = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100}), _query("after", {"type": "string"})]


@lru_cache(maxsize=1)
def document() -> dict:
    schemas: dict = {}
    for model in (ChatCompletionRequest, BatchCreateRequest, NewAccount, NewKey, NewTopup, NewUser):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                         "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
    admin_errors = (400, 401, 404)
    paths = {
        "/api/v1/chat/completions": {"post": _op(
            "Create a chat completion (OpenAI-compatible)", body="ChatCompletionRequest",
            responses=_responses(sse=True, errors=(400, 401, 402, 404, 413, 429, 502, 503, 504)))},
        "/api/v1/models": {"get": _op("List models", _responses())},
        "/api/v1/models/{model_id}": {"get": _op("Retrieve a model", _responses(errors=(401, 404)),
                                                 params=[_path_param("model_id")])},
        "/api/v1/files": {
            "post": {**_op("Upload a JSONL batch input file", _responses(errors=(400, 401, 413))),
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "required": ["file", "purpose"], "properties": {
                             "file": {"type": "string", "format": "binary"},
                             "purpose": {"type": "string", "enum": ["batch"]}}}}}}},
            "get": _op("List files", _responses(), params=PAGE)},
        "/api/v1/files/{file_id}": {
            "get": _op("Retrieve a file", _responses(errors=(401, 404)), params=[_path_param("file_id")]),
            "delete": _op("Delete a file", _responses(errors=(401, 404)), params=[_path_param("file_id")])},
        "/api/v1/files/{file_id}/content": {"get": _op("A file's content", _responses(errors=(401, 404)),
                                                       params=[_path_param("file_id")])},
        "/api/v1/batches": {
            "post": _op("Create a batch", _responses(errors=(400, 401, 404)), body="BatchCreateRequest"),
            "get": _op("List batches", _responses(), params=PAGE)},
        "/api/v1/batches/{batch_id}": {"get": _op("Retrieve a batch", _responses(errors=(401, 404)),
                                                  params=[_path_param("batch_id")])},
        "/api/v1/batches/{batch_id}/cancel": {"post": _op("Cancel a batch", _responses(errors=(400, 401, 404)),
                                                          params=[_path_param("batch_id")])},
        "/api/v1/webhook_secret": {"get": _op("The account's secret for signed batch callbacks", _responses())},
        "/billing/credits": {"get": _op("The account's balance, holds and available credits", _responses())},
        "/billing/usage": {"get": _op("Usage rows, newest first", _responses(), params=PAGE + [
            _query("since", {"type": "integer"}), _query("model", {"type": "string"}),
            _query("key", {"type": "string"})])},
        "/billing/orders": {"get": _op("Top-up orders, newest first", _responses(), params=PAGE)},
        "/billing/ledger": {"get": _op("Every balance change, newest first", _responses(), params=PAGE)},
        "/admin/accounts": {
            "post": _op("Create an account", _responses(201, errors=admin_errors), security="adminToken",
                        body="NewAccount"),
            "get": _op("List accounts", _responses(errors=(401,)), security="adminToken")},
        "/admin/accounts/{account_id}": {"get": _op("Retrieve an account", _responses(errors=admin_errors),
                                                    security="adminToken", params=[_path_param("account_id")])},
        "/admin/accounts/{account_id}/keys": {
            "post": _op("Create an API key (shown only here)", _responses(201, errors=admin_errors),
                        security="adminToken", body="NewKey", params=[_path_param("account_id")]),
            "get": _op("List an account's keys (prefixes only)", _responses(errors=(401,)), security="adminToken",
                       params=[_path_param("account_id")])},
        "/admin/accounts/{account_id}/topups": {"post": _op(
            "Top up, once per reference", _responses(201, errors=admin_errors), security="adminToken",
            body="NewTopup", params=[_path_param("account_id")])},
        "/admin/keys/{key_id}": {"delete": _op("Revoke a key on every gateway at once",
                                               _responses(errors=admin_errors), security="adminToken",
                                               params=[_path_param("key_id")])},
        "/admin/users": {
            "post": _op("Create a dashboard user", _responses(201, errors=(400, 401, 404, 409)), security="adminToken",
                        body="NewUser"),
            "get": _op("List dashboard users", _responses(errors=(401,)), security="adminToken",
                       params=[_query("account_id", {"type": "string"})])},
        "/admin/nodes": {"get": _op("Nodes: workers, capacity, in-flight, queue depth; `apiinone run`'s supervised "
                                    "processes and their restarts", _responses(errors=(401,)),
                                    security="adminToken")},
        "/admin/audit": {"get": _op("Check balance == sum(ledger) for every account", _responses(errors=(401,)),
                                    security="adminToken")},
        "/healthz": {"get": _op("The process is alive", _responses(errors=()), security=None)},
        "/readyz": {"get": _op("Redis answers and every node has a live worker",
                               _responses(errors=(503,)), security=None)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "apiinone", "version": "0.1.0",
                 "description": "OpenAI-compatible LLM gateway with prepaid credits"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An account's API key (aio_...)"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "APIINONE_ADMIN_TOKEN"}}},
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())
