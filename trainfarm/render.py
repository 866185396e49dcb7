"""Turning API answers into rich tables and short human strings for the CLI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from shared.schemas import DEFAULT_PROJECT

STATUS_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pruned": "blue",
}


def console(stderr: bool = False) -> Console:
    # Made per use, not at import: Click's test runner and pipes swap sys.stdout after import, and a
    # console decides on colour when it is made.
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        out.width = 1000  # a pipe or file gets whole rows; only a terminal's width is a limit
    return out


def widest(values: list[str], cap: int = 40) -> int:
    """A column's min_width, so a narrow terminal cuts the checksum rather than the name."""
    return min(cap, max((len(v) for v in values), default=0))


@contextmanager
def transfer_bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on stderr; yields the (done, total) callback the client's transfers take."""
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    # SQLite hands times back without a zone; the master writes them all in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_time(value: str | None) -> str:
    moment = parse_time(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def format_ago(value: str | None) -> str:
    moment = parse_time(value)
    if moment is None:
        return "-"
    return f"{format_duration((datetime.now(UTC) - moment).total_seconds())} ago"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def add_row(table: Table, *values: str | Text) -> None:
    # Plain strings would be read as rich markup: a log's "[trainfarm]" or "[red]" would vanish.
    table.add_row(*(v if isinstance(v, Text) else Text(v) for v in values))


def status_text(status: str, text: str | None = None) -> Text:
    """`text` (default: the status itself) in the status's colour."""
    return Text(status if text is None else text, style=STATUS_STYLES.get(status, ""))


def usage_text(usage: dict[str, Any]) -> Text:
    """The master's summary of a job's resource samples (progress.usage); red while its GPUs idle."""
    gib = 1024**3
    parts = []
    if isinstance(usage.get("gpu_util_mean"), int | float):
        parts.append(f"GPU {usage['gpu_util_mean']:.0f}% mean")
    if isinstance(usage.get("gpu_mem_peak"), int):
        parts.append(f"GPU memory {usage['gpu_mem_peak'] / gib:.1f} GiB peak")
    if isinstance(usage.get("cpu_percent_mean"), int | float):
        parts.append(f"CPU {usage['cpu_percent_mean']:.0f}% mean")
    if isinstance(usage.get("rss_peak"), int):
        parts.append(f"memory {usage['rss_peak'] / gib:.1f} GiB peak")
    text = Text(", ".join(parts) or "-")
    if usage.get("gpu_idle"):
        text.append(" (GPUs idle)", style="red")
    return text


def progress_text(job: dict[str, Any]) -> str:
    """`epoch/max` from the job's latest progress report; `-` before any."""
    epoch = job.get("progress", {}).get("epoch")
    if epoch is None:
        return "-"
    total = job["progress"].get("max_epochs") or job.get("spec", {}).get("max_epochs")
    return f"{epoch}/{total}" if total else str(epoch)


def entrypoint(spec: dict[str, Any]) -> str:
    if spec.get("recipe"):
        return f"recipe {spec['recipe']}"
    return " ".join(spec.get("command") or [])


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "STATUS", "QUEUE", "OWNER", "ATTEMPTS", "NODE", "PROGRESS", "CREATED"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS", "CREATED"))
    # Only when some job waits, so a list of finished jobs keeps its width; cut, not wrapped, so
    # each job stays one line (`show` has the whole sentence).
    waiting = any(wait_text(job) for job in jobs)
    if waiting:
        table.add_column("WAITING", no_wrap=True, overflow="ellipsis", max_width=60, style="dim")
    # Likewise only when some job is in a project of its own or carries tags.
    projects = any(job.get("project", DEFAULT_PROJECT) != DEFAULT_PROJECT for job in jobs)
    tagged = any(job.get("tags") for job in jobs)
    if projects:
        table.add_column("PROJECT", no_wrap=True, overflow="ellipsis", max_width=24)
    if tagged:
        table.add_column("TAGS", no_wrap=True, overflow="ellipsis", max_width=30)
    for job in jobs:
        add_row(
            table,
            str(job["id"]),
            job.get("name") or "-",
            status_text(job["status"]),
            job["queue"],
            job.get("owner") or "-",  # jobs from before users had no owner
            str(job["attempts"]),
            job.get("node") or "-",
            progress_text(job),
            format_time(job["created_at"]),
            *((wait_text(job),) if waiting else ()),
            *((job.get("project") or "-",) if projects else ()),
            *((", ".join(job.get("tags") or []) or "-",) if tagged else ()),
        )
    return table


def wait_text(job: dict[str, Any]) -> str:
    """A queued job's wait reason without its `waiting: ` lead (the column says it); else ``."""
    reason = job.get("wait_reason")
    if job.get("status") != "queued" or not reason:
        return ""
    return str(reason).removeprefix("waiting: ")


def job_summary(job: dict[str, Any]) -> Table:
    """Key/value lines for `show`."""
    spec = job["spec"]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    started, finished = parse_time(job.get("started_at")), parse_time(job.get("finished_at"))
    duration = (
        format_duration(((finished or datetime.now(UTC)) - started).total_seconds()) if started else "-"
    )
    cancel_note = " (cancel requested)" if job.get("cancel_requested") and job["status"] == "running" else ""
    rows: list[tuple[str, str | Text]] = [
        ("job", str(job["id"]) + (f" ({job['name']})" if job.get("name") else "")),
        ("status", Text.assemble(status_text(job["status"]), cancel_note)),
        ("owner", job.get("owner") or "-"),
        ("runs", entrypoint(spec)),
        ("queue", f"{job['queue']}, priority {job['priority']}, {spec.get('devices', 1)} device(s)"),
        ("datasets", ", ".join(spec.get("datasets") or []) or "-"),
        (
            "hyperparameters",
            " ".join(f"{k}={v}" for k, v in (spec.get("hyperparameters") or {}).items()) or "-",
        ),
        ("node", job.get("node") or "-"),
        ("progress", progress_text(job)),
        ("created", format_time(job["created_at"])),
        ("started", format_time(job.get("started_at"))),
        ("finished", format_time(job.get("finished_at"))),
        ("duration", duration),
    ]
    usage = (job.get("progress") or {}).get("usage") or {}
    if usage:
        rows.append(("resource use", usage_text(usage)))
    if job.get("details_hidden"):
        # TRAINFARM_JOB_VISIBILITY=own: another user's job shows its status and timing only.
        rows.append(("details", Text("hidden: another user's job", style="dim")))
    if job.get("error"):
        rows.append(("error", Text(job["error"], style="red")))
    if job["status"] == "queued" and job.get("wait_reason"):
        rows.append(("waiting", Text(job["wait_reason"], style="yellow")))
    if job.get("preemptions"):
        rows.append(("preemptions", str(job["preemptions"])))
    if job.get("handbacks"):
        rows.append(("hand-backs", str(job["handbacks"])))
    # What the farm noticed without ending the job (events it could not apply, a hand-back storm).
    for i, warning in enumerate(job.get("warnings") or []):
        rows.append(("warnings" if i == 0 else "", Text(str(warning), style="yellow")))
    for key, value in rows:
        add_row(table, key, value)
    return table


def attempts_table(attempts: list[dict[str, Any]]) -> Table:
    table = Table(title="attempts", title_justify="left", box=None, pad_edge=False)
    for column in ("#", "STATUS", "NODE", "STARTED", "FINISHED", "EXIT", "ERROR"):
        table.add_column(column, no_wrap=column != "ERROR")
    for attempt in attempts:
        exit_code = attempt.get("exit_code")
        add_row(
            table,
            str(attempt["number"]),
            status_text(attempt["status"]),
            attempt.get("node") or "-",
            format_time(attempt.get("started_at")),
            format_time(attempt.get("finished_at")),
            "-" if exit_code is None else str(exit_code),
            attempt.get("error") or "",
        )
    return table


def metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="latest metrics", title_justify="left", box=None, pad_edge=False)
    table.add_column("METRIC", no_wrap=True)
    table.add_column("VALUE", justify="right")
    for key, value in sorted(metrics.items()):
        add_row(table, key, f"{value:.6g}" if isinstance(value, float) else str(value))
    return table


