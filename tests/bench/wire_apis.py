"""The other wire APIs (issue 21): OpenAI Responses, Anthropic Messages and native Gemini, through the same
gateway, pools and simulator as chat, at concurrency 32 — each within 15% of chat's throughput.

Each target sends the same prompt as the chat target (``scenarios.PROMPT``: the same chunks from the
simulator), so the difference is the front end's own work: its translation and its wording of the reply.
Responses are sent with ``store: false`` (as Codex does); a stored one adds one Lua call.

    python -m tests.bench --targets apiinone,responses,messages,gemini --no-peers --no-scale \\
        --concurrency 32 --duration 2 --no-write          # this scenario alone, briefly
"""

from __future__ import annotations

import re

import orjson

from tests.bench.cpu import Group
from tests.bench.loadgen import RequestSpec
from tests.bench.scenarios import GEMINI_FIRST_TOKEN, JSON_HEADERS, PROMPT, Target, gemini_body

WIRE_TARGETS = ("responses", "messages", "gemini")
CONCURRENCY = 32  # the wire APIs run at this concurrency only
WITHIN = 0.85  # each at least this share of chat's throughput at the same mode and concurrency


def _spec(url: str, body: dict, headers: dict, stream: bool, done: bytes, first: bytes | None = None) -> RequestSpec:
    accept = "text/event-stream" if stream else "application/json"
    return RequestSpec(url=url, body=orjson.dumps(body), headers={**JSON_HEADERS, **headers, "Accept": accept},
                       stream=stream, done=done, first_token=re.compile(first) if first else None)


def wire_targets(base_url: str, key: str, cpu_groups: list[Group], version: str) -> dict[str, Target]:
    bearer = {"Authorization": f"Bearer {key}"}
    responses = {"model": "gemini", "input": PROMPT, "store": False}
    messages = {"model": "gemini", "max_tokens": 1024, "messages": [{"role": "user", "content": PROMPT}]}
    gemini = orjson.loads(gemini_body())
    native = f"{base_url}/api/v1beta/models/gemini"
    return {
        "responses": Target(
            name="responses", label="apiinone, OpenAI Responses (store: false)", cpu_groups=cpu_groups,
            version=version,
            stream=_spec(base_url + "/api/v1/responses", {**responses, "stream": True}, bearer, True,
                         b'"type":"response.completed"', rb'"type":"response.output_text.delta"'),
            unary=_spec(base_url + "/api/v1/responses", responses, bearer, False, b'"status":"completed"')),
        "messages": Target(
            name="messages", label="apiinone, Anthropic Messages", cpu_groups=cpu_groups, version=version,
            stream=_spec(base_url + "/api/v1/messages", {**messages, "stream": True}, {"x-api-key": key}, True,
                         b"event: message_stop", rb'"type":"text_delta"'),
            unary=_spec(base_url + "/api/v1/messages", messages, {"x-api-key": key}, False,
                        b'"stop_reason":"end_turn"')),
        "gemini": Target(
            name="gemini", label="apiinone, native Gemini", cpu_groups=cpu_groups, version=version,
            stream=RequestSpec(url=native + ":streamGenerateContent?alt=sse", body=orjson.dumps(gemini),
                               headers={**JSON_HEADERS, "x-goog-api-key": key}, stream=True,
                               done=b'"finishReason"', first_token=GEMINI_FIRST_TOKEN),
            unary=_spec(native + ":generateContent", gemini, {"x-goog-api-key": key}, False, b'"finishReason"')),
    }


def runs_at(target: str, concurrency: int) -> bool:
    """The wire APIs are measured at CONCURRENCY only; every other target at every level."""
    return target not in WIRE_TARGETS or concurrency == CONCURRENCY


def ratios(rows: list[dict]) -> list[dict]:
    """Each wire API's throughput over chat's (the ``apiinone`` target) at the same mode, concurrency 32."""
    out = []
    for name in WIRE_TARGETS:
        for mode in ("stream", "non-stream"):
            ours = next((r for r in rows if r["target"] == name and r["mode"] == mode
                         and r["concurrency"] == CONCURRENCY), None)
            chat = next((r for r in rows if r["target"] == "apiinone" and r["mode"] == mode
                         and r["concurrency"] == CONCURRENCY), None)
            if ours is None:
                continue
            value = round(ours["rps"] / chat["rps"], 2) if chat and chat["rps"] else None
            out.append({"id": f"{name}_vs_chat_{mode}_c{CONCURRENCY}",
                        "what": f"{name} throughput / chat throughput, {mode}, concurrency {CONCURRENCY}",
                        "value": value, "unit": "x", "target": f">= {WITHIN:g}x",
                        "met": None if value is None else value >= WITHIN,
                        "detail": None if chat else "chat (target apiinone) was not measured in this run"})
    return out
