"""Which pool key a request uses: a pure function of the pool's state, tested without a network.

Skipped: disabled keys, keys cooling down, keys at their own requests/min or tokens/min, keys the
request already tried. When the only keys left are cooling down after a 429, the one that recovers
first is asked anyway (``least_cooling``): a cooldown steers traffic to the pool's other keys, it must
not turn one request's 429 into a local refusal of every tenant's requests for the whole delay (a
pool of one key then behaves as no pool; LiteLLM, likewise, never cools down a model's only
deployment). Of the rest, the keys rate limited least recently go first (a key whose
last 429 is older than ``RECENT_LIMIT_MS``, or that never had one, counts as never limited);
among equals, traffic follows the weights (smooth weighted round robin, so a key of weight 3
gets three requests in every four next to one of weight 1, evenly spread).

A countTokens call (``pick_for_count``) is not generation: Google counts it against a quota of its
own, so only what condemns the key itself (disabled, being checked) holds a count back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from shared.key_state import KeySpec, KeyState

RECENT_LIMIT_MS = 60_000
OWN_LIMIT_RETRY_S = 1.0  # a pool held back only by its keys' own limits: look again this soon


@dataclass
class KeyUse:
    """A key's use in the last minute, node-wide as far as this worker knows."""

    requests: float = 0.0
    tokens: float = 0.0


def over_own_limit(spec: KeySpec, use: KeyUse) -> bool:
    return bool((spec.rpm and use.requests >= spec.rpm) or (spec.tpm and use.tokens >= spec.tpm))


def usable(spec: KeySpec, state: KeyState, use: KeyUse, now_ms: int) -> bool:
    return not state.disabled and state.cool_until_ms <= now_ms and not over_own_limit(spec, use)


def limited_recency(state: KeyState, now_ms: int) -> int:
    """When the key was last rate limited, for ranking: 0 if never or long enough ago."""
    return state.limited_at_ms if now_ms - state.limited_at_ms < RECENT_LIMIT_MS else 0


class WeightedRotation:
    """Smooth weighted round robin (as nginx balances upstreams), remembered per worker."""

    def __init__(self) -> None:
        self.current: dict[str, int] = {}

    def choose(self, specs: Sequence[KeySpec]) -> KeySpec:
        total = sum(s.weight for s in specs)
        for s in specs:
            self.current[s.label] = self.current.get(s.label, 0) + s.weight
        best = max(specs, key=lambda s: self.current[s.label])  # ties: the first listed
        self.current[best.label] -= total
        return best


def pick(specs: Sequence[KeySpec], states: dict[str, KeyState], uses: dict[str, KeyUse], now_ms: int,
         rotation: WeightedRotation, exclude: Iterable[str] = ()) -> KeySpec | None:
    """The key for the next request, or None when every key is skipped."""
    excluded = set(exclude)
    eligible = [s for s in specs if s.label not in excluded
                and usable(s, states.get(s.label, KeyState()), uses.get(s.label, KeyUse()), now_ms)]
    if not eligible:
        return least_cooling(specs, states, uses, excluded)
    ranks = {s.label: limited_recency(states.get(s.label, KeyState()), now_ms) for s in eligible}
    first = min(ranks.values())
    return rotation.choose([s for s in eligible if ranks[s.label] == first])


def pick_for_count(specs: Sequence[KeySpec], states: dict[str, KeyState], rotation: WeightedRotation,
                   exclude: Iterable[str] = ()) -> KeySpec | None:
    """The key for a countTokens call, or None when every key is skipped. Cooldowns after generation's 429s
    and the keys' own requests/tokens per minute are generation's quota: they do not hold a count back
    (and a count spends neither, so free counts never take a key from generation). Skipped: keys
    disabled or being checked after Google's verdict, and keys the count already tried."""
    excluded = set(exclude)
    eligible = [s for s in specs if s.label not in excluded and not states.get(s.label, KeyState()).disabled
                and not states.get(s.label, KeyState()).probing]
    return rotation.choose(eligible) if eligible else None


def least_cooling(specs: Sequence[KeySpec], states: dict[str, KeyState], uses: dict[str, KeyUse],
                  excluded: set[str]) -> KeySpec | None:
    """Of the keys held back only by a 429's cooldown (not disabled, not being checked after Google's verdict,
    not at their own limits, not tried by this request), the one whose cooldown ends first."""
    cooling = [s for s in specs if s.label not in excluded and not states.get(s.label, KeyState()).disabled
               and not states.get(s.label, KeyState()).probing and not over_own_limit(s, uses.get(s.label, KeyUse()))]
    if not cooling:
        return None
    return min(cooling, key=lambda s: states.get(s.label, KeyState()).cool_until_ms)


def seconds_until_usable(specs: Sequence[KeySpec], states: dict[str, KeyState], uses: dict[str, KeyUse],
                         now_ms: int) -> float | None:
    """How soon some key not disabled may be picked again (None: every key is disabled)."""
    waits = []
    for s in specs:
        state = states.get(s.label, KeyState())
        if state.disabled:
            continue
        wait = max(0.0, (state.cool_until_ms - now_ms) / 1000)
        if over_own_limit(s, uses.get(s.label, KeyUse())):
            wait = max(wait, OWN_LIMIT_RETRY_S)
        waits.append(wait)
    return min(waits) if waits else None


def sliding_use(previous: float, current: float, elapsed_fraction: float) -> float:
    """The last 60 s estimated from two fixed minutes: all of this one, the rest of the last one."""
    return current + previous * max(0.0, 1.0 - elapsed_fraction)
