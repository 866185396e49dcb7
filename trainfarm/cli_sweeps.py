"""`trainfarm sweep ...`: hyperparameter sweeps."""

from __future__ import annotations

import typer

sweep = typer.Typer(
    help="Hyperparameter sweeps: create one from a YAML file, follow it, cancel it.", no_args_is_help=True
)
