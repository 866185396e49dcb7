"""Comparing runs: the pure pieces (LTTB, spec table, final metrics) without services, then GET
/api/compare against a real master, with jobs that really ran and reported metrics on a worker."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, delete, func, text
from sqlmodel import Session, col, select

from master.db import make_engine
from master.experiments.compare import (
    build_series,
    final_table,
    flatten_spec,
    lower_is_better,
    lttb,
    spec_table,
)
from master.experiments.compare_reader import SUMMARY_POINTS, SeriesCache, chart_series
from master.experiments.summaries import SeriesSummarizer, summarize
from master.models import Job, JobMetric, MetricSeries
from shared.settings import Settings
from tests.conftest import run_cli, user_client, wait_for, wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess

#: A job that reports `REPORTS` metrics lines through the job contract: every line has a step, every
#: fifth an epoch too, and one line has no step at all (a chart by step skips it).
REPORTS = 40
REPORTER = """
import json, os
hp = json.loads(os.environ["TRAINFARM_HYPERPARAMETERS"])
with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
    for i in range({reports}):
        event = {{"kind": "metrics", "step": i * 10, "metrics": {{
            "val_loss": round(hp["scale"] / (i + 1), 6), "val_acc": round(1 - hp["scale"] / (i + 2), 6)}}}}
        if i % 5 == 0:
            event["epoch"] = i // 5
        fh.write(json.dumps(event) + "\\n")
    fh.write(json.dumps({{"kind": "metrics", "epoch": 99, "metrics": {{"test_acc": hp["scale"]}}}}) + "\\n")
