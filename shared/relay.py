"""The reply protocol between a worker and the gateway that owns a request.

Each gateway process subscribes to ONE channel (``aio:gw:<gateway id>``); a
worker publishes every event of a request there. One PUBLISH carries one or
more frames for one request, so a worker can coalesce chunks:

    <request id> NUL <frame> [<frame> ...]        frame = <kind byte><payload>\n

Payloads are compact JSON (orjson never emits a raw newline).
"""

from __future__ import annotations

import orjson

STARTED = b"s"  # payload: worker id (the gateway watches that worker's lease)
CHUNK = b"c"  # payload: one chat.completion.chunk
RESULT = b"r"  # payload: the whole chat.completion (non-stream requests)
ERROR = b"e"  # payload: {"status", "retry_after", "error": {...}}
DONE = b"d"  # end of stream

SEPARATOR = b"\x00"


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + payload + b"\n"


def error_frame(status: int, error_body: dict, retry_after: float | None = None) -> bytes:
    return frame(ERROR, orjson.dumps({"status": status, "retry_after": retry_after, **error_body}))


def message(request_id: str, frames: bytes) -> bytes:
    return request_id.encode() + SEPARATOR + frames


def split_message(data: bytes) -> tuple[str, bytes]:
    request_id, _, frames = data.partition(SEPARATOR)
    return request_id.decode(), frames


def iter_frames(frames: bytes):
    for line in frames.split(b"\n"):
        if line:
            yield line[:1], line[1:]
