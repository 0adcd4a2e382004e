"""One line of a running batch: its state while an attempt runs, how the attempt ended, what is written.

An attempt ends in one of four ways (``OutcomeKind``): an answer (the output
file), an error (the error file), a retry (its node worker died or gave up on
it; nothing was billed, so a new attempt runs under a new request id), or a
drop (the batch was cancelled before the line started: nothing is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

import orjson

from shared import relay
from shared.catalog import Model
from shared.dispatch import InFlight
from shared.contracts import WORKER_FAULTS, ErrorCode
from shared.errors import ApiError


class StopReason(StrEnum):
    """Why a batch stops feeding lines; also what a line still queued is told (on its reply queue)."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"


class OutcomeKind(Enum):
    OK = "ok"  # payload: the chat.completion
    ERROR = "err"  # status and error body
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    payload: bytes = b""  # OK: the chat.completion
    status: int = 0  # ERROR: the line's response status
    error: dict | None = None  # ERROR: {"error": {...}}


RETRY = Outcome(OutcomeKind.RETRY)
DROP = Outcome(OutcomeKind.DROP)


@dataclass(slots=True)
class LineState:
    """One attempt of one line, while it runs (``BatchRun.lines``)."""

    line: int  # 0-based index in the input file
    attempt: int
    rid: str  # the attempt's request id (``line_request_id``)
    model: Model
    flight: InFlight  # the attempt in the shared lifecycle; its replies may also carry a StopReason (withdrawn)
    started: str | None = None  # the node worker that announced it (STARTED frame or the job key)
    recorded: str | None = None  # the worker id last written to the in-flight record
    node: str | None = None  # where it was enqueued
    claimed_since: float | None = None  # monotonic time it was first seen popped but not announced


def error_body(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(status: int, message: str, code: str, type_: str = "invalid_request_error",
          param: str | None = None) -> Outcome:
    return Outcome(OutcomeKind.ERROR, status=status, error=error_body(message, code, type_, param))


EXPIRED_MESSAGE = "This request could not be executed before the batch's completion window expired."


def expired() -> Outcome:
    return error(408, EXPIRED_MESSAGE, "batch_expired")


def stopped(reason: StopReason) -> Outcome:
    """A line taken back before it ran: dropped on cancel, an error line on expiry."""
    return DROP if reason == StopReason.CANCELLED else expired()


def refused(err: ApiError) -> Outcome:
    """Admission's refusal (shared/admission.py), in the words an interactive request would get."""
    return Outcome(OutcomeKind.ERROR, status=err.status, error=err.body())


def unreadable() -> Outcome:
    """Validated already: only an input file deleted under a running batch gets here."""
    return error(400, "The request line could not be read back from the input file.", "invalid_line")


def worker_lost() -> Outcome:
    return error(502, "The worker running this request stopped; it was not billed.", ErrorCode.WORKER_LOST,
                 "api_error")


def from_frame(frame: bytes) -> Outcome:
    """A RESULT or ERROR reply frame (published, or stored under the line's result key)."""
    kind, payload = frame[:1], frame[1:].rstrip(b"\n")
    if kind == relay.RESULT:
        return Outcome(OutcomeKind.OK, payload=payload)
    info = orjson.loads(payload)
    body = info.get("error") or {}
    if body.get("code") in WORKER_FAULTS:
        return RETRY  # the node worker refunded that attempt itself
    return Outcome(OutcomeKind.ERROR, status=int(info.get("status") or 500), error={"error": body})


def charge_micro(outcome: Outcome, model: Model) -> int:
    """What an answered line cost (the billing worker settles the same amount from the same usage)."""
    if outcome.kind != OutcomeKind.OK:
        return 0
    usage = orjson.loads(outcome.payload).get("usage") or {}
    return model.cost_micro(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


def output_line(rid: str, custom_id: str, outcome: Outcome) -> tuple[Literal["ok", "err", "none"], bytes]:
    """The line for the output file (ok) or the error file (err), in OpenAI's shape; nothing for a drop."""
    if outcome.kind == OutcomeKind.DROP:
        return "none", b""
    if outcome.kind == OutcomeKind.OK:
        response = {"status_code": 200, "request_id": rid, "body": orjson.Fragment(outcome.payload)}
    else:
        response = {"status_code": outcome.status, "request_id": rid, "body": outcome.error}
    line = orjson.dumps({"id": "batch_req_" + rid, "custom_id": custom_id, "response": response, "error": None})
    return ("ok" if outcome.kind == OutcomeKind.OK else "err"), line
