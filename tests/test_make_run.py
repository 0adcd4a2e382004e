"""`apiinone run` (what `make run` calls), as a new user meets it: the banner's commands work as printed,
Ctrl-C/SIGTERM stops every child, and a restart keeps accounts and keys."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import httpx

from apiinone.launcher import apiinone_command, free_port
from tests.run_helpers import children_of, cmdline, run_env, start_run, stop

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
            # what customers can do on their own, and how to turn it on (off by default)
            assert re.search(r"Customer sign-up: +off \(APIINONE_SIGNUP_ENABLED=true\)", banner), banner
            assert re.search(r"Customer payments: +off \(STRIPE_SECRET_KEY\)", banner), banner
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


def test_a_second_run_on_ports_in_use_refuses_to_start_and_leaves_the_first_alone():
    # It once printed "apiinone is running" while its Valkey and Postgres could not bind: their readiness
    # probes found the first run's servers answering, so its workers joined the other stack.
    with tempfile.TemporaryDirectory(prefix="apiinone-run-") as tmp:
        port = free_port()
        ports = {name: str(free_port()) for name in ("APIINONE_EMBEDDED_REDIS_PORT", "APIINONE_SIMULATOR_PORT",
                                                     "APIINONE_EMBEDDED_POSTGRES_PORT")}
        first, _ = start_run(Path(tmp) / "first", port, ports=ports)
        try:
            for second_port, named in ((port, "APIINONE_PORT"), (free_port(), "APIINONE_EMBEDDED_REDIS_PORT")):
                second = subprocess.run(apiinone_command() + ["run"], env=run_env(Path(tmp) / "second", second_port,
                                                                                 ports),
                                        capture_output=True, text=True, timeout=60)
                assert second.returncode != 0 and "apiinone is running" not in second.stdout, second.stdout
                assert "is in use" in second.stderr and named in second.stderr, second.stderr
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        finally:
            stop(first)


def test_a_stack_whose_gateway_fails_to_start_leaves_no_child_running(tmp_path):
    """A gateway that exits at start (here: an admin token too short to accept) used to leave Valkey,
    Postgres, the simulator and the workers running, orphaned (the benchmark's record scenario did)."""
    from apiinone.launcher import Stack
    from tests.conftest import make_settings

    class Recording(Stack):
        def _spawn(self, name, args, env=None, probe=None, **fields):
            proc = super()._spawn(name, args, env, probe, **fields)
            started.append(proc)
            return proc

    started: list[subprocess.Popen] = []
    settings = make_settings(tmp_path)
    settings.admin_token = "adm_short"
    stack = Recording(settings, quiet=True)
    try:
        stack.start()
        raise AssertionError("a gateway with a guessable admin token served")
    except RuntimeError as exc:
        assert "gateway" in str(exc)
    assert len(started) >= 5  # valkey, simulator, workers, billing, batch, archiver, gateway
    assert all(proc.poll() is not None for proc in started), [p.args[:2] for p in started if p.poll() is None]


def test_the_banner_says_when_sign_up_and_payments_are_on():
    from apiinone.welcome import banner, self_service_line

    text = banner("http://127.0.0.1:8080", "tok", "aio_x", self_service=self_service_line(True, True))
    assert re.search(r"Customer sign-up: +on\n", text) and re.search(r"Customer payments: +Stripe Checkout\n", text)
