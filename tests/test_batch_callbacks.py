"""Batch completion callbacks may not reach non-public addresses (SSRF), and show coarse outcomes only.

With ``APIINONE_CALLBACK_ALLOW_PRIVATE`` off (the default, and the session stack's): http and IP
literals that are not public are refused when the batch is created; a host name is checked when
the batch worker connects, so one that resolves to loopback (``localhost``, or a rebinding name)
is refused then, before any connection. Every listener here is ours, on loopback; the private
addresses below appear only as strings and are refused before any connect (asserted).
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import fakeredis
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from shared.batch_store import BatchStore
from shared.callback_targets import Delivery, is_public_address, url_refusal
from shared.keys import BATCH_CALLBACKS, BatchKeys
from shared.settings import Settings
from worker.batch.callbacks import CallbackBudget, Callbacks
from worker.batch.egress import AddressRefused, CallbackSender, PublicOnlyResolver
from tests.loopback_receiver import loopback_receiver

ATTEMPT_FIELDS = {"attempt", "at", "outcome", "duration_ms"}


class FakeResolver(AbstractResolver):
    """Answers every name with the next of ``answers`` (the last one repeats), like a rebinding DNS."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET6 if ":" in address
                 else socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self):
        pass


class Listener:
    """A loopback TCP server counting the connections it accepts, answering HTTP 204."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every connection attempt aiohttp makes (the socket-opening step of its TCP connector)."""
    made: list = []
    original = aiohttp.TCPConnector._wrap_create_connection

    async def spy(self, *args, **kwargs):
        made.append(kwargs.get("addr_infos"))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "_wrap_create_connection", spy)
    return made


# --- the address rule (shared/callback_targets.py) -----------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "192.0.2.1",
    "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12::1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2001:db8::1", "not-an-address"])
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize("url, refused_by_default", [
    ("https://hooks.example.com/batches", False),
    ("https://localhost/x", False),  # a name: checked when the worker connects
    ("http://hooks.example.com/batches", True),
    ("http://127.0.0.1:8080/hook", True),
    ("https://127.0.0.1/hook", True),
    ("https://10.0.0.1/hook", True),
    ("https://169.254.169.254/latest/meta-data/", True),
    ("https://[::1]:8443/hook", True),
    ("https://[::ffff:127.0.0.1]/hook", True),
    ("https://0.0.0.0/hook", True),
    ("https://2130706433/hook", True),  # 127.0.0.1 in legacy numeric forms
    ("https://0x7f.1/hook", True),
    ("https://127.1/hook", True),
    ("ftp://hooks.example.com/x", True),
    ("https://[::1/hook", True),
])
def test_url_rule(url, refused_by_default):
    assert (url_refusal(url, allow_private=False) is not None) == refused_by_default
    if not url.startswith(("ftp:", "https://[::1/")):
        assert url_refusal(url, allow_private=True) is None


