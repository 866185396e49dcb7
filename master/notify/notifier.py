"""The notifier: turns ended jobs and sweeps into deliveries, and sends the deliveries that are due."""

from __future__ import annotations

from sqlalchemy import Engine

from shared.settings import Settings


class Notifier:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def round(self) -> None:
        """One pass (the background loop calls it twice a second)."""
