"""Job commands: submit, jobs, show, logs, cancel."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from shared.status import JobStatus
from trainfarm import render
from trainfarm.client import ApiClient

#: `logs -f` exit status by how the job ended; anything else (unknown) is 1 too.
FOLLOW_EXIT = {"succeeded": 0, "failed": 1, "cancelled": 2}
LOG_PAGE = 5000

JobId = Annotated[int, typer.Argument(metavar="JOB", help="Job id.", show_default=False)]


def parse_hyperparameters(items: list[str]) -> dict[str, Any]:
    """`lr=0.01 hidden=[64,32] optimizer=adam`: JSON where it parses, else the text itself."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--hp")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        # JSON has no NaN or Infinity; keep such words as text rather than send invalid JSON.
        if isinstance(value, float) and not math.isfinite(value):
            value = raw
        out[key.strip()] = value
    return out


def read_spec_file(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not valid JSON: {exc}", param_hint="--spec") from None
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object", param_hint="--spec")
    return spec


def follow_logs(api: ApiClient, job_id: int, after: str | None = None) -> str:
    """Print the job's log lines as they come, until it ends; returns its final status."""
    status = "unknown"
    try:
        for event, data in api.stream_logs(job_id, after):
            if event == "log" and data["lines"]:
                click.echo("\n".join(data["lines"]))
            elif event == "end":
                status = data["status"]
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    job = api.get_job(job_id)
    error = f": {job['error']}" if status == "failed" and job.get("error") else ""
    render.console(stderr=True).print(render.status_text(status, f"job {job_id} {status}{error}"))
    return status


def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="COMMAND", help="Command to run, after `--`.", show_default=False),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(metavar="NAME", help="Built-in recipe instead of a command.")
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", "-d", metavar="NAME", help="Uploaded dataset to use (repeatable)."),
    ] = None,
    hp: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE", help="Hyperparameter (repeatable); the value is JSON where it parses."
        ),
    ] = None,
    queue: Annotated[
        str | None, typer.Option(metavar="gpu|cpu", help="Queue to run on.  \\[default: gpu]")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(metavar="N", help="GPUs, or CPU processes, to use.  \\[default: 1]")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(metavar="N", help="Most epochs to train (max_epochs).  \\[default: 10]")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(metavar="0-9", help="0 lowest to 9 most urgent.  \\[default: 5]")
    ] = None,
    timeout: Annotated[int | None, typer.Option(metavar="SECONDS", help="Time limit of one attempt.")] = None,
    retries: Annotated[
        int | None, typer.Option(metavar="N", help="Retries after a failed attempt.  \\[default: 2]")
    ] = None,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="Display name.")] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", exists=True, dir_okay=False, readable=True, help="JSON job spec; options override it."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the logs to the end; exit 0 only if it succeeded.")
    ] = False,
) -> None:
    """Submit a job: a command, or a built-in recipe on datasets.

    Prints the job's id and status; with -f, the job's log goes to stdout and that line to stderr.

    Examples:
      trainfarm submit --queue cpu -- python train.py --lr 0.1
      trainfarm submit -f --queue cpu --hp hidden=[64,32] -- python train.py
      trainfarm submit --recipe tabular-classifier -d digits.csv --hp target=label
      trainfarm submit --spec job.json --priority 9
    """
    api: ApiClient = ctx.obj
    body = read_spec_file(spec) if spec else {}
    options = {
        "command": command or None,
        "recipe": recipe,
        "datasets": dataset or None,
        "queue": queue,
        "devices": devices,
        "max_epochs": epochs,
        "priority": priority,
        "timeout": timeout,
        "max_retries": retries,
        "name": name,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    if hp:
        body["hyperparameters"] = {**body.get("hyperparameters", {}), **parse_hyperparameters(hp)}
    job = api.submit(body)
    line = render.status_text(job["status"], f"job {job['id']} {job['status']} on queue {job['queue']}")
    render.console(stderr=follow).print(line)
    if follow:
        raise typer.Exit(0 if follow_logs(api, job["id"]) == "succeeded" else 1)


def jobs(
    ctx: typer.Context,
    status: Annotated[
        JobStatus | None, typer.Option(case_sensitive=False, help="Only jobs in this state.")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs on this queue.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest jobs to show.")] = 20,
    every: Annotated[bool, typer.Option("--all", help="Every matching job, page after page.")] = False,
) -> None:
    """List jobs, newest first.

    Shows the newest --limit jobs; --all follows the pages to the oldest.

    Examples:
      trainfarm jobs
      trainfarm jobs --status running --queue gpu
      trainfarm jobs --all --status failed
    """
    api: ApiClient = ctx.obj
    state = status.value if status else None
    if every:
        items, more = list(api.iter_jobs(state, queue)), False
    else:
        page = api.list_jobs(state, queue, limit)
        items, more = page["items"], page["next_before"] is not None
    if not items:
        click.echo("no jobs", err=True)
        return
    render.console().print(render.jobs_table(items))
    if more:
        click.echo(f"(the newest {limit}; --all or --limit for more)", err=True)


def show(ctx: typer.Context, job_id: JobId) -> None:
    """Show one job: its spec, attempts, latest metrics and artifacts.

    A failed job's error and the tail of its log come last.

    Example:
      trainfarm show 42
    """
    api: ApiClient = ctx.obj
    job = api.get_job(job_id)
    artifacts = api.list_artifacts(job_id)
    out = render.console()
    out.print(render.job_summary(job))
    if job["attempt_list"]:
        out.print()
        out.print(render.attempts_table(job["attempt_list"]))
    if job.get("metrics"):
        out.print()
        out.print(render.metrics_table(job["metrics"]))
    if artifacts:
        out.print()
        out.print(render.artifacts_table(artifacts, title="artifacts"))
    if job["status"] == "failed" and job.get("log_tail"):
        out.print()
        out.print("log tail:", style="bold")
        out.print(job["log_tail"], markup=False)


def logs(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
    after: Annotated[
        str | None, typer.Option(metavar="ATTEMPT-LINE", help="Start after this line, e.g. 1-99.")
    ] = None,
) -> None:
    """Print a job's log to stdout, every attempt in order.

    With -f, follow it live until the job ends; the exit status then says how it ended: 0 succeeded, 1 failed, 2 cancelled.

    Examples:
      trainfarm logs 42 | grep loss
      trainfarm logs -f 42
    """
    api: ApiClient = ctx.obj
    if follow:
        raise typer.Exit(FOLLOW_EXIT.get(follow_logs(api, job_id, after), 1))
    while True:
        page = api.logs(job_id, after, limit=LOG_PAGE)
        if page["lines"]:
            click.echo("\n".join(line["text"] for line in page["lines"]))
        after = page["next"]
        if page["complete"] or len(page["lines"]) < LOG_PAGE:
            return


def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job: a queued one never runs, a running one is stopped within seconds.

    A job that has already ended cannot be cancelled; that is an error.

    Example:
      trainfarm cancel 42
    """
    api: ApiClient = ctx.obj
    job = api.cancel(job_id)
    if job["status"] == "cancelled":
        render.console().print(render.status_text("cancelled", f"job {job_id} cancelled"))
    else:
        render.console().print(f"job {job_id} is {job['status']}; it stops within seconds", markup=False)
