"""What crosses a process boundary, declared once.

- ``ChatJob``: a front end (gateway, batch worker) -> a node worker, through the node's queue.
- ``Settlement``: a node worker -> the billing worker, through the billing queue.
- ``USAGE_FIELDS``: the usage row settle.lua writes (plus ``charged_micro`` and ``hold_micro``).
- ``Hold``: a request's entry in its account's holds hash, written by reserve.lua.
- ``RequestStatus``: how a request ended, on its settlement and usage row.
- ``ErrorCode`` with ``retry_kind``: the codes whose value decides a retry or failover.
- ``ReserveStatus``: reserve.lua's reply codes.
- ``Api`` and ``JobKind``: which wire API a request came in on (named on its usage row), and what a
  node worker does with its job.

Types only: TypedDicts are plain dicts at run time, so the hot path pays nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import NotRequired, TypedDict


class RequestStatus(StrEnum):
    SUCCEEDED = "succeeded"  # charged the token cost
    CANCELLED = "cancelled"  # the client left: charged for what the provider produced
    FAILED = "failed"  # our side or the provider failed: refunded in full
    REJECTED = "rejected"  # never reached a worker (queue full or timeout, client gone): refunded
    EXPIRED = "expired"  # the hold outlived its request and was reconciled


BILLABLE = frozenset({RequestStatus.SUCCEEDED, RequestStatus.CANCELLED})


class ErrorCode(StrEnum):
    """Error codes that some process acts on (not every code a client may see)."""

    WORKER_LOST = "worker_lost"  # the worker running the request stopped heartbeating
    JOB_LOST = "job_lost"  # claimed from the queue but never started
    WORKER_SHUTDOWN = "worker_shutdown"  # the worker drained and gave up on it (SIGTERM)
    INTERNAL_ERROR = "internal_error"  # a bug: never retried, it would fail again
    REQUEST_TIMEOUT = "request_timeout"
    UPSTREAM_STREAM_BROKEN = "upstream_stream_broken"
    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    REPLY_CHANNEL_LOST = "reply_channel_lost"
    CLIENT_DISCONNECTED = "client_disconnected"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the prompt is too long for the model: a fallback may take it


class Api(StrEnum):
    """The wire API a request came in on: named on its job, settlement and usage row."""

    CHAT = "chat"  # POST /api/v1/chat/completions (and batch lines)
    RESPONSES = "responses"  # POST /api/v1/responses (OpenAI Responses)
    MESSAGES = "messages"  # POST /api/v1/messages (Anthropic Messages)
    GEMINI = "gemini"  # POST /api/v1beta/models/{model}:generateContent... (native Gemini)


class JobKind(StrEnum):
    """What a node worker does with a job (``ChatJob.kind``; absent = ``CHAT``)."""

    CHAT = "chat"  # body: an OpenAI chat request; replies: OpenAI chunks / one chat.completion
    GEMINI = "gemini"  # body: an allowlisted native Gemini request, sent as is; replies: Gemini's own events
    COUNT = "count"  # body: an OpenAI chat request; reply: {"prompt_tokens": N} from the upstream's counter
    GEMINI_COUNT = "gemini_count"  # body: a native Gemini request; reply as COUNT


COUNT_KINDS = frozenset({JobKind.COUNT, JobKind.GEMINI_COUNT})


class RetryKind(Enum):
    NONE = "none"
    ANOTHER_WORKER = "another_worker"  # the worker failed, the node may be fine
    ANOTHER_NODE = "another_node"  # the node (its upstream) failed: fail over, count it against the node


# The worker failed, not the request: the same request may run again elsewhere (nothing was billed).
WORKER_FAULTS = frozenset({ErrorCode.WORKER_LOST, ErrorCode.JOB_LOST, ErrorCode.WORKER_SHUTDOWN})
# Upstream statuses another node may not share.
FAILOVER_STATUSES = frozenset({429, 500, 502, 503, 504})


def retry_kind(status: int, code: str | None) -> RetryKind:
    """What an error that ended a request before any output allows: the one rule for every front end."""
    if code in WORKER_FAULTS:
        return RetryKind.ANOTHER_WORKER
    if status in FAILOVER_STATUSES and code != ErrorCode.INTERNAL_ERROR:
        return RetryKind.ANOTHER_NODE
    return RetryKind.NONE


class ReserveStatus(IntEnum):
    """reserve.lua's first reply value (shared/lua/reserve.lua)."""

    HELD = 1
    REPLAY = 0  # this request id holds credits already
    NO_ACCOUNT = -1
    INSUFFICIENT = -2
    RPM_LIMITED = -3
    TPM_LIMITED = -4
    TOO_MANY_INFLIGHT = -5
    KEY_BUDGET = -6
    ACCOUNT_RPM_LIMITED = -7  # the account's requests/min, across its keys
    ACCOUNT_TPM_LIMITED = -8
    ACCOUNT_CONCURRENCY = -9
    FENCED = -10  # Redis restarted; the account waits for the recovery to re-apply what Redis lost

    @property
    def label(self) -> str:
        return _RESERVE_LABELS[self]


