"""Data commands: a job's artifacts, datasets, and the farm's nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from shared.errors import TrainfarmError
from trainfarm import render
from trainfarm.cli_jobs import JobId
from trainfarm.client import ApiClient


def artifact_path(out: Path, name: str) -> Path:
    """Where artifact `name` goes under `out`, keeping its folders (`checkpoints/last.ckpt`)."""
    dest = out / name
    # Names come from the server; one that climbs out of `out` is refused, not followed.
    if not dest.resolve().is_relative_to(out.resolve()):
        raise TrainfarmError(f"artifact name '{name}' points outside {out}; not saved", field="name")
    return dest


def artifacts(
    ctx: typer.Context,
    job_id: JobId,
    download: Annotated[
        list[str] | None,
        typer.Option("--download", metavar="NAME", help="Download this artifact (repeatable)."),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Download every artifact of the job.")] = False,
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Directory to download into.")
    ] = Path("."),
) -> None:
    """List a job's artifacts, or download them.

    Downloads keep the artifact's folders under --out, are checked against the SHA-256 the farm recorded, and appear only once complete.

    Examples:
      trainfarm artifacts 42
      trainfarm artifacts 42 --download model.pt --out models/
      trainfarm artifacts 42 --all --out run-42/
    """
    api: ApiClient = ctx.obj
    if not download and not every:
        listed = api.list_artifacts(job_id)
        if listed:
            render.console().print(render.artifacts_table(listed))
        else:
            click.echo(f"job {job_id} has no artifacts", err=True)
        return
    names = [a["name"] for a in api.list_artifacts(job_id)] if every else list(download or [])
    if not names:
        click.echo(f"job {job_id} has no artifacts", err=True)
    for name in names:
        dest = artifact_path(out, name)
        with render.transfer_bar(name) as progress:
            api.download_artifact(job_id, name, dest, progress)
        click.echo(f"saved {dest}", err=True)


datasets = typer.Typer(help="Upload and list datasets that jobs train on.", no_args_is_help=True)


@datasets.command("upload")
def upload_dataset(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="File to upload.")],
    name: Annotated[
        str | None, typer.Option(help="Name on the farm.  \\[default: the file's name]", show_default=False)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset of the same name.")] = False,
) -> None:
    """Upload a file as a dataset; it is streamed, so any size works.

    Jobs name it with --dataset; a worker downloads it once and caches it.

    Examples:
      trainfarm datasets upload digits.csv
      trainfarm datasets upload data/train-v2.csv --name train.csv --overwrite
    """
    api: ApiClient = ctx.obj
    with render.transfer_bar(file.name) as progress:
        row = api.upload_dataset(file, name, overwrite, progress)
    click.echo(f"uploaded {row['name']} ({render.format_size(row['size'])}, sha256 {row['sha256']})")


@datasets.command("list")
def list_datasets(ctx: typer.Context) -> None:
    """List uploaded datasets.

    Name, size, SHA-256 and upload time of each.

    Example:
      trainfarm datasets list
    """
    api: ApiClient = ctx.obj
    rows = api.list_datasets()
    if rows:
        render.console().print(render.datasets_table(rows))
    else:
        click.echo("no datasets; add one with `trainfarm datasets upload FILE`", err=True)


def nodes(ctx: typer.Context) -> None:
    """List the compute nodes that have reported in, online or not.

    A node is online while its heartbeats keep arriving. Each row shows its queues, Celery pool and
    concurrency, CPUs (count and load), memory, GPUs, the job attempts it runs (JOB#ATTEMPT) and
    how long ago it last reported.

    Example:
      trainfarm nodes
    """
    api: ApiClient = ctx.obj
    rows = api.list_nodes()
    if rows:
        render.console().print(render.nodes_table(rows))
    else:
        click.echo("no nodes have reported yet; start a worker", err=True)
