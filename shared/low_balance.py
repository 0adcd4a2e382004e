"""Low-balance alerts: one mail (and one signed webhook, if set) when a debit takes the balance below
the account's threshold.

Nothing on the request path: the archiver already reads every ledger entry, in stream order, with
the balance right after it (settle.lua and credit.lua write it), to move it to Postgres. In the
same transaction it walks the new entries of the accounts that have a threshold (``note_crossings``):

* an *armed* alert and a debit (a charge, a refund taken back, ...) that leaves the balance below
  the threshold: one mail (and, with a webhook URL, one event) is queued in ``alert_outbox`` and the
  alert is disarmed, so a thousand requests below the line make one mail, not a thousand;
* a *disarmed* alert and a credit that lifts the balance to the threshold or above: re-armed.

The threshold is on the balance, not on what is available (that dips with every open hold). The
last entry walked is kept (``seen_sid_*``), so entries the archiver reads twice alert once.
Setting a threshold arms it: if the balance is below it already, the next debit mails. The outbox
is sent by the archiver too (``worker/archiver/outbox.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from shared.db.database import Database
from shared.mail import Mail
from shared.money import micro_to_credits

KIND = "low_balance"


MAIL, WEBHOOK = "mail", "webhook"  # alert_outbox.channel
EVENT_TYPE = "billing.low_balance"


@dataclass
class AlertState:
    account_id: str
    threshold_micro: int
    armed: bool
    seen: tuple[int, int]  # the last ledger entry walked (stream id)
    webhook_url: str | None = None


def walk(state: AlertState, rows: list[tuple]) -> list[dict]:
    """Move ``state`` over an account's ledger rows (``worker/archiver/rows.py`` shape, stream order);
    returns the alerts to send (at most one per crossing)."""
    alerts = []
    for _account, reason, reference, amount, balance, ms, seq in rows:
        if (ms, seq) <= state.seen:
            continue
        state.seen = (ms, seq)
        if state.armed and amount < 0 and balance < state.threshold_micro:
            state.armed = False
            alerts.append({"balance_micro": balance, "threshold_micro": state.threshold_micro, "reason": reason,
                           "reference": reference, "at_ms": ms})
        elif not state.armed and amount > 0 and balance >= state.threshold_micro:
            state.armed = True
    return alerts


async def note_crossings(conn: asyncpg.Connection, ledger_rows: list[tuple]) -> int:
    """In the archiver's transaction: walk the rows of accounts with a threshold; queue their alerts."""
    accounts = sorted({row[0] for row in ledger_rows})
    if not accounts:
        return 0
    states = {r["account_id"]: AlertState(r["account_id"], r["threshold_micro"], r["armed"],
                                          (r["seen_sid_ms"], r["seen_sid_seq"]), r["webhook_url"])
              for r in await conn.fetch("SELECT * FROM balance_alerts WHERE account_id = ANY($1::text[]) "
                                        "ORDER BY account_id FOR UPDATE", accounts)}
    queued, now = 0, int(time.time())
    for account_id, state in states.items():
        rows = sorted((r for r in ledger_rows if r[0] == account_id), key=lambda r: (r[5], r[6]))
        before = (state.armed, state.seen)
        alerts = walk(state, rows)
        if (state.armed, state.seen) == before:
            continue
        await conn.execute(
            """UPDATE balance_alerts SET armed = $2, seen_sid_ms = $3, seen_sid_seq = $4,
                      alerted_at = CASE WHEN $5 THEN $6 ELSE alerted_at END WHERE account_id = $1""",
            account_id, state.armed, state.seen[0], state.seen[1], bool(alerts), now)
        for facts in alerts:
            channels = [(MAIL, facts)] + ([(WEBHOOK, {**facts, "url": state.webhook_url})] if state.webhook_url else [])
            for channel, what in channels:
                await conn.execute("INSERT INTO alert_outbox (kind, channel, account_id, facts, created, next_at) "
                                   "VALUES ($1, $2, $3, $4, $5, $5)", KIND, channel, account_id, what, now)
            queued += 1
    return queued


def alert_event(event_id: str, account_id: str, facts: dict, created: int) -> dict:
    """The webhook's event (signed and sent like batch callbacks: ``worker/archiver/outbox.py``)."""
    return {"id": event_id, "object": "event", "type": EVENT_TYPE, "created_at": created, "data": {
        "account_id": account_id, "balance": micro_to_credits(facts["balance_micro"]),
        "balance_micro": facts["balance_micro"], "threshold": micro_to_credits(facts["threshold_micro"]),
        "threshold_micro": facts["threshold_micro"]}}


def alert_mail(to: str, account_name: str, facts: dict, base_url: str | None) -> Mail:
    where = (f"Add credits: {base_url.rstrip('/')}/dashboard/credits/add\n" if base_url else
             "Add credits on the dashboard's Credits page.\n")
    return Mail(to, "Your API in One balance is low", (
        f"The balance of the account {account_name} fell below your alert threshold of "
        f"{micro_to_credits(facts['threshold_micro'])} credits: it is {micro_to_credits(facts['balance_micro'])} "
        f"credits now.\n\nRequests are refused (402) once the balance cannot cover them.\n{where}\n"
        "You get this mail once; the alert is armed again when a top-up or a redeemed code lifts the balance\n"
        "to the threshold or above.\n"
        "Change or turn off the alert on the dashboard's Credits page.\n"))


class BalanceAlerts:
    """An account's threshold, as the dashboard sets and shows it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, account_id: str) -> dict | None:
        row = await self.db.fetchrow("SELECT threshold_micro, armed, alerted_at, webhook_url FROM balance_alerts "
                                     "WHERE account_id = $1", account_id)
        return dict(row) if row else None

    async def set(self, account_id: str, threshold_micro: int | None, webhook_url: str | None = None) -> None:
        """Set (and arm) the threshold, and the webhook URL (None: mail only); a None threshold turns it off."""
        if threshold_micro is None:
            await self.db.execute("DELETE FROM balance_alerts WHERE account_id = $1", account_id)
            return
        await self.db.execute(
            """INSERT INTO balance_alerts (account_id, threshold_micro, armed, webhook_url, updated)
               VALUES ($1, $2, true, $3, $4)
               ON CONFLICT (account_id) DO UPDATE SET threshold_micro = $2, armed = true, webhook_url = $3,
                                                      updated = $4""",
            account_id, threshold_micro, webhook_url, int(time.time()))
