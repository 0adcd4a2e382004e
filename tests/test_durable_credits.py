"""Durable credits under `apiinone run` (issue 16 item 4): 200 concurrent top-ups, kill -9 of the embedded
Valkey right after the last answer; the stack recovers by itself, every answered top-up is in the
balance once, and the audit (Redis against Postgres) is clean."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from apiinone.launcher import free_port
from tests.run_helpers import child_pid, start_run, stop

TOPUPS = 200


def test_answered_topups_survive_kill_9_of_valkey():
    with tempfile.TemporaryDirectory(prefix="apiinone-durable-") as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        proc, _banner = start_run(data_dir, port)
        try:
            base = f"http://127.0.0.1:{port}"
            admin = httpx.Client(base_url=base, timeout=30, headers={
                "Authorization": "Bearer " + (data_dir / "admin-token").read_text().strip()})
            account = admin.post("/admin/accounts", json={"name": "durable", "credits": 0}).json()
            path = f"/admin/accounts/{account['id']}/topups"

            def topup(i: int) -> int:
                with httpx.Client(base_url=base, timeout=30, headers=admin.headers) as c:
                    return c.post(path, json={"credits": 1, "reference": f"pay-{i}"}).status_code

            valkey = child_pid(proc.pid, "valkey-server")
            with ThreadPoolExecutor(32) as pool:
                statuses = list(pool.map(topup, range(TOPUPS)))
            os.kill(valkey, signal.SIGKILL)  # right after the last answer
            assert statuses == [201] * TOPUPS, statuses

            child_pid(proc.pid, "valkey-server", not_in={valkey})  # the supervisor restarts it
            deadline, got, audit = time.monotonic() + 60, None, None
            while True:  # no one's help: the archiver's recovery re-applies what the AOF missed
                try:
                    got = admin.get(f"/admin/accounts/{account['id']}")
                    audit = admin.get("/admin/audit").json()
                    if got.status_code == 200 and got.json()["balance_micro"] == TOPUPS * 1_000_000 and audit["ok"]:
                        break
                except (httpx.TransportError, ValueError):
                    pass
                assert time.monotonic() < deadline, (got and got.text, audit)
                time.sleep(0.25)
            again = admin.post(path, json={"credits": 1, "reference": "pay-7"})
            assert again.status_code == 200  # once: the reference is known
            assert admin.get(f"/admin/accounts/{account['id']}").json()["balance_micro"] == TOPUPS * 1_000_000
        finally:
            stop(proc)
