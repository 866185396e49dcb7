"""The one results table: printed, and kept as Markdown and JSON next to the benchmarks."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class Row:
    figure: str
    trainfarm: float
    baseline: float | None
    unit: str
    target: str
    #: None where the figure has no target of its own (context for another row).
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.trainfarm / self.baseline


def _num(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _met(row: Row) -> str:
    return "" if row.met is None else "yes" if row.met else "**no**"


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.machine()}, no GPU"


def _console() -> Console:
    # Wide enough for the table when the output goes to a file or a pipe, not a terminal.
    return Console(width=None if sys.stdout.isatty() else 200)


def render(rows: list[Row], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for name in ("figure", "trainfarm", "baseline", "ratio", "target", "met"):
        table.add_column(name, justify="left" if name in ("figure", "target") else "right")
    for row in rows:
        met = "" if row.met is None else "[green]yes[/green]" if row.met else "[red]no[/red]"
        ratio = _num(row.ratio)
        table.add_row(
            row.figure, _num(row.trainfarm, row.unit), _num(row.baseline, row.unit), ratio, row.target, met
        )
    _console().print(table)
    for row in rows:
        if row.note:
            _console().print(f"[dim]{row.figure}: {row.note}[/dim]")


def markdown(rows: list[Row], title: str) -> str:
    lines = [
        f"{title}",
        "",
        "| figure | trainfarm | baseline | ratio | target | met | what limits it / notes |",
        "|---|---:|---:|---:|---|:-:|---|",
    ]
    for row in rows:
        cells = [
            row.figure,
            _num(row.trainfarm, row.unit),
            _num(row.baseline, row.unit),
            _num(row.ratio),
            row.target,
            _met(row),
            row.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save(rows: list[Row], title: str, record: bool) -> None:
    """Write results.md and results.json; with `record`, also replace the table in README.md."""
    text = markdown(rows, title)
    (HERE / "results.md").write_text(text)
    payload = {
        "title": title,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    (HERE / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    if record:
        readme = HERE / "README.md"
        before, _, rest = readme.read_text().partition(README_START)
        _, _, after = rest.partition(README_END)
        readme.write_text(f"{before}{README_START}\n{text}{README_END}{after}")
