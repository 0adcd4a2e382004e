"""Outgoing mail (shared/mail.py): without SMTP settings a message is a file under <data_dir>/mail/ (what a
`make run` user opens); with them it goes to the server, and a server that does not answer is MailFailed."""

from __future__ import annotations

from email import message_from_bytes
from pathlib import Path

import pytest

from apiinone.launcher import free_port
from shared.mail import Mail, MailFailed, Mailer
from shared.settings import Settings


async def test_without_smtp_settings_mail_is_an_eml_file_under_var_mail(tmp_path: Path):
    mailer = Mailer(Settings(data_dir=tmp_path, smtp_host=None))
    link = "http://127.0.0.1:8080/dashboard/signup/verify?token=" + "abc" * 20  # longer than a mail line (78)
    where = await mailer.send(Mail("someone@example.com", "Hello", f"Open {link}\n"))
    path = Path(where)
    assert path.parent == (tmp_path / "mail").resolve() and path.suffix == ".eml"
    msg = message_from_bytes(path.read_bytes())
    assert msg["To"] == "someone@example.com" and msg["Subject"] == "Hello" and msg["Message-ID"]
    assert link in msg.get_payload(decode=True).decode()
    assert link in path.read_text()  # as it is in the file, not quoted-printable ("=3D", soft breaks) for editors


async def test_non_ascii_text_is_still_mailable(tmp_path: Path):
    mailer = Mailer(Settings(data_dir=tmp_path, smtp_host=None))
    path = Path(await mailer.send(Mail("someone@example.com", "Hello", "Konto Müller: 5 credits left\n")))
    assert "Müller" in message_from_bytes(path.read_bytes()).get_payload(decode=True).decode()


async def test_an_smtp_server_that_does_not_answer_is_mail_failed(tmp_path: Path):
    mailer = Mailer(Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_security="none",
                             smtp_timeout_s=2))
    with pytest.raises(MailFailed):
        await mailer.send(Mail("someone@example.com", "Hello", "text"))
    assert not (tmp_path / "mail").exists()
