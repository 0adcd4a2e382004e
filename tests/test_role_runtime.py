"""How every long-running role runs (apiinone/cli.py ``_run_async``)."""

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
