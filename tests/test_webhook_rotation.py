"""Rotating the account's webhook signing secret (issue 17 item 10), against a real stack.

A leaked secret could only be replaced by hand in Redis. Now ``POST /api/v1/webhook_secret/rotate``
makes a new one; for an overlap (APIINONE_WEBHOOK_SECRET_OVERLAP_S, a day) callbacks carry a signature
with each secret (standard-webhooks: space-separated ``v1,<sig>`` values), so a receiver can switch when
it likes; after it, only the new one signs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import httpx
import orjson
import pytest
import redis as redis_sync
from aiohttp import web
from openai import AsyncOpenAI

from shared.keys import AccountKeys
from tests.conftest import Admin, audited_stack


@pytest.fixture(scope="module")
def stack():
    """This module's own stack: its receiver is a loopback http server (APIINONE_CALLBACK_ALLOW_PRIVATE)."""
    with audited_stack({"APIINONE_CALLBACK_ALLOW_PRIVATE": "true"}) as st:
        yield st


@pytest.fixture(scope="module")
def admin(stack) -> Admin:
    return Admin(stack.base_url, stack.settings.admin_token)


def signature(secret: str, headers: dict, body: bytes) -> str:
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def one_callback(stack, key: str) -> tuple[dict, bytes]:
    """Run a one-line batch whose callback comes to a loopback receiver; the delivery's headers and body."""
    received: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    line = ('{"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gemini", '
            '"messages": [{"role": "user", "content": "hi"}]}}\n')
    try:
        upload = await client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
        await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                    metadata={"callback_url": f"http://127.0.0.1:{port}/hook"})
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    assert received, "no callback arrived"
    return received[0]


async def test_rotation_signs_with_both_secrets_during_the_overlap_then_the_new_one(stack, admin):
    account, key = admin.account_with_key(20)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=auth) as http:
        old = (await http.get("/api/v1/webhook_secret")).json()
        assert old["secret"].startswith("whsec_") and old["previous_secret_expires_at"] is None
        r = await http.post("/api/v1/webhook_secret/rotate")
        assert r.status_code == 200, r.text
        new = r.json()
        assert new["secret"].startswith("whsec_") and new["secret"] != old["secret"]
        overlap_end = new["previous_secret_expires_at"]
        assert time.time() + 3600 < overlap_end <= time.time() + 7 * 86400
        assert (await http.get("/api/v1/webhook_secret")).json()["secret"] == new["secret"]
        # The other account's secret is untouched.
        _, other_key = admin.account_with_key(1)
        other = (await http.get("/api/v1/webhook_secret", headers={"Authorization": f"Bearer {other_key}"})).json()
        assert other["secret"] not in (old["secret"], new["secret"])

    headers, body = await one_callback(stack, key)
    signatures = headers["webhook-signature"].split(" ")
    assert signature(new["secret"], headers, body) in signatures, "the new secret does not sign"
    assert signature(old["secret"], headers, body) in signatures, "the old secret stopped signing in the overlap"
    assert orjson.loads(body)["type"] == "batch.completed"

    # Past the overlap (moved into the past in Redis), only the new secret signs.
    r = redis_sync.Redis.from_url(stack.settings.redis_url)
    try:
        r.hset(AccountKeys(account["id"]).account, "webhook_secret_previous_until", int(time.time()) - 1)
    finally:
        r.close()
    headers, body = await one_callback(stack, key)
    assert headers["webhook-signature"] == signature(new["secret"], headers, body)


async def test_rotating_needs_the_accounts_key(stack):
    r = httpx.post(stack.base_url + "/api/v1/webhook_secret/rotate")
    assert r.status_code == 401
