"""The MLflow mirror: creates, feeds and closes one MLflow run per job."""

from __future__ import annotations

from sqlalchemy import Engine

from shared.settings import Settings


class MlflowMirror:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def round(self) -> None:
        """One pass (the background loop calls it every second while a tracking URI is set)."""
