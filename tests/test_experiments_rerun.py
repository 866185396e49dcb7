"""Re-running a job with changes (POST /api/jobs/{id}/rerun, `trainfarm rerun`) and finding jobs by
project and tags, against a real master (and a worker where the re-run must really run)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import log_texts, run_cli, user_client, wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: A job that prints its learning rate and reports it as a metric, through the job contract.
PRINT_LR = """
import json, os
hp = json.loads(os.environ["TRAINFARM_HYPERPARAMETERS"])
print("lr is", hp["lr"], flush=True)
with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
    fh.write(json.dumps({"kind": "metrics", "step": 1, "metrics": {"lr": hp["lr"]}}) + "\\n")
"""


def queued_job(api: httpx.Client, **extra: object) -> dict:
    answer = api.post("/jobs", json={"command": ["true"], "queue": "cpu", **extra})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_rerun_records_its_origin_and_merges_the_changes(api: httpx.Client):
    old = queued_job(
        api, hyperparameters={"lr": 0.1, "dropout": 0.5}, project="mnist", tags=["base"], max_epochs=5
    )
    changes = {"hyperparameters": {"lr": 0.01, "dropout": None, "depth": 3}, "max_epochs": 30}
    answer = api.post(f"/jobs/{old['id']}/rerun", json={"changes": changes})
    assert answer.status_code == 201, answer.text
    new = answer.json()
    assert new["rerun_of"] == old["id"] and new["id"] != old["id"]
    assert new["spec"]["hyperparameters"] == {"lr": 0.01, "depth": 3}  # null removed dropout
    assert new["spec"]["max_epochs"] == 30
    assert new["spec"]["command"] == ["true"] and new["project"] == "mnist" and new["tags"] == ["base"]
    again = api.post(f"/jobs/{old['id']}/rerun", json={}).json()  # no changes: the same spec again
    assert again["spec"] == {**old["spec"]} and again["rerun_of"] == old["id"]
    assert api.get(f"/jobs/{old['id']}").json()["reruns"] == [new["id"], again["id"]]
    detail = api.get(f"/jobs/{new['id']}").json()
    assert detail["rerun_of"] == old["id"] and detail["reruns"] == []

    for bad, field in (
        ({"max_epochs": 0}, "changes.max_epochs"),
        ({"bogus": 1}, "changes.bogus"),
        ({"queue": "tpu"}, "changes.queue"),
        ({"tags": ["no spaces allowed"]}, "changes.tags[0]"),
    ):
        refused = api.post(f"/jobs/{old['id']}/rerun", json={"changes": bad})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == field, refused.text
    assert api.post("/jobs/999999/rerun", json={}).status_code == 404
    assert api.get(f"/jobs/{old['id']}").json()["reruns"] == [new["id"], again["id"]]  # nothing stored


@sqlite_only
def test_a_viewer_cannot_rerun(api: httpx.Client, master: MasterProcess):
    job = queued_job(api)
    with user_client(api, "vic", role="viewer") as vic:
        refused = vic.post(f"/jobs/{job['id']}/rerun", json={"changes": {"max_epochs": 3}})
        assert refused.status_code == 403, refused.text
    assert api.get(f"/jobs/{job['id']}").json()["reruns"] == []


@pytest.fixture
def own_master(settings: Settings, tmp_path: Path) -> Iterator[MasterProcess]:
    own = settings.model_copy(update={"job_visibility": "own"})
    with MasterProcess(tmp_path / "own-master", own) as proc:
        yield proc


@sqlite_only
def test_rerun_of_a_job_the_caller_may_not_see_is_404(own_master: MasterProcess):
    with (
        own_master.client(timeout=30) as admin,
        user_client(admin, "alice") as alice,
        user_client(admin, "bob") as bob,
    ):
        bobs = queued_job(bob)
        hidden = alice.post(f"/jobs/{bobs['id']}/rerun", json={"changes": {}})
        assert hidden.status_code == 404 and hidden.json()["field"] == "job_id", hidden.text
        # Bob may, and so may an admin (the re-run is then the admin's own).
        assert bob.post(f"/jobs/{bobs['id']}/rerun", json={}).json()["owner"] == "bob"
        assert admin.post(f"/jobs/{bobs['id']}/rerun", json={}).json()["owner"] != "bob"


@sqlite_only
def test_the_rerun_really_runs_with_the_changed_hyperparameter(
    api: httpx.Client, master: MasterProcess, worker: WorkerProcess
):
    first = api.post(
        "/jobs", json={"command": ["python", "-c", PRINT_LR], "queue": "cpu", "hyperparameters": {"lr": 0.1}}
    ).json()
    assert wait_status(api, first["id"], {"succeeded", "failed"})["status"] == "succeeded"
    ran = run_cli(master, "rerun", str(first["id"]), "--hp", "lr=0.01", "--epochs", "3", "--tag", "lower-lr")
    assert ran.exit_code == 0, ran.output
    match = re.search(r"job (\d+) \w+: re-run of job (\d+)", ran.output)
    assert match and int(match.group(2)) == first["id"], ran.output
    new_id = int(match.group(1))
    new = wait_status(api, new_id, {"succeeded", "failed"})
    assert new["status"] == "succeeded", new
    assert "lr is 0.01" in log_texts(api, new_id)
    assert new["metrics"] == {"lr": 0.01} and new["spec"]["max_epochs"] == 3 and new["tags"] == ["lower-lr"]
    assert "lr is 0.1" in log_texts(api, first["id"])

    shown_new = run_cli(master, "show", str(new_id))
    assert f"re-run of job {first['id']}" in shown_new.output and "lower-lr" in shown_new.output
    shown_old = run_cli(master, "show", str(first["id"]))
    assert f"re-runs: {new_id}" in shown_old.output
    compared = run_cli(master, "compare", str(first["id"]), str(new_id))
    assert compared.exit_code == 0 and "hyperparameters.lr" in compared.output


def test_project_and_tags_filter_the_job_list(api: httpx.Client):
    a = queued_job(api, project="mnist", tags=["base", "small"])
    b = queued_job(api, project="mnist", tags=["base"])
    c = queued_job(api, project="cifar", tags=["base", "small"])
    queued_job(api)

    def listed(params: dict) -> list[int]:
        answer = api.get("/jobs", params=params)
        assert answer.status_code == 200, answer.text
        return [job["id"] for job in answer.json()["items"]]

    assert listed({"project": "mnist"}) == [b["id"], a["id"]]
    assert listed({"tag": "base"}) == [c["id"], b["id"], a["id"]]
    assert listed({"tag": ["base", "small"]}) == [c["id"], a["id"]]  # all of them must match
    assert listed({"project": "mnist", "tag": ["small"]}) == [a["id"]]
    assert listed({"project": "nothing-here"}) == []
    assert api.get("/jobs", params={"owner": "me", "project": "cifar"}).json()["items"][0]["id"] == c["id"]
    for params, field in (({"tag": "bad tag"}, "tag[0]"), ({"tag": ["ok", "no/slash"]}, "tag[1]")):
        refused = api.get("/jobs", params=params)
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text
    past = api.get("/jobs", params={"sweep": 2**31})  # sweep ids are 32-bit: a 422, not an overflow
    assert past.status_code == 422 and past.json()["field"] == "sweep", past.text
    refused = api.get("/jobs", params={"project": "../etc"})
    assert refused.status_code == 422 and refused.json()["field"] == "project", refused.text
    bad_spec = api.post("/jobs", json={"command": ["true"], "queue": "cpu", "tags": ["has space"]})
    assert bad_spec.status_code == 422 and bad_spec.json()["field"] == "tags[0]"


@sqlite_only
def test_cli_submit_and_list_by_project_and_tag(master: MasterProcess, api: httpx.Client):
    made = run_cli(
        master, "submit", "--queue", "cpu", "--project", "mnist", "--tag", "base", "-t", "small", "--", "true"
    )
    assert made.exit_code == 0, made.output
    job_id = int(re.search(r"job (\d+)", made.output).group(1))  # type: ignore[union-attr]
    job = api.get(f"/jobs/{job_id}").json()
    assert job["project"] == "mnist" and job["tags"] == ["base", "small"]
    other = queued_job(api, project="cifar", tags=["base"])

    listed = run_cli(master, "jobs", "--project", "mnist", "--tag", "base", "--tag", "small")
    assert listed.exit_code == 0 and re.search(rf"^{job_id}\s", listed.output, re.M), listed.output
    assert not re.search(rf"^{other['id']}\s", listed.output, re.M)
    every = run_cli(master, "jobs", "--all", "--tag", "base")
    assert re.search(rf"^{other['id']}\s", every.output, re.M) and re.search(
        rf"^{job_id}\s", every.output, re.M
    )
    shown = run_cli(master, "show", str(job_id))
    assert re.search(r"project\s+mnist", shown.output) and "base, small" in shown.output

    for args in (("jobs", "--tag", "bad tag"), ("rerun", "999999"), ("submit", "--tag", "a b", "--", "true")):
        failed = run_cli(master, *args)
        assert failed.exit_code != 0, failed.output
        lines = failed.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), failed.output
