"""Child processes of `apiinone run`: started from specs, and restarted alone when one exits.

Each child is a ``ChildSpec`` (name, argv, environment, log file, readiness probe), so a new
kind of process (a database, an archiver) is one more spec. ``Supervisor.launch`` starts one;
``Supervisor.check`` is one supervision pass: a child that exited is restarted after a
backoff that doubles from ``first_backoff_s`` to ``max_backoff_s`` and starts over once the
child has stayed up ``stable_after_s``; ``loop_restarts`` exits within ``loop_window_s`` is a
crash loop, logged at error level and flagged in the reports (it keeps being restarted, at
the maximum backoff). The rest of the product keeps serving throughout. Tests and the
benchmark launch through the same class but never call ``check``: there a killed process
stays dead until the test restarts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from shared.supervision import ChildReport

log = structlog.get_logger()


def run_as_background() -> None:
    """This process, and what it forks, scheduled as batch work (Linux SCHED_BATCH, same share of the CPU):
    its wake-ups do not preempt the process running. For the record (the archiver and Postgres): its
    rounds, a few a second, otherwise cut into the request path's hops, which at one request at a time
    wait on each other (measured side by side, docs/benchmarks.md)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # not allowed here (a seccomp profile): run as any process
        pass


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]  # the child's whole environment
    log_path: Path | None = None  # None: the child writes to our terminal
    probe: Callable[[], bool] | None = None  # quick check that it serves; None: running is enough
    user: str | None = None  # run as this system user (the embedded Postgres refuses to run as root)
    stop_signal: int = signal.SIGTERM  # what asks it to stop (Postgres: SIGINT, its fast shutdown)
    background: bool = False  # scheduled as batch work (run_as_background), with every process it forks

    def launch(self) -> subprocess.Popen:
        out = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        try:
            # Its own session: a Ctrl-C in the terminal reaches `apiinone run` only, which stops
            # the children in order (gateways first, Valkey last).
            return subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out, start_new_session=True,
                                    user=self.user, preexec_fn=run_as_background if self.background else None)
        finally:
            if out is not None:
                out.close()


@dataclass(frozen=True)
class RestartPolicy:
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0  # up this long: the next exit starts the backoff over
    loop_restarts: int = 5  # this many exits within loop_window_s is a crash loop
    loop_window_s: float = 120.0


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Child:
    """A spec and its current process, with the supervisor's bookkeeping."""

    spec: ChildSpec
    proc: subprocess.Popen | None = None
    state: str = "starting"
    started: float = 0.0  # monotonic
    up_since_ms: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_restart_ms: int | None = None
    backoff_s: float = 0.0
    restart_at: float | None = None  # monotonic; set while in backoff
    exits: deque = field(default_factory=deque)  # monotonic times of recent exits
    crash_loop: bool = False

    def report(self) -> ChildReport:
        return ChildReport(
            name=self.spec.name, state=self.state, pid=self.proc.pid if self.state != "backoff" else None,
            restarts=self.restarts, last_exit_code=self.last_exit_code, last_restart_ms=self.last_restart_ms,
            up_since_ms=self.up_since_ms if self.state != "backoff" else None, backoff_s=self.backoff_s,
            crash_loop=self.crash_loop)


class Supervisor:
    def __init__(self, policy: RestartPolicy | None = None, procs: dict[str, subprocess.Popen] | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.children: dict[str, Child] = {}
        # name -> the current process; the Stack shares this dict (tests read stack.procs)
        self.procs = procs if procs is not None else {}

    def launch(self, spec: ChildSpec) -> subprocess.Popen:
        """Start (or replace) the child ``spec.name``."""
        child = self.children.get(spec.name)
        if child is None:
            child = self.children[spec.name] = Child(spec)
        child.spec = spec
        self._start(child)
        return child.proc

    def _start(self, child: Child) -> None:
        child.proc = child.spec.launch()
        child.started, child.up_since_ms = time.monotonic(), _now_ms()
        child.state, child.restart_at = "starting", None
        self.procs[child.spec.name] = child.proc

    def check(self) -> bool:
        """One pass over every child; True when something changed (worth reporting at once)."""
        changed = False
        now = time.monotonic()
        for child in self.children.values():
            if child.state != "backoff" and child.proc.poll() is not None:
                self._exited(child, now)
                changed = True
            elif child.state == "backoff" and now >= child.restart_at:
                self._restart(child)
                changed = True
            elif child.state == "starting" and (child.spec.probe is None or child.spec.probe()):
                child.state = "running"
                changed = True
            elif child.crash_loop and now - child.started >= self.policy.stable_after_s:
                child.crash_loop = False
                log.info("child stable again", child=child.spec.name, restarts=child.restarts)
                changed = True
        return changed

    def _exited(self, child: Child, now: float) -> None:
        p = self.policy
        uptime = now - child.started
        child.last_exit_code = child.proc.returncode
        if uptime >= p.stable_after_s or not child.backoff_s:
            child.backoff_s = p.first_backoff_s
        else:
            child.backoff_s = min(p.max_backoff_s, child.backoff_s * 2)
        child.exits.append(now)
        while child.exits and now - child.exits[0] > p.loop_window_s:
            child.exits.popleft()
        child.state, child.restart_at = "backoff", now + child.backoff_s
        log.warning("child exited; restarting it", child=child.spec.name, exit_code=child.last_exit_code,
                    uptime_s=round(uptime, 1), restart_in_s=child.backoff_s)
        if len(child.exits) >= p.loop_restarts and not child.crash_loop:
            child.crash_loop = True
            log.error("crash loop", child=child.spec.name, exits=len(child.exits), window_s=p.loop_window_s,
                      restarts=child.restarts, exit_code=child.last_exit_code, next_restart_in_s=child.backoff_s)

    def _restart(self, child: Child) -> None:
        try:
            self._start(child)
        except OSError as exc:  # the binary vanished, out of processes...: try again later
            child.restart_at = time.monotonic() + self.policy.max_backoff_s
            log.error("child could not be restarted", child=child.spec.name, error=str(exc))
            return
        child.restarts += 1
        child.last_restart_ms = _now_ms()
        log.info("child restarted", child=child.spec.name, pid=child.proc.pid, restarts=child.restarts)

    def reports(self) -> list[ChildReport]:
        return [c.report() for c in self.children.values()]
