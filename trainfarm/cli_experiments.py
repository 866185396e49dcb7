"""`trainfarm compare` and `trainfarm rerun`: working with several runs at once."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `trainfarm` app."""
