"""The notifier: turns ended jobs and sweeps into deliveries, and sends the deliveries that are due."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from master.notify import outbox
from master.notify.secrets import SecretBox, secret_box
from master.notify.sender import Sender
from shared.settings import Settings


class Notifier:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._sender = Sender(engine, settings, self._box)

    def _box(self) -> SecretBox:
        return secret_box(self._settings)

    def round(self) -> None:
        """One pass (the background loop calls it twice a second): the outbox first, so an end
        stored a moment ago is sent in the same round."""
        with Session(self._engine) as session:
            outbox.collect(session, self._settings.api_url)
        self._sender.send_due()
