"""`apiinone run` as a user starts it (what `make run` calls), on free ports in a temporary data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def child_pid(run_pid: int, role: str, not_in: set[int] = frozenset(), timeout: float = 20) -> int:
    """The pid of the run's child whose command line contains ``role`` (and is none of ``not_in``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children_of(run_pid):
            if pid not in not_in and role in cmdline(pid) and not _zombie(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {role!r} child of {run_pid} within {timeout} s")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_env(data_dir: Path, port: int, ports: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `apiinone run` on ``port``: its other ports ``ports``, else free ones."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "GEMINI_API_KEY", "APIINONE_ADMIN_TOKEN")}
    env.update(APIINONE_DATA_DIR=str(data_dir), APIINONE_PORT=str(port),
               APIINONE_EMBEDDED_REDIS_PORT=str(free_port()), APIINONE_SIMULATOR_PORT=str(free_port()),
               APIINONE_EMBEDDED_POSTGRES_PORT=str(free_port()))
    env.update(ports or {})
    return env


def start_run(data_dir: Path, port: int, stderr=subprocess.DEVNULL,
              ports: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    env = run_env(data_dir, port, ports)
    proc = subprocess.Popen(apiinone_command() + ["run"], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("apiinone run exited:\n" + "".join(lines))
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return proc, "".join(lines)
    proc.send_signal(signal.SIGTERM)  # not SIGKILL: its children would outlive it
    proc.wait(40)
    raise AssertionError("no banner within 60 s:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to `apiinone run`: it exits and leaves no child alive."""
    kids = children_of(proc.pid)
    assert kids, "run starts its roles as child processes"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0 or proc.returncode is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.1)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and not _zombie(k)]
    assert not alive, f"children left running: {alive}"
