"""What `apiinone run`'s supervisor reports about its children, and where operators see it.

The supervisor (``apiinone/supervisor.py``) writes one ``ChildReport`` per child into Redis
(``keys.supervisor_children``) whenever something changes and every couple of seconds; the
gateway reads them back for ``GET /admin/nodes`` (``"supervisors"``) and for ``GET /metrics``
(``apiinone_child_restarts_total``, ``apiinone_child_crash_loop``). A supervisor that stops
deletes its report; one that dies silently ages out after ``REPORT_TTL_S``.
"""

from __future__ import annotations

import time
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import ValidationError
from redis.asyncio import Redis

from shared import keys
from shared.protocol import WireModel

REPORT_TTL_S = 15  # a report older than this is a supervisor that is gone


class ChildReport(WireModel):
    """One supervised child, as its supervisor last saw it."""

    name: str  # the Stack's name for it: "gateway:0", "worker:node62:0", "billing", "valkey", ...
    state: Literal["starting", "running", "backoff"]  # backoff: exited, waiting to be restarted
    pid: int | None  # None while in backoff
    restarts: int  # since `apiinone run` started
    last_exit_code: int | None  # negative: killed by that signal (-9: SIGKILL)
    last_restart_ms: int | None  # unix ms of the last restart
    up_since_ms: int | None  # unix ms the current process started
    backoff_s: float  # the wait before the last (or next) restart
    crash_loop: bool  # restarted at least the policy's count within its window


async def write_report(redis: Redis, supervisor_id: str, children: list[ChildReport]) -> None:
    key = keys.supervisor_children(supervisor_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if children:
            pipe.hset(key, mapping={c.name: c.model_dump_json() for c in children})
        pipe.expire(key, REPORT_TTL_S)
        pipe.zadd(keys.SUPERVISORS, {supervisor_id: int(time.time() * 1000)})
        await pipe.execute()


async def clear_report(redis: Redis, supervisor_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.supervisor_children(supervisor_id))
        pipe.zrem(keys.SUPERVISORS, supervisor_id)
        await pipe.execute()


async def supervisor_status(redis: Redis) -> list[dict]:
    """Every live supervisor (``host:pid``) with its children; [] where nothing is supervised (production)."""
    now_ms = int(time.time() * 1000)
    await redis.zremrangebyscore(keys.SUPERVISORS, "-inf", now_ms - REPORT_TTL_S * 1000)
    out = []
    for raw_id, updated in await redis.zrange(keys.SUPERVISORS, 0, -1, withscores=True):
        supervisor_id = raw_id.decode()
        fields = await redis.hgetall(keys.supervisor_children(supervisor_id))
        children = sorted(_parsed(fields.values()), key=lambda c: c.name)
        host, _, pid = supervisor_id.rpartition(":")
        out.append({"id": supervisor_id, "host": host, "pid": int(pid), "updated_ms": int(updated),
                    "children": [c.model_dump() for c in children]})
    return out


def _parsed(raw_reports) -> list[ChildReport]:
    out = []
    for raw in raw_reports:
        try:
            out.append(ChildReport.model_validate_json(raw))
        except ValidationError:  # written by another version: leave it out rather than fail the page
            continue
    return out


class _SupervisorSnapshot:
    """A Prometheus collector over reports read just before the scrape."""

    def __init__(self, supervisors: list[dict]) -> None:
        self.supervisors = supervisors

    def collect(self):
        restarts = CounterMetricFamily("apiinone_child_restarts", "Children of `apiinone run` restarted after exiting",
                                       labels=["supervisor", "child"])
        looping = GaugeMetricFamily("apiinone_child_crash_loop", "1 while a child of `apiinone run` is crash-looping",
                                    labels=["supervisor", "child"])
        for sup in self.supervisors:
            for child in sup["children"]:
                restarts.add_metric([sup["id"], child["name"]], child["restarts"])
                looping.add_metric([sup["id"], child["name"]], int(child["crash_loop"]))
        yield restarts
        yield looping


def supervisor_metrics(supervisors: list[dict]) -> bytes:
    """Prometheus text for the supervisors' children (empty where nothing is supervised)."""
    if not supervisors:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SupervisorSnapshot(supervisors))
    return generate_latest(registry)
