"""Preemption end to end: a running Lightning job of low priority is preempted for an urgent one,
checkpoints, goes back to the queue without using a retry, and resumes from its checkpoint to the
same metrics as a run that was never interrupted."""

from __future__ import annotations

import pytest

from tests.conftest import DIGITS, upload_dataset, wait_for, wait_status

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: Stops at the end of the epoch under way when signalled, so the resumed run repeats the uninterrupted
#: one exactly (worker/runtime.py, SeedEveryEpoch).
TRAIN = {
    "recipe": "tabular-classifier",
    "datasets": ["digits.csv"],
    "hyperparameters": {"target": "digit", "lr": 0.03, "dropout": 0.5, "stop_at": "epoch"},
    "max_epochs": 40,
    "queue": "cpu",
    "priority": 2,
}
URGENT = {"command": ["python", "-c", "print('urgent')"], "queue": "cpu", "priority": 8}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"preemption": True, "cancel_grace_period": 30.0})


def test_a_preempted_lightning_job_resumes_to_the_metrics_of_an_uninterrupted_run(api, start_worker):
    upload_dataset(api, DIGITS)
    start_worker(queues="cpu", overrides={"cancel_grace_period": 30.0})  # one job slot on the cpu queue
    # The uninterrupted run, at the same time on a queue of its own (no GPU here: it runs on the CPU
    # as the other does), so the test waits for one training, not two.
    start_worker("node-2", queues="gpu")
    whole = api.post("/jobs", json={**TRAIN, "queue": "gpu"}).json()["id"]
    low = api.post("/jobs", json=TRAIN).json()["id"]
    # Preempted only once it has a checkpoint to resume from: after its first epoch.
    wait_for(
        lambda: (api.get(f"/jobs/{low}").json()["progress"].get("epoch") or 0) >= 2,
        timeout=120,
        what="the low-priority job to finish an epoch",
    )
    urgent = api.post("/jobs", json=URGENT).json()["id"]
    assert wait_status(api, urgent, {"succeeded", "failed"})["status"] == "succeeded"
    done = wait_status(api, low, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["preemptions"] == 1 and done["attempts"] == 2 and done["handbacks"] == 0
    first, second = done["attempt_list"]
    assert first["error"].startswith("preempted: preempted for job"), first["error"]
    assert second["info"].get("restored_checkpoint"), second["info"]
    # The urgent job ran while the preempted one waited.
    urgent_job = api.get(f"/jobs/{urgent}").json()
    assert first["finished_at"] <= urgent_job["started_at"] <= second["started_at"]

    uninterrupted = wait_status(api, whole, {"succeeded", "failed"}, timeout=240)
    assert uninterrupted["status"] == "succeeded" and uninterrupted["attempts"] == 1
    expected, got = uninterrupted["metrics"], done["metrics"]
    assert expected.keys() == got.keys() and expected
    assert all(abs(got[k] - expected[k]) < 1e-6 for k in expected), (got, expected)
