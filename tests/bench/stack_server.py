"""One tree's stack, driven over stdin/stdout by ``tests/bench/side_by_side.py``.

Run as a script with a tree's own interpreter and the tree as working directory: it imports that
tree's bench harness (``tests.bench``), so the old tree of a comparison needs no copy of this file.
It starts the stack (Valkey, Postgres when the tree has it, simulator, gateway, workers), creates a
key, prints ``ready`` and then answers one JSON line per command line:

    run MODE CONCURRENCY SECONDS WARMUP   -> {"rps", "completed", "errors", "cpu_per_1k": {process: s}}
    pause-record                          -> {"paused": [pid, ...]}: SIGSTOP the archiver and Postgres
    quit

It uses only what every tree since the bench's first version has: ``start_stack``, ``create_key``,
``run_load``, ``summarize``, ``CpuMeter`` and ``openai_target``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())

from tests.bench.__main__ import create_key, start_stack  # noqa: E402  (the tree's own harness)
from tests.bench.cpu import CpuMeter, Group  # noqa: E402
from tests.bench.loadgen import run_load, summarize  # noqa: E402
from tests.bench.scenarios import openai_target  # noqa: E402


def groups_of(stack) -> list[Group]:
    """Every process of the stack, the simulator included; Postgres with its backends."""
    return [Group(name, [proc.pid], with_children=name == "postgres") for name, proc in stack.procs.items()]


def record_pids(stack) -> list[int]:
    """The archiver and Postgres with its backends: what runs beside the request path to keep the record.
    (Its own /proc walk, not tests/run_helpers.py: this file runs on trees that predate that module.)"""
    roots = [proc.pid for name, proc in stack.procs.items() if name in ("archiver", "postgres")]
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) in roots:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return roots + children


async def measure(stack, target, mode: str, concurrency: int, seconds: float, warmup: float) -> dict:
    meter = CpuMeter(groups_of(stack))
    res = await run_load(target.spec(mode), concurrency, seconds, warmup, on_window=meter.sample)
    fig = summarize(res)
    cpu = meter.result()["groups"]
    done = res.completed or 1
    return {"rps": fig["rps"], "completed": res.completed, "errors": fig["errors"],
            "cpu_per_1k": {name: round(s / done * 1000, 4) for name, s in cpu.items()}}


def main() -> int:
    answers = os.fdopen(os.dup(1), "w")  # the protocol's channel; whatever else prints goes to stderr
    os.dup2(2, 1)
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as run_dir:
        stack = start_stack(Path(run_dir))
        paused: list[int] = []
        try:
            key = create_key(stack)
            target = openai_target("apiinone", "apiinone", stack.base_url + "/api/v1",
                                   {"Authorization": f"Bearer {key}"}, "gemini", [])
            print("ready", file=answers, flush=True)
            for line in sys.stdin:
                words = line.split()
                if not words or words[0] == "quit":
                    break
                if words[0] == "pause-record":
                    paused = record_pids(stack)
                    for pid in paused:
                        os.kill(pid, signal.SIGSTOP)
                    print(json.dumps({"paused": paused}), file=answers, flush=True)
                    continue
                mode, concurrency, seconds, warmup = words[1], int(words[2]), float(words[3]), float(words[4])
                row = asyncio.run(measure(stack, target, mode, concurrency, seconds, warmup))
                print(json.dumps(row), file=answers, flush=True)
        finally:
            for pid in paused:  # a stopped Postgres would never see the stop's signal, and outlive us
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
