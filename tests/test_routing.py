"""Node choice for a model: priority first, weight within a priority, liveness and the circuit breaker."""

from __future__ import annotations

import collections

import pytest

from shared.breaker import NodeBreaker
from shared.catalog import parse_catalog
from shared.routing import choose_node

CATALOG = {
    "providers": {"google": {"adapter": "gemini"}},
    "nodes": {n: {"provider": "google"} for n in ("a", "b", "c")},
    "models": {"m": {
        "provider": "google", "upstream_model": "gemini-3-flash-preview", "base_cost_credits": 5,
        "input_price_credits_per_1m": "50", "output_price_credits_per_1m": "300", "context_window": 1000,
        "routes": [{"node": "c", "priority": 2}, {"node": "a", "priority": 1, "weight": 3},
                   {"node": "b", "priority": 1, "weight": 1}],
    }},
}


class Routing:
    """What routing reads: the routes, a liveness snapshot, a breaker. No Redis: choose_node is pure."""

    def __init__(self) -> None:
        self.routes = parse_catalog(CATALOG).models["m"].routes
        self.live_workers = {"a": 1, "b": 1, "c": 1}
        self.breaker = NodeBreaker(threshold=2)


@pytest.fixture
def gateway() -> Routing:
    return Routing()


async def picks(r: Routing, n: int = 4000, exclude=()) -> collections.Counter:
    return collections.Counter([choose_node(r.routes, r.live_workers, r.breaker.allows, exclude) for _ in range(n)])


async def test_equal_priorities_share_by_weight(gateway):
    counts = await picks(gateway)
    assert set(counts) == {"a", "b"}, "the lower-priority node gets nothing while the first ones live"
    assert 2.4 < counts["a"] / counts["b"] < 3.7


async def test_lower_priority_takes_over_when_the_first_ones_are_gone(gateway):
    gateway.live_workers = {"a": 0, "b": 0, "c": 1}
    assert await picks(gateway, 10) == {"c": 10}
    gateway.live_workers = {"a": 1, "b": 1, "c": 1}
    assert await picks(gateway, 10, exclude=["a", "b"]) == {"c": 10}  # failover after both failed


async def test_an_open_circuit_moves_traffic_off_a_node(gateway):
    gateway.breaker.failure("a")
    gateway.breaker.failure("a")
    assert await picks(gateway, 50) == {"b": 50}


def test_plain_node_lists_are_priorities_in_order():
    model = {k: v for k, v in CATALOG["models"]["m"].items() if k != "routes"}
    catalog = parse_catalog({**CATALOG, "models": {"m": {**model, "nodes": ["b", "a"]}}})
    assert [(r.node, r.priority) for r in catalog.models["m"].routes] == [("b", 0), ("a", 1)]
