"""The operator audit log: who changed what, when, from where, before and after (Postgres, ``operator_audit``).

Written by admin actions only (the admin API and the operator dashboard), after the action took
effect; never on the request path. Not the money audit (shared/audit.py, ``GET /admin/audit``).
Without a database (no ``DATABASE_URL``) an action is logged as a line and the log cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg
import structlog

from shared.db.database import Database, DatabaseUnavailable

log = structlog.get_logger()

ADMIN_TOKEN_ACTOR = "admin token"  # the admin API's one bearer token; the dashboard names its operator


class Action(StrEnum):
    CATALOG_UPDATE = "catalog.update"
    ACCOUNT_CREATE = "account.create"
    ACCOUNT_UPDATE = "account.update"
    CREDITS_TOPUP = "credits.topup"
    CREDITS_ADJUST = "credits.adjust"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    USER_CREATE = "user.create"
    REDEMPTION_CREATE = "redemption_codes.create"
    REDEMPTION_DISABLE = "redemption_codes.disable"
    UPSTREAM_KEY_ENABLE = "upstream_key.enable"  # target "<node>/<last 4>": a disabled key back in rotation


@dataclass(frozen=True)
class Actor:
    """Who acted, and from which address (as the gateway saw it through its trusted proxies)."""

    name: str
    client: str = ""


class OperatorAudit:
    def __init__(self, db: Database | None) -> None:
        self.db = db

    async def record(self, actor: Actor, action: Action, target: str, before: object = None,
                     after: object = None) -> None:
        """One entry; the action already happened, so a database outage loses the entry, loudly, not the action."""
        if self.db is None:  # the log line is the only trace
            log.info("operator action", actor=actor.name, client=actor.client, action=str(action), target=target)
            return
        try:
            await self.db.execute(
                "INSERT INTO operator_audit (actor, action, target, client, before, after) "
                "VALUES ($1, $2, $3, $4, $5, $6)", actor.name, str(action), target, actor.client, before, after)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.error("operator audit entry lost: the database did not take it", action=str(action), target=target,
                      error=str(exc))

    async def page(self, before_id: int | None, limit: int, action: str | None = None,
                   target: str | None = None) -> tuple[list[dict], bool]:
        """Entries newest first (ids below ``before_id``), filtered by action and target; (rows, has_more)."""
        rows = await self.db.fetch(
            "SELECT id, at, actor, action, target, client, before, after FROM operator_audit "
            "WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR action = $2) "
            "AND ($3::text IS NULL OR target = $3) ORDER BY id DESC LIMIT $4",
            before_id, action, target, limit + 1)
        out = [{"id": str(r["id"]), "object": "audit_entry", "at": int(r["at"].timestamp()), "actor": r["actor"],
                "action": r["action"], "target": r["target"], "client": r["client"], "before": r["before"],
                "after": r["after"]} for r in rows[:limit]]
        return out, len(rows) > limit
