"""An extra gateway process beside the test stack, with settings of its own.

Some attacks need a gateway configured differently from the session stack's (a public https base URL,
trusted proxies, short connection timeouts, a Redis reached through a test proxy). ``extra_gateway``
starts `apiinone gateway` with the stack's environment plus the given variables, on a free port, and
stops it by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from apiinone.launcher import apiinone_command, free_port, wait_http


@contextmanager
def extra_gateway(stack, env: dict[str, str], log_name: str = "extra-gateway") -> Iterator[str]:
    """The base URL of a gateway started with the stack's environment and ``env`` on top."""
    port = free_port()
    full = {**os.environ, **stack.env, "APIINONE_PORT": str(port), **env}
    # Its log goes with the stack's (removed at the end), or to $APIINONE_TEST_LOGS to keep it.
    logs = Path(os.environ.get("APIINONE_TEST_LOGS") or Path(stack.settings.data_dir).resolve() / "logs")
    log_path = logs / f"{log_name}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(apiinone_command() + ["gateway"], env=full, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
