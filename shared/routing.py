"""Which node gets a request: a pure function of the routes, the live workers, the breaker and exclusions."""

from __future__ import annotations

import random
from typing import Callable, Iterable

from shared.catalog import Route


def choose_node(routes: Iterable[Route], live_workers: dict[str, int], allows: Callable[[str], bool],
                exclude: Iterable[str] = (), rng: random.Random | None = None) -> str | None:
    """Among routes with a live worker and not excluded: those whose circuit is closed (or, when every
    circuit is open, the first live one, as the probe), the best priority, and within it a weighted
    random choice. None: no route has a live worker.
    """
    excluded = set(exclude)
    live = [r for r in routes if live_workers.get(r.node) and r.node not in excluded]
    if not live:
        return None
    usable = [r for r in live if allows(r.node)] or live[:1]
    best = [r for r in usable if r.priority == usable[0].priority]
    if len(best) == 1:
        return best[0].node
    return (rng or random).choices(best, weights=[r.weight for r in best])[0].node
