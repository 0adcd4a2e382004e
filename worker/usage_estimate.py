"""The usage of a billable request whose upstream never told it: an estimate, never 0 for delivered output.

It applies when a request completed, or its client left, and no usage came with the output: an
OpenAI-compatible server that sends none, or a cut stream whose upstream broke, or outlasted
``APIINONE_DRAIN_AFTER_CANCEL_S``, before its final usage chunk (``worker/chat_job.py``)::

    prompt_tokens     = the admission's prompt estimate, the one the hold was sized with
                        (``shared/admission.estimate_prompt_tokens``: the messages' text characters, an
                        image counting IMAGE_PART_CHARS, floor-divided by 4)
    completion_tokens = ceil(characters of the output read from the upstream / 4): text, thinking,
                        tool call names and arguments

settle.lua never charges more than the request's hold; the usage row says ``usage_estimated``.
"""

from __future__ import annotations

from shared.admission import estimate_prompt_tokens
from worker.chunks import ChunkBuilder
from worker.provider import Usage

CHARS_PER_TOKEN = 4


def output_chars(builder: ChunkBuilder) -> int:
    chars = sum(map(len, builder.content)) + sum(map(len, builder.reasoning))
    for call in builder.tool_calls:
        chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return chars


def estimate_usage(body: dict, builder: ChunkBuilder) -> Usage:
    return Usage(prompt_tokens=estimate_prompt_tokens(body) if "messages" in body else 0,
                 completion_tokens=-(-output_chars(builder) // CHARS_PER_TOKEN))
