"""`trainfarm standalone` and `trainfarm demo`: a complete farm on one machine."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the farm-running commands to the CLI."""

    @app.command()
    def standalone() -> None:
        """Run a complete farm on this machine (placeholder while it is written)."""
        raise typer.Exit(1)
