"""Lua scripts: read from ``shared/lua/*.lua`` once, called by name with EVALSHA.

redis-py's ``Script`` sends EVALSHA and falls back to loading the script on a
NOSCRIPT error (e.g. after a Redis restart), so callers never see that error.
"""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.coalesce import Coalescer

LUA_DIR = Path(__file__).with_name("lua")


class Scripts:
    """All scripts registered on one client; attribute access by file stem."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.coalescer = Coalescer(redis)
        self._scripts: dict[str, AsyncScript] = {
            path.stem: redis.register_script(path.read_text()) for path in sorted(LUA_DIR.glob("*.lua"))
        }

    async def load_all(self, redis: Redis) -> None:
        """SCRIPT LOAD every script: a cold process's first burst of requests then finds them cached."""
        for script in self._scripts.values():
            await redis.script_load(script.script)

    def call(self, name: str, keys: list, args: list) -> tuple[AsyncScript, list, list]:
        """One script invocation, to pass to ``pipelined``."""
        return self._scripts[name], keys, args

    async def pipelined(self, calls: list[tuple[AsyncScript, list, list]]) -> list:
        """Several scripts in one round trip: plain EVALSHAs, in order, in the pipeline that
        concurrent requests share (``shared/coalesce.py``).

        Unlike redis-py's scripts in a pipeline, no SCRIPT EXISTS precedes every execution; a
        NOSCRIPT (Redis restarted) loads them and runs the calls again, so every script run
        this way must be idempotent.
        """
        for attempt in range(2):
            results = await self.coalescer.execute(
                [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls])
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                for script, _, _ in calls:
                    await self.redis.script_load(script.script)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None
