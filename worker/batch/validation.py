"""Validation of a batch's input file: lines in, line errors and a total out. Pure (no Redis, no I/O).

The batch worker (``process.py``) feeds the file's lines a page at a time to a
``LineValidator`` and fails the batch with OpenAI's ``errors`` object when it
reports any; nothing is reserved before a batch passes. Duplicate
``custom_id``s are found in memory from a 16-byte digest of each id, so a
50,000-line file costs a few MB however long its ids are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import orjson

from shared.admission import check_request
from shared.catalog import Catalog, Model
from shared.errors import ApiError
from shared.protocol import parse_chat_request
from shared.settings import Settings

MAX_ERRORS = 100  # errors reported per batch; reading stops there


@dataclass(frozen=True, slots=True)
class LineError:
    """One entry of OpenAI's batch ``errors.data``."""

    code: str
    message: str
    line: int | None = None  # 1-based, as OpenAI counts
    param: str | None = None

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class LineRules:
    endpoint: str  # every line's "url" must be the batch's endpoint
    models: Mapping[str, Model]
    max_lines: int
    max_line_bytes: int
    max_messages: int

    @classmethod
    def of(cls, endpoint: str, catalog: Catalog, settings: Settings) -> LineRules:
        return cls(endpoint, catalog.models, settings.batch_max_lines, settings.batch_max_line_bytes,
                   settings.max_messages)


@dataclass(frozen=True, slots=True)
class Validation:
    errors: list[LineError]  # by line
    total: int  # requests (non-blank lines) read

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_object(self) -> dict:
        return {"object": "list", "data": [e.as_dict() for e in self.errors[:MAX_ERRORS]]}


def check_file(record: dict | None, max_file_bytes: int) -> LineError | None:
    """The input file itself: gone since the batch was created, or over the size limit."""
    if record is None:
        return LineError("file_not_found", "The input file no longer exists.", param="input_file_id")
    if int(record["bytes"]) > max_file_bytes:
        return LineError("file_too_large", f"The input file is larger than {max_file_bytes} bytes.",
                         param="input_file_id")
    return None


def validate_lines(lines: Iterable[bytes], rules: LineRules) -> Validation:
    """A whole file's lines at once (tests, small files); the worker feeds pages to ``LineValidator``."""
    validator = LineValidator(rules)
    for index, line in enumerate(lines):
        if not validator.feed(index, line):
            break
    return validator.result()


@dataclass
class LineValidator:
    rules: LineRules
    errors: list[LineError] = field(default_factory=list)
    total: int = 0
    stopped: bool = False
    _seen_ids: set[bytes] = field(default_factory=set)  # digests of the custom_ids read so far

    def feed(self, index: int, line: bytes) -> bool:
        """Check the file's line ``index`` (0-based); False once reading further is pointless."""
        if self.stopped:
            return False
        if line.strip():
            self.total += 1
            if self.total > self.rules.max_lines:
                self._error("too_many_requests", f"A batch holds at most {self.rules.max_lines} requests.",
                            index + 1)
                self.stopped = True
            else:
                self._check(line, index + 1)
                self.stopped = len(self.errors) >= MAX_ERRORS
        return not self.stopped

    def result(self) -> Validation:
        errors = sorted(self.errors, key=lambda e: e.line or 0)
        if self.total == 0 and not errors:
            errors.append(LineError("empty_file", "The input file has no requests.", param="input_file_id"))
        return Validation(errors, self.total)

    def _error(self, code: str, message: str, line_no: int, param: str | None = None) -> None:
        self.errors.append(LineError(code, message, line_no, param))

    def _check(self, line: bytes, line_no: int) -> None:
        rules = self.rules
        if len(line) > rules.max_line_bytes:
            self._error("line_too_large", f"Line {line_no} is {len(line)} bytes; the limit is "
                        f"{rules.max_line_bytes}.", line_no)
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._error("invalid_json", f"Line {line_no} is not valid JSON.", line_no)
            return
        if not isinstance(obj, dict):
            self._error("invalid_json", f"Line {line_no} is not a JSON object.", line_no)
            return
        self._check_custom_id(obj.get("custom_id"), line_no)
        if obj.get("method") != "POST":
            self._error("invalid_method", "The 'method' of each line must be 'POST'.", line_no, "method")
        if obj.get("url") != rules.endpoint:
            self._error("invalid_url", f"The 'url' of each line must be the batch's endpoint {rules.endpoint!r}.",
                        line_no, "url")
        self._check_body(obj.get("body"), line_no)

    def _check_custom_id(self, cid: object, line_no: int) -> None:
        if not isinstance(cid, str) or not cid:
            self._error("missing_custom_id", "Each line needs a non-empty string 'custom_id'.", line_no, "custom_id")
            return
        digest = hashlib.blake2b(cid.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._seen_ids:
            self._error("duplicate_custom_id", f"The custom_id {cid!r} is used by an earlier line; each line needs "
                        "its own.", line_no, "custom_id")
        self._seen_ids.add(digest)

    def _check_body(self, body: object, line_no: int) -> None:
        if not isinstance(body, dict):
            self._error("invalid_body", "The 'body' of each line must be a JSON object.", line_no, "body")
            return
        try:
            req = parse_chat_request(body)
            model = self.rules.models.get(req.model)
            if model is None:
                self._error("model_not_found", f"The model {req.model!r} does not exist.", line_no, "body.model")
                return
            check_request(req.model_dump(exclude_none=True, by_alias=True), model, self.rules.max_messages)
        except ApiError as exc:
            self._error(exc.code or "invalid_request", exc.message, line_no,
                        f"body.{exc.param}" if exc.param else "body")
