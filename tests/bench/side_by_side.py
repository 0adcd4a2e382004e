"""This tree against another, side by side in one sitting: the "within 10% of the tree before" check.

    python -m tests.bench.side_by_side --old ../before          (a checkout with its own .venv)

Both stacks run at once (``tests/bench/stack_server.py``, each with its tree's interpreter), idle
but for the one under load. Each round measures every scenario on both trees back to back, the
order alternating (old-new, then new-old), so a box whose speed drifts by tens of percent within
minutes (a shared 2-core VM does) moves both figures of a pair alike. The medians over the rounds
are compared per scenario:

- throughput (requests/s), and the request path's CPU per 1,000 requests: every process of the
  product but the record's (archiver, Postgres), which is reported apart, as issue 16 asks;
- the simulator's CPU per request, the same work in both trees: a control for how fast the box ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).with_name("stack_server.py")
RECORD = ("archiver", "postgres")
SCENARIOS = "non-stream:1,non-stream:32,stream:1,stream:32"


class TreeStack:
    """A stack_server child: one tree's stack, measured on request."""

    def __init__(self, name: str, tree: Path) -> None:
        self.name = name
        # The tree's own code first on the path: its roles must not import an editable install of another.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([str(tree / ".venv/bin/python"), str(SERVER)], cwd=tree, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"the {name} tree's stack did not start (said {line!r})")

    def pause_record(self) -> list[int]:
        self.proc.stdin.write("pause-record\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["paused"]

    def run(self, mode: str, concurrency: int, seconds: float, warmup: float) -> dict:
        self.proc.stdin.write(f"run {mode} {concurrency} {seconds} {warmup}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def request_path_cpu(row: dict) -> float:
    return sum(v for k, v in row["cpu_per_1k"].items() if k != "simulator" and not k.startswith(RECORD))


def record_cpu(row: dict) -> float:
    return sum(v for k, v in row["cpu_per_1k"].items() if k.startswith(RECORD))


def summary(rows: dict[str, dict[str, list[dict]]]) -> list[dict]:
    out = []
    for scenario, trees in rows.items():
        med = {t: {"rps": statistics.median(r["rps"] for r in runs),
                   "cpu": statistics.median(request_path_cpu(r) for r in runs),
                   "record": statistics.median(record_cpu(r) for r in runs),
                   "simulator": statistics.median(r["cpu_per_1k"].get("simulator", 0.0) for r in runs)}
               for t, runs in trees.items()}
        out.append({"scenario": scenario, "runs": len(trees["old"]), "old": med["old"], "new": med["new"],
                    "rps_ratio": round(med["new"]["rps"] / med["old"]["rps"], 3),
                    "cpu_ratio": round(med["new"]["cpu"] / med["old"]["cpu"], 3),
                    "simulator_ratio": round(med["new"]["simulator"] / med["old"]["simulator"], 3)
                    if med["old"]["simulator"] else None})
    return out


def table(result: list[dict]) -> str:
    lines = [f"{'scenario':<16}{'req/s old':>10}{'new':>8}{'ratio':>7}{'cpu/1k old':>11}{'new':>8}{'ratio':>7}"
             f"{'record/1k':>10}{'sim ratio':>10}"]
    for s in result:
        lines.append(f"{s['scenario']:<16}{s['old']['rps']:>10.1f}{s['new']['rps']:>8.1f}{s['rps_ratio']:>7.2f}"
                     f"{s['old']['cpu']:>11.3f}{s['new']['cpu']:>8.3f}{s['cpu_ratio']:>7.2f}"
                     f"{s['new']['record']:>10.3f}{s['simulator_ratio'] or 0:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="the tree before (a checkout with its .venv)")
    p.add_argument("--new", type=Path, default=Path.cwd(), help="the tree after (default: this one)")
    p.add_argument("--rounds", type=int, default=5, help="measurements of each scenario on each tree")
    p.add_argument("--seconds", type=float, default=4.0, help="each measurement's window")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--scenarios", default=SCENARIOS, help=f"mode:concurrency,... (default {SCENARIOS})")
    p.add_argument("--old-without-record", action="store_true",
                   help="pause the old stack's archiver and Postgres (SIGSTOP) once started: with --old the same tree "
                        "as --new, what the record running beside the request path costs it")
    p.add_argument("--out", type=Path, help="write every measurement and the summary here (JSON)")
    args = p.parse_args(argv)
    scenarios = [(m, int(c)) for m, c in (s.split(":") for s in args.scenarios.split(","))]
    stacks, paused = {}, []
    try:
        for name, tree in (("old", args.old.resolve()), ("new", args.new.resolve())):
            stacks[name] = TreeStack(name, tree)
        paused = stacks["old"].pause_record() if args.old_without_record else []
        if args.old_without_record and not paused:
            raise SystemExit("--old-without-record: the old tree runs no archiver or Postgres")
        for mode, c in scenarios:  # a stack's first requests are slower (imports, caches): not measured
            for stack in stacks.values():
                stack.run(mode, c, 1.0, 0.5)
        rows: dict[str, dict[str, list[dict]]] = {f"{m} c={c}": {"old": [], "new": []} for m, c in scenarios}
        for rnd in range(args.rounds):
            for i, (mode, c) in enumerate(scenarios):
                order = ("old", "new") if (rnd + i) % 2 == 0 else ("new", "old")
                for name in order:
                    row = stacks[name].run(mode, c, args.seconds, args.warmup)
                    rows[f"{mode} c={c}"][name].append(row)
                    print(f"round {rnd + 1} {mode} c={c} {name}: {row['rps']:.0f} req/s, "
                          f"path cpu {request_path_cpu(row):.3f} s/1k", file=sys.stderr, flush=True)
    finally:
        for stack in stacks.values():
            stack.close()
    result = summary(rows)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps({"summary": result, "rows": rows, "old_paused_pids": paused}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
