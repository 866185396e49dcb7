"""Several runs side by side: their metric series (downsampled for charts), their specs field by
field, and their final metrics with the best run per metric. Pure functions over rows already read;
GET /api/compare does the reading.

Series use every attempt's reports, in the order they were stored (by id): a retried job's chart shows
what each attempt reported, as its metrics history does, rather than hiding the attempts that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

XAxis = Literal["step", "epoch"]
NUMBER_TYPES = {int, float}

#: Metric names holding one of these words are better when lower; every other metric when higher.
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "perplexity")


@dataclass
class Series:
    """One job's points of one metric; `stored` counts them before any downsampling."""

    job_id: int
    x: list[float]
    y: list[float]
    stored: int


def build_series(
    job_col: Sequence[int],
    x_col: Sequence[float | None],
    values_col: Sequence[dict[str, Any]],
    metrics: set[str] | None = None,
) -> dict[int, dict[str, Series]]:
    """Per job, one series per metric it reported, from stored reports given column by column (each
    job's reports together, in the order they were stored).

    Reports without an x are skipped, and so are values that are not numbers; `metrics` keeps only
    those names. Written a column at a time (a comprehension per metric, not a loop per value): a
    comparison reads hundreds of thousands of reports.
    """
    out: dict[int, dict[str, Series]] = {}
    start = 0
    for job_id, run in groupby(job_col):
        end = start + sum(1 for _ in run)
        xs, dicts = x_col[start:end], values_col[start:end]
        start = end
        names: set[str] = set().union(*dicts)
        if metrics is not None:
            names &= metrics
        series = out.setdefault(job_id, {})
        for name in sorted(names):
            ys = [d.get(name) for d in dicts]
            px: list[Any]
            py: list[Any]
            # The usual case, checked at C speed: every report has an x and a number for it.
            if None in xs or not set(map(type, ys)) <= NUMBER_TYPES:
                pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and is_number(y)]
                px, py = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                px, py = list(xs), ys
            if not px:
                continue
            old = series.get(name)
            if old is not None:  # the job's reports came in two runs: one series still
                px, py = old.x + px, old.y + py
            series[name] = Series(job_id, px, py, len(px))
    return {job_id: series for job_id, series in out.items() if series}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def lttb(x: Sequence[float], y: Sequence[float], points: int) -> tuple[list[float], list[float]]:
    """Largest-triangle-three-buckets: at most `points` of the points, always the first and the last;
    each bucket between them gives the point that makes the largest triangle with the point kept
    before it and the average of the next bucket, so peaks and dips survive. Fewer points than
    `points` come back as they are."""
    n = len(x)
    if n <= points or n <= 2:
        return list(x), list(y)
    if points < 3:  # no bucket between the ends
        return [x[0], x[-1]][:points], [y[0], y[-1]][:points]
    every = (n - 2) / (points - 2)
    out_x, out_y = [x[0]], [y[0]]
    ax, ay = x[0], y[0]
    for bucket in range(points - 2):
        start = int(bucket * every) + 1
        end = int((bucket + 1) * every) + 1
        # The next bucket's average; the last bucket's "next" is the last point alone.
        next_start, next_end = end, min(int((bucket + 2) * every) + 1, n)
        if bucket == points - 3:
            next_start, next_end = n - 1, n
        span = next_end - next_start
        cx = sum(x[next_start:next_end]) / span
        cy = sum(y[next_start:next_end]) / span
        # Twice the triangle's area, up to sign, is linear in the candidate: a*px + b*py + c.
        a, b = ay - cy, cx - ax
        c = ax * cy - cx * ay
        best, best_area = start, -1.0
        for i in range(start, end):
            area = abs(a * x[i] + b * y[i] + c)
            if area > best_area:
                best, best_area = i, area
        ax, ay = x[best], y[best]
        out_x.append(ax)
        out_y.append(ay)
    out_x.append(x[-1])
    out_y.append(y[-1])
    return out_x, out_y


def flatten_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as dotted fields: `hyperparameters.lr`, `env.SEED`, `max_epochs`, `command` (lists stay
    whole: a command or a dataset list is one value)."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            for inner, item in flatten_spec(value).items():
                out[f"{key}.{inner}"] = item
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class SpecField:
    field: str
    #: One per job, in the jobs' order; None where the job's spec lacks the field.
    values: list[Any]
    differs: bool


def spec_table(specs: Sequence[dict[str, Any]]) -> list[SpecField]:
    """Every field any of the specs has, sorted, with whether the jobs disagree on it (a field some
    lack counts as differing)."""
    flat = [flatten_spec(spec) for spec in specs]
    names = sorted({name for one in flat for name in one})
    table = []
    for name in names:
        values = [one.get(name) for one in flat]
        present = [name in one for one in flat]
        differs = not all(present) or any(v != values[0] for v in values[1:])
        table.append(SpecField(name, values, differs))
    return table


@dataclass(frozen=True)
class FinalMetric:
    metric: str
    #: One per job, in the jobs' order: its last reported value, exactly; None where it has none.
    values: list[float | None]
    #: The id of the job with the best value; None when no job has a number for it.
    best: int | None
    lower_is_better: bool


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


def final_table(job_ids: Sequence[int], finals: Sequence[dict[str, Any]]) -> list[FinalMetric]:
    """Per metric any job reported, each job's last value and the best job (the first one on a tie)."""
    names = sorted({name for one in finals for name, value in one.items() if is_number(value)})
    table = []
    for name in names:
        values = [one.get(name) if is_number(one.get(name)) else None for one in finals]
        lower = lower_is_better(name)
        best: int | None = None
        best_value: float | None = None
        for job_id, value in zip(job_ids, values, strict=True):
            if value is None:
                continue
            if best_value is None or (value < best_value if lower else value > best_value):
                best, best_value = job_id, value
        table.append(FinalMetric(name, values, best, lower))
    return table
