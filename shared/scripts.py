"""Lua scripts: read from ``shared/lua/*.lua`` once, called by name with EVALSHA.

redis-py's ``Script`` sends EVALSHA and falls back to loading the script on a
NOSCRIPT error (e.g. after a Redis restart), so callers never see that error.
"""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).with_name("lua")


class Scripts:
    """All scripts registered on one client; attribute access by file stem."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            path.stem: redis.register_script(path.read_text()) for path in sorted(LUA_DIR.glob("*.lua"))
        }

    def __getattr__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None
