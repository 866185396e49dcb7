"""The sweep driver: one round prunes, records and starts trials of every running sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from master.state import MasterState


class SweepDriver:
    def __init__(self, state: MasterState) -> None:
        self._state = state

    def round(self) -> None:
        """One pass over the running sweeps (the background loop calls it every sweep_interval)."""
