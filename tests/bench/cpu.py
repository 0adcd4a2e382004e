"""CPU and memory accounting from /proc: utime + stime of named process groups.

A group is a label ("gateway", "valkey", "litellm", ...) and the PIDs it covers:
a process and, for peers, every descendant found at sampling time. Samples are
taken at the two edges of a measurement window; the difference is the CPU time
the group spent in that window, whichever core it ran on.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (its own threads, not reaped children)."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # after comm: state(3) ppid(4) ... utime(14) stime(15) -> indexes 11, 12 here
    return (int(f[11]) + int(f[12])) / CLK_TCK


def sys_seconds(pid: int) -> float | None:
    """stime alone: the kernel's share (on loopback, a socket write also runs the receiver's TCP path)."""
    f = _stat_fields(pid)
    return None if f is None else int(f[12]) / CLK_TCK


def io_syscalls(pid: int) -> int | None:
    """read-like + write-like system calls so far (syscr + syscw of /proc/PID/io)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    values = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return int(values.get("syscr", 0)) + int(values.get("syscw", 0))


def rss_bytes(pid: int) -> int | None:
    f = _stat_fields(pid)
    if f is None:
        return None
    return int(f[21]) * PAGE  # rss(24), in pages


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(entry.name))
    return kids


def tree(root: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its descendants."""
    kids = kids if kids is not None else children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def system_busy() -> tuple[int, int]:
    """(busy jiffies, total jiffies) of the whole machine from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


@dataclass
class Group:
    name: str
    roots: list[int]
    with_children: bool = False


@dataclass
class CpuMeter:
    """Samples groups at 'start' and 'end' of a window."""

    groups: list[Group]
    _pids: dict[str, list[int]] = field(default_factory=dict)
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _end: dict[str, dict[int, float]] = field(default_factory=dict)
    _extra_start: dict[str, dict[int, tuple]] = field(default_factory=dict)
    _extra_end: dict[str, dict[int, tuple]] = field(default_factory=dict)
    _self: list[float] = field(default_factory=list)
    _sys: list[tuple[int, int]] = field(default_factory=list)

    def sample(self, edge: str) -> None:
        if edge == "start":
            kids = children_map() if any(g.with_children for g in self.groups) else {}
            for g in self.groups:
                pids: list[int] = []
                for root in g.roots:
                    pids.extend(tree(root, kids) if g.with_children else [root])
                self._pids[g.name] = pids
            target = self._start
            self._self = [self_cpu_seconds()]
            self._sys = [system_busy()]
        else:
            target = self._end
            self._self.append(self_cpu_seconds())
            self._sys.append(system_busy())
        extra = self._extra_start if edge == "start" else self._extra_end
        for name, pids in self._pids.items():
            target[name] = {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}
            extra[name] = {pid: (sys_seconds(pid) or 0.0, io_syscalls(pid) or 0) for pid in pids}

    def result(self) -> dict:
        """CPU seconds per group over the window, plus the load generator's and the machine's."""
        out: dict[str, float] = {}
        for name, start in self._start.items():
            end = self._end.get(name, {})
            out[name] = round(sum(end[pid] - cpu for pid, cpu in start.items() if pid in end), 3)
        loadgen = round(self._self[1] - self._self[0], 3) if len(self._self) == 2 else None
        busy = foreign = None
        if len(self._sys) == 2:
            (b0, t0), (b1, t1) = self._sys
            busy = round(100.0 * (b1 - b0) / max(1, t1 - t0), 1)
            # what neither the measured groups nor the load generator used: other work on the box
            ours_s = sum(out.values()) + (loadgen or 0.0)
            busy_s = (b1 - b0) / CLK_TCK
            foreign = round(100.0 * max(0.0, busy_s - ours_s) / max(1e-9, (t1 - t0) / CLK_TCK), 1)
        sys_s, syscalls = {}, {}
        for name, start in self._extra_start.items():
            end = self._extra_end.get(name, {})
            sys_s[name] = round(sum(end[p][0] - v[0] for p, v in start.items() if p in end), 3)
            syscalls[name] = sum(end[p][1] - v[1] for p, v in start.items() if p in end)
        return {"groups": out, "sys": sys_s, "syscalls": syscalls, "loadgen": loadgen, "machine_busy_pct": busy,
                "foreign_busy_pct": foreign}

    def rss(self) -> dict[str, int]:
        out = {}
        for name, pids in self._pids.items():
            out[name] = sum(r for pid in pids if (r := rss_bytes(pid)) is not None)
        return out
