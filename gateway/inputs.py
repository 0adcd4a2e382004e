"""What a request carries, read the same way by every handler: a JSON body, paging and integer parameters.

Each reader raises the OpenAI-shaped 400 that names the ``param``. The query
parameters a route reads are declared with it in ``gateway/routes.py``
(``QueryParam``), from which ``/openapi.json`` documents them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson
from aiohttp import web

from shared.errors import bad_request
from shared.protocol import W, parse_body


async def read_json(request: web.Request) -> object:
    """The body decoded as JSON (UTF-8, as RFC 8259 says), or 400 invalid_json."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request.", code="invalid_json") from None


async def read_body(request: web.Request, model: type[W]) -> W:
    """The JSON body validated into a wire model (strict, like OpenAI: a 400 naming the param)."""
    return parse_body(model, await read_json(request))


@dataclass(frozen=True)
class QueryParam:
    """One query parameter, for the route table and its OpenAPI document."""

    name: str
    schema: dict
    description: str = ""


def int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Invalid value for '{name}': expected an integer.", param=name) from None


@dataclass(frozen=True)
class Paging:
    """``limit`` and ``after`` of a newest-first list; ``cursor`` says which ``after`` values are ids at all."""

    default: int
    maximum: int
    after: str = "The id of the last item of the previous page."
    cursor: Callable[[str], bool] | None = None  # None: any value (an unknown id simply ends the list)
    cursor_pattern: str | None = field(default=None)  # the same rule, for the document

    def read(self, request: web.Request) -> tuple[int, str | None]:
        limit = int_param(request, "limit", self.default)
        if not 1 <= limit <= self.maximum:
            raise bad_request(f"'limit' must be between 1 and {self.maximum}.", param="limit")
        after = request.query.get("after")
        if after is not None and self.cursor is not None and not self.cursor(after):
            raise bad_request("Invalid value for 'after': expected the id of a row from a previous page.",
                              param="after")
        return limit, after or None

    @property
    def params(self) -> tuple[QueryParam, ...]:
        after: dict = {"type": "string"}
        if self.cursor_pattern:
            after["pattern"] = f"^{self.cursor_pattern}$"
        return (QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": self.maximum,
                                     "default": self.default}, "How many items, at most."),
                QueryParam("after", after, self.after))
