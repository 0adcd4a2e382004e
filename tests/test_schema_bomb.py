"""Schema bombs and deep JSON against the real stack (issue 15 item 1, issue 17 item 1).

A schema whose definitions each refer twice to the next is ~1.3 KB as sent and
inlines to 2^n copies: it must be a 400 naming the param before any credit is
held, while another account's stream carries on untouched. JSON nested deeper
than a job can serialize must be a 400 too, never a 500. Batches validate
their lines the same way before running any.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.test_batches import batch_usage, sdk, submit, wait_batch
from tests.test_schema_bounds import doubling_chain

CHAT = "/api/v1/chat/completions"
SLOW = "Tell me a long story [[sim output_tokens=320 delay_ms=40]]"  # 40 chunks, 40 ms apart


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def in_slot(slot: str, schema_json: bytes) -> tuple[bytes, str]:
    """A chat body (as bytes: it may nest past what json encoders write) with the schema in ``slot``."""
    head = b'{"model": "gemini", "stream": false, "messages": [{"role": "user", "content": "hi"}], '
    if slot == "tool":
        return (head + b'"tools": [{"type": "function", "function": {"name": "f", "parameters": '
                + schema_json + b'}}]}', "tools[0].function.parameters")
    return (head + b'"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": '
            + schema_json + b'}}}', "response_format.json_schema.schema")


def deep_schema_json(levels: int) -> bytes:
    """A schema object whose ``default`` nests ``levels`` arrays deep (orjson reads up to 1024 levels)."""
    return b'{"type": "array", "default": ' + b"[" * levels + b"]" * levels + b"}"


async def credits(http: httpx.AsyncClient, key: str) -> dict:
    return (await http.get("/billing/credits", headers=auth(key))).json()


async def usage_rows(http: httpx.AsyncClient, key: str) -> list:
    return (await http.get("/billing/usage", headers=auth(key))).json()["data"]


async def stream_events(http: httpx.AsyncClient, key: str, started: asyncio.Event) -> list[str]:
    body = {"model": "gemini", "stream": True, "messages": [{"role": "user", "content": SLOW}]}
    events = []
    async with http.stream("POST", CHAT, json=body, headers=auth(key)) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                started.set()
    return events


async def refused_with_nothing_held(http: httpx.AsyncClient, key: str, body: bytes, param: str) -> None:
    before = await credits(http, key)
    r = await http.post(CHAT, content=body, headers=auth(key))
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
    after = await credits(http, key)
    assert (after["balance_micro"], after["held_micro"]) == (before["balance_micro"], 0)
    assert await usage_rows(http, key) == []


@pytest.mark.parametrize("slot", ["tool", "response_format"])
@pytest.mark.parametrize("n", [18, 24, 40])
async def test_schema_bomb_is_refused_before_any_hold_while_a_co_tenant_streams(stack, admin, n, slot):
    _, attacker = admin.account_with_key(100)
    _, tenant = admin.account_with_key(100)
    body, param = in_slot(slot, orjson.dumps(doubling_chain(n)))
    assert len(body) < 6_000  # a few KB as sent
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        started = asyncio.Event()
        stream = asyncio.create_task(stream_events(http, tenant, started))
        await asyncio.wait_for(started.wait(), 30)
        await refused_with_nothing_held(http, attacker, body, param)
        events = await asyncio.wait_for(stream, 60)
    assert events[-1] == "[DONE]"
    assert not [e for e in events if '"error"' in e]
    assert admin.audit()["ok"]


@pytest.mark.parametrize("slot", ["tool", "response_format"])
@pytest.mark.parametrize("levels", [65, 300, 1000])
async def test_deep_json_in_a_schema_is_a_400_naming_the_param(stack, funded, slot, levels):
    body, param = in_slot(slot, deep_schema_json(levels))
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        await refused_with_nothing_held(http, funded[1], body, param)


async def test_deep_metadata_is_a_400_and_deep_unknown_fields_are_ignored(stack, funded):
    nest = b'{"x": ' * 300 + b'"y"' + b"}" * 300
    head = b'{"model": "gemini", "stream": false, "messages": [{"role": "user", "content": "hi"}], '
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        await refused_with_nothing_held(http, funded[1], head + b'"metadata": ' + nest + b"}", "metadata.x")
        # An unknown field is ignored (never sent on), however deep: a normal answer, not a 500.
        r = await http.post(CHAT, content=head + b'"x_vendor_extra": ' + nest + b"}", headers=auth(funded[1]))
        assert r.status_code == 200, r.text[:300]
        assert r.json()["choices"][0]["message"]["content"]


async def test_batch_lines_with_bombs_or_deep_schemas_fail_validation_and_bill_nothing(stack, admin):
    _, key = admin.account_with_key(100)
    ok = {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}}
    tool_bomb = orjson.loads(in_slot("tool", orjson.dumps(doubling_chain(24)))[0])
    lines = [
        orjson.dumps(ok),
        orjson.dumps({**ok, "custom_id": "bomb", "body": tool_bomb}),
        b'{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", "body": '
        + in_slot("response_format", deep_schema_json(300))[0] + b"}",
    ]
    client = sdk(stack, key)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        before = await credits(http, key)
        batch = await submit(client, lines)
        done = await wait_batch(client, batch.id)
        after = await credits(http, key)
    assert done.status == "failed"
    by_line = {e.line: e.param for e in done.errors.data}
    assert by_line == {2: "body.tools[0].function.parameters", 3: "body.response_format.json_schema.schema"}
    assert await batch_usage(stack, key, batch.id) == []
    assert (after["balance_micro"], after["held_micro"]) == (before["balance_micro"], 0)
    assert admin.audit()["ok"]
