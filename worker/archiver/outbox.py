"""The archiver sends the alerts the record queued (``alert_outbox``), off the request path.

Each round leases the due rows (their ``next_at`` moves ``LEASE_S`` on, so another archiver skips
them and a crash mid-send only delays them) and sends each one:

* ``mail``: one message to every user of the row's account (``shared/mail.py``);
* ``webhook``: the event POSTed to the account's URL, signed as batch callbacks are (``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature`` with the account's webhook secret), public https
  addresses only unless ``APIINONE_CALLBACK_ALLOW_PRIVATE`` (``worker/batch/egress.py``).

A sent row is marked sent; a failure is tried again with a doubling delay, up to ``MAX_ATTEMPTS``;
a refused address is not tried again. Delivery is at least once: a crash between the answer and the
mark sends that one again (the webhook's event id stays the same, so receivers can drop repeats).
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog
from redis.asyncio import Redis

from shared.callback_targets import Delivery
from shared.db.database import Database, DatabaseUnavailable
from shared.low_balance import KIND, WEBHOOK, alert_event, alert_mail
from shared.mail import MailFailed, Mailer
from shared.webhook_secrets import sign, signing_secrets
from worker.batch.egress import CallbackSender

log = structlog.get_logger()

LEASE_S = 300
MAX_ATTEMPTS = 8
PER_ROUND = 20

LEASE = """
UPDATE alert_outbox SET next_at = $1 + $2, attempts = attempts + 1
 WHERE id IN (SELECT id FROM alert_outbox WHERE sent_at IS NULL AND next_at <= $1 AND attempts < $3
               ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING *
"""


class NotDelivered(Exception):
    """This attempt failed; the row is tried again later."""


class Outbox:
    def __init__(self, db: Database, redis: Redis, mailer: Mailer, sender: CallbackSender,
                 base_url: str | None) -> None:
        self.db = db
        self.redis = redis
        self.mailer = mailer
        self.sender = sender
        self.base_url = base_url

    async def send_due(self) -> int:
        """Send what is due; returns how many rows were sent."""
        now = int(time.time())
        sent = 0
        for row in await self.db.fetch(LEASE, now, LEASE_S, MAX_ATTEMPTS, PER_ROUND):
            try:
                note = await (self._post if row["channel"] == WEBHOOK else self._mail)(row)
            except (MailFailed, NotDelivered) as exc:
                delay = min(3600, 15 * 2 ** (row["attempts"] - 1))
                log.error("alert not delivered; trying again later", id=row["id"], channel=row["channel"],
                          attempts=row["attempts"], retry_in_s=delay, error=str(exc))
                await self.db.execute("UPDATE alert_outbox SET next_at = $2, last_error = $3 WHERE id = $1",
                                      row["id"], now + delay, str(exc)[:500])
                continue
            await self.db.execute("UPDATE alert_outbox SET sent_at = $2, last_error = $3 WHERE id = $1", row["id"],
                                  int(time.time()), note)
            sent += 1
        return sent

    async def _mail(self, row) -> str | None:
        emails = [r["email"] for r in await self.db.fetch("SELECT email FROM users WHERE account_id = $1 ORDER BY "
                                                          "created", row["account_id"])]
        if not emails or row["kind"] != KIND:
            log.warning("alert mail has nobody to go to; dropped", id=row["id"], account_id=row["account_id"])
            return "no recipient"
        name = await self.db.fetchval("SELECT name FROM accounts WHERE id = $1", row["account_id"])
        await self.mailer.send(alert_mail(", ".join(emails), name or row["account_id"], row["facts"], self.base_url))
        return None

    async def _post(self, row) -> str | None:
        event_id = f"evt_low_balance_{row['id']}"  # the same on every attempt
        body = orjson.dumps(alert_event(event_id, row["account_id"], row["facts"], row["created"]))
        timestamp = str(int(time.time()))
        signing = await signing_secrets(self.redis, row["account_id"])
        outcome, _ms = await self.sender.post(row["facts"]["url"], body, {
            "Content-Type": "application/json", "User-Agent": "apiinone-alert/1", "webhook-id": event_id,
            "webhook-timestamp": timestamp, "webhook-signature": sign(signing, event_id, timestamp, body)})
        if outcome == Delivery.REFUSED:
            log.warning("alert webhook refused: not a public https address; dropped", id=row["id"])
            return "refused"
        if outcome != Delivery.DELIVERED:
            raise NotDelivered(outcome)
        return None


async def outbox_loop(outbox: Outbox, stopping: asyncio.Event, every_s: float = 1.0) -> None:
    await outbox.sender.start()
    try:
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
    finally:
        await outbox.sender.close()
