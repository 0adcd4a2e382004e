"""Helpers for tests that start their own stack and break it on purpose."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from apiinone.launcher import Stack


@contextmanager
def own_stack(prefix: str, catalog: str | None = None, env: dict[str, str] | None = None, **stack_options) -> Iterator[Stack]:
    """A test module's own stack (real processes, its own Valkey and database) in a temporary directory,
    with its own catalog when ``catalog`` is given; stopped however the module ends."""
    from tests.conftest import make_settings

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = dict(env or {})
        if catalog is not None:
            path = Path(tmp) / "catalog.toml"
            path.write_text(catalog)
            env["APIINONE_CATALOG"] = str(path)
        st = Stack(make_settings(Path(tmp) / "data"), quiet=True, env=env, **stack_options)
        try:
            st.start()
            yield st
        finally:
            st.stop()


def proc_name_by_pid(stack, pid: int) -> str:
    return next(name for name, p in stack.procs.items() if p.pid == pid)


def busy_worker_pids(admin_http: httpx.Client) -> dict[int, int]:
    """pid -> in-flight jobs, for every live worker (as its last heartbeat reported)."""
    out = {}
    for node in admin_http.get("/admin/nodes").json()["data"]:
        for w in node["workers"]:
            out[w["pid"]] = w["inflight"]
    return out


def wait_for_busy_worker(admin_http: httpx.Client, timeout: float = 5.0) -> int:
    """The pid of a worker running a job now. Heartbeats come every second, so wait
    one out first: a fresher report than any left over from earlier requests."""
    time.sleep(1.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [pid for pid, n in busy_worker_pids(admin_http).items() if n > 0]
        if busy:
            return busy[0]
        time.sleep(0.1)
    raise AssertionError("no worker reported a job in flight")


def kill(stack, pid: int, sig: int = signal.SIGKILL) -> str:
    name = proc_name_by_pid(stack, pid)
    os.kill(pid, sig)
    return name


async def read_sse(response: httpx.Response) -> tuple[list[str], str]:
    """All data payloads of an SSE response, and how it ended: 'done', 'error' or 'eof'."""
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
            if line == "data: [DONE]":
                return events, "done"
            if line.startswith('data: {"error"'):
                return events, "error"
    return events, "eof"


async def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def key_rows(admin) -> dict[str, dict]:
    """The first node's upstream keys as /admin/nodes shows them, by their last four characters."""
    node = admin.http.get("/admin/nodes").json()["data"][0]
    return {row["key"]: row for row in node["keys"]}