_RESERVE_LABELS = {
    ReserveStatus.HELD: "held", ReserveStatus.REPLAY: "replay", ReserveStatus.NO_ACCOUNT: "no_account",
    ReserveStatus.INSUFFICIENT: "insufficient", ReserveStatus.RPM_LIMITED: "rpm_limited",
    ReserveStatus.TPM_LIMITED: "tpm_limited", ReserveStatus.TOO_MANY_INFLIGHT: "concurrency_limited",
    ReserveStatus.KEY_BUDGET: "key_credit_limit", ReserveStatus.ACCOUNT_RPM_LIMITED: "account_rpm_limited",
    ReserveStatus.ACCOUNT_TPM_LIMITED: "account_tpm_limited",
    ReserveStatus.ACCOUNT_CONCURRENCY: "account_concurrency_limited", ReserveStatus.FENCED: "recovering",
}


@dataclass(frozen=True, slots=True)
class Hold:
    """One request's hold: ``"<amount micro>:<key id>:<estimated tokens>"`` in the account's holds hash.

    reserve.lua writes it and settle.lua reads it; this is the one Python reader.
    """

    amount_micro: int
    key_id: str = ""
    estimated_tokens: int | None = None

    @classmethod
    def parse(cls, raw: bytes | str) -> Hold:
        text = raw.decode() if isinstance(raw, bytes) else raw
        amount, _, rest = text.partition(":")
        key_id, _, estimate = rest.partition(":")
        return cls(int(amount), key_id, int(estimate) if estimate else None)

    def encode(self) -> str:
        estimate = "" if self.estimated_tokens is None else str(self.estimated_tokens)
        return f"{self.amount_micro}:{self.key_id}:{estimate}"


class ChatJob(TypedDict):
    """A chat request on a node queue (shared/queue.py wraps it in arq's job format)."""

    hold_micro: int  # the credits held for it (written by enqueue.lua): its output is clamped to what they cover
    prompt_bound_tokens: int  # the upper bound of its prompt the hold was planned with
    price_multiplier_ppm: int  # the account's price multiplier at admission: the hold, clamp and charge use it
    price_version: str  # the model's price sheet version (shared/pricing.py) the hold was planned with
    prices: dict  # that price sheet (PriceSheet.to_wire): the worker's clamp and charge, and billing, price with it
    catalog_version: int  # the live catalog version it was admitted under (0: the file, no live store)
    id: str  # the request id: also the hold's id and the settlement's
    account_id: str
    key_id: str
    model: str  # the model that serves it
    requested_model: NotRequired[str]  # the name the client sent, when not ``model``: an alias, or a fallback serves it
    node: str
    reply_to: str  # the pub/sub channel of the process relaying the replies
    trace_id: str  # the client-facing request id (X-Request-Id)
    stream: bool
    include_usage: bool
    body: dict  # the validated ChatCompletionRequest, as JSON (a native Gemini request for the GEMINI kinds)
    created: int  # unix seconds
    api: NotRequired[str]  # an Api (absent: chat)
    kind: NotRequired[str]  # a JobKind (absent: chat)
    enqueued_ms: float
    expires_at_ms: NotRequired[int]  # set by the queue: a worker drops the job after this
    batch_id: NotRequired[str]
    result_key: NotRequired[str]  # batch lines: where the final reply is kept, before it is billed
    result_ttl_s: NotRequired[int]


class Settlement(TypedDict):
    """One request's outcome, from its node worker to the billing worker."""

    request_id: str
    account_id: str
    key_id: str
    model: str  # the model that served it: the one it is priced at
    requested_model: str  # the name the client sent (an alias of ``model``, or the model a fallback served)
    node: str
    status: str  # a RequestStatus
    error_code: str
    finish_reason: str
    stream: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    price_multiplier_ppm: int  # from the job: what the request was admitted at
    price_version: str  # from the job: the prices its hold was planned with
    prices: dict  # from the job: that price sheet, which billing charges at (absent: the current catalog's)
    catalog_version: int  # from the job: the catalog version it was admitted under
    latency_ms: int
    ttft_ms: int | str  # "" when no token came
    queue_ms: int
    created: int
    batch_id: str
    trace_id: str
    api: str  # an Api


# The ``error_code`` of a billed request whose upstream never said its usage (worker/usage_estimate.py).
USAGE_ESTIMATED = "usage_estimated"

# The usage row's fields, in order, as settle.lua stores them (it appends charged_micro and hold_micro).
# The last ones are the price breakdown (shared/pricing.py Charge.usage_fields): the tier, the multiplier
# (ppm), the price sheet version, the uncached prompt tokens, and micro-credits per dimension; they add up
# to the price, and ``charged_micro`` is what was charged (never more than the hold, nor the balance).
PRICE_FIELDS = ("price_tier", "price_multiplier_ppm", "price_version", "input_tokens", "input_micro",
                "cached_input_micro", "output_micro")
USAGE_FIELDS = ("request_id", "model", "requested_model", "node", "key_id", "status", "error_code", "finish_reason", "stream",
                "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "latency_ms", "ttft_ms",
                "queue_ms", "created", "batch_id", "trace_id", "api", "catalog_version", *PRICE_FIELDS)
