"""Per-key faults: ``APIINONE_SIMULATOR_KEY_FAULTS="key-a=429:5s,key-b=invalid,key-c=count429"``.

Each entry names an API key and what Google answers for it:

- ``429:5s``: generation calls with that key answer 429 RESOURCE_EXHAUSTED (with RetryInfo, the
  time left) for 5 s from the key's first generation call, then succeed. ``429`` alone: always
  429, without RetryInfo (a quota Google cannot say the end of).
- ``count429:5s``: the same, but only for ``countTokens`` calls (counted from the key's first one):
  Google's countTokens has its own quota, separate from generation's, which stays served.
  ``count429`` alone: countTokens always answers 429, without RetryInfo.
- ``invalid``: 400 INVALID_ARGUMENT, ErrorInfo ``API_KEY_INVALID``, on every call.
- ``suspended``: 403 PERMISSION_DENIED, ErrorInfo ``CONSUMER_SUSPENDED``, on every call.
- ``disabled``: 403 PERMISSION_DENIED, ErrorInfo ``SERVICE_DISABLED``, on every call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .errors import SimError, consumer_suspended, invalid_key, key_rate_limited, service_disabled

ENV = "APIINONE_SIMULATOR_KEY_FAULTS"
KINDS = ("429", "count429", "invalid", "suspended", "disabled")
TIMED = ("429", "count429")  # the kinds that may last a while


@dataclass
class KeyFault:
    kind: str
    duration_s: float | None = None  # 429 and count429 only: None = forever
    first_use: float | None = None  # monotonic, of the first call of the limited kind that met the fault


def _duration(text: str) -> float:
    text = text.strip().lower()
    scale = 60.0 if text.endswith("m") else 0.001 if text.endswith("ms") else 1.0
    value = float(text.removesuffix("ms").rstrip("sm"))
    if value < 0:
        raise ValueError(f"negative duration {text!r}")
    return value * scale


def parse_key_faults(text: str) -> dict[str, KeyFault]:
    """``key=kind[:duration],...`` -> key -> fault; a malformed entry is a ValueError naming it."""
    faults: dict[str, KeyFault] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        key, eq, spec = entry.rpartition("=")
        kind, _, duration = spec.partition(":")
        if not eq or not key or kind not in KINDS or (duration and kind not in TIMED):
            raise ValueError(f"{ENV}: bad entry {entry!r} (want key=429[:5s], key=count429[:5s], key=invalid, "
                             "key=suspended or key=disabled)")
        faults[key] = KeyFault(kind, _duration(duration) if duration else None)
    return faults


class KeyFaults:
    def __init__(self, faults: dict[str, KeyFault]) -> None:
        self.faults = faults

    @classmethod
    def from_env(cls) -> "KeyFaults":
        return cls(parse_key_faults(os.environ.get(ENV, "")))

    def check(self, key: str, model: str, generation: bool, counting: bool = False) -> None:
        """Raise Google's error for this key, if it has a fault now (``counting``: a countTokens call)."""
        fault = self.faults.get(key)
        if fault is None:
            return
        if fault.kind == "invalid":
            raise invalid_key()
        if fault.kind == "suspended":
            raise consumer_suspended(key)
        if fault.kind == "disabled":
            raise service_disabled()
        # Two separate quotas: generation's (countTokens and listings still answer) and countTokens' own.
        if not (generation if fault.kind == "429" else counting):
            return
        if fault.duration_s is None:
            raise key_rate_limited(model, None)
        now = time.monotonic()
        if fault.first_use is None:
            fault.first_use = now
        left = fault.first_use + fault.duration_s - now
        if left > 0:
            raise key_rate_limited(model, left)