"""


# Unit tests ---------------------------------------------------------------------------------------


def test_lttb_keeps_first_and_last_and_at_most_the_points_asked():
    rng = random.Random(1)
    x = list(range(1000))
    y = [rng.random() for _ in x]
    for points in (3, 10, 99, 500):
        dx, dy = lttb(x, y, points)
        assert len(dx) == len(dy) == points
        assert (dx[0], dy[0]) == (x[0], y[0]) and (dx[-1], dy[-1]) == (x[-1], y[-1])
        assert dx == sorted(set(dx))  # points of the series, in order, none twice
        assert all(y[i] == v for i, v in zip(dx, dy, strict=True))


def test_lttb_with_room_for_the_ends_only():
    assert lttb([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0], 2) == ([1, 4], [4.0, 1.0])


def test_lttb_returns_a_short_series_exactly():
    assert lttb([1, 2, 3], [0.5, 0.25, 0.125], 10) == ([1, 2, 3], [0.5, 0.25, 0.125])
    assert lttb([], [], 10) == ([], [])


def test_lttb_keeps_a_spike():
    x = list(range(1000))
    y = [0.0] * 1000
    y[517] = 50.0
    dx, dy = lttb(x, y, 20)
    assert 517 in dx and 50.0 in dy


def test_series_skip_reports_without_the_x_and_keep_the_order_stored():
    jobs = [1, 1, 1, 2, 2]
    steps = [0, None, 20, 5, 6]
    values = [{"loss": 1.0, "acc": 0.1}, {"loss": 9.0}, {"loss": 0.5}, {"loss": 2.0}, {"acc": 0.7}]
    series = build_series(jobs, steps, values)
    assert series[1]["loss"].x == [0, 20] and series[1]["loss"].y == [1.0, 0.5]
    assert series[1]["loss"].stored == 2
    assert series[1]["acc"].x == [0] and series[1]["acc"].y == [0.1]
    assert series[2]["loss"].x == [5] and series[2]["acc"].y == [0.7]
    only_acc = build_series(jobs, steps, values, {"acc"})
    assert set(only_acc[1]) == {"acc"} and set(only_acc[2]) == {"acc"}


def test_spec_table_flattens_and_marks_what_differs():
    a = {"hyperparameters": {"lr": 0.1, "depth": 3}, "max_epochs": 10, "command": ["python", "t.py"]}
    b = {"hyperparameters": {"lr": 0.01, "depth": 3}, "max_epochs": 10, "command": ["python", "t.py"]}
    c = {"hyperparameters": {"lr": 0.1}, "max_epochs": 10, "command": ["python", "t.py"]}
    assert flatten_spec(a) == {
        "hyperparameters.lr": 0.1,
        "hyperparameters.depth": 3,
        "max_epochs": 10,
        "command": ["python", "t.py"],
    }
    table = {f.field: f for f in spec_table([a, b, c])}
    assert table["hyperparameters.lr"].values == [0.1, 0.01, 0.1] and table["hyperparameters.lr"].differs
    # Absent from one spec: null there, and it differs.
    assert table["hyperparameters.depth"].values == [3, 3, None] and table["hyperparameters.depth"].differs
    assert not table["max_epochs"].differs and not table["command"].differs


def test_final_table_marks_the_best_by_the_metric_kind():
    assert lower_is_better("val_loss") and lower_is_better("RMSE") and lower_is_better("test_error")
    assert lower_is_better("perplexity") and not lower_is_better("val_acc") and not lower_is_better("f1")
    finals = [{"val_loss": 0.3, "val_acc": 0.9}, {"val_loss": 0.2, "val_acc": 0.8, "mae": 4.0}, {}]
    table = {f.metric: f for f in final_table([12, 14, 15], finals)}
    assert table["val_loss"].best == 14 and table["val_loss"].lower_is_better
    assert table["val_acc"].best == 12 and not table["val_acc"].lower_is_better
    assert table["val_acc"].values == [0.9, 0.8, None]
    assert table["mae"].best == 14 and table["mae"].values == [None, 4.0, None]


def test_kept_series_are_used_until_the_job_reports_more(engine: Engine):
    with Session(engine) as session:
        session.add_all([Job(id=i, queue="cpu", spec={}) for i in (1, 2)])
        session.add_all(
            JobMetric(job_id=j, attempt=1, kind="metrics", step=s, values={"loss": 1 / (s + 1)})
            for j in (1, 2)
            for s in range(50)
        )
        session.commit()
        cache = SeriesCache()
        first = chart_series(session, cache, [1, 2], "step", 10, None)
        assert len(first[1]["loss"].x) == 10 and first[1]["loss"].stored == 50
        assert chart_series(session, cache, [1, 2], "step", 10, None)[1]["loss"] is first[1]["loss"]
        session.add(JobMetric(job_id=1, attempt=2, kind="metrics", step=50, values={"loss": 0.001}))
        session.commit()
        again = chart_series(session, cache, [1, 2], "step", 10, None)
        assert (
            again[1]["loss"].stored == 51 and again[1]["loss"].x[-1] == 50 and again[1]["loss"].y[-1] == 0.001
        )
        assert again[2]["loss"] is first[2]["loss"]  # job 2 did not change: not read again
        exact = chart_series(session, cache, [1, 2], "epoch", 10, None)
        assert exact == {1: {}, 2: {}}  # no report has an epoch


def add_run(session: Session, job_id: int, reports: int, status: str = "succeeded") -> None:
    """A job with `reports` reports of two metrics, an epoch every 100 steps."""
    session.add(Job(id=job_id, queue="cpu", spec={}, status=status))
    session.add_all(
        JobMetric(
            job_id=job_id,
            attempt=1,
            kind="metrics",
            step=s,
            epoch=s // 100,
            values={"loss": 1 / (s + 1) + (s % 7) / 100, "acc": s % 13},
        )
        for s in range(reports)
    )
    session.commit()


def test_summaries_answer_the_charts_until_the_job_reports_more(engine: Engine):
    big, small = 1, 2  # more points than a summary holds, and fewer
    with Session(engine) as session:
        add_run(session, big, 3 * SUMMARY_POINTS)
        add_run(session, small, 50)
        shapes = [("step", 1000, None), ("step", 50, None), ("epoch", 1000, {"acc"}), ("step", 10, None)]
        raw = [chart_series(session, SeriesCache(), [big, small], *shape) for shape in shapes]
        assert summarize(session, big) == summarize(session, small) == 4  # 2 metrics x 2 axes
        assert session.get(Job, big).summarized  # type: ignore[union-attr]
        [stored] = session.exec(
            select(MetricSeries).where(MetricSeries.job_id == big, MetricSeries.metric == "loss")
        ).all()[:1]
        assert (len(stored.x), stored.stored) == (SUMMARY_POINTS, 3 * SUMMARY_POINTS)

        # Every report but the newest gone: what answers now can only come from the summaries.
        for job_id in (big, small):
            newest = session.exec(select(func.max(JobMetric.id)).where(JobMetric.job_id == job_id)).one()
            session.execute(
                delete(JobMetric).where(col(JobMetric.job_id) == job_id, col(JobMetric.id) < newest)
            )
        session.commit()
        summarized = [chart_series(session, SeriesCache(), [big, small], *shape) for shape in shapes]
        # Exact where the summary is what the rows would give: all of a short series, or as many
        # points as the summary holds.
        assert summarized[0] == raw[0] and summarized[2] == raw[2]
        assert summarized[1][small] == raw[1][small]
        assert set(summarized[2][big]) == {"acc"}
        assert summarized[1][small]["loss"].stored == 50
        # Fewer points: downsampled from the summary, the ends and the count stored kept.
        few, whole = summarized[3][big]["loss"], raw[0][big]["loss"]
        assert len(few.x) == 10 and few.stored == 3 * SUMMARY_POINTS
        assert (few.x[0], few.y[0], few.x[-1], few.y[-1]) == (
            whole.x[0],
            whole.y[0],
            whole.x[-1],
            whole.y[-1],
        )

        # More points than a summary holds: the rows are read (only the newest is left).
        more = chart_series(session, SeriesCache(), [big, small], "step", 2000, None)
        assert more[big]["loss"].stored == 1 and more[small]["loss"].stored == 1

        # A report with a higher id makes the job's summaries stale: its rows answer again.
        session.add(JobMetric(job_id=big, attempt=2, kind="metrics", step=5000, values={"loss": 0.5}))
        session.commit()
        stale = chart_series(session, SeriesCache(), [big, small], "step", 1000, None)
        assert stale[big]["loss"].stored == 2 and stale[big]["loss"].x == [3 * SUMMARY_POINTS - 1, 5000]
        assert stale[small] == summarized[0][small]  # still from its summaries


def test_summarizer_takes_ended_jobs_oldest_first_and_sets_aside_one_that_fails(
    engine: Engine, caplog: pytest.LogCaptureFixture
):
    with Session(engine) as session:
        add_run(session, 1, 20, status="running")
        add_run(session, 2, 20)
        add_run(session, 3, 20, status="failed")
        add_run(session, 4, 20, status="cancelled")
        # Job 4's reports cannot be parsed: its summary fails every time.
        session.execute(text("UPDATE job_metrics SET \"values\" = '{broken' WHERE job_id = 4"))
        session.commit()
    summarizer = SeriesSummarizer(engine, batch=1)
    assert summarizer.round() == 1  # the oldest ended job first
    with Session(engine) as session:
        assert [j.summarized for j in session.exec(select(Job).order_by(col(Job.id)))] == [
            False,
            True,
            False,
            False,
        ]
    assert summarizer.round() == 1
    with caplog.at_level("ERROR", logger="master.experiments.summaries"):
        assert summarizer.round() == 0
        assert len(caplog.records) == 1 and "job 4" in caplog.records[0].getMessage()
        assert summarizer.round() == 0  # set aside: not tried again at once
        assert len(caplog.records) == 1
    with Session(engine) as session:
        summarized = {j.id: j.summarized for j in session.exec(select(Job))}
        assert summarized == {1: False, 2: True, 3: True, 4: False}
        assert (
            session.exec(select(func.count()).select_from(MetricSeries).where(MetricSeries.job_id == 4)).one()
            == 0
        )
        assert (
            session.exec(select(func.count()).select_from(MetricSeries).where(MetricSeries.job_id == 3)).one()
            == 4
        )


# Against a real master ----------------------------------------------------------------------------


def reporter(scale: float) -> dict:
    source = REPORTER.format(reports=REPORTS)
    return {"command": ["python", "-c", source], "queue": "cpu", "hyperparameters": {"scale": scale}}


def test_compare_returns_exactly_the_stored_values(
    api: httpx.Client, master: MasterProcess, worker: WorkerProcess
):
    ids = []
    for scale in (1.0, 2.0):
        answer = api.post("/jobs", json={**reporter(scale), "tags": ["cmp"], "max_epochs": 7})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    for job_id in ids:
        assert wait_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    # The master's series loop summarizes each ended job.
    engine = make_engine(master.settings.database_url)
    try:

        def summarized() -> bool:
            with Session(engine) as session:
                jobs = session.exec(select(Job).where(col(Job.id).in_(ids))).all()
                return all(job.summarized for job in jobs)

        wait_for(summarized, what="both jobs summarized")
        with Session(engine) as session:
            kept = session.exec(select(MetricSeries).where(col(MetricSeries.job_id).in_(ids))).all()
    finally:
        engine.dispose()
    assert sorted((s.job_id, s.axis, s.metric, s.stored) for s in kept) == sorted(
        (job_id, axis, name, stored)
        for job_id in ids
        for axis, name, stored in [
            ("step", "val_loss", REPORTS),
            ("step", "val_acc", REPORTS),
            ("epoch", "val_loss", REPORTS // 5),
            ("epoch", "val_acc", REPORTS // 5),
            ("epoch", "test_acc", 1),
        ]
    )
    # Answered from the summaries (all points fit), exactly what the rows give (5,000 points: read).
    from_summaries = api.get("/compare", params={"jobs": f"{ids[1]},{ids[0]}", "points": 1000}).json()

    full = api.get("/compare", params={"jobs": f"{ids[1]},{ids[0]}", "points": 5000})
    assert full.status_code == 200, full.text
    body = full.json()
    assert body["x"] == "step"
    assert [j["id"] for j in body["jobs"]] == [ids[1], ids[0]]  # in the order asked
    assert body["jobs"][0]["tags"] == ["cmp"] and body["jobs"][0]["project"] == "default"
    assert set(body["metrics"]) == {"val_loss", "val_acc"}  # test_acc has no step
    for job_id in ids:
        stored = api.get(f"/jobs/{job_id}/metrics", params={"limit": 10000}).json()
        for name in ("val_loss", "val_acc"):
            [series] = [s for s in body["metrics"][name] if s["job_id"] == job_id]
            expected = [
                (m["step"], m["values"][name])
                for m in stored
                if m["step"] is not None and name in m["values"]
            ]
            assert list(zip(series["x"], series["y"], strict=True)) == expected
            assert series["stored"] == len(expected) == REPORTS
        job = api.get(f"/jobs/{job_id}").json()
        for row in body["final"]:
            assert row["values"][[j["id"] for j in body["jobs"]].index(job_id)] == job["metrics"].get(
                row["metric"]
            )
    assert from_summaries == body
    final = {row["metric"]: row for row in body["final"]}
    assert final["val_loss"]["best"] == ids[0] and final["val_loss"]["lower_is_better"]
    assert final["test_acc"]["best"] == ids[1] and final["test_acc"]["values"] == [2.0, 1.0]
    spec = {row["field"]: row for row in body["spec"]}
    assert spec["hyperparameters.scale"] == {
        "field": "hyperparameters.scale",
        "values": [2.0, 1.0],
        "differs": True,
    }
    assert spec["max_epochs"]["differs"] is False

    # Downsampled: at most `points`, first and last kept; the final values stay exact.
    small = api.get("/compare", params={"jobs": f"{ids[0]},{ids[1]}", "points": 10}).json()
    for series in small["metrics"]["val_loss"]:
        whole = next(s for s in body["metrics"]["val_loss"] if s["job_id"] == series["job_id"])
        assert len(series["x"]) == 10 and series["stored"] == REPORTS
        assert series["x"][0] == whole["x"][0] and series["x"][-1] == whole["x"][-1]
        assert series["y"][-1] == whole["y"][-1]
    # The same finals, in the other job order.
    assert [r["metric"] for r in small["final"]] == [r["metric"] for r in body["final"]]
    assert all(a["values"] == b["values"][::-1] for a, b in zip(small["final"], body["final"], strict=True))

    by_epoch = api.get("/compare", params={"jobs": f"{ids[0]},{ids[1]}", "x": "epoch"}).json()
    [epochs] = [s for s in by_epoch["metrics"]["val_loss"] if s["job_id"] == ids[0]]
    assert epochs["x"] == list(range(REPORTS // 5))
    assert by_epoch["metrics"]["test_acc"][0]["x"] == [99]

    only = api.get("/compare", params={"jobs": f"{ids[0]},{ids[1]}", "metric": "val_acc"}).json()
    assert set(only["metrics"]) == {"val_acc"} and [r["metric"] for r in only["final"]] == ["val_acc"]

    shown = run_cli(master, "compare", str(ids[0]), str(ids[1]))
    assert shown.exit_code == 0, shown.output
    assert "hyperparameters.scale" in shown.output and "final metrics" in shown.output
    assert "val_loss (lower is better)" in shown.output and " *" in shown.output
    raw = run_cli(master, "compare", str(ids[0]), str(ids[1]), "--json", "--x", "epoch")
    assert json.loads(raw.output)["x"] == "epoch"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_compare_field_errors(api: httpx.Client, master: MasterProcess):
    ids = []
    for _ in range(3):
        answer = api.post("/jobs", json={"command": ["true"], "queue": "cpu"})
        ids.append(answer.json()["id"])
    a, b, c = ids
    for jobs in (
        f"{a}",
        f"{a},{a}",
        "x,y",
        f"{a},-1",
        f"{a},²",
        f"{a},{2**63}",
        ",".join(str(i) for i in range(1, 22)),
        "",
    ):
        answer = api.get("/compare", params={"jobs": jobs})
        assert answer.status_code == 422, (jobs, answer.text)
        assert answer.json()["field"] == "jobs"
    missing = api.get("/compare", params={"jobs": f"{a},{c + 1000}"})
    assert missing.status_code == 404 and missing.json()["field"] == "jobs"
    for params, field in (({"points": 5}, "points"), ({"points": 5001}, "points"), ({"x": "time"}, "x")):
        answer = api.get("/compare", params={"jobs": f"{a},{b}", **params})
        assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    # Jobs without any metrics yet: empty series and finals, the spec table still there.
    empty = api.get("/compare", params={"jobs": f"{a},{b},{c}"}).json()
    assert empty["metrics"] == {} and empty["final"] == []
    assert {row["field"] for row in empty["spec"]} >= {"command", "queue", "max_epochs"}
    assert not any(row["differs"] for row in empty["spec"])
    one = run_cli(master, "compare", str(a))
    assert one.exit_code == 1 and one.output.strip().startswith("error: ") and "(field: jobs)" in one.output
    assert len(one.output.strip().splitlines()) == 1


@pytest.fixture
def own_master(settings: Settings, tmp_path: Path) -> Iterator[MasterProcess]:
    own = settings.model_copy(update={"job_visibility": "own"})
    with MasterProcess(tmp_path / "own-master", own) as proc:
        yield proc


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_compare_hides_another_users_job_when_visibility_is_own(own_master: MasterProcess):
    with (
        own_master.client(timeout=30) as admin,
        user_client(admin, "alice") as alice,
        user_client(admin, "bob") as bob,
    ):
        mine = [
            alice.post("/jobs", json={"command": ["true"], "queue": "cpu"}).json()["id"] for _ in range(2)
        ]
        theirs = bob.post("/jobs", json={"command": ["true"], "queue": "cpu"}).json()["id"]
        assert alice.get("/compare", params={"jobs": f"{mine[0]},{mine[1]}"}).status_code == 200
        hidden = alice.get("/compare", params={"jobs": f"{mine[0]},{theirs}"})
        assert hidden.status_code == 404 and hidden.json()["field"] == "jobs", hidden.text
        assert str(theirs) in hidden.json()["message"]
        # Admins see every job.
        assert admin.get("/compare", params={"jobs": f"{mine[0]},{theirs}"}).status_code == 200
