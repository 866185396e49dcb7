"""Reading the metric series a comparison draws, with the downsampled ones kept between requests.

A comparison of 20 runs reads about 200,000 metric rows; parsing their JSON is most of its cost.
An ended job's series are summarized once (master/experiments/summaries.py: `SUMMARY_POINTS` points
each, stamped with the highest metric row id they include), so a chart of at most that many points
is drawn from its summaries while they include every report, and from the rows otherwise (a running
job, more points asked, a job not summarized yet). Each job's downsampled series are also kept in
memory, stamped with its rows' highest id, so a second look at the same runs (or the same run in
another comparison) reads only what changed.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlmodel import Session

from master.experiments.compare import Series, XAxis, build_series, lttb

#: Downsampled series kept, one entry a job and comparison shape; at most 5,000 points each per metric.
CACHE_ENTRIES = 256
#: Points an ended job's series are summarized to: a chart of up to this many needs no rows read.
SUMMARY_POINTS = 1000

#: The highest id of a job's metric rows: rows are only ever added (and deleted with their job), so
#: a job whose highest id is the same has the same rows.
Stamp = int
#: (job ids, x values, metric values), one entry per report.
Columns = tuple[Sequence[int], Sequence[Any], list[dict[str, Any]]]
CacheKey = tuple[int, XAxis, int, tuple[str, ...] | None]

# Plain SQL, not the ORM: no row objects or per-value type processing for 200,000 rows, and the JSON
# comes back as text in both databases, to be parsed in one call.
# One index lookup per job (the job_id index ends in the row id), not a count over all its rows.
STAMPS = text(
    "SELECT jobs.id, (SELECT MAX(m.id) FROM job_metrics m WHERE m.job_id = jobs.id) "
    "FROM jobs WHERE jobs.id IN :ids"
).bindparams(bindparam("ids", expanding=True))
ROWS = (
    'SELECT job_id, {axis}, CAST("values" AS TEXT) FROM job_metrics '
    "WHERE job_id IN ({ids}) AND {axis} IS NOT NULL ORDER BY job_id, id"
)
# Both axes' summaries: a job summarized without any series on this axis still shows it was summarized.
SUMMARIES = text(
    "SELECT job_id, axis, metric, upto_id, stored, CAST(x AS TEXT), CAST(y AS TEXT) FROM metric_series "
    "WHERE job_id IN :ids ORDER BY job_id, axis, metric"
).bindparams(bindparam("ids", expanding=True))


def metric_stamps(session: Session, job_ids: Sequence[int]) -> dict[int, Stamp]:
    rows = session.connection().execute(STAMPS, {"ids": list(job_ids)})
    return {int(job_id): int(top or 0) for job_id, top in rows}


def read_rows(session: Session, job_ids: Sequence[int], x_axis: XAxis) -> Columns:
    """The jobs' reports that have the x, by job and oldest first, every attempt's: as columns of
    job id, x and values."""
    connection = session.connection()
    # Through the driver's own cursor: plain tuples, no SQLAlchemy row objects for 200,000 rows. The
    # ids are ints and the axis one of two names, so the text is safe to build, in either dialect.
    sql = ROWS.format(
        axis="epoch" if x_axis == "epoch" else "step", ids=",".join(str(int(i)) for i in job_ids)
    )
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not rows:
        return [], [], []
    # One parse of all the JSON: a call per row would cost twice as much.
    values = json.loads("[" + ",".join([row[2] for row in rows]) + "]")
    return [row[0] for row in rows], [row[1] for row in rows], values


def summarized_series(
    session: Session, stamps: dict[int, Stamp], x_axis: XAxis, metrics: set[str] | None
) -> dict[int, dict[str, Series]]:
    """The series of those jobs whose stored summaries include every report they have (the
    summaries' `upto_id` is the job's stamp), at up to `SUMMARY_POINTS` points; other jobs are left
    out."""
    ids = [job_id for job_id, stamp in stamps.items() if stamp]
    if not ids:
        return {}
    rows = session.connection().execute(SUMMARIES, {"ids": ids}).all()
    uptos: dict[int, set[int]] = {}
    for row in rows:
        uptos.setdefault(int(row[0]), set()).add(int(row[3]))
    current = {job_id for job_id, upto in uptos.items() if upto == {stamps[job_id]}}
    wanted = [
        row
        for row in rows
        if int(row[0]) in current and row[1] == x_axis and (metrics is None or row[2] in metrics)
    ]
    # One parse for every list, as read_rows does for the reports.
    lists = json.loads("[" + ",".join(part for row in wanted for part in (row[5], row[6])) + "]")
    out: dict[int, dict[str, Series]] = {job_id: {} for job_id in current}
    for i, row in enumerate(wanted):
        job_id = int(row[0])
        out[job_id][row[2]] = Series(job_id, lists[2 * i], lists[2 * i + 1], int(row[4]))
    return out


class SeriesCache:
    """Downsampled series by job, least recently used dropped first; safe across request threads."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._lock = threading.Lock()
        self._kept: OrderedDict[CacheKey, tuple[Stamp, dict[str, Series]]] = OrderedDict()

    def get(self, key: CacheKey, stamp: Stamp) -> dict[str, Series] | None:
        with self._lock:
            found = self._kept.get(key)
            if found is None or found[0] != stamp:
                return None
            self._kept.move_to_end(key)
            return found[1]

    def put(self, key: CacheKey, stamp: Stamp, series: dict[str, Series]) -> None:
        with self._lock:
            self._kept[key] = (stamp, series)
            self._kept.move_to_end(key)
            while len(self._kept) > self._entries:
                self._kept.popitem(last=False)


def downsampled(series: Series, points: int) -> Series:
    x, y = lttb(series.x, series.y, points)
    return Series(series.job_id, x, y, series.stored)


def chart_series(
    session: Session,
    cache: SeriesCache,
    job_ids: Sequence[int],
    x_axis: XAxis,
    points: int,
    metrics: set[str] | None,
) -> dict[int, dict[str, Series]]:
    """Each job's series per metric, at most `points` points each; from the cache where the job's
    rows have not changed since, else from its summaries where they are current and hold enough
    points, else read and downsampled."""
    wanted = tuple(sorted(metrics)) if metrics is not None else None
    stamps = metric_stamps(session, job_ids)
    out: dict[int, dict[str, Series]] = {}
    missing = []
    for job_id in job_ids:
        stamp = stamps.get(job_id, 0)
        found = cache.get((job_id, x_axis, points, wanted), stamp)
        if found is None:
            missing.append(job_id)
        else:
            out[job_id] = found
    if missing and points <= SUMMARY_POINTS:
        summarized = summarized_series(session, {j: stamps.get(j, 0) for j in missing}, x_axis, metrics)
        for job_id, found_series in summarized.items():
            series = {name: downsampled(s, points) for name, s in found_series.items()}
            cache.put((job_id, x_axis, points, wanted), stamps[job_id], series)
            out[job_id] = series
        missing = [job_id for job_id in missing if job_id not in summarized]
    if missing:
        fresh = build_series(*read_rows(session, missing, x_axis), metrics)
        for job_id in missing:
            series = {name: downsampled(s, points) for name, s in fresh.get(job_id, {}).items()}
            # Stamped as read before the rows: a report that lands in between only makes it stale.
            cache.put((job_id, x_axis, points, wanted), stamps.get(job_id, 0), series)
            out[job_id] = series
    return out
