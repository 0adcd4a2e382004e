"""A node's upstream keys as one worker uses them: a local view of the shared state, kept fresh.

The normal request costs no Redis round trip here: ``pick`` chooses from this worker's view
(worker/key_pick.py), which a background loop refreshes every second in one pipelined round
trip (flushing this worker's per-key counts on the way) and at once when another worker
publishes a change. Only faults write, with the ``key_*.lua`` scripts (shared/key_state.py): a
generation's 429 cools the key down for Google's retryDelay (or a backoff); a countTokens 429
(``counting``: Google's separate count quota) writes nothing and only moves that count to another
key; Google's verdict about a key holds it back while one fixed probe request (the adapter's
``probe``) confirms it, and a confirmed verdict disables it until an operator or a health probe
re-enables it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Iterable, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.key_state import KeySpec, KeyState, key_label, parse_states, register_specs, spec_mapping
from shared.scripts import Scripts
from shared.settings import Settings
from worker.key_config import PoolKey
from worker.key_pick import KeyUse, WeightedRotation, pick, pick_for_count, seconds_until_usable, sliding_use
from worker.provider import ProviderError

log = structlog.get_logger()

REFRESH_S = 1.0
REGISTER_EVERY = 30  # refreshes: the specs are written again (after a Redis restart lost them)
SUSPECT_HOLD_S = 15.0  # a key Google condemned is held back this long while one probe confirms it
MIN_COOLDOWN_S = 1.0  # Google's retryDelay is whole seconds, rounded down: "0s" still means wait
USAGE_TTL_S = 180

Probe = Callable[[PoolKey], Awaitable[ProviderError | None]]


def now_ms() -> int:
    return int(time.time() * 1000)


class KeySource(Protocol):
    """What an adapter asks of its keys (a ``KeyPool``, or one fixed key); ``counting``: for a countTokens call."""

    def pick(self, exclude: Iterable[str] = (), counting: bool = False) -> PoolKey | None: ...

    def unavailable(self, last_error: ProviderError | None, counting: bool = False) -> ProviderError: ...

    async def failed(self, key: PoolKey, error: ProviderError, counting: bool = False) -> bool: ...

    def used(self, key: PoolKey, tokens: int) -> None: ...


class SingleKey:
    """One fixed key and no shared state (the OpenAI-compatible path, tools, tests)."""

    def __init__(self, secret: str) -> None:
        self.key = PoolKey(secret, KeySpec.model_construct(label=key_label(secret) or "none", weight=1, rpm=0, tpm=0))

    def pick(self, exclude: Iterable[str] = (), counting: bool = False) -> PoolKey | None:
        return None if self.key.label in set(exclude) else self.key

    def unavailable(self, last_error: ProviderError | None, counting: bool = False) -> ProviderError:
        return last_error or ProviderError(503, "No upstream key is available.", "upstream_unavailable")

    async def failed(self, key: PoolKey, error: ProviderError, counting: bool = False) -> bool:
        return False

    def used(self, key: PoolKey, tokens: int) -> None:
        pass


class KeyPool:
    def __init__(self, node: str, pool: list[PoolKey], redis: Redis, settings: Settings, worker_id: str) -> None:
        self.node = node
        self.keys = {k.label: k for k in pool}
        self.specs = [k.spec for k in pool]
        self.redis = redis
        self.scripts = Scripts(redis)
        self.settings = settings
        self.worker_id = worker_id
        self.states: dict[str, KeyState] = {}
        self.rotation = WeightedRotation()
        self.count_rotation = WeightedRotation()  # countTokens calls: their own turn, not generation's
        self.probe: Probe | None = None  # set by the adapter that owns the HTTP session
        self._shared_use: dict[int, dict[str, KeyUse]] = {}  # minute -> label -> node-wide use, as last read
        self._pending: dict[tuple[int, str], KeyUse] = {}  # (minute, label) -> this worker's use, not yet flushed
        self._wake = asyncio.Event()
        self._refreshes = 0
        self._tasks: set[asyncio.Task] = set()
        self._state_key = keys.key_pool_state(node)
        self._channel = keys.key_pool_channel(node)

    # --- the request path: local only ---------------------------------------------------------
    def uses(self, at_ms: int) -> dict[str, KeyUse]:
        minute, fraction = divmod(at_ms, 60_000)
        out = {}
        for label in self.keys:
            prev, cur = self._use(minute - 1, label), self._use(minute, label)
            out[label] = KeyUse(sliding_use(prev.requests, cur.requests, fraction / 60_000),
                                sliding_use(prev.tokens, cur.tokens, fraction / 60_000))
        return out

    def _use(self, minute: int, label: str) -> KeyUse:
        shared = self._shared_use.get(minute, {}).get(label, KeyUse())
        local = self._pending.get((minute, label), KeyUse())
        return KeyUse(shared.requests + local.requests, shared.tokens + local.tokens)

    def _count(self, label: str, requests: int = 0, tokens: int = 0) -> None:
        use = self._pending.setdefault((now_ms() // 60_000, label), KeyUse())
        use.requests += requests
        use.tokens += tokens

    def pick(self, exclude: Iterable[str] = (), counting: bool = False) -> PoolKey | None:
        if counting:  # Google's count quota: not counted against the key's own (generation's) limits
            spec = pick_for_count(self.specs, self.states, self.count_rotation, exclude)
            return None if spec is None else self.keys[spec.label]
        at = now_ms()
        spec = pick(self.specs, self.states, self.uses(at), at, self.rotation, exclude)
        if spec is None:
            return None
        self._count(spec.label, requests=1)
        return self.keys[spec.label]

    def used(self, key: PoolKey, tokens: int) -> None:
        if tokens > 0:
            self._count(key.label, tokens=tokens)

    def unavailable(self, last_error: ProviderError | None, counting: bool = False) -> ProviderError:
        """The error when no key is left for a request: the last key's own, unless keys come back soon
        (a count's: the last key's own, as generation's cooldowns never held it back)."""
        if not self.specs:
            return ProviderError(502, "This node has no upstream key configured.", "upstream_auth_error")
        if counting and last_error is not None:
            return last_error
        at = now_ms()
        wait = seconds_until_usable(self.specs, self.states, self.uses(at), at)
        if wait is None and last_error is not None:
            return last_error
        if wait is None:
            return ProviderError(502, "Every upstream key of this node is disabled.", "upstream_auth_error")
        return ProviderError(429, "No upstream key of this node is available now (rate limited, at its own limits "
                             "or being checked).", "upstream_rate_limited",
                             retryable=True, retry_after=max(wait, 0.2), error_type="rate_limit_error")

    # --- faults: the only writes --------------------------------------------------------------
    async def failed(self, key: PoolKey, error: ProviderError, counting: bool = False) -> bool:
        """Act on what the upstream said about ``key``; True when the request should try another key.
        A countTokens 429 (``counting``) spent only Google's count quota: the count tries another key and
        nothing is written (any tenant may send free counts; they must not cool a key for generation)."""
        if error.key_limited:
            if not counting:
                await self.cool_down(key, error.retry_delay)
            return True
        if error.key_verdict:
            await self.suspect(key, error.key_verdict)
            return True
        return False

    async def cool_down(self, key: PoolKey, retry_delay: float | None) -> None:
        at, s = now_ms(), self.settings
        delay_ms = -1 if retry_delay is None else int(max(retry_delay, MIN_COOLDOWN_S) * 1000)
        state = self.states.setdefault(key.label, KeyState())
        try:
            until, strikes = await self.scripts.key_cooldown(
                keys=[self._state_key], args=[key.label, at, delay_ms, int(s.key_backoff_base_s * 1000),
                                              int(s.key_backoff_max_s * 1000), self._channel])
        except RedisError as exc:  # this worker still skips the key; the others learn of it from their 429s
            log.warning("key pool: cannot share a cooldown", node=self.node, key=key.label, error=str(exc))
            until, strikes = at + (delay_ms if delay_ms > 0 else int(s.key_backoff_base_s * 1000)), state.strikes + 1
        state.cool_until_ms, state.limited_at_ms, state.strikes = int(until), at, int(strikes)
        state.rate_limited += 1
        log.info("upstream key rate limited", node=self.node, key=key.label, retry_delay_s=retry_delay,
                 cooling_down_s=round((until - at) / 1000, 3), strikes=strikes)

    async def suspect(self, key: PoolKey, reason: str) -> None:
        at = now_ms()
        hold_ms = int(SUSPECT_HOLD_S * 1000)
        state = self.states.setdefault(key.label, KeyState())
        state.cool_until_ms, state.probing = max(state.cool_until_ms, at + hold_ms), True
        try:
            mine = await self.scripts.key_suspect(
                keys=[self._state_key, keys.key_probe_lock(self.node, key.label)],
                args=[key.label, at, hold_ms, self._channel, self.worker_id])
        except RedisError as exc:
            log.warning("key pool: cannot share a suspected key", node=self.node, key=key.label, error=str(exc))
            return
        log.warning("upstream key got a verdict from Google; held back while a probe confirms it",
                    node=self.node, key=key.label, reason=reason, probing_here=bool(mine))
        if mine and self.probe is not None:
            self._spawn(self.confirm(key, reason))

    async def confirm(self, key: PoolKey, reason: str) -> None:
        """One fixed probe request with the key: only its own verdict disables the key."""
        try:
            await self._confirm(key, reason)
        except Exception:  # a bug must not end silently in a task nobody awaits
            log.exception("key pool: probe failed", node=self.node, key=key.label)

    async def _confirm(self, key: PoolKey, reason: str) -> None:
        error = await self.probe(key) if self.probe is not None else None
        lock = keys.key_probe_lock(self.node, key.label)
        try:
            if error is not None and error.key_verdict:
                if await self.scripts.key_disable(keys=[self._state_key, lock],
                                                  args=[key.label, now_ms(), error.key_verdict, self._channel]):
                    log.error("upstream key disabled: Google's verdict, confirmed by a probe", node=self.node,
                              key=key.label, reason=error.key_verdict)
            else:
                await self.scripts.key_enable(keys=[self._state_key, lock], args=[key.label, self._channel])
                log.warning("upstream key kept: its probe did not confirm the verdict", node=self.node,
                            key=key.label, reason=reason, probe_error=error.code if error else None)
                if error is not None and error.key_limited:
                    await self.cool_down(key, error.retry_delay)
        except RedisError as exc:
            log.warning("key pool: cannot record a probe's result", node=self.node, key=key.label, error=str(exc))
        self.notify()

    async def health_probes(self, interval_s: float) -> None:
        """Every ``interval_s``, one worker of the node probes each disabled key; a success re-enables it."""
        while True:
            await asyncio.sleep(interval_s)
            for label, state in list(self.states.items()):
                if state.disabled and label in self.keys and self.probe is not None:
                    try:
                        await self._health_probe(label, interval_s)
                    except RedisError as exc:
                        log.warning("key pool: health probe skipped", node=self.node, key=label, error=str(exc))
                    except Exception:
                        log.exception("key pool: health probe failed", node=self.node, key=label)

    async def _health_probe(self, label: str, interval_s: float) -> None:
        lock = keys.key_probe_lock(self.node, label)
        if not await self.redis.set(lock, self.worker_id, nx=True, px=int(interval_s * 1000)):
            return  # another worker of the node probes it this round
        if await self.probe(self.keys[label]) is None:
            await self.scripts.key_enable(keys=[self._state_key, lock], args=[label, self._channel])
            log.warning("upstream key re-enabled by its health probe", node=self.node, key=label)
            self.notify()

    # --- the shared view -----------------------------------------------------------------------
    def notify(self) -> None:
        """Another worker changed a key's state (pub/sub): read the state again now."""
        self._wake.set()

    async def run(self) -> None:
        await self._register()
        while True:
            try:
                await self.refresh()
            except Exception:  # keep the last view; the next refresh tries again
                log.exception("key pool: refresh failed", node=self.node)
            try:
                await asyncio.wait_for(self._wake.wait(), REFRESH_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _register(self) -> None:
        try:
            await register_specs(self.redis, self.node, self.specs, replace=True)
        except RedisError as exc:
            log.warning("key pool: cannot register the node's keys", node=self.node, error=str(exc))

    async def refresh(self) -> None:
        """One round trip: flush this worker's counts, read the state and the last two minutes' use."""
        minute = now_ms() // 60_000
        flushing, self._pending = self._pending, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._queue_flush(pipe, flushing)
                self._refreshes += 1
                if self._refreshes % REGISTER_EVERY == 0 and self.specs:
                    pipe.hset(keys.key_pool_specs(self.node), mapping=spec_mapping(self.specs))
                pipe.hgetall(self._state_key)
                pipe.hgetall(keys.key_pool_usage(self.node, minute - 1))
                pipe.hgetall(keys.key_pool_usage(self.node, minute))
                replies = await pipe.execute()
        except RedisError:
            for slot, use in flushing.items():  # counted again at the next refresh
                mine = self._pending.setdefault(slot, KeyUse())
                mine.requests += use.requests
                mine.tokens += use.tokens
            return
        self.states = parse_states(replies[-3])
        self._shared_use = {minute - 1: _parse_use(replies[-2]), minute: _parse_use(replies[-1])}

    def _queue_flush(self, pipe, flushing: dict[tuple[int, str], KeyUse]) -> None:
        totals: dict[str, int] = {}
        for (minute, label), use in flushing.items():
            usage_key = keys.key_pool_usage(self.node, minute)
            if use.requests:
                pipe.hincrby(usage_key, f"{label}:r", int(use.requests))
                totals[label] = totals.get(label, 0) + int(use.requests)
            if use.tokens:
                pipe.hincrby(usage_key, f"{label}:t", int(use.tokens))
            pipe.expire(usage_key, USAGE_TTL_S)
        for label, count in totals.items():
            pipe.hincrby(self._state_key, f"{label}:requests", count)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse_use(raw: dict) -> dict[str, KeyUse]:
    out: dict[str, KeyUse] = {}
    for name, value in raw.items():
        label, _, kind = (name.decode() if isinstance(name, bytes) else name).rpartition(":")
        use = out.setdefault(label, KeyUse())
        if kind == "r":
            use.requests = float(value)
        elif kind == "t":
            use.tokens = float(value)
    return out
