"""Google's error bodies: what they say (``GoogleError``), and what the client sees (``map_error``).

A Google error is ``{"error": {code, message, status, details}}``; ``details`` are typed
``google.rpc`` messages. Two of them matter beyond the status: ``RetryInfo.retryDelay`` (how
long the quota that answered 429 stays spent) and ``ErrorInfo.reason`` (Google's verdict, e.g.
``API_KEY_INVALID``, ``SERVICE_DISABLED``, ``CONSUMER_SUSPENDED``: the key or its project
itself is unusable, whatever was asked). Key pools (worker/key_pool.py) act on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from worker.provider import ProviderError, RequestError

# ErrorInfo reasons that are Google's verdict on the credential or its project, never on a request.
KEY_VERDICTS = frozenset({
    "API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED", "API_KEY_IOS_APP_BLOCKED",
    "SERVICE_DISABLED", "CONSUMER_SUSPENDED", "CONSUMER_INVALID", "BILLING_DISABLED",
})
_CREDENTIAL_REFUSED = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED",
                                 "CREDENTIALS_MISSING"})


def duration_s(value: object) -> float | None:
    """A protobuf Duration in JSON (``"5s"``, ``"36.429760048s"``) or a Retry-After header, in seconds."""
    try:
        seconds = float(str(value).strip().rstrip("s"))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclass
class GoogleError:
    status: int  # HTTP
    message: str
    google_status: str = ""  # RESOURCE_EXHAUSTED, INVALID_ARGUMENT, PERMISSION_DENIED, ...
    retry_delay: float | None = None  # RetryInfo.retryDelay, seconds
    reasons: set[str] = field(default_factory=set)  # ErrorInfo.reason of every ErrorInfo detail

    @property
    def key_verdict(self) -> str | None:
        """The reason Google gave that condemns the key itself, if any (the first, alphabetically)."""
        found = sorted(self.reasons & KEY_VERDICTS)
        return found[0] if found else None


def parse_google_error(status: int, body: bytes, headers: dict | None = None) -> GoogleError:
    """Read an error body leniently: a body that is not Google's JSON still gives its status."""
    try:
        err = orjson.loads(body).get("error", {})
        if not isinstance(err, dict):
            err = {}
    except (orjson.JSONDecodeError, AttributeError):
        err = {}
    parsed = GoogleError(status, str(err.get("message") or f"upstream answered HTTP {status}"),
                         str(err.get("status") or ""))
    details = err.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo"):
            parsed.retry_delay = duration_s(detail.get("retryDelay", ""))
        elif kind.endswith("google.rpc.ErrorInfo") and isinstance(detail.get("reason"), str):
            parsed.reasons.add(detail["reason"])
    header = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    if parsed.retry_delay is None and header is not None:
        parsed.retry_delay = duration_s(header)
    return parsed


def map_error(status: int, body: bytes, headers: dict) -> ProviderError:
    """Google's error -> ProviderError, carrying what it says about the key.

    The client's own mistakes keep their 400; what only the operator can fix (credentials,
    project, model name) becomes a 502 so that the gateway may fail over to another node.
    """
    g = parse_google_error(status, body, headers)
    error = _client_error(g)
    error.retry_delay = g.retry_delay
    error.key_verdict = g.key_verdict
    error.key_limited = status == 429
    return error


def _client_error(g: GoogleError) -> ProviderError:
    status, message, retry_after = g.status, g.message, g.retry_delay
    if g.key_verdict and status != 429:
        # Google's own text may quote the key ("Consumer 'api_key:AIza...' has been suspended."): never relayed.
        return ProviderError(502, f"The upstream provider refused this node's key ({g.key_verdict}).",
                             "upstream_permission_denied" if status == 403 else "upstream_auth_error")
    if status == 401 or g.reasons & _CREDENTIAL_REFUSED:
        return ProviderError(502, "The upstream provider refused this node's credentials.", "upstream_auth_error")
    if status == 400 and g.google_status == "FAILED_PRECONDITION":
        return ProviderError(502, "The upstream provider cannot serve this node's project: " + message,
                             "upstream_precondition_failed")
    if status == 400:
        if "token count" in message and "exceeds" in message:
            return RequestError(message, "messages", "context_length_exceeded")
        return ProviderError(400, message, "invalid_request_error", error_type="invalid_request_error")
    if status == 429:
        return ProviderError(429, "The upstream provider is rate limiting this node: " + message,
                             "upstream_rate_limited", retryable=True, retry_after=retry_after or 1.0,
                             error_type="rate_limit_error")
    if status == 403:
        return ProviderError(502, "The upstream provider denied this node permission: " + message,
                             "upstream_permission_denied")
    if status == 404:
        return ProviderError(502, "The upstream provider does not know this model: " + message, "upstream_not_found")
    if status == 503:
        return ProviderError(503, "The upstream provider is unavailable: " + message, "upstream_unavailable",
                             retryable=True, retry_after=retry_after or 1.0)
    if status == 504:
        return ProviderError(504, "The upstream provider timed out: " + message, "upstream_timeout", retryable=True,
                             retry_after=retry_after)
    return ProviderError(502, f"The upstream provider failed (HTTP {status}): " + message, "upstream_error",
                         retryable=status >= 500, retry_after=retry_after)


def redact(error: ProviderError, secret: str, label: str) -> ProviderError:
    """The error with the key it was made with replaced by its label, wherever the upstream quoted it."""
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "..." + label)
        error.args = (error.message,)
    return error
