"""structlog setup: readable in a terminal, JSON lines in production.

JSON lines are rendered by orjson straight to bytes on stderr (structlog's
recommended fast path): logging one line per request stays cheap.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def _orjson_line(event: dict, **_kw) -> bytes:
    return orjson.dumps(event, default=str)


def configure_logging(fmt: str = "auto", level: str = "info", role: str = "") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        rendering = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_orjson_line)]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        rendering = [structlog.dev.ConsoleRenderer(colors=False)]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *rendering,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    if role:
        structlog.contextvars.bind_contextvars(role=role)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
