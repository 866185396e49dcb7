"""Email deliveries: one plain-text message per delivery, through the farm's SMTP server."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

from master.notify.payloads import email_text
from master.notify.targets import email_address
from shared.settings import Settings


def build_message(settings: Settings, url: str, body: dict[str, Any], delivery_id: int) -> EmailMessage:
    subject, text = email_text(body)
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = email_address(url)
    message["Subject"] = subject
    # Mail clients thread on it, and a receiving script can drop repeats by it.
    message["X-Trainfarm-Delivery"] = str(delivery_id)
    message["X-Trainfarm-Event"] = str(body.get("event", ""))
    message.set_content(text)
    return message


def send_email(settings: Settings, message: EmailMessage) -> None:
    """Send one message; smtplib's errors (refusals carry the server's reply code) go to the caller."""
    if settings.smtp_host is None:
        raise smtplib.SMTPException("email is not configured (TRAINFARM_SMTP_HOST is unset)")
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.webhook_timeout) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user is not None and settings.smtp_password is not None:
            smtp.login(settings.smtp_user, settings.smtp_password.get_secret_value())
        smtp.send_message(message)
