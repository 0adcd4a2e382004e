"""Upstream key pools as every process sees them: each key's spec and shared state in Redis.

A node may hold many upstream keys (worker/key_config.py reads them; they never leave the
workers). Workers register each key's ``KeySpec`` (label, weight, own limits; never the key)
and change its ``KeyState`` with the ``key_*.lua`` scripts: a generation's 429 cools a key down (a
countTokens 429, Google's separate count quota, changes nothing: worker/key_pool.py), Google's
verdict about a key, once a probe confirms it, disables it until it is re-enabled. Gateways
read both for ``GET /admin/nodes``, the operator's nodes page and ``/metrics``, and re-enable keys.
A key is named by its last 4 characters (its label) wherever it appears.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field, ValidationError
from redis.asyncio import Redis

from shared import keys
from shared.protocol import WireModel
from shared.scripts import Scripts

LABEL_CHARS = 4
ACTIVE, COOLING, DISABLED = "active", "cooling_down", "disabled"


def key_label(secret: str) -> str:
    """How a key appears anywhere outside the worker holding it: its last 4 characters."""
    return secret[-LABEL_CHARS:]


class KeySpec(WireModel):
    """One pool key as configured, without the key itself (workers -> Redis -> gateways)."""

    label: Annotated[str, Field(min_length=1, max_length=LABEL_CHARS)]
    weight: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    rpm: Annotated[int, Field(ge=0)] = 0  # the key's own requests per minute (0: no limit of its own)
    tpm: Annotated[int, Field(ge=0)] = 0  # the key's own tokens per minute (0: no limit of its own)


@dataclass
class KeyState:
    """One key's shared state (the fields of ``keys.key_pool_state``; see there)."""

    cool_until_ms: int = 0
    limited_at_ms: int = 0
    strikes: int = 0
    rate_limited: int = 0
    requests: int = 0
    disabled: str = ""  # Google's reason while disabled
    disabled_at_ms: int = 0
    probing: bool = False

    def status(self, now_ms: int) -> str:
        if self.disabled:
            return DISABLED
        return COOLING if self.cool_until_ms > now_ms else ACTIVE


_INT_FIELDS = {"cool_until": "cool_until_ms", "limited_at": "limited_at_ms", "strikes": "strikes",
               "rate_limited": "rate_limited", "requests": "requests", "disabled_at": "disabled_at_ms"}


def parse_states(raw: dict) -> dict[str, KeyState]:
    """HGETALL of ``keys.key_pool_state`` -> label -> KeyState."""
    states: dict[str, KeyState] = {}
    for name, value in raw.items():
        name = name.decode() if isinstance(name, bytes) else name
        value = value.decode() if isinstance(value, bytes) else value
        label, _, field = name.rpartition(":")
        state = states.setdefault(label, KeyState())
        if field in _INT_FIELDS:
            try:
                setattr(state, _INT_FIELDS[field], int(float(value)))
            except ValueError:
                continue
        elif field == "disabled":
            state.disabled = value
        elif field == "probing":
            state.probing = value == "1"
    return states


def parse_specs(raw: dict) -> list[KeySpec]:
    specs = []
    for value in raw.values():
        try:
            specs.append(KeySpec.model_validate_json(value))
        except ValidationError:
            continue
    return sorted(specs, key=lambda s: s.label)


def spec_mapping(specs: list[KeySpec]) -> dict[str, str]:
    return {s.label: s.model_dump_json() for s in specs}


async def register_specs(redis: Redis, node: str, specs: list[KeySpec], replace: bool = False) -> None:
    """A worker tells the gateways which keys its node has (labels only); ``replace``: a starting worker's
    configuration is the node's (keys an operator removed disappear)."""
    async with redis.pipeline(transaction=True) as pipe:
        if replace:
            pipe.delete(keys.key_pool_specs(node))
        if specs:
            pipe.hset(keys.key_pool_specs(node), mapping=spec_mapping(specs))
        await pipe.execute()


def key_row(spec: KeySpec, state: KeyState, now_ms: int) -> dict:
    """One key as ``GET /admin/nodes`` and the nodes page show it."""
    status = state.status(now_ms)
    return {
        "key": spec.label, "state": status, "weight": spec.weight, "rpm": spec.rpm, "tpm": spec.tpm,
        "cooling_down_until": state.cool_until_ms / 1000 if status == COOLING else None,
        "cooling_down_s": round((state.cool_until_ms - now_ms) / 1000, 1) if status == COOLING else None,
        "probing": state.probing and status == COOLING, "disabled_reason": state.disabled or None,
        "disabled_since": state.disabled_at_ms / 1000 if state.disabled else None,
        "requests": state.requests, "rate_limited": state.rate_limited,
    }


async def pool_status(redis: Redis, nodes: list[str]) -> dict[str, list[dict]]:
    """node -> its keys' rows, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.hgetall(keys.key_pool_specs(node))
            pipe.hgetall(keys.key_pool_state(node))
        replies = await pipe.execute()
    now_ms = int(time.time() * 1000)
    out = {}
    for i, node in enumerate(nodes):
        states = parse_states(replies[2 * i + 1])
        out[node] = [key_row(spec, states.get(spec.label, KeyState()), now_ms) for spec in parse_specs(replies[2 * i])]
    return out


async def enable_key(redis: Redis, scripts: Scripts, node: str, label: str) -> bool | None:
    """Re-enable a key (its cooldown and strikes cleared too). None: the node has no such key;
    else whether it was disabled."""
    if not await redis.hexists(keys.key_pool_specs(node), label):
        return None
    was = await scripts.key_enable(keys=[keys.key_pool_state(node), keys.key_probe_lock(node, label)],
                                   args=[label, keys.key_pool_channel(node)])
    return bool(was)


class _PoolSnapshot:
    """A Prometheus collector over the pools read just before the scrape."""

    def __init__(self, pools: dict[str, list[dict]]) -> None:
        self.pools = pools

    def collect(self):
        state = GaugeMetricFamily("apiinone_upstream_key_state", "1 for the state each upstream key is in "
                                  "(active, cooling_down, disabled)", labels=["node", "key", "state"])
        until = GaugeMetricFamily("apiinone_upstream_key_cooldown_until_seconds",
                                  "When the key's cooldown ends (unix seconds; 0: not cooling down)",
                                  labels=["node", "key"])
        requests = CounterMetricFamily("apiinone_upstream_key_requests",
                                       "Upstream generation requests sent with the key",
                                       labels=["node", "key"])
        limited = CounterMetricFamily("apiinone_upstream_key_rate_limited",
                                      "429s the key got from the upstream on generation",
                                      labels=["node", "key"])
        for node, rows in self.pools.items():
            for row in rows:
                for name in (ACTIVE, COOLING, DISABLED):
                    state.add_metric([node, row["key"], name], int(row["state"] == name))
                until.add_metric([node, row["key"]], row["cooling_down_until"] or 0)
                requests.add_metric([node, row["key"]], row["requests"])
                limited.add_metric([node, row["key"]], row["rate_limited"])
        yield from (state, until, requests, limited)


def pool_metrics(pools: dict[str, list[dict]]) -> bytes:
    """Prometheus text for every node's keys (empty where no node has registered keys)."""
    if not any(pools.values()):
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolSnapshot(pools))
    return generate_latest(registry)

