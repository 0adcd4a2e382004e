"""`apiinone run` (what `make run` calls), as a new user meets it: the banner's commands work as printed,
Ctrl-C/SIGTERM stops every child, and a restart keeps accounts and keys."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from apiinone.launcher import apiinone_command, free_port


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def start_run(data_dir: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GEMINI_API_KEY", "APIINONE_ADMIN_TOKEN")}
    env.update(APIINONE_DATA_DIR=str(data_dir), APIINONE_PORT=str(port),
               APIINONE_EMBEDDED_REDIS_PORT=str(free_port()), APIINONE_SIMULATOR_PORT=str(free_port()))
    proc = subprocess.Popen(apiinone_command() + ["run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("apiinone run exited:\n" + "".join(lines))
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return proc, "".join(lines)
    proc.kill()
    raise AssertionError("no banner within 60 s:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    kids = children_of(proc.pid)
    assert kids, "run starts its roles as child processes"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0 or proc.returncode is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.1)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and "Z" not in Path(f"/proc/{k}/stat").read_text()]
    assert not alive, f"children left running: {alive}"


def test_run_prints_working_commands_stops_cleanly_and_keeps_data():
    with tempfile.TemporaryDirectory(prefix="apiinone-run-") as tmp:
        port = free_port()
        proc, banner = start_run(Path(tmp), port)
        try:
            base = re.search(r"Base URL \(OpenAI-compatible\): (\S+)", banner).group(1)
            key = re.search(r"Demo API key \(100 credits\): +(aio_\S+)", banner).group(1)
            admin_token = re.search(r"Admin token: +(\S+)", banner).group(1)
            assert base == f"http://127.0.0.1:{port}/api/v1"
            curl = banner[banner.index("  curl "):banner.index("  python3 -c")].strip()
            out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
            assert '"chat.completion"' in out.stdout, out.stdout + out.stderr
            python = banner[banner.index("  python3 -c"):banner.index("  Balance:")].strip()
            out = subprocess.run(["bash", "-c", python.replace("python3", sys.executable, 1)],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and out.stdout.strip(), out.stderr
            roles = {Path(f"/proc/{k}/cmdline").read_text().replace("\0", " ") for k in children_of(proc.pid)}
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
