"""Sweeps on a real farm: the example sweep on digits with parallelism 2 (pruning at least one
trial), a master restart in the middle of a sweep, cancelling one, a member's queued cap, and the
`trainfarm sweep` commands."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.settings import Settings
from tests.conftest import DIGITS, run_cli, upload_dataset, wait_for
from tests.fairshare_support import PY, make_member, set_limits
from trainfarm.services.farm import MasterProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep.yaml"
ENDED = {"succeeded", "failed", "cancelled", "pruned"}

#: A trial that needs no torch: reports `score` = x * epoch / epochs each epoch, `pause` s apart.
SCORE_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    from worker.runtime import report
    hp = json.loads(os.environ["TRAINFARM_HYPERPARAMETERS"])
    epochs = int(hp.get("epochs", 5))
    for epoch in range(1, epochs + 1):
        time.sleep(float(hp.get("pause", 0.2)))
        report({"score": hp["x"] * epoch / epochs}, step=epoch, epoch=epoch)
    """
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Rounds every 0.2 s: a trial's epochs are seen, and judged, while it runs.
    return settings.model_copy(update={"sweep_interval": 0.2})


def score_sweep(name: str = "scores", **changes: Any) -> dict[str, Any]:
    """A sweep of short command jobs over `x`; `pause` and `epochs` set how long each runs."""
    hyper = {"pause": changes.pop("pause", 0.2), "epochs": changes.pop("epochs", 5)}
    return {
        "name": name,
        "base": {"command": [PY, "-c", SCORE_SCRIPT], "queue": "cpu", "hyperparameters": hyper},
        "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": "random",
        "pruner": "none",
        "budget": 4,
        "parallelism": 2,
        "seed": 5,
        **changes,
    }


