"""Ids from the client are checked against their formats before they reach a Redis key (issue 17 item 3).

A file's lines live at ``aio:file:<id>:lines``; asking for the file ``<id>:lines``
used to run HGETALL on that list, and the WRONGTYPE error came back as a 503
for an existing file and a 404 for a missing one: an existence oracle across
accounts. Every malformed id is now a 404, the same answer as an unknown id,
and a Redis error that is not a connection failure is a logged 500, never 503.
"""

from __future__ import annotations

import httpx
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, ResponseError, TimeoutError

from gateway.middleware import openai_errors
from shared import ids


def h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def upload(http: httpx.Client, key: str) -> str:
    r = http.post("/api/v1/files", headers=h(key), data={"purpose": "batch"},
                  files={"file": ("in.jsonl", b'{"custom_id": "a"}\n', "application/jsonl")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def probes(file_id: str, batch_id: str) -> list[tuple[str, str, dict | None]]:
    """Requests naming a key beside the object's own (its lines, its batch's lists), or junk."""
    out: list[tuple[str, str, dict | None]] = []
    for fid in (f"{file_id}:lines", f"{file_id}:lines:x", "file-", "x" * 300, "file-%00", "file-ABC"):
        out += [("GET", f"/api/v1/files/{fid}", None), ("GET", f"/api/v1/files/{fid}/content", None),
                ("DELETE", f"/api/v1/files/{fid}", None),
                ("POST", "/api/v1/batches", {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"})]
    for bid in (f"{batch_id}}}:inflight", f"{batch_id}}}:batch", f"{batch_id}:x", "batch_", "batch_zz"):
        out += [("GET", f"/api/v1/batches/{bid}", None), ("POST", f"/api/v1/batches/{bid}/cancel", None)]
    return out


def test_probes_are_404_for_every_account_and_never_503(stack, admin):
    owner_account, owner = admin.account_with_key(10)
    _, stranger = admin.account_with_key(10)
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        file_id = upload(http, owner)
        batch = http.post("/api/v1/batches", headers=h(owner), json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        assert batch.status_code == 200, batch.text
        answers = {}
        for method, path, body in probes(file_id, batch.json()["id"]):
            for who, key in (("owner", owner), ("stranger", stranger)):
                r = http.request(method, path, headers=h(key), json=body)
                answers[(who, method, path, str(body))] = (r.status_code, r.json()["error"]["type"])
        assert {a for a in answers.values()} == {(404, "invalid_request_error")}, {
            k: v for k, v in answers.items() if v[0] != 404}
        # The owner's own objects still answer.
        assert http.get(f"/api/v1/files/{file_id}", headers=h(owner)).status_code == 200
        assert http.get(f"/api/v1/files/{file_id}", headers=h(stranger)).status_code == 404


def test_admin_ids_are_checked(stack, admin):
    account = admin.account(1)
    key = admin.key(account["id"])
    for path in (f"/admin/accounts/{account['id']}}}:keys", "/admin/accounts/acct_", "/admin/accounts/x%0D%0Ay",
                 f"/admin/accounts/{account['id']}x/keys"):
        assert admin.http.get(path).status_code == 404, path
    assert admin.http.post(f"/admin/accounts/{account['id']}:x/keys", json={"name": "k"}).status_code == 404
    assert admin.http.post(f"/admin/accounts/{account['id']}:x/topups",
                           json={"credits": 1, "reference": "r"}).status_code == 404
    assert admin.http.delete(f"/admin/keys/{key['id']}:x").status_code == 404
    assert admin.http.get(f"/admin/accounts/{account['id']}").status_code == 200
    assert admin.get_account(account["id"])["balance_micro"] == 1_000_000  # nothing was topped up by a probe


def test_unauthenticated_probe_is_401_before_the_id_is_looked_at(stack):
    r = httpx.get(stack.base_url + "/api/v1/files/file-nope:lines")
    assert r.status_code == 401


def test_minted_ids_match_their_formats():
    for fmt in (ids.FILE, ids.BATCH, ids.ACCOUNT, ids.KEY, ids.USER):
        minted = fmt.new()
        assert fmt.matches(minted), minted
        assert not fmt.matches(minted + ":lines") and not fmt.matches(minted[:-1]) and not fmt.matches("")


@pytest.mark.parametrize("error, status", [
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), 500),
    (ResponseError("ERR Invalid stream ID specified as stream command argument"), 500),
    (ConnectionError("Connection refused"), 503),
    (TimeoutError("Timeout reading from socket"), 503),
    (BusyLoadingError("Redis is loading the dataset in memory"), 503),
    (ReadOnlyError("You can't write against a read only replica."), 503),
])
async def test_redis_errors_other_than_unavailability_are_500_and_logged(error, status):
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[openai_errors])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        with structlog.testing.capture_logs() as logs:
            r = await client.get("/x")
        body = await r.json()
    assert r.status == status
    assert body["error"]["type"] == ("server_error" if status == 500 else "service_unavailable")
    if status == 500:
        assert "WRONGTYPE" not in body["error"]["message"] and "stream" not in body["error"]["message"]
        assert any(e["log_level"] == "error" and e.get("path") == "/x" for e in logs), logs


@pytest.mark.parametrize("path,body,param", [
    ("/admin/accounts", {"name": "\x00"}, "name"),
    ("/admin/accounts", {"name": "a\nb"}, "name"),
])
def test_control_characters_in_record_text_are_400_not_500(admin, path, body, param):
    """Postgres text cannot hold NUL: the fuzz run found POST /admin/accounts {"name": "\\x00"} answering 500."""
    r = admin.http.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_control_characters_in_a_key_name_or_topup_reference_are_400(admin):
    account = admin.account(1)
    r = admin.http.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k\x00"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name", r.text
    r = admin.http.post(f"/admin/accounts/{account['id']}/topups", json={"credits": 1, "reference": "r\x00"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reference", r.text


@pytest.mark.parametrize("path, params", [
    ("/api/v1/batches", {"after": "\x00"}),  # the fuzz run's find: a NUL reached Postgres (a 500)
    ("/api/v1/batches", {"after": "batch_nothex"}),
    ("/api/v1/files", {"after": "file-" + "0" * 23 + "\x00"}),
])
def test_list_cursors_are_checked_before_the_record(stack, admin, path, params):
    _, key = admin.account_with_key(5)
    with httpx.Client(base_url=stack.base_url) as http:
        r = http.get(path, params=params, headers=h(key))
        assert r.status_code == 400 and r.json()["error"]["param"] == "after", r.text
        listed = http.get("/api/v1/files", params={"purpose": "x\x00"}, headers=h(key))
        assert listed.status_code == 200 and listed.json()["data"] == []  # no file has that purpose
