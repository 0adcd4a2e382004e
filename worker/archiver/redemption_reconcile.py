"""The archiver's periodic reconciliation of redemption codes' claimed uses (``shared/redemption.py``).

A gateway that dies between claiming a use (redeem.lua) and recording its credit leaves the claim's
note behind; every ``every_s`` this records and credits, once, the uses whose note is older than
``after_s`` (a gateway still working on one credits the same reference: nothing twice).
"""

from __future__ import annotations

import asyncio

import structlog
from redis.exceptions import RedisError

from shared.credits import AccountFenced
from shared.db.database import DatabaseUnavailable
from shared.redemption import RedemptionCodes

log = structlog.get_logger()


async def reconcile_loop(codes: RedemptionCodes, after_s: float, stopping: asyncio.Event) -> None:
    every_s = max(0.5, min(after_s / 2, 30.0))
    while not stopping.is_set():
        try:
            credited = await codes.reconcile_claims(after_s)
            if credited:
                log.warning("redemption uses recorded after their gateway stopped", credited=credited)
        except (RedisError, DatabaseUnavailable, AccountFenced) as exc:
            log.warning("redemption reconciliation failed; trying again", error=str(exc))
        try:
            await asyncio.wait_for(stopping.wait(), every_s)
        except asyncio.TimeoutError:
            pass
