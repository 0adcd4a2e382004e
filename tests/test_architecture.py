"""The house rules, checked: who may import whom, and how big a module or a function may grow.

- gateway/ and worker/ depend on shared/, never on each other; shared/ knows neither side;
  only the composition root (apiinone/) may import every role.
- No module over 450 lines and no function over 80 lines outside worker/simulator/ (the
  simulator stands in for Google and is allowed its size).
- arq's private members that the claim loop relies on exist (worker/claiming.py is the only
  module that touches them): an arq upgrade that renames one fails here, not in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "worker", "shared", "apiinone")
FORBIDDEN = {"gateway": {"worker", "apiinone"}, "worker": {"gateway", "apiinone"},
             "shared": {"gateway", "worker", "apiinone"}, "apiinone": set()}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "simulator" not in p.parts
                  and ".venv" not in p.parts)


def imported_packages(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_there_is_something_to_check():
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path: Path):
    package = path.relative_to(ROOT).parts[0]
    wrong = imported_packages(ast.parse(path.read_text())) & FORBIDDEN[package]
    assert not wrong, f"{path.relative_to(ROOT)} ({package}/) imports {sorted(wrong)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_sizes(path: Path):
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_can_fail(tmp_path):
    """The checker itself sees a forbidden import and an oversized function."""
    bad = "from worker.chat_job import run_chat\n\ndef f():\n" + "    x = 1\n" * 90
    tree = ast.parse(bad)
    assert imported_packages(tree) & FORBIDDEN["gateway"] == {"worker"}
    assert any(isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
               for n in ast.walk(tree))


async def test_arq_internals_the_claim_loop_relies_on():
    from arq.connections import ArqRedis
    from arq.worker import Worker, func

    from worker.claiming import ARQ_INTERNALS

    async def job(ctx):
        return None

    pool = ArqRedis.from_url("redis://127.0.0.1:1/0")  # never connected: the constructor only stores it
    worker = Worker(functions=[func(job, name="job")], queue_name="q", redis_pool=pool, max_jobs=3)
    missing = [name for name in ARQ_INTERNALS if not hasattr(worker, name)]
    assert not missing, f"arq no longer has {missing}: worker/claiming.py must be adapted"
    assert callable(Worker.main) and callable(Worker.async_run), "BlockingPopWorker overrides main()"
    await pool.aclose()
    others = [p for p in modules() if p.name != "claiming.py"
              and any(f".{name}" in p.read_text() for name in ARQ_PRIVATE_ONLY)]
    assert not others, f"only worker/claiming.py may touch arq's private members: {others}"


ARQ_PRIVATE_ONLY = ("job_tasks", "_release_sem_dec_counter_on_complete", "job_counter", "jobs_complete",
                    "jobs_failed")
