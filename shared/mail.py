"""Outgoing mail: through the SMTP server the settings name, or, without one, as files under ``var/mail/``.

Sign-up verification and password-reset mail (the gateway) and low-balance alerts (the archiver) go
through ``Mailer.send``. With ``APIINONE_SMTP_HOST`` set, a message is handed to that server
(STARTTLS by default, implicit TLS or none by ``APIINONE_SMTP_SECURITY``, login when a username is
set); without it, each message is written as ``<data_dir>/mail/<time>-<id>.eml`` and the log names
the file, so a `make run` user can open the link in it. smtplib is blocking: it runs in a thread.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import structlog

from shared.settings import Settings

log = structlog.get_logger()


class MailFailed(Exception):
    """The SMTP server could not be reached or refused the message; the message says why."""


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str  # plain text only: links stay copyable and nothing in a mail runs

    def message(self, sender: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = self.to
        msg["Subject"] = self.subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip("> ") or "localhost")
        # ASCII text as it is (7bit), so a link in a .eml under var/mail reads and copies as it will be followed;
        # the default would be quoted-printable, where every "=" of a link shows as "=3D".
        msg.set_content(self.text, cte="7bit" if self.text.isascii() else None)
        return msg


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.username = settings.smtp_username
        self.password = settings.smtp_password
        self.security = settings.smtp_security
        self.timeout_s = settings.smtp_timeout_s
        self.sender = settings.mail_from
        self.folder = Path(settings.data_dir) / "mail"

    async def send(self, mail: Mail) -> str:
        """Deliver ``mail``; returns where it went (the SMTP server, or the file). Raises ``MailFailed``."""
        msg = mail.message(self.sender)
        if not self.host:
            path = await asyncio.to_thread(self._write, msg)
            log.info("mail written to a file (no SMTP server is configured)", to=mail.to, subject=mail.subject,
                     path=str(path))
            return str(path)
        try:
            await asyncio.to_thread(self._smtp, msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailFailed(f"{type(exc).__name__}: {exc}") from None
        log.info("mail sent", to=mail.to, subject=mail.subject, smtp_host=self.host)
        return f"smtp://{self.host}:{self.port}"

    def _write(self, msg: EmailMessage) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(bytes(msg))
        return path.resolve()

    def _smtp(self, msg: EmailMessage) -> None:
        if self.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                                    context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with server:
            if self.security == "starttls":
                server.starttls(context=ssl.create_default_context())
            if self.username:
                server.login(self.username, self.password or "")
            server.send_message(msg)
