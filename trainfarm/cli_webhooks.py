"""`trainfarm webhooks ...`: notifications when jobs and sweeps end."""

from __future__ import annotations

import typer

webhooks = typer.Typer(
    help="Webhooks and email: be told when your jobs and sweeps end.", no_args_is_help=True
)
