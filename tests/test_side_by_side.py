"""The side-by-side bench (tests/bench/side_by_side.py): its arithmetic, and one real sitting of this tree
against itself with the old side's record paused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.side_by_side import record_cpu, request_path_cpu, summary

ROOT = Path(__file__).resolve().parents[1]


def row(rps: float, **cpu: float) -> dict:
    return {"rps": rps, "cpu_per_1k": cpu}


def test_request_path_leaves_out_the_simulator_and_the_record():
    r = row(100, gateway=0.4, **{"worker:n:0": 0.5, "valkey": 0.2, "simulator": 0.3, "archiver": 0.05,
                                 "postgres": 0.04})
    assert abs(request_path_cpu(r) - 1.1) < 1e-9
    assert abs(record_cpu(r) - 0.09) < 1e-9


def test_summary_compares_medians_per_scenario():
    old = [row(100, gateway=1.0, simulator=0.2), row(300, gateway=3.0, simulator=0.2), row(200, gateway=2.0,
                                                                                          simulator=0.2)]
    new = [row(190, gateway=2.2, simulator=0.3, archiver=0.1), row(180, gateway=2.4, simulator=0.3, archiver=0.1),
           row(900, gateway=0.1, simulator=0.3, archiver=0.1)]
    (s,) = summary({"stream c=1": {"old": old, "new": new}})
    assert s["runs"] == 3
    assert s["old"]["rps"] == 200 and s["new"]["rps"] == 190
    assert s["rps_ratio"] == 0.95
    assert s["cpu_ratio"] == 1.1  # 2.2 / 2.0: medians, so one outlier round moves nothing
    assert s["new"]["record"] == 0.1 and s["old"]["record"] == 0
    assert s["simulator_ratio"] == 1.5


def test_a_real_sitting_of_this_tree_against_itself_without_its_record(tmp_path):
    out = tmp_path / "sitting.json"
    run = subprocess.run([sys.executable, "-m", "tests.bench.side_by_side", "--old", str(ROOT), "--new", str(ROOT),
                          "--old-without-record", "--rounds", "1", "--seconds", "1", "--warmup", "0.2",
                          "--scenarios", "stream:1", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stream c=1" in run.stdout
    result = json.loads(out.read_text())
    (s,) = result["summary"]
    old, new = result["rows"]["stream c=1"]["old"][0], result["rows"]["stream c=1"]["new"][0]
    assert old["completed"] > 0 and new["completed"] > 0
    assert old["errors"] == 0 and new["errors"] == 0
    assert len(result["old_paused_pids"]) >= 3  # the archiver, the postmaster and its background processes
    assert s["old"]["record"] == 0  # paused: they spent nothing in the window
    assert {"gateway:0", "valkey", "simulator", "archiver", "postgres"} <= set(new["cpu_per_1k"])
