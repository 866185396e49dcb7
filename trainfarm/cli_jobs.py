"""Job commands: submit, jobs, show, logs, cancel."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table
from typer._click import Context  # typer ships its own click: this is what commands receive
from typer.core import TyperCommand

from shared.errors import TrainfarmError
from shared.status import JobStatus
from trainfarm import bundle, render
from trainfarm.client import ApiClient

#: `logs -f` exit status by how the job ended; anything else (unknown) is 1 too.
FOLLOW_EXIT = {"succeeded": 0, "failed": 1, "cancelled": 2, "pruned": 3}
LOG_PAGE = 5000

JobId = Annotated[int, typer.Argument(metavar="JOB", help="Job id.", show_default=False)]
#: Where `SubmitCommand` keeps the words after `--`.
AFTER_DASHES = "trainfarm.command"
#: Packed files the submit listing names before it sums up the rest (`--list` names them all).
LISTED_FILES = 20
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class SubmitCommand(TyperCommand):
    """Splits `submit`'s arguments at `--`: the words after it are the command, verbatim, and a word
    before it is the project directory. (Click drops the `--` itself, so only here can they be told apart.)"""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[AFTER_DASHES] = args[cut + 1 :]
            args = args[:cut]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        return ["[OPTIONS]", "[PROJECT] -- COMMAND..."]


def parse_size(text: str) -> int:
    """`20M`, `500k`, `1.5G` (binary units) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise TrainfarmError(f"'{text}' is not a size like 20M, 500K or 1048576", field="--max-file-size")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def split_words(ctx: typer.Context, words: list[str]) -> tuple[Path | None, list[str]]:
    """(project directory, command) from `[PROJECT] -- COMMAND...` or the older `COMMAND...`."""
    after: list[str] | None = ctx.meta.get(AFTER_DASHES)
    if after is None:
        # No `--`: a first word naming a folder is the project (`submit ./proj --list`), a folder being
        # no command anyway; otherwise every word is the command.
        if words and Path(words[0]).is_dir():
            return Path(words[0]), words[1:]
        return None, words
    if len(words) > 1:
        raise TrainfarmError(f"one project directory before `--`, got {' '.join(words)}", field="PROJECT")
    if words and not Path(words[0]).is_dir():
        raise TrainfarmError(f"{words[0]} is not a directory", field="PROJECT")
    return (Path(words[0]) if words else None), after


def print_plan(plan: bundle.Plan, every_file: bool) -> None:
    """What goes into the bundle and what is left out (with why), on stderr unless it is the output."""
    out = render.console(stderr=not every_file)
    files = plan.files
    out.print(f"packing {plan.root}: {len(files)} files, {render.format_size(plan.total_size)}", markup=False)
    shown = files if every_file else files[:LISTED_FILES]
    width = render.widest([f.arcname for f in shown] + [s.arcname for s in plan.skipped], cap=60)
    for entry in shown:
        out.print(f"  {entry.arcname:<{width}}  {render.format_size(entry.size)}", markup=False)
    if len(files) > len(shown):
        out.print(f"  ... and {len(files) - len(shown)} more (--list names them all)", markup=False)
    if plan.skipped:
        out.print(f"skipped {len(plan.skipped)}:", markup=False)
    for item in plan.skipped:
        out.print(f"  {item.arcname:<{width}}  {item.reason}", markup=False)


