"""`apiinone run` keeps serving: a child that dies is restarted alone, with backoff, and reported.

The first test drives the restart policy on real short-lived processes, with short backoffs;
the second breaks a real `apiinone run` (kill -9 of the node worker mid-stream, of Valkey and the
billing worker, of the batch worker again and again) and checks what clients and operators see.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from apiinone.launcher import free_port
from apiinone.supervisor import ChildSpec, RestartPolicy, Supervisor
from tests.run_helpers import child_pid, children_of, start_run, stop

CHAT = "/api/v1/chat/completions"


def python_child(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", code], dict(os.environ))


def drive(sup: Supervisor, until, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, [c.report() for c in sup.children.values()]
        sup.check()
        time.sleep(0.01)


def test_restart_policy_backs_off_flags_a_crash_loop_and_forgives_a_stable_child():
    sup = Supervisor(RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.2, stable_after_s=30, loop_restarts=4))
    sup.launch(python_child("crasher", "import sys; sys.exit(3)"))
    backoff_after_exit = {}  # exit number -> the wait before its restart

    def restarted_four_times():
        child = sup.children["crasher"]
        if child.state == "backoff":
            backoff_after_exit.setdefault(child.restarts + 1, child.backoff_s)
        return child.restarts >= 4 and child.state != "backoff"

    try:
        drive(sup, restarted_four_times)
        report = sup.reports()[0]
        assert [backoff_after_exit[n] for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.2, 0.2]
        assert report.last_exit_code == 3 and report.crash_loop and report.restarts == 4
        assert sup.procs["crasher"].pid == report.pid
    finally:
        stop_all(sup)

    # Up longer than stable_after_s each time: every restart waits the first backoff again.
    sup = Supervisor(RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.2, stable_after_s=0.3, loop_restarts=4))
    sup.launch(python_child("steady", "import time; time.sleep(0.5)"))
    try:
        drive(sup, lambda: sup.children["steady"].restarts >= 2)
        steady = sup.reports()[0]
        assert steady.backoff_s == 0.05 and not steady.crash_loop and steady.last_exit_code == 0
    finally:
        stop_all(sup)


def stop_all(sup: Supervisor) -> None:
    for proc in sup.procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Run:
    """A running `apiinone run`, its demo key and admin token (from its data dir), and its log."""

    def __init__(self, proc: subprocess.Popen, port: int, data_dir: Path, log: Path) -> None:
        self.proc, self.log = proc, log
        self.base = f"http://127.0.0.1:{port}"
        self.key = (data_dir / "demo-key").read_text().strip()
        self.admin = httpx.Client(base_url=self.base, timeout=10, headers={
            "Authorization": "Bearer " + (data_dir / "admin-token").read_text().strip()})
        self.http = httpx.Client(base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {self.key}"})

    def child(self, name: str) -> dict:
        (sup,) = self.admin.get("/admin/nodes").json()["supervisors"]
        return next(c for c in sup["children"] if c["name"] == name)

    def credits(self) -> dict:
        return self.http.get("/billing/credits").json()

    def chat(self, directives: str = "output_tokens=8") -> httpx.Response:
        return self.http.post(CHAT, json={"model": "gemini", "stream": False,
                                          "messages": [{"role": "user", "content": f"hi [[sim {directives}]]"}]})

    def serves_again(self, timeout: float = 20) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.chat()
                if r.status_code == 200:
                    return r
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no successful request within the deadline"
            time.sleep(0.2)

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


@pytest.fixture(scope="module")
def run():
    with tempfile.TemporaryDirectory(prefix="apiinone-supervised-") as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        log = Path(tmp) / "run.log"
        with log.open("wb") as err:
            proc, _banner = start_run(data_dir, port, stderr=err)
        try:
            yield Run(proc, port, data_dir, log)
        finally:
            if proc.poll() is None:  # the last test stops it; this is for a failure before that
                kids = children_of(proc.pid)
                proc.send_signal(signal.SIGTERM)  # not SIGKILL: that would orphan the children
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    for pid in [*kids, proc.pid]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    proc.wait()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_worker_killed_mid_stream_fails_the_stream_refunds_and_is_restarted(run):
    before = run.credits()
    worker = child_pid(run.proc.pid, "apiinone worker --node node62")
    body = {"model": "gemini", "stream": True,
            "messages": [{"role": "user", "content": "go [[sim output_tokens=400 delay_ms=20]]"}]}
    events = []
    with run.http.stream("POST", CHAT, json=body, timeout=httpx.Timeout(30)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 3:
                os.kill(worker, signal.SIGKILL)
            if line.startswith('data: {"error"') or line == "data: [DONE]":
                break
    assert events[-1].startswith('{"error"'), events[-3:]
    assert "worker_lost" in events[-1]

    refunded = wait_until(lambda: (c := run.credits())["held_micro"] == 0 and c, 5, "hold not released")
    assert refunded["balance_micro"] == before["balance_micro"]

    assert run.serves_again(20).status_code == 200  # nobody restarted anything but the supervisor
    new_worker = child_pid(run.proc.pid, "apiinone worker --node node62", not_in={worker})
    report = run.child("worker:node62:0")
    assert report["restarts"] == 1 and report["last_exit_code"] == -signal.SIGKILL
    assert report["pid"] == new_worker and not report["crash_loop"]


def test_valkey_and_billing_killed_come_back_with_the_data(run):
    valkey, billing = child_pid(run.proc.pid, "valkey-server"), child_pid(run.proc.pid, "apiinone billing-worker")
    os.kill(valkey, signal.SIGKILL)
    os.kill(billing, signal.SIGKILL)
    child_pid(run.proc.pid, "valkey-server", not_in={valkey})
    child_pid(run.proc.pid, "apiinone billing-worker", not_in={billing})

    answer = run.serves_again(20)  # the demo key is still there: Valkey came back on its AOF
    request_id = answer.headers["x-request-id"]

    def settled():
        rows = run.http.get("/billing/usage").json()["data"]
        return any(r.get("trace_id") == request_id and r["status"] == "succeeded" for r in rows)

    wait_until(settled, 10, "the restarted billing worker did not settle the request")
    assert run.child("valkey")["restarts"] >= 1 and run.child("billing")["restarts"] >= 1
    metrics = httpx.get(run.base + "/metrics").text
    assert 'apiinone_child_restarts_total{child="valkey"' in metrics


def test_a_child_that_keeps_dying_is_reported_as_a_crash_loop(run):
    killed: set[int] = set()
    for _ in range(5):  # RestartPolicy: 5 exits within 2 minutes; backoffs 0.5, 1, 2, 4 s between
        pid = child_pid(run.proc.pid, "apiinone batch-worker", not_in=killed, timeout=30)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    report = wait_until(lambda: (c := run.child("batch"))["crash_loop"] and c, 5, "no crash loop reported")
    assert report["restarts"] >= 4 and report["last_exit_code"] == -signal.SIGKILL
    lines = [e for e in run.log_lines() if e.get("event") == "crash loop"]
    assert lines and lines[0]["child"] == "batch" and lines[0]["level"] == "error", lines
    assert 'apiinone_child_crash_loop{child="batch"' in httpx.get(run.base + "/metrics").text
    assert run.chat().status_code == 200  # the rest keeps serving


def test_the_record_runs_as_batch_work_beside_the_request_path(run):
    """The archiver, the embedded Postgres and its backends are SCHED_BATCH (their rounds do not preempt the
    request path's hops, apiinone/supervisor.py); the gateway, the workers and Valkey keep the default."""
    postmaster = child_pid(run.proc.pid, "bin/postgres -D")
    backends = wait_until(lambda: children_of(postmaster), 10, "Postgres forked nothing")
    assert {os.sched_getscheduler(pid) for pid in [postmaster, *backends]} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(child_pid(run.proc.pid, "apiinone archiver")) == os.SCHED_BATCH
    for role in ("apiinone gateway", "apiinone worker --node node62", "valkey-server", "apiinone billing-worker"):
        assert os.sched_getscheduler(child_pid(run.proc.pid, role)) == os.SCHED_OTHER, role


def test_sigterm_still_stops_every_child(run):
    stop(run.proc)
    assert run.proc.returncode == 0
