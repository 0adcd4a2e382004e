"""How many requests moved from a model to one of its fallbacks, across every gateway (the nodes page).

Written only when a request falls back (never on the normal path), read by the operator's nodes page
and ``GET /admin/nodes``; the gateways' ``apiinone_fallbacks_total`` metric counts the same per process.
"""

from __future__ import annotations

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys

log = structlog.get_logger()

OUTCOMES = ("served", "failed", "skipped")  # the fallback answered / could not either / its hold was refused


async def record_fallback(redis: Redis, from_model: str, to_model: str, outcome: str) -> None:
    try:
        await redis.hincrby(keys.FALLBACKS_TAKEN, f"{from_model}|{to_model}|{outcome}", 1)
    except RedisError as exc:  # a statistic: the request itself is not affected
        log.warning("fallback count not recorded", error=str(exc))


async def fallback_counts(redis: Redis) -> list[dict]:
    """One row per (model, fallback): ``{"model", "fallback", "served", "failed", "skipped"}``, by model."""
    rows: dict[tuple[str, str], dict] = {}
    for field, count in (await redis.hgetall(keys.FALLBACKS_TAKEN)).items():
        from_model, _, rest = field.decode().partition("|")
        to_model, _, outcome = rest.partition("|")
        if outcome in OUTCOMES:
            row = rows.setdefault((from_model, to_model), {"model": from_model, "fallback": to_model,
                                                           **dict.fromkeys(OUTCOMES, 0)})
            row[outcome] = int(count)
    return [rows[k] for k in sorted(rows)]
