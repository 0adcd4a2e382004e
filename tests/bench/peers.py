"""The peers, installed by the bench under ./var/bench/ and run on loopback against the same simulator.

LiteLLM proxy: ``pip install 'litellm[proxy]'`` into its own venv; one uvicorn
worker, no database, model ``gemini`` -> ``gemini/gemini-3-flash-preview`` with
``api_base`` = the simulator. Offline it needs LITELLM_LOCAL_MODEL_COST_MAP=True
and a master key other than the default ``sk-1234``.

Portkey gateway: ``npm install @portkey-ai/gateway`` in its own directory with an
npm ``overrides`` entry pinning ``@hono/node-server`` to 1.13.5 (later versions
answer streams with HTTP 500 here); its Node server routes to the simulator with
the headers ``x-portkey-provider: google`` and ``x-portkey-custom-host`` (a
loopback host is in Portkey's default TRUSTED_CUSTOM_HOSTS). Its server binds
every interface by default; a two-line ``--require`` preload makes it listen on
127.0.0.1 only.

Every install is cached (a stamp file per spec) so later runs start in seconds.
A peer that cannot be installed or started raises ``PeerUnavailable`` with the
reason; the bench prints it and goes on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LITELLM_SPEC = os.environ.get("APIINONE_BENCH_LITELLM_SPEC", "litellm[proxy]")
PORTKEY_VERSION = os.environ.get("APIINONE_BENCH_PORTKEY_VERSION", "1.15.2")
HONO_NODE_SERVER = "1.13.5"


class PeerUnavailable(Exception):
    pass


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    text = [t for t in text if not t.startswith("WARNING: Location")]  # pip's notes about absent local mirrors
    return "\n".join(text[-lines:])


def _run(args: list[str], log: Path, timeout: float, cwd: Path | None = None, env: dict | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(args)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(f"`{' '.join(args[:4])} ...` took longer than {timeout:.0f}s; see {log}") from None
        except FileNotFoundError as exc:
            raise PeerUnavailable(f"{args[0]} not found: {exc}") from None
    if proc.returncode != 0:
        raise PeerUnavailable(f"`{' '.join(args[:4])} ...` exited with {proc.returncode}:\n{_log_tail(log)}")


def _http_ok(url: str, headers: dict | None = None) -> bool:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def post_json(url: str, body: dict, headers: dict, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Peer:
    """A running peer: its process (a new session, so its whole tree is ours to stop) and how to call it."""

    name: str
    version: str
    base_url: str
    headers: dict[str, str]
    model: str
    proc: subprocess.Popen
    log: Path
    notes: list[str] = field(default_factory=list)
    extra_versions: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group we created for it (start_new_session), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float, log: Path, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerUnavailable(f"exited with {proc.returncode} while starting:\n{_log_tail(log)}")
        if _http_ok(url, headers):
            return
        time.sleep(0.25)
    stop_process(proc)
    raise PeerUnavailable(f"not ready at {url} after {timeout:.0f}s:\n{_log_tail(log)}")


# ----------------------------------------------------------------------------------------- LiteLLM

def install_litellm(root: Path, say) -> tuple[Path, str]:
    """The venv's python and litellm's version; installs on first use."""
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    py = venv / "bin" / "python"
    stamp = root / "installed.txt"
    log = root / "install.log"
    if not (stamp.exists() and stamp.read_text().strip() == LITELLM_SPEC and py.exists()):
        say(f"installing LiteLLM ({LITELLM_SPEC}) into {venv} (first run only; about a minute) ...")
        if venv.exists():
            shutil.rmtree(venv)
        log.write_text("")
        _run([sys.executable, "-m", "venv", str(venv)], log, 120)
        _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", LITELLM_SPEC], log, 900)
        stamp.write_text(LITELLM_SPEC + "\n")
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise PeerUnavailable(f"litellm is not importable in {venv}: {out.stderr.strip()[-400:]}")
    return py, out.stdout.strip()


def start_litellm(root: Path, port: int, simulator_url: str, simulator_key: str, say) -> Peer:
    py, version = install_litellm(root, say)
    master_key = "sk-bench-" + secrets.token_hex(12)  # LiteLLM refuses the default sk-1234
    config = root / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gemini\n"
        "    litellm_params:\n"
        "      model: gemini/gemini-3-flash-preview\n"
        f"      api_base: {simulator_url}/v1beta\n"
        f"      api_key: {simulator_key}\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )
    log = root / "proxy.log"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST"):
        env.pop(name, None)  # no database, no cache: the documented single-instance setup
    litellm_bin = py.with_name("litellm")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                 "--num_workers", "1"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=root, start_new_session=True)
    _wait_ready(proc, f"http://127.0.0.1:{port}/health/liveliness", 120, log)
    return Peer(name="litellm", version=version, base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {master_key}"}, model="gemini", proc=proc, log=log,
                notes=["one uvicorn worker, no database, default logging (access log to a file)"])


# ----------------------------------------------------------------------------------------- Portkey

_BIND_LOCAL = """\
// Loaded with `node --require`: make every server that would listen on all interfaces listen on 127.0.0.1.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  if (typeof a0 === 'number' || (typeof a0 === 'string' && /^\\d+$/.test(a0))) {
    if (args.length >= 2 && args[1] === undefined) args[1] = '127.0.0.1';
    else if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  } else if (a0 && typeof a0 === 'object' && a0.port !== undefined && !a0.host) {
    args[0] = { ...a0, host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
"""


def install_portkey(root: Path, say) -> tuple[Path, dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node or not npm:
        raise PeerUnavailable("node/npm not found on PATH (Portkey's gateway is a Node program)")
    package = {
        "name": "apiinone-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        # Portkey's own repo patches @hono/node-server; the newest one answers streams with HTTP 500 here.
        "overrides": {"@hono/node-server": HONO_NODE_SERVER},
    }
    spec = json.dumps(package, sort_keys=True)
    stamp = root / "installed.txt"
    entry = root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    log = root / "install.log"
    if not (stamp.exists() and stamp.read_text().strip() == spec and entry.exists()):
        say(f"installing Portkey gateway {PORTKEY_VERSION} into {root} (first run only) ...")
        (root / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        log.write_text("")
        _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], log, 600, cwd=root)
        if not entry.exists():
            raise PeerUnavailable(f"npm install finished but {entry} is missing")
        stamp.write_text(spec + "\n")
    (root / "bind-local.cjs").write_text(_BIND_LOCAL)
    versions = {"node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()}
    for pkg in ("@portkey-ai/gateway", "@hono/node-server", "hono"):
        try:
            versions[pkg] = json.loads((root / "node_modules" / pkg / "package.json").read_text())["version"]
        except (FileNotFoundError, KeyError, ValueError):
            versions[pkg] = "?"
    return entry, versions


def start_portkey(root: Path, port: int, simulator_url: str, simulator_key: str, say) -> Peer:
    entry, versions = install_portkey(root, say)
    log = root / "server.log"
    env = dict(os.environ)
    with open(log, "wb") as out:
        proc = subprocess.Popen([shutil.which("node"), "--require", str(root / "bind-local.cjs"), str(entry),
                                 f"--port={port}", "--headless"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"x-portkey-provider": "google", "x-portkey-custom-host": simulator_url,
               "Authorization": f"Bearer {simulator_key}"}
    deadline = time.monotonic() + 60
    while True:  # Portkey has no health route: wait for its port to answer at all
        if proc.poll() is not None:
            raise PeerUnavailable(f"exited with {proc.returncode} while starting:\n{_log_tail(log)}")
        try:
            urllib.request.urlopen(base + "/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                stop_process(proc)
                raise PeerUnavailable(f"not answering on {base} after 60s:\n{_log_tail(log)}") from None
            time.sleep(0.2)
    return Peer(name="portkey", version=versions.get("@portkey-ai/gateway", "?"), base_url=base, headers=headers,
                model="gemini-3-flash-preview", proc=proc, log=log, extra_versions=versions,
                notes=["one Node process, --headless (no UI), default logging; @hono/node-server pinned by npm "
                       "overrides"])
