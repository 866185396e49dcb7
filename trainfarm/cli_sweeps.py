"""`trainfarm sweep ...`: hyperparameter sweeps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import yaml
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from shared.errors import InvalidRequest
from shared.sweeps import SweepSpec
from trainfarm import render
from trainfarm.client import ApiClient

sweep = typer.Typer(
    help="Hyperparameter sweeps: create one from a YAML file, follow it, cancel it.", no_args_is_help=True
)

SweepId = Annotated[int, typer.Argument(min=1, help="The sweep's id")]
#: Seconds between polls of `--follow`.
FOLLOW_INTERVAL = 2.0
STATE_STYLES = {"running": "cyan", "complete": "green", "pruned": "blue", "failed": "red"}


def read_spec(path: Path) -> dict[str, Any]:
    """The sweep file (YAML, or JSON, which is YAML too), checked here so a mistake is named before
    anything is sent."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}", field="FILE") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidRequest(f"{path} is not valid YAML{at}", field="FILE") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{path} must hold a mapping (name, base, space, objective, ...)", field="FILE")
    try:
        SweepSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{path}: {message}", field=field) from None
    return raw


@sweep.command()
def create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The sweep, in YAML or JSON")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait for the sweep to end, showing its trials")
    ] = False,
) -> None:
    """Start a sweep: a base job, a search space, an objective and a budget of trials.

    Example:
      trainfarm sweep create examples/sweep.yaml --follow
    """
    api: ApiClient = ctx.obj
    created = api.call("POST", "/sweeps", json=read_spec(file))
    click.echo(f"sweep {created['id']} ({created['name']}) started")
    if follow:
        follow_sweep(api, created["id"])


def follow_sweep(api: ApiClient, sweep_id: int) -> None:
    """Print each change of the trial counts until the sweep ends, then the sweep."""
    last = None
    while True:
        detail = api.call("GET", f"/sweeps/{sweep_id}")
        line = f"{detail['status']}: {counts_text(detail['counts'])}"
        if line != last:
            click.echo(line, err=True)
            last = line
        if detail["status"] != "running":
            break
        time.sleep(FOLLOW_INTERVAL)
    print_sweep(detail)


@sweep.command("list")
def list_sweeps(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="running, succeeded, failed or cancelled")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's sweeps")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only your own sweeps")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first")] = 50,
) -> None:
    """List sweeps, newest first.

    Example:
      trainfarm sweep list --status running
    """
    api: ApiClient = ctx.obj
    params = {"status": status, "project": project, "owner": "me" if mine else None, "limit": limit}
    page = api.call("GET", "/sweeps", params={k: v for k, v in params.items() if v is not None})
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "STATUS", "OWNER", "TRIALS", "BEST"):
        table.add_column(column, no_wrap=True)
    for item in page["items"]:
        best = "-" if item["best_value"] is None else f"{item['best_value']:.4g} (trial {item['best_trial']})"
        render.add_row(
            table,
            str(item["id"]),
            item["name"],
            render.status_text(item["status"]),
            item["owner"] or "-",
            counts_text(item["counts"]),
            best,
        )
    render.console().print(table)


@sweep.command()
def show(ctx: typer.Context, sweep_id: SweepId) -> None:
    """Show a sweep: its trials sorted by value, the best marked with *, and counts by state.

    Example:
      trainfarm sweep show 3
    """
    api: ApiClient = ctx.obj
    print_sweep(api.call("GET", f"/sweeps/{sweep_id}"))


@sweep.command()
def cancel(ctx: typer.Context, sweep_id: SweepId) -> None:
    """Cancel a running sweep and every trial job that has not ended.

    Example:
      trainfarm sweep cancel 3
    """
    api: ApiClient = ctx.obj
    cancelled = api.call("POST", f"/sweeps/{sweep_id}/cancel")
    click.echo(f"sweep {cancelled['id']} cancelled ({counts_text(cancelled['counts'])})")


def counts_text(counts: dict[str, int]) -> str:
    """`12 trials: 9 complete, 3 pruned`."""
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"{total} trial{'' if total == 1 else 's'}" + (f": {parts}" if parts else "")


def print_sweep(detail: dict[str, Any]) -> None:
    out = render.console()
    objective = detail["spec"].get("objective", {})
    metric, direction = objective.get("metric", "value"), objective.get("direction", "maximize")
    about = f" ({direction} {metric}; owner {detail['owner'] or '-'}; project {detail['project']})"
    out.print(
        Text.assemble(f"sweep {detail['id']} {detail['name']}: ", render.status_text(detail["status"]), about)
    )
    if detail["best_trial"] is not None:
        best = f"best: trial {detail['best_trial']} (job {detail['best_job_id']}) {metric}={detail['best_value']}"
        out.print(best, markup=False)
    if detail["error"]:
        out.print(f"note: {detail['error']}", markup=False)
    out.print(counts_text(detail["counts"]), markup=False)
    if detail["trials"]:
        out.print()
        out.print(trials_table(detail["trials"], detail["best_trial"], direction == "maximize"))


def trials_table(trials: list[dict[str, Any]], best: int | None, maximize: bool) -> Table:
    """Trials with a value first, best first; the others after, newest first."""
    valued = sorted((t for t in trials if t["value"] is not None), key=lambda t: t["value"], reverse=maximize)
    others = sorted((t for t in trials if t["value"] is None), key=lambda t: -t["number"])
    table = Table(box=None, pad_edge=False)
    for column in ("", "TRIAL", "JOB", "STATE", "VALUE", "PARAMS"):
        table.add_column(column, no_wrap=column != "PARAMS")
    for trial in valued + others:
        state = trial["state"]
        render.add_row(
            table,
            "*" if trial["number"] == best else "",
            str(trial["number"]),
            "-" if trial["job_id"] is None else str(trial["job_id"]),
            Text(state, style=STATE_STYLES.get(state, "")),
            "-" if trial["value"] is None else f"{trial['value']:.4g}",
            params_text(trial["params"]),
        )
    return table


def params_text(params: dict[str, Any]) -> str:
    """`lr=0.0031 hidden=64`: floats to 4 significant digits, the rest as JSON."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}" for k, v in params.items()
    )
