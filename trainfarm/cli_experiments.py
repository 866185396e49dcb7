"""`trainfarm compare` and `trainfarm rerun`: working with several runs at once."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import click
import typer
from rich.table import Table
from rich.text import Text

from trainfarm import render
from trainfarm.cli_jobs import JobId, follow_logs, parse_hyperparameters
from trainfarm.client import ApiClient

#: The most a table cell shows of a long value (a command, say); --json has it whole.
CELL_CHARS = 60


class XAxis(StrEnum):
    step = "step"
    epoch = "epoch"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        text = " ".join(str(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."


def job_header(job: dict[str, Any]) -> str:
    return f"{job['id']} {job['name']}" if job.get("name") else str(job["id"])


def spec_table(answer: dict[str, Any], every_field: bool) -> Table:
    """The spec fields the jobs disagree on (all with `every_field`), the differing ones highlighted."""
    table = Table(title="spec", title_justify="left", box=None, pad_edge=False)
    table.add_column("FIELD", no_wrap=True)
    for job in answer["jobs"]:
        table.add_column(f"JOB {job_header(job)}", overflow="fold")
    for row in answer["spec"]:
        if row["differs"] or every_field:
            style = "bold yellow" if row["differs"] else "dim"
            table.add_row(*(Text(t, style=style) for t in [row["field"], *map(cell, row["values"])]))
    return table


def final_table(answer: dict[str, Any]) -> Table:
    """Each job's last value of each metric; the best per metric marked with `*` (and in green)."""
    table = Table(title="final metrics (* best)", title_justify="left", box=None, pad_edge=False)
    table.add_column("METRIC", no_wrap=True)
    for job in answer["jobs"]:
        table.add_column(f"JOB {job_header(job)}", justify="right", no_wrap=True)
    for row in answer["final"]:
        direction = "lower" if row["lower_is_better"] else "higher"
        cells = [Text(f"{row['metric']} ({direction} is better)")]
        for job, value in zip(answer["jobs"], row["values"], strict=True):
            best = row["best"] == job["id"]
            cells.append(Text(cell(value) + (" *" if best else "  "), style="bold green" if best else ""))
        table.add_row(*cells)
    return table


def compare(
    ctx: typer.Context,
    job_ids: Annotated[
        list[int], typer.Argument(metavar="JOB...", help="2 to 20 job ids.", show_default=False)
    ],
    x: Annotated[XAxis, typer.Option("--x", help="What the series are drawn against.")] = XAxis.step,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", metavar="NAME", help="Only this metric (repeatable)."),
    ] = None,
    every_field: Annotated[
        bool, typer.Option("--all-fields", help="Every spec field, not only those that differ.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's whole answer as JSON.")] = False,
) -> None:
    """Compare runs: the spec fields that differ, and each job's final metrics with the best marked.

    The best value of a metric is the lowest for names with loss, error, mse, mae, rmse or perplexity in them, the highest otherwise. --json prints the whole answer, with each metric's series (downsampled for charts; the dashboard draws them).

    Examples:
      trainfarm compare 12 14 15
      trainfarm compare 12 14 --metric val_loss --metric val_acc
      trainfarm compare 12 14 --x epoch --json > runs.json
    """
    api: ApiClient = ctx.obj
    answer = api.compare(job_ids, x.value, metrics=metric)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    out = render.console()
    table = spec_table(answer, every_field)
    if table.row_count:
        out.print(table)
    else:
        out.print("spec: the jobs' specs are the same", markup=False)
    out.print()
    if answer["final"]:
        out.print(final_table(answer))
    else:
        out.print("final metrics: none reported yet", markup=False)


def rerun(
    ctx: typer.Context,
    job_id: JobId,
    hp: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Change a hyperparameter (repeatable); the value is JSON where it parses, null removes it.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(metavar="N", help="Most epochs to train (max_epochs).")
    ] = None,
    priority: Annotated[int | None, typer.Option(metavar="0-9", help="0 lowest to 9 most urgent.")] = None,
    devices: Annotated[int | None, typer.Option(metavar="N", help="GPUs, or CPU processes, to use.")] = None,
    queue: Annotated[str | None, typer.Option(metavar="gpu|cpu", help="Queue to run on.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="The new job's tags, instead of the old ones (repeatable)."
        ),
    ] = None,
    project: Annotated[str | None, typer.Option(metavar="NAME", help="The new job's project.")] = None,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="The new job's display name.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the logs to the end; exit 0 only if it succeeded.")
    ] = False,
) -> None:
    """Run a job again with changes; the new job records which job it re-runs.

    Everything not changed is as in the old job's spec; hyperparameters merge key by key. With no changes, the same spec runs again.

    Examples:
      trainfarm rerun 14 --hp lr=0.01 --epochs 30
      trainfarm rerun 14 --hp dropout=null --tag no-dropout
      trainfarm rerun 14 --priority 7 -f
    """
    api: ApiClient = ctx.obj
    options = {
        "max_epochs": epochs,
        "priority": priority,
        "devices": devices,
        "queue": queue,
        "tags": tag or None,
        "project": project,
        "name": name,
    }
    changes: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if hp:
        changes["hyperparameters"] = parse_hyperparameters(hp)
    job = api.rerun(job_id, changes)
    line = render.status_text(job["status"], f"job {job['id']} {job['status']}: re-run of job {job_id}")
    render.console(stderr=follow).print(line)
    if follow:
        raise typer.Exit(0 if follow_logs(api, job["id"]) == "succeeded" else 1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `trainfarm` app."""
    app.command()(compare)
    app.command()(rerun)
