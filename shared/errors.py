"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Statuses follow what the openai SDKs map to exceptions (see NOTES.md).
"""

from __future__ import annotations

import orjson


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    @classmethod
    def from_body(cls, status: int, body: dict, retry_after: float | None = None) -> ApiError:
        err = body.get("error", {})
        return cls(status, err.get("message", ""), err.get("type", "api_error"), err.get("code"), err.get("param"),
                   retry_after)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def unauthorized(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_api_key")


def insufficient_quota(message: str) -> ApiError:
    return ApiError(402, message, "insufficient_quota", "insufficient_quota")


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, "invalid_request_error", code, param)


def rate_limited(message: str, retry_after: float, kind: str = "requests") -> ApiError:
    """OpenAI's shape: type "requests" or "tokens", code rate_limit_exceeded, and Retry-After."""
    return ApiError(429, message, kind, "rate_limit_exceeded", retry_after=retry_after)


def unavailable(message: str, retry_after: float | None = 1.0) -> ApiError:
    return ApiError(503, message, "service_unavailable", "service_unavailable", retry_after=retry_after)


def database_unavailable(why: str = "") -> ApiError:
    """The record (Postgres, DATABASE_URL) did not answer: nothing was changed, try again shortly."""
    return ApiError(503, "The database (Postgres, DATABASE_URL) is unavailable" + (f": {why}" if why else "")
                    + "; nothing was changed. Try again shortly.", "service_unavailable", "database_unavailable",
                    retry_after=2.0)


def upstream_error(status: int, message: str, code: str = "upstream_error", retry_after: float | None = None) -> ApiError:
    return ApiError(status, message, "api_error", code, retry_after=retry_after)
