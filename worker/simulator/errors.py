"""Google-shaped error bodies for the Gemini simulator.

Every error the simulator returns has Google's body, `{"error": {"code", "message", "status"}}`
(plus `details` where Google sends them), with the HTTP status equal to `code`.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

STATUS_BY_CODE: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CODE_BY_STATUS: dict[str, int] = {v: k for k, v in STATUS_BY_CODE.items()}

# Messages Google answers with for each status when the simulator is told to fail.
CANNED_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    409: "The operation was aborted.",
    429: (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits."
    ),
    499: "The operation was cancelled.",
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    ),
    501: "Operation is not implemented, or supported, or enabled.",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}

RETRY_DELAY = "3s"

MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."


class SimError(Exception):
    """An error answered to the client with Google's error body."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE.get(code, "UNKNOWN")
        self.details = details

    def body(self) -> bytes:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return orjson.dumps({"error": err})


def invalid(message: str) -> SimError:
    """A 400 INVALID_ARGUMENT."""
    return SimError(400, message)


def unknown_field(name: str, path: str, reason: str = "Cannot find field.") -> SimError:
    """Google's answer to a JSON field its request message does not have."""
    where = f" at '{path}'" if path else ""
    msg = f'Invalid JSON payload received. Unknown name "{name}"{where}: {reason}'
    violation = {"field": f"{path}.{name}" if path else name, "description": msg}
    return SimError(
        400,
        msg,
        [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}],
    )


def bad_value(path: str, proto_type: str, value: Any) -> SimError:
    """Google's answer to a JSON value of the wrong type for a field."""
    try:
        shown = orjson.dumps(value).decode()
    except TypeError:
        shown = repr(value)
    msg = f"Invalid value at '{path}' ({proto_type}), {shown}"
    return SimError(
        400,
        msg,
        [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": path, "description": msg}],
            }
        ],
    )


def canned(code: int) -> SimError:
    """The error the `error=` directive asks for."""
    details: list[dict[str, Any]] | None = None
    if code == 429:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}
            ]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": RETRY_DELAY},
        ]
    return SimError(code, CANNED_MESSAGES.get(code, "Unknown error."), details)


def invalid_key() -> SimError:
    return SimError(
        400,
        INVALID_KEY_MESSAGE,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": INVALID_KEY_MESSAGE,
            },
        ],
    )


def missing_key() -> SimError:
    return SimError(
        403,
        MISSING_KEY_MESSAGE,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "CREDENTIALS_MISSING",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "generativelanguage.googleapis.com",
                    "method": "google.ai.generativelanguage.v1beta.GenerativeService."
                    "GenerateContent",
                },
            }
        ],
    )


def model_not_found(model: str, method: str) -> SimError:
    return SimError(
        404,
        f"models/{model} is not found for API version v1beta, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


# --- per-key faults (key_faults.py): what Google answers about one key ---------------------
RATE_LIMIT_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
    "head to: https://ai.dev/rate-limit. "
)
PROJECT_NUMBER = "123456789012"  # the simulator's one pretend Google Cloud project


def key_rate_limited(model: str, retry_s: float | None) -> SimError:
    """429 RESOURCE_EXHAUSTED as the Gemini API sends it for a per-minute quota: Help, QuotaFailure and,
    when the quota refills at a known time, RetryInfo (whole seconds; the message has the exact figure)."""
    metric = "generativelanguage.googleapis.com/generate_content_paid_tier_requests"
    message = f"{RATE_LIMIT_MESSAGE}\n* Quota exceeded for metric: {metric}, limit: 1000, model: {model}"
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [
            {"description": "Learn more about Gemini API quotas",
             "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": metric,
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
            "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": "1000",
        }]},
    ]
    if retry_s is not None:
        message += f"\nPlease retry in {retry_s:.6f}s."
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{math.ceil(retry_s)}s"})
    return SimError(429, message, details)


def service_disabled() -> SimError:
    """403: the key's project has the Generative Language API turned off."""
    url = f"https://console.developers.google.com/apis/api/generativelanguage.googleapis.com/overview?project={PROJECT_NUMBER}"
    message = (f"Generative Language API has not been used in project {PROJECT_NUMBER} before or it is disabled. "
               f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few minutes for "
               "the action to propagate to our systems and retry.")
    return SimError(403, message, [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
         "metadata": {"consumer": f"projects/{PROJECT_NUMBER}", "service": "generativelanguage.googleapis.com",
                      "activationUrl": url, "serviceTitle": "Generative Language API",
                      "containerInfo": PROJECT_NUMBER}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [
            {"description": "Google developers console API activation", "url": url}]},
    ])


def consumer_suspended(key: str) -> SimError:
    """403: Google suspended the key (abuse, a leaked key)."""
    message = f"Permission denied: Consumer 'api_key:{key}' has been suspended."
    return SimError(403, message, [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED",
         "domain": "googleapis.com",
         "metadata": {"consumer": f"projects/{PROJECT_NUMBER}", "service": "generativelanguage.googleapis.com",
                      "containerInfo": f"api_key:{key}"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
    ])
