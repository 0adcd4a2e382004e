"""The archiver sends the mail the record queued (``mail_outbox``): low-balance alerts, off the request path.

Each round leases the due rows (their ``next_at`` moves ``LEASE_S`` on, so another archiver skips
them and a crash mid-send only delays them), mails every user of the row's account in one message,
and marks the row sent; a failure is tried again with a doubling delay, up to ``MAX_ATTEMPTS``.
Delivery is at least once: a crash between the SMTP answer and the mark sends that mail again.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from shared.db.database import Database, DatabaseUnavailable
from shared.low_balance import KIND, alert_mail
from shared.mail import MailFailed, Mailer

log = structlog.get_logger()

LEASE_S = 300
MAX_ATTEMPTS = 8
PER_ROUND = 20

LEASE = """
UPDATE mail_outbox SET next_at = $1 + $2, attempts = attempts + 1
 WHERE id IN (SELECT id FROM mail_outbox WHERE sent_at IS NULL AND next_at <= $1 AND attempts < $3
               ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING *
"""


class Outbox:
    def __init__(self, db: Database, mailer: Mailer, base_url: str | None) -> None:
        self.db = db
        self.mailer = mailer
        self.base_url = base_url

    async def send_due(self) -> int:
        """Send what is due; returns how many rows were sent."""
        now = int(time.time())
        sent = 0
        for row in await self.db.fetch(LEASE, now, LEASE_S, MAX_ATTEMPTS, PER_ROUND):
            try:
                await self._send(row)
            except MailFailed as exc:
                delay = min(3600, 15 * 2 ** (row["attempts"] - 1))
                log.error("outbox mail failed; trying again later", id=row["id"], attempts=row["attempts"],
                          retry_in_s=delay, error=str(exc))
                await self.db.execute("UPDATE mail_outbox SET next_at = $2, last_error = $3 WHERE id = $1",
                                      row["id"], now + delay, str(exc)[:500])
                continue
            await self.db.execute("UPDATE mail_outbox SET sent_at = $2 WHERE id = $1", row["id"], int(time.time()))
            sent += 1
        return sent

    async def _send(self, row) -> None:
        emails = [r["email"] for r in await self.db.fetch("SELECT email FROM users WHERE account_id = $1 ORDER BY "
                                                          "created", row["account_id"])]
        if not emails or row["kind"] != KIND:
            log.warning("outbox mail has nobody to go to; dropped", id=row["id"], account_id=row["account_id"],
                        kind=row["kind"])
            return
        name = await self.db.fetchval("SELECT name FROM accounts WHERE id = $1", row["account_id"])
        await self.mailer.send(alert_mail(", ".join(emails), name or row["account_id"], row["facts"], self.base_url))


async def outbox_loop(outbox: Outbox, stopping: asyncio.Event, every_s: float = 1.0) -> None:
    while not stopping.is_set():
        try:
            await outbox.send_due()
        except DatabaseUnavailable as exc:
            log.warning("outbox: the database is unreachable; trying again", error=str(exc))
        except Exception:  # noqa: BLE001 - never the end of the loop
            log.exception("outbox round failed; trying again")
        try:
            await asyncio.wait_for(stopping.wait(), every_s)
        except asyncio.TimeoutError:
            pass
