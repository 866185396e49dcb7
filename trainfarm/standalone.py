"""`trainfarm standalone` and `trainfarm demo`: a complete farm on one machine."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from shared.redaction import redact_url
from shared.settings import get_settings
from trainfarm.services.data_dir import DataDirBusy, DataDirLock
from trainfarm.supervisor import StandaloneFarm

console = Console(stderr=True)
ROOT = Path(__file__).resolve().parent.parent
DEMO_DATASET = ROOT / "examples" / "datasets" / "digits.csv"
EXAMPLE_SWEEP = ROOT / "examples" / "sweep.yaml"

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the farm keeps everything (default: ~/.trainfarm)")
]
PortOption = Annotated[int | None, typer.Option("--port", help="API and dashboard port (default 8000)")]


def _raise_on_sigterm() -> None:
    # SIGTERM (systemd, docker stop, kill) shuts down as cleanly as Ctrl-C does.
    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _banner(farm: StandaloneFarm) -> None:
    s = farm.settings
    lines = [
        f"Dashboard   {s.api_url}/",
        f"REST API    {s.api_url}/api   (OpenAPI: {s.api_url}/docs)",
        f"Metrics     {s.api_url}/metrics",
    ]
    if farm.flower is not None:
        lines.append(f"Flower      {farm.flower.url}")
    lines += [
        f"S3          http://{s.s3_endpoint}  bucket {s.s3_bucket}  key {s.s3_access_key}",
        f"Redis       {redact_url(s.redis_connection_url())}  (password in {farm.redis_password_file})",
        f"Data        {farm.data_dir}",
        "",
        f"CLI:        export TRAINFARM_API_URL={s.api_url}",
        "Workers:    other machines join with `celery -A worker worker -Q gpu` and",
        "            TRAINFARM_REDIS_URL, TRAINFARM_REDIS_PASSWORD and TRAINFARM_S3_ENDPOINT pointing",
        '            here (bind beyond 127.0.0.1 first, with TLS: README, "Redis: password and TLS")',
    ]
    console.print(Panel("\n".join(lines), title="trainfarm is running", border_style="green"))
    # Outside the panel and unwrapped, so the path can be copied whole however narrow the terminal.
    creds = farm.master.credentials
    console.print(
        f"Login as {creds.user}: password and API token in {farm.data_dir / 'credentials.json'} "
        "(the CLI on this machine uses that token when TRAINFARM_DATA_DIR is this folder, as it is "
        "for the default ~/.trainfarm; elsewhere run trainfarm login)",
        soft_wrap=True,
    )


def _say(message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


def _hold(data_dir: Path) -> DataDirLock:
    """The data directory, held until this process ends; a second farm on it stops here, before it
    touches anything of the first (its ports file, its database, its Redis)."""
    lock = DataDirLock(data_dir.expanduser().resolve())
    try:
        lock.acquire()
    except DataDirBusy as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    return lock


def _start(farm: StandaloneFarm) -> None:
    try:
        farm.start(say=_say)
    except KeyboardInterrupt:
        console.print("interrupted while starting; shutting down ...")
        farm.stop(say=_say)
        raise typer.Exit(130) from None
    except (RuntimeError, OSError) as exc:
        farm.stop(say=_say)
        console.print(f"[red]error:[/red] the farm could not start: {exc}")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add the farm-running commands to the CLI."""

    @app.command()
    def standalone(
        data_dir: DataDirOption = None,
        port: PortOption = None,
        flower_port: Annotated[int | None, typer.Option(help="Flower port (default 5555)")] = None,
        concurrency: Annotated[int, typer.Option(help="Jobs the local worker runs at once")] = 1,
        flower: Annotated[bool, typer.Option(help="Also run Flower")] = True,
    ) -> None:
        """Run a complete farm on this machine until Ctrl-C.

        Starts Redis, an S3 server (SeaweedFS), the master (SQLite), one worker on the gpu and cpu
        queues, and Flower, all on 127.0.0.1, keeping data under one directory. A second start
        reuses that data.
        """
        settings = get_settings()
        hold = _hold(data_dir or settings.data_dir)
        farm = StandaloneFarm(
            data_dir or settings.data_dir, settings, port, flower_port, concurrency, with_flower=flower
        )
        _raise_on_sigterm()
        _start(farm)
        _banner(farm)
        try:
            dead = farm.wait()
            console.print(f"[red]{dead.name} stopped unexpectedly[/red]; see {dead.log_path}")
            code = 1
        except KeyboardInterrupt:
            console.print("shutting down ...")
            code = 0
        finally:
            farm.stop(say=_say)
            hold.release()
        raise typer.Exit(code)

    @app.command()
    def demo(
        data_dir: DataDirOption = None,
        port: PortOption = None,
        epochs: Annotated[int, typer.Option(help="Training epochs")] = 15,
        keep: Annotated[bool, typer.Option(help="Leave the farm running afterwards, until Ctrl-C")] = False,
        sweep: Annotated[
            Path | None,
            typer.Option(
                "--sweep",
                metavar="FILE",
                help=f"Run this sweep instead of one job (e.g. {EXAMPLE_SWEEP.relative_to(ROOT)})",
            ),
        ] = None,
    ) -> None:
        """Start a standalone farm and train a real model on it, end to end.

        Uploads the UCI handwritten digits dataset, trains the built-in tabular classifier on the
        local worker while its log streams here, then shows the final metrics and the artifacts
        stored in S3. With --sweep FILE, runs that hyperparameter sweep instead (the worker runs
        as many trials at once as its parallelism), showing its trials as they start, end and are
        pruned, then the best one.
        """
        from trainfarm.cli_sweeps import read_spec
        from trainfarm.demo import run_demo, run_sweep_demo

        settings = get_settings()
        slots = 1
        if sweep is not None:  # read first: a bad file is one line, before anything starts
            slots = max(1, min(4, int(read_spec(sweep).get("parallelism", 2))))
        hold = _hold(data_dir or settings.data_dir)
        farm = StandaloneFarm(data_dir or settings.data_dir, settings, port, None, slots, with_flower=False)
        _raise_on_sigterm()
        _start(farm)
        code = 1
        try:
            url, token = farm.settings.api_url, farm.master.token
            if sweep is not None:
                code = run_sweep_demo(url, token, DEMO_DATASET, sweep, console)
            else:
                code = run_demo(url, token, DEMO_DATASET, epochs, console)
            if keep:
                _banner(farm)
                farm.wait()
        except KeyboardInterrupt:
            console.print("interrupted; shutting down ...")
            code = 130
        finally:
            farm.stop(say=_say)
            hold.release()
        sys.exit(code)