def upload_project(api: ApiClient, project: Path, max_file_size: int, dry_run: bool) -> str:
    """Pack `project`, show the listing, and upload the bundle unless the farm has it; its digest."""
    plan = bundle.scan(project, max_file_size=max_file_size)
    print_plan(plan, every_file=dry_run)
    err = render.console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="trainfarm-bundle-") as tmp:
        archive = plan.write(Path(tmp) / "bundle.tar.gz")
        short, size = archive.sha256[:12], render.format_size(archive.size)
        if dry_run:
            err.print(f"bundle {archive.sha256} ({size} compressed); not uploaded (--dry-run)", markup=False)
        elif api.code_bundle(archive.sha256) is not None:
            err.print(f"bundle {short} ({size}) is on the farm already", markup=False)
        else:
            with render.transfer_bar(f"bundle {short}") as progress:
                api.upload_code_bundle(archive.path, archive.sha256, progress)
            err.print(f"uploaded bundle {short} ({size})", markup=False)
    return archive.sha256


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
    words: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROJECT -- COMMAND",
            help="Project directory to pack and run in (optional), then the command to run, after `--`.",
            show_default=False,
        ),
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
    project_name: Annotated[
        str | None,
        typer.Option("--project", metavar="NAME", help="Project the job belongs to.  \\[default: default]"),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="TAG", help="Label to find the job by (repeatable)."),
    ] = None,
    image: Annotated[
        str | None, typer.Option(metavar="IMAGE", help="Run in this Docker image (no network in it).")
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", metavar="NAME", help="Run in this conda env or venv of the worker."),
    ] = None,
    memory: Annotated[
        int | None, typer.Option("--memory", metavar="MIB", help="Memory limit of the container.")
    ] = None,
    cpus: Annotated[float | None, typer.Option(metavar="N", help="CPU limit of the container.")] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", exists=True, dir_okay=False, readable=True, help="JSON job spec; options override it."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the logs to the end; exit 0 only if it succeeded.")
    ] = False,
    max_file_size: Annotated[
        str,
        typer.Option(metavar="SIZE", help="Leave project files bigger than this out (e.g. 5M, 1G)."),
    ] = "20M",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", "--list", help="Only list what the project bundle would hold; submit nothing."
        ),
    ] = False,
) -> None:
    """Submit a job: a command, optionally in a project directory, or a built-in recipe on datasets.

    With PROJECT, its files are packed (leaving out .git, caches, virtualenvs, files over --max-file-size and the patterns in its .trainfarmignore), listed, uploaded unless the farm has that version already, and the command runs in the unpacked copy.

    Prints the job's id and status; with -f, the job's log goes to stdout and that line to stderr.

    Examples:
      trainfarm submit ./myproject -- python train.py --lr 0.01
      trainfarm submit ./myproject --list
      trainfarm submit --queue cpu -- python train.py --lr 0.1
      trainfarm submit ./myproject --image lab/torch:2.13 --devices 2 -- python train.py
      trainfarm submit ./myproject --env torch-nightly -- python train.py
      trainfarm submit -f --queue cpu --hp hidden=[64,32] -- python train.py
      trainfarm submit --recipe tabular-classifier -d digits.csv --hp target=label
      trainfarm submit --spec job.json --priority 9
      trainfarm submit --project mnist --tag baseline --tag lr-sweep -- python train.py
    """
    api: ApiClient = ctx.obj
    project, command = split_words(ctx, words or [])
    body = read_spec_file(spec) if spec else {}
    if project is not None:
        if not (dry_run or command or body.get("command")):
            raise TrainfarmError(
                "give the command to run after `--`, e.g. -- python train.py", field="COMMAND"
            )
        body["code"] = upload_project(api, project, parse_size(max_file_size), dry_run)
        if dry_run:
            return
    elif dry_run:
        raise TrainfarmError(
            "--dry-run lists a project's bundle; name the project directory", field="PROJECT"
        )
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
        "project": project_name,
        "tags": tag or None,
        "image": image,
        "environment": env,
        "memory_mb": memory,
        "cpus": cpus,
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
    owner: Annotated[
        str | None, typer.Option("--owner", metavar="NAME", help="Only jobs this user submitted.")
    ] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only jobs you submitted.")] = False,
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Only this project's jobs.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="Only jobs carrying this tag (repeatable: all of them)."
        ),
    ] = None,
    sweep: Annotated[
        int | None, typer.Option("--sweep", metavar="ID", min=1, help="Only this sweep's trial jobs.")
    ] = None,
) -> None:
    """List jobs, newest first.

    Shows the newest --limit jobs; --all follows the pages to the oldest.

    Examples:
      trainfarm jobs
      trainfarm jobs --status running --queue gpu
      trainfarm jobs --all --status failed
      trainfarm jobs --mine
      trainfarm jobs --owner alice
      trainfarm jobs --project mnist --tag baseline
      trainfarm jobs --sweep 3
    """
    if owner is not None and mine:
        raise TrainfarmError("give --owner or --mine, not both", field="--owner")
    api: ApiClient = ctx.obj
    state = status.value if status else None
    who = "me" if mine else owner
    if every:
        found = api.iter_jobs(state, queue, owner=who, project=project, tags=tag, sweep=sweep)
        items, more = list(found), False
    else:
        page = api.list_jobs(state, queue, limit, owner=who, project=project, tags=tag, sweep=sweep)
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
    # Another user's job under TRAINFARM_JOB_VISIBILITY=own: its artifacts are not the caller's to see.
    artifacts = [] if job.get("details_hidden") else api.list_artifacts(job_id)
    out = render.console()
    out.print(render.job_summary(job))
    origin = origin_table(job)
    if origin.row_count:
        out.print(origin)
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


def origin_table(job: dict[str, Any]) -> Table:
    """`show`'s lines on where the job belongs and comes from: project, tags, re-runs, sweep."""
    table = Table(box=None, show_header=False, pad_edge=False)
    # As wide as the summary's keys above, so the two read as one block.
    table.add_column(style="bold", no_wrap=True, min_width=len("hyperparameters"))
    table.add_column()
    rows = [("project", job.get("project") or "-"), ("tags", ", ".join(job.get("tags") or []) or "-")]
    lineage = []
    if job.get("rerun_of") is not None:
        lineage.append(f"re-run of job {job['rerun_of']}")
    if job.get("reruns"):
        lineage.append("re-runs: " + ", ".join(str(i) for i in job["reruns"]))
    rows += [("origin" if i == 0 else "", line) for i, line in enumerate(lineage)]
    if job.get("sweep_id") is not None:
        trial = f", trial {job['trial']}" if job.get("trial") is not None else ""
        rows.append(("sweep", f"sweep {job['sweep_id']}{trial}"))
    for key, value in rows:
        render.add_row(table, key, value)
    return table


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

    With -f, follow it live until the job ends; the exit status then says how it ended: 0 succeeded, 1 failed, 2 cancelled, 3 pruned (stopped early by its sweep).

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
