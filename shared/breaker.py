"""A per-node circuit breaker, kept by each gateway process.

After ``threshold`` consecutive upstream failures a node is skipped for
``cooldown_s``; then one request probes it, and a success closes it again.
"""

from __future__ import annotations

import time


class NodeBreaker:
    def __init__(self, threshold: int = 5, cooldown_s: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def allows(self, node: str) -> bool:
        until = self._open_until.get(node)
        if until is None:
            return True
        if time.monotonic() >= until:
            # Half-open: let one probe through and hold the rest back until it reports.
            self._open_until[node] = time.monotonic() + self.cooldown_s
            return True
        return False

    def success(self, node: str) -> None:
        self._failures.pop(node, None)
        self._open_until.pop(node, None)

    def failure(self, node: str) -> None:
        count = self._failures.get(node, 0) + 1
        self._failures[node] = count
        if count >= self.threshold:
            self._open_until[node] = time.monotonic() + self.cooldown_s

    def state(self, node: str) -> str:
        return "open" if node in self._open_until else "closed"