async def test_resolver_refuses_a_name_that_rebinds_to_a_private_address():
    inner = FakeResolver("93.184.216.34", "127.0.0.1")  # public when first asked, loopback when asked again
    resolver = PublicOnlyResolver(inner)
    assert (await resolver.resolve("hooks.example.test", 443))[0]["host"] == "93.184.216.34"
    with pytest.raises(AddressRefused):
        await resolver.resolve("hooks.example.test", 443)
    for private in ("10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "0.0.0.0"):
        with pytest.raises(AddressRefused):
            await PublicOnlyResolver(FakeResolver(private)).resolve("hooks.example.test", 443)


# --- one delivery attempt (worker/batch/egress.py) ------------------------------------------------

async def test_a_name_resolving_to_loopback_is_refused_before_any_connect(connects):
    async with Listener() as listener:
        sender = CallbackSender(5, allow_private=False, resolver=FakeResolver("127.0.0.1"))
        await sender.start()
        try:
            outcome, _ = await sender.post(f"https://rebind.example.test:{listener.port}/hook", b"{}", {})
        finally:
            await sender.close()
        assert outcome == Delivery.REFUSED and sender._resolver.asked == ["rebind.example.test"]
        assert connects == [] and listener.connections == 0

        # The same name and listener with private addresses allowed: the spy and the listener do see it.
        allowed = CallbackSender(5, allow_private=True, resolver=FakeResolver("127.0.0.1"))
        await allowed.start()
        try:
            outcome, _ = await allowed.post(f"http://rebind.example.test:{listener.port}/hook", b"{}", {})
        finally:
            await allowed.close()
        assert outcome == Delivery.DELIVERED and len(connects) == 1 and listener.connections == 1


async def test_private_ip_literals_are_refused_before_any_connect(connects):
    resolver = FakeResolver("127.0.0.1")
    async with Listener() as listener:
        sender = CallbackSender(5, allow_private=False, resolver=resolver)
        await sender.start()
        try:
            for url in (f"http://127.0.0.1:{listener.port}/hook", f"https://127.0.0.1:{listener.port}/hook",
                        "https://10.0.0.1/hook", "https://169.254.169.254/latest/meta-data/",
                        f"https://[::1]:{listener.port}/hook", f"https://[::ffff:127.0.0.1]:{listener.port}/hook",
                        f"https://2130706433:{listener.port}/hook", f"https://0x7f.1:{listener.port}/hook"):
                outcome, duration_ms = await sender.post(url, b"{}", {})
                assert (outcome, duration_ms) == (Delivery.REFUSED, 0), url
        finally:
            await sender.close()
        assert connects == [] and listener.connections == 0 and resolver.asked == []


async def test_answers_show_only_their_status_class():
    statuses = iter([500, 404, 302, 204])

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=next(statuses), headers={"Location": "http://169.254.169.254/"})

    async with loopback_receiver(hook) as url:
        sender = CallbackSender(5, allow_private=True)
        await sender.start()
        try:
            outcomes = [(await sender.post(url, b"{}", {}))[0] for _ in range(4)]
        finally:
            await sender.close()
    assert outcomes == ["http_5xx", "http_4xx", "http_3xx", "delivered"]  # the redirect is not followed


# --- scheduling, rate and records (worker/batch/callbacks.py), on fakeredis ----------------------