def artifacts_table(artifacts: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    names, sizes = [a["name"] for a in artifacts], [format_size(a["size"]) for a in artifacts]
    table.add_column("NAME", overflow="fold", min_width=widest(names))
    table.add_column("SIZE", justify="right", no_wrap=True, min_width=widest(sizes))
    table.add_column("SHA256", no_wrap=True, overflow="ellipsis")
    for name, size, artifact in zip(names, sizes, artifacts, strict=True):
        add_row(table, name, size, artifact.get("sha256") or "-")
    return table


def datasets_table(datasets: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    names, sizes = [d["name"] for d in datasets], [format_size(d["size"]) for d in datasets]
    table.add_column("NAME", no_wrap=True, min_width=widest(names))
    table.add_column("SIZE", justify="right", no_wrap=True, min_width=widest(sizes))
    table.add_column("UPLOADED", no_wrap=True, min_width=19)
    table.add_column("SHA256", no_wrap=True, overflow="ellipsis")
    for name, size, dataset in zip(names, sizes, datasets, strict=True):
        add_row(table, name, size, format_time(dataset["created_at"]), dataset["sha256"])
    return table


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    columns = ("NAME", "STATE", "QUEUES", "POOL", "CPUS", "MEMORY FREE/TOTAL", "GPUS", "RUNNING", "LAST SEEN")
    for column in columns:
        table.add_column(column, no_wrap=column not in ("STATE", "GPUS", "RUNNING"))
    for node in nodes:
        info = node.get("info") or {}
        online = bool(node.get("online"))
        table.add_row(
            Text(node["name"]),
            state_text(online, info.get("paused")),
            Text(",".join(node.get("queues") or []) or "-"),
            Text(pool_text(info)),
            Text(cpus_text(info)),
            Text(memory_text(info)),
            Text(gpus_text(info.get("gpus"))),
            Text(running_text(info.get("running"))),
            Text(format_ago(node.get("last_seen"))),
            # What an offline node last reported may no longer hold.
            style=None if online else "dim",
        )
    return table


def state_text(online: bool, paused: object) -> Text:
    """`online`, `offline`, or `paused: <why>` for an online node that takes no jobs (disk low)."""
    if not online:
        return Text("offline", style="red")
    if paused:
        return Text(f"paused: {paused}", style="yellow")
    return Text("online", style="green")


def pool_text(info: dict[str, Any]) -> str:
    """`prefork x4`; with several workers on the node, each: `prefork x1 + threads x2`."""
    workers = info.get("workers")
    parts = workers if isinstance(workers, list) and len(workers) > 1 else [info]
    texts = []
    for part in parts:
        pool = part.get("pool") if isinstance(part, dict) else None
        concurrency = part.get("concurrency") if isinstance(part, dict) else None
        texts.append(f"{pool} x{concurrency}" if pool and concurrency else str(pool or "-"))
    return " + ".join(texts)


def cpus_text(info: dict[str, Any]) -> str:
    """`16 (7%)`: how many, and how busy they are together."""
    count, percent = info.get("cpu_count"), info.get("cpu_percent")
    if count is None:
        return "-"
    return f"{count} ({percent:.0f}%)" if isinstance(percent, int | float) else str(count)


def memory_text(info: dict[str, Any]) -> str:
    """`12.3 GiB / 62.7 GiB`: available of total."""
    total = info.get("memory_total")
    if total is None:
        return "-"
    return f"{format_size(info.get('memory_available'))} / {format_size(total)}"


def gpus_text(gpus: object) -> str:
    """How many of each model: `2x NVIDIA H100 80GB HBM3`, `2x A100, 1x T4`, or `none`."""
    if not isinstance(gpus, list) or not gpus:
        return "none"
    names = Counter(str(g.get("name") or "?") if isinstance(g, dict) else "?" for g in gpus)
    return ", ".join(f"{n}x {name}" for name, n in names.items())


def running_text(running: object) -> str:
    """`job 3#1, job 7#2`: each running job and its attempt number."""
    if not isinstance(running, list) or not running:
        return "-"
    return ", ".join(
        f"job {r.get('job_id')}#{r.get('attempt')}" if isinstance(r, dict) else "?" for r in running
    )
