"""Issue 17's attacks against real processes: the admin token, slow clients, cookies and TLS.

Each test is an attack that worked on the code before the hardening pass (see the issue): a gateway
that generated and logged its own admin token, connections held open by clients that send nothing or
a header every few seconds, a session cookie without ``Secure`` behind a TLS load balancer.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import time

import httpx
import pytest
from openai import AsyncOpenAI

from apiinone.launcher import Stack, apiinone_command, free_port
from tests.gateway_helpers import extra_gateway, stop


# --- 4. the admin token ---------------------------------------------------------------------------
def _gateway_env(stack, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in {**os.environ, **stack.env}.items() if k != "APIINONE_ADMIN_TOKEN"}
    env.update(APIINONE_PORT=str(free_port()), **overrides)
    return env


def _run_briefly(env: dict[str, str]) -> tuple[int | None, str]:
    """Start `apiinone gateway`; its exit status and output (None: it was still serving after 20 s)."""
    proc = subprocess.Popen(apiinone_command() + ["gateway"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=20)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        stop(proc)
        out, _ = proc.communicate()
        return None, out.decode(errors="replace")


def test_a_gateway_without_an_admin_token_refuses_to_start(stack):
    status, output = _run_briefly(_gateway_env(stack))
    assert status not in (None, 0), f"the gateway served without APIINONE_ADMIN_TOKEN: {output[-500:]}"
    assert "APIINONE_ADMIN_TOKEN" in output
    assert "adm_" not in output, "a generated admin token reached the log"


def test_a_gateway_with_a_guessable_admin_token_refuses_to_start(stack):
    status, output = _run_briefly(_gateway_env(stack, APIINONE_ADMIN_TOKEN="CHANGE_ME"))
    assert status not in (None, 0), "the gateway served with the example manifest's placeholder token"
    assert "APIINONE_ADMIN_TOKEN" in output and "CHANGE_ME" not in output


def test_the_benchmarks_stacks_use_tokens_the_gateway_accepts():
    """`make bench`'s scale and record scenarios start their own stacks: a token the check refuses made
    their gateways exit (found only when the record scenario was run at full size)."""
    from gateway.app import check_admin_token
    from tests.bench import scale

    assert check_admin_token(scale.ADMIN_TOKEN) == scale.ADMIN_TOKEN


def test_make_run_keeps_its_generated_token_in_a_private_file(tmp_path):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    settings.admin_token = None
    st = Stack(settings, quiet=True)
    try:
        st.start()
        path = tmp_path / "admin-token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert len(token) >= 32
        r = httpx.get(st.base_url + "/admin/nodes", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("gateway*.log"))
        assert token not in logs
    finally:
        st.stop()


# --- 8. slow clients --------------------------------------------------------------------------------
HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 6.0
CLOSE_BOUND_S = 20.0  # generous: a correctness bound (the connection does get closed), not a speed claim


@pytest.fixture(scope="module")
def strict_gateway(stack):
    with extra_gateway(stack, {"APIINONE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                               "APIINONE_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S)}, "strict-gateway") as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the server closes the connection (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_connections_that_send_nothing_are_closed(strict_gateway):
    conns = [await asyncio.open_connection("127.0.0.1", _port(strict_gateway)) for _ in range(30)]
    try:
        closed = await asyncio.gather(*(_closed_by_server(r, CLOSE_BOUND_S) for r, _ in conns))
        assert all(closed), f"{closed.count(False)} of {len(conns)} silent connections still open"
    finally:
        for _, w in conns:
            w.close()


async def test_connections_that_trickle_a_header_are_closed(strict_gateway):
    """Slowloris: a header line every 0.3 s keeps the connection busy but never finishes the head."""

    async def trickle() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(strict_gateway))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            deadline = time.monotonic() + CLOSE_BOUND_S
            while time.monotonic() < deadline:
                if await _closed_by_server(reader, 0.3):
                    return True
                try:
                    writer.write(b"X-Slow: a\r\n")
                    await writer.drain()
                except ConnectionError:
                    return True
            return False
        finally:
            writer.close()

    closed = await asyncio.gather(*(trickle() for _ in range(30)))
    assert all(closed), f"{closed.count(False)} of {len(closed)} trickling connections still open"


async def test_idle_keep_alive_connections_are_closed_but_not_before_their_time(strict_gateway):
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(strict_gateway))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for _ in range(2):  # idle past the header timeout between requests: still served (keep-alive)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            await asyncio.sleep(HEADER_TIMEOUT_S * 2.5)
        assert await _closed_by_server(reader, KEEPALIVE_TIMEOUT_S + CLOSE_BOUND_S)
    finally:
        writer.close()


async def test_slow_streams_and_slow_bodies_of_real_requests_are_not_cut(strict_gateway, funded):
    _, key = funded
    client = AsyncOpenAI(base_url=strict_gateway + "/api/v1", api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="gemini", stream=True,
        messages=[{"role": "user", "content": "Hi [[sim output_tokens=40 thinking_tokens=8 delay_ms=400]]"}])
    chunks = [c async for c in stream]
    assert chunks and chunks[-1].choices[-1].finish_reason == "stop"

    # A head sent at once, then a body sent in pieces over longer than the header timeout.
    body = b'{"model": "gemini", "stream": false, "messages": [{"role": "user", "content": "Hi"}]}'
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(strict_gateway))
    try:
        writer.write(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n")
        for i in range(0, len(body), len(body) // 3 + 1):
            writer.write(body[i:i + len(body) // 3 + 1])
            await writer.drain()
            await asyncio.sleep(HEADER_TIMEOUT_S * 0.8)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        writer.close()


# --- 9. cookies and TLS ------------------------------------------------------------------------------
def test_behind_tls_the_session_cookie_is_secure_and_hsts_is_sent(stack, admin):
    """The public URL is https (a TLS load balancer in front): no X-Forwarded-Proto reaches the gateway."""
    from tests.test_dashboard import PASSWORD, make_user

    account = admin.account(1)
    email = make_user(admin, account["id"])
    with extra_gateway(stack, {"APIINONE_PUBLIC_BASE_URL": "https://api.example.test"}, "tls-gateway") as url:
        with httpx.Client(follow_redirects=False) as c:
            login = c.get(url + "/dashboard/login")
            assert "; secure" in login.headers["set-cookie"].lower()
            token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
            # httpx keeps Secure cookies for https: over this loopback http, hand the form's cookie back by hand.
            r = c.post(url + "/dashboard/login", data={"email": email, "password": PASSWORD, "csrf_token": token},
                       headers={"Cookie": login.headers["set-cookie"].split(";")[0]})
            assert r.status_code == 303, r.text[:300]
            session_cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("aio_session="))
            assert "; secure" in session_cookie.lower()
            for response in (r, c.get(url + "/healthz"), c.get(url + "/api/v1/models")):
                hsts = response.headers.get("strict-transport-security", "")
                assert "max-age=" in hsts and int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000


def test_over_plain_http_no_hsts_and_no_forged_secure_scheme(stack):
    r = httpx.get(stack.base_url + "/dashboard/login", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in r.headers  # `make run` is plain http on loopback
    assert "; secure" not in r.headers["set-cookie"].lower(), "a client's X-Forwarded-Proto was believed"
    api = httpx.get(stack.base_url + "/api/v1/models")
    assert api.headers["x-content-type-options"] == "nosniff" and "strict-transport-security" not in api.headers



# --- 7. the revocation race ---------------------------------------------------------------------------
async def test_a_key_revoked_while_its_lookup_is_in_flight_is_not_cached(stack, admin):
    """The gateway reads the key, the key is revoked and the revocation is heard, then the read's (stale)
    reply arrives: it must not be cached for the next 30 s."""
    from urllib.parse import urlsplit

    from shared import keys
    from tests.redis_proxy import ReplyHoldingProxy

    account, key = admin.account_with_key(10)
    key_id = admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"][0]["id"]
    proxy = ReplyHoldingProxy(urlsplit(stack.settings.redis_url).port).start()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with extra_gateway(stack, {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}, "proxied-gateway") as url:
            async with httpx.AsyncClient(base_url=url, timeout=20) as http:
                proxy.hold()
                in_flight = asyncio.create_task(http.get("/billing/credits", headers=auth))
                deadline = time.monotonic() + 10
                lookup = keys.api_key("").encode()  # the key record's name, without the hash
                while not (proxy.saw(lookup) and proxy.held_replies()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert proxy.held_replies(), "the gateway's key lookup never reached Redis"
                # Quickly: the gateway's Redis calls time out after 1 s (and are retried, reading afresh).
                assert admin.http.delete(f"/admin/keys/{key_id}").status_code == 200  # via the other gateway
                await asyncio.sleep(0.25)  # the revocation reaches this gateway over pub/sub (not held)
                proxy.release()
                await in_flight  # served or refused: it was in flight when the key was revoked
                after = await http.get("/billing/credits", headers=auth)
                assert after.status_code == 401, "the revoked key was cached from the in-flight lookup"
    finally:
        proxy.release()
        proxy.stop()
