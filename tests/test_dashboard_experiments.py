"""The dashboard's experiment views in a real headless chromium against a real master and worker:
the job list's project and tag filters and its boxes for compare, the compare view (a uPlot chart
per metric with one series per job, x by step or epoch, the differing spec fields, the best final
values), the re-run form and the links both ways, and a sweep's page (trials, the objective over
trials, parallel coordinates, the best trial). Screenshots go to the test-artifact folder."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.browser_support import OpenPage, browser_pages, log_in, screenshot, token_for
from tests.conftest import wait_for, wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: A job that reports four epochs at once (step = 10 x epoch); the higher its `lr`, the better.
TRAINER_SOURCE = """
import json, os
hp = json.loads(os.environ["TRAINFARM_HYPERPARAMETERS"])
lr, width = float(hp["lr"]), float(hp.get("width", 32))
with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
    for epoch in range(1, 5):
        acc = 1 - 1 / (1 + epoch * lr * width / 3)
        event = {"kind": "metrics", "epoch": epoch, "max_epochs": 4, "step": epoch * 10,
                 "metrics": {"train_loss": 1.05 - acc, "val_loss": 1 - acc, "val_acc": acc}}
        fh.write(json.dumps(event) + "\\n")
"""
TRAINER = ["python", "-c", TRAINER_SOURCE]
METRICS = ("train_loss", "val_acc", "val_loss")


@pytest.fixture
def open_page() -> Iterator[OpenPage]:
    with browser_pages() as open_at:
        yield open_at


def _submit(api: httpx.Client, name: str, lr: float, project: str, tags: list[str]) -> int:
    spec = {
        "name": name,
        "command": TRAINER,
        "queue": "cpu",
        "project": project,
        "tags": tags,
        "hyperparameters": {"lr": lr, "batch": 32},
    }
    made = api.post("/jobs", json=spec)
    assert made.status_code == 201, made.text
    return int(made.json()["id"])


def _admin_page(master: MasterProcess, open_page: OpenPage, hash_: str = "") -> tuple[Any, Any]:
    from playwright.sync_api import expect

    page, watch = open_page(f"{master.url}/{hash_}")
    log_in(page, master.credentials.user, master.credentials.password)
    expect(page.locator("#whoami")).to_contain_text(master.credentials.user)
    return page, watch


def _chart(page: Any, selector: str) -> dict[str, Any]:
    """What uPlot holds in the chart at `selector`: its series labels (x first) and data columns."""
    return dict(
        page.eval_on_selector(
            selector,
            "(box) => ({labels: box.uplotChart.series.map((s) => s.label), data: box.uplotChart.data})",
        )
    )


@sqlite_only
def test_filters_compare_and_rerun_in_a_real_browser(
    master: MasterProcess,
    api: httpx.Client,
    start_worker: Callable[..., WorkerProcess],
    open_page: OpenPage,
) -> None:
    from playwright.sync_api import expect

    start_worker("node-1", queues="cpu", concurrency=2)
    fast = _submit(api, "fast", 0.3, "vision", ["baseline"])
    mid = _submit(api, "mid", 0.1, "vision", ["baseline", "study"])
    slow = _submit(api, "slow", 0.03, "nlp", ["study"])
    made = api.post("/users", json={"name": "erin", "role": "member", "password": "erin-pw-123"})
    assert made.status_code == 201, made.text
    with master.client(token=token_for(master, "erin", "erin-pw-123")) as erin:
        erins = _submit(erin, "erins", 0.2, "nlp", ["study"])
    for job_id in (fast, mid, slow, erins):
        assert wait_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"

    page, watch = _admin_page(master, open_page)
    rows = page.locator("#jobs-body tr[data-id]")
    expect(rows).to_have_count(4)

    # Owner, project and tag filters narrow the list (GET /api/jobs?owner=..&project=..&tag=..).
    page.locator("#filter-owner").fill("erin")
    page.locator("#filter-owner").press("Tab")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#jobs-body tr[data-id='{erins}'] td.owner")).to_have_text("erin")
    page.locator("#filter-owner").fill("")
    page.locator("#filter-owner").press("Tab")
    expect(rows).to_have_count(4)

    page.locator("#filter-project").fill("vision")
    page.locator("#filter-project").press("Tab")
    expect(rows).to_have_count(2)
    expect(page.locator(f"#jobs-body tr[data-id='{slow}']")).to_have_count(0)
    page.locator("#filter-tag").fill("study")
    page.locator("#filter-tag").press("Tab")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#jobs-body tr[data-id='{mid}'] td.project")).to_have_text("visionbaselinestudy")
    page.locator("#filter-project").fill("")
    page.locator("#filter-project").press("Tab")
    expect(rows).to_have_count(3)  # tag study: mid, slow and erin's
    page.locator("#filter-tag").fill("")
    page.locator("#filter-tag").press("Tab")
    expect(rows).to_have_count(4)

    # Compare wants two to twenty boxes ticked.
    compare_button = page.locator("#compare-selected")
    page.locator(f"#jobs-body tr[data-id='{fast}'] input.pick").check()
    expect(compare_button).to_be_disabled()
    for job_id in (mid, slow):
        page.locator(f"#jobs-body tr[data-id='{job_id}'] input.pick").check()
    expect(compare_button).to_have_text("Compare selected (3)")
    compare_button.click()

    # One uPlot chart per metric, one series per job, by step.
    expect(page.locator("#compare-view")).to_be_visible()
    assert re.fullmatch(rf"#compare\?jobs={fast},{mid},{slow}&x=step", page.evaluate("location.hash"))
    for metric in METRICS:
        box = f"#compare .compare-chart-box[data-metric='{metric}']"
        expect(page.locator(box)).to_have_attribute("data-series", "3")
        expect(page.locator(f"{box} .uplot canvas")).to_have_count(1)
    val_acc = "#compare .compare-chart-box[data-metric='val_acc']"
    drawn = _chart(page, val_acc)
    assert drawn["labels"] == ["step", f"#{fast}", f"#{mid}", f"#{slow}"]
    assert drawn["data"][0] == [10, 20, 30, 40]

    # The spec fields that differ are highlighted, the others not; the best final value is marked.
    expect(page.locator("#compare tr[data-field='hyperparameters.lr']")).to_have_class(
        re.compile(r"\bdiffers\b")
    )
    expect(page.locator("#compare tr[data-field='hyperparameters.batch']")).not_to_have_class(
        re.compile(r"\bdiffers\b")
    )
    expect(page.locator("#compare tr[data-field='project']")).to_have_class(re.compile(r"\bdiffers\b"))
    for metric in ("val_acc", "val_loss"):
        best = page.locator(f"#compare table.compare-final td.best[data-metric='{metric}']")
        expect(best).to_have_count(1)
        expect(
            page.locator(
                f"#compare table.compare-final tr[data-job='{fast}'] td.best[data-metric='{metric}']"
            )
        ).to_contain_text("★")

    # x by epoch: the same series, re-drawn over epochs.
    page.locator("#compare-x").select_option("epoch")
    expect(page.locator(val_acc)).to_have_attribute("data-x", "epoch")
    drawn = _chart(page, val_acc)
    assert drawn["labels"][0] == "epoch" and len(drawn["labels"]) == 4
    assert drawn["data"][0] == [1, 2, 3, 4]
    screenshot(page, "compare")
    watch.check(page)

    # The job's detail: its chart drawn by uPlot, then its re-run form, prefilled from its spec.
    page.locator(f"#compare .compare-jobs a[href='#job-{mid}']").click()
    expect(page.locator("#detail h2")).to_have_text(f"Job #{mid} · mid")
    detail_chart = page.locator("#detail .chart-wrap[data-chart=uplot]")
    expect(detail_chart).to_have_attribute("data-series", "3")
    expect(detail_chart.locator(".uplot canvas")).to_have_count(1)
    expect(page.locator("#detail .origin .project")).to_have_text("project vision")
    page.locator("#detail a.button-link", has_text="Re-run").click()
    form = page.locator("#rerun-form")
    expect(form.locator("input[name='hp.lr']")).to_have_value("0.1")
    expect(form.locator("input[name='hp.batch']")).to_have_value("32")
    expect(form.locator("input[name=tags]")).to_have_value("baseline, study")
    form.locator("input[name='hp.lr']").fill("0.05")
    form.locator("input[name=tags]").fill("study, rerun")
    form.locator("button[type=submit]").click()

    # The new job opens; it links to the job it re-runs, and that one back to it.
    expect(page.locator("#detail .rerun-of a")).to_have_text(f"#{mid}")
    new_id = int(page.evaluate("location.hash").removeprefix("#job-"))
    new = api.get(f"/jobs/{new_id}").json()
    assert new["rerun_of"] == mid
    assert new["spec"]["hyperparameters"] == {"lr": 0.05, "batch": 32}
    assert new["tags"] == ["study", "rerun"]
    screenshot(page, "rerun-new-job")
    page.locator("#detail .rerun-of a").click()
    expect(page.locator("#detail h2")).to_have_text(f"Job #{mid} · mid")
    expect(page.locator("#detail .reruns a")).to_have_text([f"#{new_id}"])
    assert wait_status(api, new_id, {"succeeded", "failed"})["status"] == "succeeded"
    watch.check(page)


SWEEP = {
    "name": "lr-width",
    "base": {"command": TRAINER, "queue": "cpu", "project": "vision", "hyperparameters": {"batch": 32}},
    "space": {
        "lr": {"type": "log_uniform", "low": 0.001, "high": 0.3},
        "width": {"type": "choice", "values": [8, 16, 32]},
    },
    "objective": {"metric": "val_acc", "direction": "maximize"},
    "sampler": "random",
    "pruner": "none",
    "budget": 4,
    "parallelism": 2,
    "seed": 7,
}


@sqlite_only
def test_a_sweeps_page_in_a_real_browser(
    master: MasterProcess,
    api: httpx.Client,
    start_worker: Callable[..., WorkerProcess],
    open_page: OpenPage,
) -> None:
    from playwright.sync_api import expect

    start_worker("node-1", queues="cpu", concurrency=2)
    made = api.post("/sweeps", json=SWEEP)
    assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]

    def ended() -> dict[str, Any] | None:
        sweep = api.get(f"/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] != "running" else None

    sweep: dict[str, Any] = wait_for(ended, timeout=150, what="the sweep to end")  # type: ignore[assignment]
    assert sweep["status"] == "succeeded", sweep
    trials = sorted(sweep["trials"], key=lambda t: t["number"])
    assert len(trials) == 4 and all(t["state"] == "complete" for t in trials)
    best = sweep["best_trial"]

    page, watch = _admin_page(master, open_page)
    page.locator("#nav-sweeps").click()
    expect(page.locator("#sweeps-view")).to_be_visible()
    page.locator(f"#sweeps-body tr[data-id='{sweep_id}']").click()

    # The trials table, the best trial marked in it and named above it.
    table_rows = page.locator("#sweep table.sweep-trials tbody tr[data-trial]")
    expect(table_rows).to_have_count(4)
    expect(page.locator(f"#sweep tr.best[data-trial='{best}'] td.value")).to_contain_text("★")
    expect(page.locator("#sweep .sweep-best")).to_contain_text(f"trial {best} job #{sweep['best_job_id']}")

    # The objective over trials: the values, and the best so far never getting worse.
    expect(page.locator("#sweep-objective")).to_have_attribute("data-series", "2")
    objective = _chart(page, "#sweep-objective")
    assert objective["data"][0] == [t["number"] for t in trials]
    assert objective["data"][1] == pytest.approx([t["value"] for t in trials])
    best_so_far = objective["data"][2]
    assert best_so_far == sorted(best_so_far) and best_so_far[-1] == pytest.approx(sweep["best_value"])

    # Parallel coordinates: one line per trial over lr (log), width (its choice's index), val_acc.
    expect(page.locator("#sweep-parallel")).to_have_attribute("data-series", "4")
    parallel = _chart(page, "#sweep-parallel")
    assert parallel["data"][0] == [0, 1, 2]
    lo, hi = math.log(0.001), math.log(0.3)
    values = [t["value"] for t in trials]
    for trial, line in zip(trials, parallel["data"][1:], strict=True):
        lr, width = trial["params"]["lr"], trial["params"]["width"]
        assert line[0] == pytest.approx((math.log(lr) - lo) / (hi - lo))
        assert line[1] == pytest.approx([8, 16, 32].index(width) / 2)
        assert line[2] == pytest.approx((trial["value"] - min(values)) / (max(values) - min(values)))
    screenshot(page, "sweep")

    # A trial's job says which sweep it belongs to.
    page.locator(f"#sweep tr[data-trial='{best}'] a[href='#job-{sweep['best_job_id']}']").click()
    expect(page.locator("#detail .sweep-link")).to_have_text(f"sweep #{sweep_id} trial {best}")
    page.locator("#detail .sweep-link a").click()
    expect(page.locator("#sweep table.sweep-trials tbody tr[data-trial]")).to_have_count(4)
    watch.check(page)


@sqlite_only
def test_compare_overlays_twenty_jobs_and_no_more(
    master: MasterProcess,
    api: httpx.Client,
    start_worker: Callable[..., WorkerProcess],
    open_page: OpenPage,
) -> None:
    """The compare button takes 2 to 20 jobs; twenty draw twenty series in every chart."""
    from playwright.sync_api import expect

    start_worker("node-1", queues="cpu", concurrency=2)
    ran = [_submit(api, f"lr-{i}", 0.01 * (i + 1), "vision", []) for i in range(20)]
    extra = api.post("/jobs", json={"name": "extra", "command": ["python", "-c", "1"], "queue": "gpu"})
    assert extra.status_code == 201, extra.text
    for job_id in ran:
        assert wait_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"

    page, watch = _admin_page(master, open_page)
    expect(page.locator("#jobs-body tr[data-id]")).to_have_count(21)
    for box in page.locator("#jobs-body input.pick").all():
        box.check()
    button = page.locator("#compare-selected")
    expect(button).to_have_text("Compare selected (21)")
    expect(button).to_be_disabled()
    page.locator(f"#jobs-body tr[data-id='{extra.json()['id']}'] input.pick").uncheck()
    expect(button).to_be_enabled()
    button.click()

    expect(page.locator("#compare .compare-jobs li")).to_have_count(20)
    for metric in METRICS:
        box = f"#compare .compare-chart-box[data-metric='{metric}']"
        expect(page.locator(box)).to_have_attribute("data-series", "20")
        drawn = _chart(page, box)
        assert drawn["labels"][1:] == [f"#{job_id}" for job_id in ran]
        assert all(len(column) == 4 for column in drawn["data"])
    expect(page.locator("#compare tr[data-field='hyperparameters.lr'] td")).to_have_count(21)
    # Twenty columns of spec: the box keeps the fields that differ (the name and lr).
    page.locator("#compare-differs-only").check()
    expect(page.locator("#compare table.compare-spec tbody tr:visible")).to_have_count(2)
    expect(page.locator("#compare tr[data-field='hyperparameters.batch']")).to_be_hidden()
    screenshot(page, "compare-twenty")
    watch.check(page)
