"""`apiinone run` (what `make run` calls), as a new user meets it: the banner's commands work as printed,
Ctrl-C/SIGTERM stops every child, and a restart keeps accounts and keys."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import httpx

from apiinone.launcher import free_port
from tests.run_helpers import children_of, cmdline, start_run, stop

# A shell that has only the system's tools: no venv on PATH, so the banner's commands must name
# everything they need (the snippet's interpreter is the venv's python, by absolute path).
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def test_run_prints_working_commands_stops_cleanly_and_keeps_data():
    with tempfile.TemporaryDirectory(prefix="apiinone-run-") as tmp:
        port = free_port()
        proc, banner = start_run(Path(tmp), port)
        try:
            base = re.search(r"Base URL \(OpenAI-compatible\): (\S+)", banner).group(1)
            key = re.search(r"Demo API key \(100 credits\): +(aio_\S+)", banner).group(1)
            admin_token = re.search(r"Admin token: +(\S+)", banner).group(1)
            assert base == f"http://127.0.0.1:{port}/api/v1"
            curl = re.search(r"^  curl .*?'$", banner, re.M | re.S).group(0)
            out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30, env=PLAIN_ENV)
            assert '"chat.completion"' in out.stdout, out.stdout + out.stderr
            python = re.search(r"^  \S+ -c '\n.*?'$", banner, re.M | re.S).group(0)
            out = subprocess.run(["bash", "-c", python], capture_output=True, text=True, timeout=30, env=PLAIN_ENV)
            assert out.returncode == 0 and out.stdout.strip(), (python, out.stderr)
            roles = {cmdline(k) for k in children_of(proc.pid)}
            for role in ("apiinone gateway", "apiinone worker --node node62", "apiinone billing-worker",
                         "apiinone simulator", "valkey-server"):
                assert any(role in cmd for cmd in roles), (role, roles)
        finally:
            stop(proc)

        # A restart on the same data keeps the account, the key and the admin token.
        proc, banner = start_run(Path(tmp), port)
        try:
            assert key in banner and admin_token in banner
            r = httpx.get(f"http://127.0.0.1:{port}/billing/credits", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["balance_micro"] < 100_000_000  # the first run's calls cost
        finally:
            stop(proc)