def detail(api: httpx.Client, sweep_id: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = api.get(f"/sweeps/{sweep_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def sweep_jobs(api: httpx.Client, sweep_id: int) -> list[dict[str, Any]]:
    return api.get("/jobs", params={"sweep": sweep_id, "limit": 500}).json()["items"]


def create(api: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    answer = api.post("/sweeps", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_example_sweep_on_digits_prunes_and_finds_its_best_trial(api, master, start_worker):
    start_worker(concurrency=2)
    upload_dataset(api, DIGITS)
    body = yaml.safe_load(EXAMPLE.read_text())
    # Fewer epochs than the example's 15 keep the test short; enough that a bad trial is seen
    # behind the median while it still runs.
    body["base"]["max_epochs"] = 6
    started = time.monotonic()
    sweep_id = create(api, body)

    most_at_once = 0

    def ended() -> dict[str, Any] | None:
        nonlocal most_at_once
        not_ended = [j for j in sweep_jobs(api, sweep_id) if j["status"] not in ENDED]
        most_at_once = max(most_at_once, len(not_ended))
        sweep = detail(api, sweep_id)
        return sweep if sweep["status"] != "running" else None

    sweep: Any = wait_for(ended, timeout=400, interval=0.3, what="the sweep to end")
    run_time = time.monotonic() - started
    trials = sweep["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    print(f"\nexample sweep: {len(trials)} trials in {run_time:.0f} s, {len(pruned)} pruned, "
          f"best val_acc {sweep['best_value']} (trial {sweep['best_trial']})")  # fmt: skip

    assert sweep["status"] == "succeeded", sweep
    assert [t["number"] for t in trials] == list(range(1, 13))
    assert most_at_once <= 2
    assert len(pruned) >= 1, trials
    for trial in pruned:
        job = api.get(f"/jobs/{trial['job_id']}").json()
        assert job["status"] == "pruned" and trial["job_status"] == "pruned"
        assert job["error"].startswith("pruned at epoch "), job["error"]
        assert "worse than the median" in job["error"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert sweep["best_value"] == max(t["value"] for t in complete)
    best = next(t for t in trials if t["number"] == sweep["best_trial"])
    best_job = api.get(f"/jobs/{sweep['best_job_id']}").json()
    assert best["job_id"] == best_job["id"]
    assert best_job["metrics"]["val_acc"] == sweep["best_value"] == best["value"]
    assert best_job["spec"]["hyperparameters"] == {**body["base"]["hyperparameters"], **best["params"]}
    assert best_job["name"] == f"digits-lr-{best['number']}" and f"sweep:{sweep_id}" in best_job["tags"]
    assert sweep["counts"] == {s: sum(t["state"] == s for t in trials) for s in {t["state"] for t in trials}}

    shown = run_cli(master, "sweep", "show", str(sweep_id))
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    best_line = next(line for line in lines if line.lstrip().startswith("*"))
    assert f" {sweep['best_trial']} " in best_line and "complete" in best_line
    assert "pruned" in shown.output and "12 trials" in shown.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_master_restart_mid_sweep_loses_nothing_and_duplicates_no_trial(api, master, start_worker):
    start_worker(concurrency=2)
    sweep_id = create(api, score_sweep(budget=4, epochs=8, pause=0.4))
    wait_for(
        lambda: any(t["intermediate"] for t in detail(api, sweep_id)["trials"]),
        timeout=60,
        what="a trial's first epoch",
    )
    master.stop()
    master.start()

    sweep: Any = wait_for(
        lambda: (s := detail(api, sweep_id))["status"] != "running" and s, timeout=90, what="the sweep to end"
    )
    assert sweep["status"] == "succeeded", sweep
    trials = sweep["trials"]
    assert [t["number"] for t in trials] == [1, 2, 3, 4]
    jobs = sweep_jobs(api, sweep_id)
    assert sorted(j["id"] for j in jobs) == sorted(t["job_id"] for t in trials)  # one job per trial
    assert sorted(j["name"] for j in jobs) == [f"scores-{n}" for n in range(1, 5)]
    for trial in trials:
        assert trial["state"] == "complete"
        # Every epoch, the ones reported while no master ran included.
        assert sorted(int(e) for e in trial["intermediate"]) == list(range(1, 9))
        assert trial["value"] == pytest.approx(trial["params"]["x"])
    assert len({t["params"]["x"] for t in trials}) == 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_cancel_stops_every_trial_and_starts_no_more(api, master, start_worker):
    start_worker(concurrency=2)
    sweep_id = create(api, score_sweep(budget=6, epochs=200, pause=0.2))
    wait_for(
        lambda: [t["job_status"] for t in detail(api, sweep_id)["trials"]] == ["running", "running"],
        timeout=60,
        what="two trials running",
    )
    member = make_member(api, "mallory")
    refused = api.post(f"/sweeps/{sweep_id}/cancel", headers=member)
    assert refused.status_code == 403 and "only its owner or an admin" in refused.text

    cancelled = run_cli(master, "sweep", "cancel", str(sweep_id))
    assert cancelled.exit_code == 0, cancelled.output
    assert f"sweep {sweep_id} cancelled" in cancelled.output
    again = run_cli(master, "sweep", "cancel", str(sweep_id))
    assert again.exit_code == 1
    assert again.output.strip() == f"error: sweep {sweep_id} has already ended (cancelled)"

    # The driver settles the trials of the cancelled sweep as their jobs end: rounds ran after the
    # cancel, and none of them started a trial.
    def settled() -> dict[str, Any] | None:
        sweep = detail(api, sweep_id)
        return sweep if all(t["finished_at"] for t in sweep["trials"]) else None

    sweep: Any = wait_for(settled, timeout=60, what="the trials to settle")
    assert sweep["status"] == "cancelled" and sweep["finished_at"]
    assert [(t["number"], t["state"], t["job_status"]) for t in sweep["trials"]] == [
        (1, "failed", "cancelled"),
        (2, "failed", "cancelled"),
    ]
    assert len(sweep_jobs(api, sweep_id)) == 2
    listed = run_cli(master, "jobs", "--sweep", str(sweep_id))
    assert listed.exit_code == 0, listed.output
    # A row's first line starts with its id (a wrapped cell continues on lines that start blank).
    rows = [line.split()[0] for line in listed.output.splitlines() if line[:1].isdigit()]
    assert rows == [str(j["id"]) for j in sweep_jobs(api, sweep_id)], listed.output
    entries = api.get("/audit", params={"action": "sweep.cancel"}).json()
    items = entries["items"] if isinstance(entries, dict) else entries
    assert [e["target"] for e in items if e["action"] == "sweep.cancel"] == [f"sweep {sweep_id}"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_sweep_keeps_within_its_owners_queued_cap(api, master, start_worker, tmp_path):
    member = make_member(api, "ada")
    set_limits(api, "ada", "cpu", max_queued=1)
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(score_sweep("capped", budget=3, parallelism=3, epochs=2, pause=0.1)))
    token = member["Authorization"].removeprefix("Bearer ")
    made = run_cli(master, "sweep", "create", str(spec_file), token=token)
    assert made.exit_code == 0, made.output
    sweep_id = int(made.output.split()[1])

    # No worker yet: one trial queued fills the cap, and the sweep says why it waits.
    waiting: Any = wait_for(
        lambda: "max_queued" in ((s := detail(api, sweep_id, member))["error"] or "") and s,
        timeout=30,
        what="the sweep to wait for the cap",
    )
    assert waiting["error"].startswith("waiting: ada has 1 jobs queued on cpu")
    assert len(waiting["trials"]) == 1 and waiting["status"] == "running"

    start_worker()
    most_queued = 0

    def ended() -> dict[str, Any] | None:
        nonlocal most_queued
        queued = [j for j in sweep_jobs(api, sweep_id) if j["status"] == "queued"]
        most_queued = max(most_queued, len(queued))
        sweep = detail(api, sweep_id, member)
        return sweep if sweep["status"] != "running" else None

    sweep: Any = wait_for(ended, timeout=90, interval=0.1, what="the sweep to end")
    assert sweep["status"] == "succeeded", sweep
    assert [t["state"] for t in sweep["trials"]] == ["complete"] * 3
    assert most_queued <= 1
    assert sweep["error"] is None  # the wait reason went with the wait
    assert sweep["owner"] == "ada"
    assert {j["owner"] for j in sweep_jobs(api, sweep_id)} == {"ada"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_create_checks_the_base_job_as_a_submission(api, master, tmp_path):
    missing = api.post("/sweeps", json=score_sweep(base={"command": ["true"], "datasets": ["nope.csv"]}))
    assert missing.status_code == 422, missing.text
    assert missing.json()["field"] == "base.datasets[0]"
    grid = api.post("/sweeps", json=score_sweep(sampler="grid"))
    assert grid.status_code == 422 and "a grid sweep takes" in grid.text
    assert api.get("/sweeps/999").status_code == 404

    viewer_password = "viewer-password-123"
    assert (
        api.post("/users", json={"name": "vic", "role": "viewer", "password": viewer_password}).status_code
        == 201
    )
    login = api.post("/auth/login", data={"username": "vic", "password": viewer_password}).json()
    viewer = {"Authorization": f"Bearer {login['access_token']}"}
    assert api.post("/sweeps", json=score_sweep(), headers=viewer).status_code == 403

    first = create(api, score_sweep("first"))
    second = create(api, score_sweep("second", base={**score_sweep()["base"], "project": "other"}))
    page = api.get("/sweeps", params={"limit": 1}).json()
    assert [s["id"] for s in page["items"]] == [second] and page["next_before"] == second
    older = api.get("/sweeps", params={"before": second}).json()
    assert [s["id"] for s in older["items"]] == [first] and older["next_before"] is None
    assert [s["id"] for s in api.get("/sweeps", params={"project": "other"}).json()["items"]] == [second]
    assert api.get("/sweeps", params={"status": "bogus"}).status_code == 422
    audit = api.get("/audit", params={"action": "sweep.create"}).json()
    items = audit["items"] if isinstance(audit, dict) else audit
    assert sorted(e["target"] for e in items if e["action"] == "sweep.create") == [
        f"sweep {first}",
        f"sweep {second}",
    ]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**score_sweep(), "objective": {"metric": "score", "direction": "up"}}))
    result = run_cli(master, "sweep", "create", str(bad))
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and "(field: objective.direction)" in line
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    result = run_cli(master, "sweep", "create", str(broken))
    assert (
        result.exit_code == 1
        and result.output.strip().startswith("error: ")
        and "not valid YAML" in result.output
    )
    as_json = tmp_path / "sweep.json"
    as_json.write_text(json.dumps(score_sweep("from-json")))
    result = run_cli(master, "sweep", "create", str(as_json))
    assert result.exit_code == 0 and "(from-json) started" in result.output
    listed = run_cli(master, "sweep", "list")
    assert listed.exit_code == 0 and "from-json" in listed.output and "second" in listed.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_create_follow_waits_for_the_end_and_shows_the_trials(master, start_worker, tmp_path):
    start_worker()
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(
        yaml.safe_dump(score_sweep("followed", budget=2, parallelism=1, epochs=2, pause=0.1))
    )
    result = run_cli(master, "sweep", "create", str(spec_file), "--follow")
    assert result.exit_code == 0, result.output
    assert "(followed) started" in result.output
    assert "succeeded" in result.output and "2 trials: 2 complete" in result.output
    rows = [line.split() for line in result.output.splitlines() if "complete" in line and "x=" in line]
    assert len(rows) == 2 and rows[0][0] == "*"  # the best first, marked
    values = [float(row[-2]) for row in rows]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sweep_ids_past_32_bits_are_refused_naming_the_field(api):
    """Sweep ids are 32-bit in PostgreSQL: a larger one is a 422 naming it, never the driver's
    out-of-range error as a 500."""
    for path, params, field in [
        ("/sweeps/2147483648", {}, "sweep_id"),
        ("/sweeps", {"before": 2**31}, "before"),
        ("/jobs", {"sweep": 2**31}, "sweep"),
    ]:
        answer = api.get(path, params=params)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["field"] == field, answer.text
    assert api.post("/sweeps/2147483648/cancel").status_code == 422
    assert api.get("/sweeps/2147483647").status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_under_own_visibility_another_users_sweep_shows_no_details(settings: Settings, tmp_path: Path):
    own = settings.model_copy(update={"job_visibility": "own"})
    with MasterProcess(tmp_path / "master", own) as farm, farm.client(timeout=30) as admin:
        alice, bob = make_member(admin, "alice"), make_member(admin, "bob")
        sweep_id = create(admin, score_sweep("alices", budget=2), headers=alice)
        # No worker: the driver's trials wait as queued jobs, which is all this test needs.
        wait_for(lambda: len(detail(admin, sweep_id, alice)["trials"]) == 2, timeout=60, what="two trials")
        mine = detail(admin, sweep_id, alice)
        assert mine["spec"]["objective"]["metric"] == "score"

        [listed] = admin.get("/sweeps", headers=bob).json()["items"]
        assert (listed["id"], listed["owner"], listed["spec"]) == (sweep_id, "alice", {})
        hidden = admin.get(f"/sweeps/{sweep_id}", headers=bob)
        assert hidden.status_code == 404 and hidden.json()["field"] == "sweep_id"
        refused = admin.post(f"/sweeps/{sweep_id}/cancel", headers=bob)
        assert refused.status_code == 403, refused.text
        trials = admin.get("/jobs", params={"sweep": sweep_id}, headers=bob).json()["items"]
        assert len(trials) == 2 and all(j["details_hidden"] and j["spec"] == {} for j in trials)
        for job in trials:
            assert admin.get(f"/jobs/{job['id']}/metrics", headers=bob).status_code == 404
        # The owner and admins see it whole.
        assert detail(admin, sweep_id)["spec"] == mine["spec"]
        assert admin.post(f"/sweeps/{sweep_id}/cancel", headers=alice).status_code == 200