async def test_each_account_has_a_callback_budget_per_minute():
    redis = fakeredis.FakeAsyncRedis()
    budget = CallbackBudget(redis, per_minute=2)
    assert await budget.admit("acct_a") is None and await budget.admit("acct_a") is None
    retry_at = await budget.admit("acct_a")
    next_minute_ms = (int(time.time() // 60) + 1) * 60_000
    assert retry_at is not None and next_minute_ms <= retry_at < next_minute_ms + 1000
    assert await budget.admit("acct_b") is None  # another account is not held back
    assert await CallbackBudget(redis, per_minute=0).admit("acct_a") is None  # 0: no limit


class FakeSender:
    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.posted: list[str] = []

    async def post(self, url, body, headers):
        self.posted.append(url)
        return self.outcomes.pop(0), 3


async def finished_batch(store: BatchStore, callbacks: Callbacks, url: str) -> BatchKeys:
    batch = await store.create_batch("acct_1", "key_1", "file-1", "/v1/chat/completions", "24h",
                                     {"callback_url": url}, 86400)
    b = BatchKeys(batch["id"])
    await store.transition(b.id, "completed", ("validating",), completed_at=int(time.time()))
    await callbacks.schedule(b)
    return b


async def test_attempts_are_recorded_coarsely_deferred_over_the_rate_and_refusals_not_retried():
    redis = fakeredis.FakeAsyncRedis()
    await redis.hset("aio:{acct:acct_1}:account", mapping={"id": "acct_1"})
    settings = Settings(batch_callbacks_per_minute=2, batch_callback_attempts=6)
    store = BatchStore(redis, settings)
    sender = FakeSender("http_5xx", "refused")
    callbacks = Callbacks(redis, store, settings, sender=sender)
    b = await finished_batch(store, callbacks, "https://hooks.example.test/x")
    other = await finished_batch(store, callbacks, "https://hooks.example.test/y")

    await callbacks.deliver(b.id)  # http_5xx: recorded, retried later
    batch = await store.get_batch(b.id)
    assert batch["callback"]["status"] == "pending"
    assert [a["outcome"] for a in batch["callback"]["attempts"]] == ["http_5xx"]
    assert set(batch["callback"]["attempts"][0]) == ATTEMPT_FIELDS
    assert await redis.zscore(BATCH_CALLBACKS, b.id) > time.time() * 1000

    await callbacks.deliver(other.id)  # refused: recorded, not retried
    batch = await store.get_batch(other.id)
    assert batch["callback"]["status"] == "failed"
    assert [a["outcome"] for a in batch["callback"]["attempts"]] == ["refused"]
    assert await redis.zscore(BATCH_CALLBACKS, other.id) is None

    await callbacks.deliver(b.id)  # the account's third attempt this minute: deferred, not sent, not recorded
    assert len(sender.posted) == 2
    assert len((await store.get_batch(b.id))["callback"]["attempts"]) == 1
    assert await redis.zscore(BATCH_CALLBACKS, b.id) >= (int(time.time() // 60) + 1) * 60_000


def test_attempts_recorded_before_outcomes_were_coarse_are_shown_coarsely():
    raw = {b"id": b"batch_1", b"status": b"completed", b"callback_url": b"https://hooks.example.test/x"}
    recorded = [orjson.dumps({"attempt": 1, "at": 5, "status_code": None, "duration_ms": 3,
                              "error": "ClientConnectorError: Cannot connect to host 10.0.0.5:22"}),
                orjson.dumps({"attempt": 2, "at": 6, "status_code": 404, "error": None, "duration_ms": 4})]
    assert BatchStore.batch_object(raw, recorded)["callback"]["attempts"] == [
        {"attempt": 1, "at": 5, "outcome": "failed", "duration_ms": 3},
        {"attempt": 2, "at": 6, "outcome": "http_4xx", "duration_ms": 4}]


# --- on the running product, with private callbacks off (the session stack) ----------------------

def sdk(stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)


async def upload(client: openai.AsyncOpenAI):
    line = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gemini", "messages": [{"role": "user", "content": "Hello"}]}}
    return await client.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")


async def test_non_public_callback_urls_are_refused_at_creation(stack, funded):
    client = sdk(stack, funded[1])
    f = await upload(client)
    async with Listener() as listener:
        for url in (f"http://127.0.0.1:{listener.port}/hook", f"https://127.0.0.1:{listener.port}/hook",
                    "https://10.0.0.1/hook", "https://169.254.169.254/latest/meta-data/",
                    f"https://[::1]:{listener.port}/hook", "http://hooks.example.com/hook"):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata={"callback_url": url})
            assert refused.value.body["param"] == "metadata.callback_url", url
        await asyncio.sleep(0.5)
        assert listener.connections == 0
    assert [b async for b in client.batches.list()] == []  # nothing was created


async def test_a_name_resolving_to_loopback_is_refused_at_delivery_with_a_coarse_outcome(stack, funded):
    client = sdk(stack, funded[1])
    f = await upload(client)
    async with Listener() as listener:
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h",
                                            metadata={"callback_url": f"https://localhost:{listener.port}/hook"})
        deadline = time.monotonic() + 30
        while True:
            callback = (await client.batches.retrieve(batch.id)).model_extra.get("callback") or {}
            if callback.get("status") in ("delivered", "failed"):
                break
            assert time.monotonic() < deadline, callback
            await asyncio.sleep(0.1)
        assert listener.connections == 0
    assert callback["status"] == "failed"
    assert [a["outcome"] for a in callback["attempts"]] == ["refused"]  # not retried
    assert set(callback["attempts"][0]) == ATTEMPT_FIELDS  # no error text, no status code
