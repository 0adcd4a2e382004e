"""Lua scripts: read from ``shared/lua/*.lua`` once, called by name with EVALSHA.

The recovery fence (settle.lua's header) needs each money script to know which Redis server
run it executes on. Asking the server (``INFO server``) cost ~10 µs per call, most of a script's
own cost; instead each script's text carries the run id, written in when the script is loaded
(``RUN_ID_PLACEHOLDER``). Why that is safe: a restarted Redis has an empty script cache, so the
first EVALSHA of any script rendered for the old run answers NOSCRIPT - and the SHA depends on
the run id, so no process can find on the new server a script rendered for an old one. On
NOSCRIPT (``_reload``) the scripts are rendered again with the server's current run id and
loaded. A script ever loaded unrendered compares against the placeholder and fences every
stamped account: it fails closed.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from shared.coalesce import Coalescer

LUA_DIR = Path(__file__).with_name("lua")
RUN_ID_PLACEHOLDER = "__SERVER_RUN_ID__"
UNKNOWN_RUN_ID = "unknown"  # a server without INFO (fakeredis in unit tests): no account is stamped there

ScriptCall = tuple[str, list, list]  # (script name, keys, args)


async def server_run_id(redis: Redis) -> str:
    """This Redis server run's id (changes at every start; ``INFO server``)."""
    try:
        return str((await redis.info("server"))["run_id"])
    except (ResponseError, KeyError):
        return UNKNOWN_RUN_ID


class Scripts:
    """All scripts registered on one client; attribute access by file stem."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.coalescer = Coalescer(redis)
        self._sources = {path.stem: path.read_text() for path in sorted(LUA_DIR.glob("*.lua"))}
        self._texts: dict[str, str] = {}
        self._shas: dict[str, str] = {}
        self._generation = 0
        self._lock = asyncio.Lock()

    def _render(self, run_id: str) -> None:
        self._texts = {name: src.replace(RUN_ID_PLACEHOLDER, run_id) for name, src in self._sources.items()}
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._texts.items()}
        self._generation += 1

    async def _reload(self, seen_generation: int | None = None) -> None:
        """Render for the server's current run and SCRIPT LOAD everything (once for concurrent callers)."""
        async with self._lock:
            if seen_generation is not None and self._generation != seen_generation:
                return  # another caller reloaded meanwhile
            while True:
                run_id = await server_run_id(self.redis)
                self._render(run_id)
                for text in self._texts.values():
                    await self.redis.script_load(text)
                # A restart between reading the run id and loading would leave scripts rendered for the
                # previous run on the new server: read it again, and start over if it moved.
                if await server_run_id(self.redis) == run_id:
                    return

    async def load_all(self, redis: Redis | None = None) -> None:
        """Render and SCRIPT LOAD every script: a cold process's first requests then find them cached."""
        await self._reload()

    def call(self, name: str, keys: list, args: list) -> ScriptCall:
        """One script invocation, to pass to ``pipelined``."""
        return name, keys, args

    async def run(self, name: str, keys: list, args: list):
        if not self._shas:
            await self._reload(0)
        for attempt in range(2):
            generation = self._generation
            try:
                return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)
            except NoScriptError:
                if attempt:
                    raise
                await self._reload(generation)
        raise AssertionError("unreachable")

    async def pipelined(self, calls: list[ScriptCall]) -> list:
        """Several scripts in one round trip: plain EVALSHAs, in order, in the pipeline that
        concurrent requests share (``shared/coalesce.py``).

        Unlike redis-py's scripts in a pipeline, no SCRIPT EXISTS precedes every execution; a
        NOSCRIPT (Redis restarted) loads them and runs the calls again, so every script run
        this way must be idempotent.
        """
        if not self._shas:
            await self._reload(0)
        for attempt in range(2):
            generation = self._generation
            results = await self.coalescer.execute(
                [("EVALSHA", self._shas[name], len(keys), *keys, *args) for name, keys, args in calls])
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self._reload(generation)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self.__dict__.get("_sources", {}):
            raise AttributeError(name)

        async def invoke(keys: list | None = None, args: list | None = None):
            return await self.run(name, keys or [], args or [])

        return invoke
