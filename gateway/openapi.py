"""The OpenAPI 3.1 document of the route table (``gateway/routes.py``), served at /openapi.json.

Paths, methods, security, parameters and statuses come from the same
declarations the router is built from, and request bodies from the same
pydantic models that validate them, so the document cannot drift from the
code; tests/test_fuzz.py throws generated and malformed input at every
operation it lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from pydantic import BaseModel

if TYPE_CHECKING:
    from gateway.routes import Route

ERROR_SCHEMAS = {
    "openai": ("Error", {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                         "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}),
    "anthropic": ("AnthropicError", {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"}, "error": {"type": "object", "properties": {
            "type": {"type": "string"}, "message": {"type": "string"}}}}}),
    "gemini": ("GoogleError", {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                                         "status": {"type": "string"}, "details": {"type": "array"}}}}}),
}
ERROR_DESCRIPTIONS = {"openai": "OpenAI-shaped error", "anthropic": "Anthropic-shaped error",
                      "gemini": "Google-shaped error"}
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "An account's API key (aio_...)"},
    "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                     "description": "An account's API key, as Anthropic's SDKs send it"},
    "googleKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key",
                  "description": "An account's API key, as Google's SDKs send it (or the `key` query parameter)"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "APIINONE_ADMIN_TOKEN"}}
KEY_HEADERS = {"openai": [], "anthropic": ["anthropicKey"], "gemini": ["googleKey"]}  # besides Bearer


def _is_model(body: object) -> bool:
    return isinstance(body, type) and issubclass(body, BaseModel)


def _responses(route: Route) -> dict:
    schema = {"type": "string"} if route.media_type.startswith("text/") else (
        {"type": "string", "format": "binary"} if route.media_type != "application/json" else {"type": "object"})
    content = {route.media_type: {"schema": schema}}
    if route.sse:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    out = {str(status): {"description": "OK", "content": content} for status in route.ok}
    error = {"$ref": f"#/components/schemas/{ERROR_SCHEMAS[route.dialect][0]}"}
    for status in route.errors:
        out[str(status)] = {"description": ERROR_DESCRIPTIONS[route.dialect],
                            "content": {"application/json": {"schema": error}}}
    return out


def _operation(route: Route) -> dict:
    op: dict = {"summary": route.summary, "operationId": route.handler.__module__.rsplit(".", 1)[-1] + "_"
                + route.handler.__name__, "responses": _responses(route)}
    if route.security:
        schemes = KEY_HEADERS[route.dialect] + (KEY_HEADERS["gemini"] if route.gemini_form else [])
        op["security"] = [{route.security: []}] + [{scheme: []} for scheme in
                                                   (schemes if route.security == "apiKey" else [])]
    params = [{"name": p.name, "in": "path", "required": True, "description": p.description,
               "schema": {"type": "string", "pattern": f"^{p.format.pattern}$"}} for p in route.params]
    params += [{"name": q.name, "in": "query", "required": False, "schema": q.schema,
                **({"description": q.description} if q.description else {})} for q in route.query]
    if params:
        op["parameters"] = params
    if _is_model(route.body):
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    elif route.body is not None:
        op["requestBody"] = {"required": True, "content": {route.body.media_type: {"schema": route.body.schema}}}
    return op


def _schemas(models: Iterable[type[BaseModel]]) -> dict:
    schemas: dict = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas.update(ERROR_SCHEMAS.values())
    return schemas


def build(routes: Iterable[Route]) -> dict:
    routes = list(routes)
    paths: dict = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    models = dict.fromkeys(r.body for r in routes if _is_model(r.body))
    return {
        "openapi": "3.1.0",
        "info": {"title": "apiinone", "version": "0.1.0",
                 "description": "OpenAI-compatible LLM gateway with prepaid credits"},
        "paths": paths,
        "components": {"schemas": _schemas(models), "securitySchemes": SECURITY_SCHEMES},
    }
