"""Outbound HTTP for completion callbacks: one POST to a tenant's URL, public addresses only.

The URL's scheme and an IP-literal host are checked before anything is sent
(aiohttp does not resolve an IP literal, so no resolver would see it); a host
name is checked when the connection is made, by ``PublicOnlyResolver``: it
wraps the default resolver and refuses the name when any address it resolves
to is not public (``shared/callback_targets.py``). A name that resolved to a
public address when the batch was created and to 127.0.0.1 now (DNS
rebinding) is refused before any connect. No redirects are followed, no proxy
from the environment is used, and nothing is cached between lookups.

What comes back is a coarse outcome only (``shared.callback_targets.Delivery``),
which is all the batch object shows its tenant.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.callback_targets import Delivery, is_public_address, status_outcome, url_refusal

log = structlog.get_logger()


class AddressRefused(Exception):
    """The callback's host is, or resolves to, a non-public address."""


class PublicOnlyResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver) -> None:
        self.inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if not results or not all(is_public_address(r["host"]) for r in results):
            raise AddressRefused(host)
        return results

    async def close(self) -> None:
        await self.inner.close()


class CallbackSender:
    def __init__(self, timeout_s: float, allow_private: bool, resolver: AbstractResolver | None = None) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._resolver = resolver  # tests pass a fake one; the default resolver otherwise
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = self._resolver or DefaultResolver()
        if not self.allow_private:
            resolver = PublicOnlyResolver(resolver)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int]:
        """(outcome, duration ms) of one delivery attempt."""
        started = time.monotonic()
        if url_refusal(url, self.allow_private) is not None:
            return Delivery.REFUSED, 0
        try:
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                outcome = status_outcome(resp.status)
        except AddressRefused:
            outcome = Delivery.REFUSED
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # aiohttp may wrap the resolver's refusal; the operator's log keeps the error, the tenant never sees it.
            outcome = Delivery.REFUSED if isinstance(exc.__cause__, AddressRefused) else Delivery.FAILED
            log.info("batch callback attempt failed", error=f"{exc.__class__.__name__}: {exc}"[:300])
        return outcome, int((time.monotonic() - started) * 1000)
