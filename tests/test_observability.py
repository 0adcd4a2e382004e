"""Request ids, structured logs, and metrics, as an operator follows one request through."""

from __future__ import annotations

import json
import time

import httpx

URL = "/api/v1/chat/completions"
SECRET_TEXT = "my-secret-prompt-text"


def test_request_id_is_echoed_or_generated(stack, funded):
    key = funded[1]
    r = httpx.post(stack.base_url + URL, headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-123"},
                   json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.headers["X-Request-Id"] == "trace-123"
    r = httpx.post(stack.base_url + URL, headers={"Authorization": f"Bearer {key}", "X-Request-Id": "bad id!"},
                   json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.headers["X-Request-Id"].startswith("req_")
    assert httpx.get(stack.base_url + "/healthz").headers["X-Request-Id"].startswith("req_")


def test_one_request_id_across_gateway_and_worker_logs_without_secrets(stack, funded):
    key = funded[1]
    trace = f"trace-{time.time_ns()}"
    r = httpx.post(stack.base_url + URL, headers={"Authorization": f"Bearer {key}", "X-Request-Id": trace},
                   json={"model": "gemini", "messages": [{"role": "user", "content": SECRET_TEXT}]})
    assert r.status_code == 200
    deadline = time.monotonic() + 3
    while True:
        lines = {role: [json.loads(line) for line in stack.log_path(role).read_text().splitlines()
                        if line.startswith("{") and trace in line]
                 for role in ("gateway:0", "worker:node62:0")}
        if all(lines.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines["gateway:0"][0]["event"] == "request" and lines["gateway:0"][0]["status"] == 200
    job = lines["worker:node62:0"][0]
    assert job["event"] == "job" and job["status"] == "succeeded" and job["completion_id"] == r.json()["id"]
    everything = "".join(stack.log_path(n).read_text() for n in stack.procs)
    assert SECRET_TEXT not in everything, "message content never reaches the logs"
    assert key not in everything, "API keys never reach the logs"


def test_metrics_count_requests_and_tokens(stack, funded):
    key = funded[1]
    httpx.post(stack.base_url + URL, headers={"Authorization": f"Bearer {key}"},
               json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]})
    text = httpx.get(stack.base_url + "/metrics").text
    assert 'apiinone_http_requests_total{route="/api/v1/chat/completions",status="200"}' in text
    assert "apiinone_http_request_duration_seconds_bucket" in text
    assert 'apiinone_reservations_total{result="held"}' in text


def test_cors_is_off_by_default(stack):
    r = httpx.options(stack.base_url + URL, headers={"Origin": "https://evil.example",
                                                     "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_when_configured():
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.middleware import cors

    async def hello(request):
        return web.json_response({"ok": True})

    async def run():
        app = web.Application(middlewares=[cors("https://app.example")])
        app.router.add_post("/x", hello)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            pre = await client.options("/x", headers={"Origin": "https://app.example",
                                                      "Access-Control-Request-Method": "POST"})
            assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
            ok = await client.post("/x", headers={"Origin": "https://app.example"})
            assert "x-ratelimit-remaining-requests" in ok.headers["Access-Control-Expose-Headers"]
            other = await client.post("/x", headers={"Origin": "https://other.example"})
            assert "Access-Control-Allow-Origin" not in other.headers

    import asyncio

    asyncio.run(run())


def test_too_many_messages_is_400(stack, funded):
    body = {"model": "gemini", "messages": [{"role": "user", "content": "hi"}] * 2049}
    r = httpx.post(stack.base_url + URL, json=body, headers={"Authorization": f"Bearer {funded[1]}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"
