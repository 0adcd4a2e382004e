"""Errors in each front end's own words: OpenAI's, Anthropic's and Google's shapes and statuses.

Every failure is raised as an ``ApiError`` (shared/errors.py); the route table names each route's
dialect (gateway/routes.py), and the error middleware and the streaming relays word the error
for it here, so an SDK raises its own exception class with its own fields:

- openai:    ``{"error": {"message", "type", "param", "code"}}``
- anthropic: ``{"type": "error", "error": {"type", "message"}}`` (``invalid_request_error``,
  ``authentication_error``, ``billing_error``, ``permission_error``, ``not_found_error``,
  ``request_too_large``, ``rate_limit_error``, ``api_error``, ``timeout_error``, ``overloaded_error``)
- gemini:    ``{"error": {"code", "message", "status", "details"?}}`` with google.rpc statuses, a
  ``BadRequest`` field violation naming the field, and ``RetryInfo`` on a 429.
"""

from __future__ import annotations

from typing import Literal

import orjson
from aiohttp import web

from shared.errors import ApiError

Dialect = Literal["openai", "anthropic", "gemini"]
DIALECT = "dialect"  # request[DIALECT]: the matched route's dialect (set by the route guard)

ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION",
                   403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED", 413: "INVALID_ARGUMENT",
                   429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                   502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def google_status(status: int) -> str:
    return GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def error_body(err: ApiError, dialect: Dialect) -> dict:
    if dialect == "anthropic":
        return {"type": "error", "error": {"type": anthropic_type(err.status), "message": err.message}}
    if dialect == "gemini":
        body: dict = {"code": err.status, "message": err.message, "status": google_status(err.status)}
        details = []
        if err.param:
            details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": err.param, "description": err.message}]})
        if err.status == 429 and err.retry_after is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{max(1, round(err.retry_after))}s"})
        if details:
            body["details"] = details
        return {"error": body}
    return err.body()


def error_response(err: ApiError, dialect: Dialect = "openai") -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return web.Response(status=err.status, body=orjson.dumps(error_body(err, dialect)),
                        content_type="application/json", headers=headers)


def dialect_of(request: web.Request) -> Dialect:
    return request.get(DIALECT, "openai")
